/*
 * registry_fake.c - the Schema-Registry-shaped test server
 * (registry_fake.h).
 */
#include "registry_fake.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if MHD_VERSION < 0x00097002
typedef int fake_result;
#else
typedef enum MHD_Result fake_result;
#endif

#define MAX_SCHEMAS 64
#define MAX_BODY (1024 * 1024)

typedef struct {
  int32_t id;
  char *subject; /* the latest subject it was registered under */
  char *schema;
} entry_t;

struct registry_fake {
  struct MHD_Daemon *daemon;
  int port;
  char url[64];
  char *user, *password;
  pthread_mutex_t lock;
  entry_t entries[MAX_SCHEMAS];
  int count;
  int32_t next_id;
  int down;
  long lookups, refused;
};

typedef struct {
  char *body;
  size_t len;
} upload_t;

static fake_result answer(struct MHD_Connection *connection, int status,
                          json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(body);
  struct MHD_Response *response = MHD_create_response_from_buffer(
      strlen(text), text, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(response, "Content-Type",
                          "application/vnd.schemaregistry.v1+json");
  fake_result rc = MHD_queue_response(connection, (unsigned)status, response);
  MHD_destroy_response(response);
  return rc;
}

static fake_result error(struct MHD_Connection *connection, int status,
                         int code, const char *message) {
  return answer(connection, status,
                json_pack("{s:i,s:s}", "error_code", code, "message", message));
}

/* Under the lock. */
static int32_t add_locked(registry_fake_t *fake, const char *subject,
                          const char *schema) {
  for (int i = 0; i < fake->count; i++)
    if (strcmp(fake->entries[i].schema, schema) == 0) {
      free(fake->entries[i].subject);
      fake->entries[i].subject = strdup(subject);
      return fake->entries[i].id;
    }
  if (fake->count == MAX_SCHEMAS)
    return -1;
  entry_t *entry = &fake->entries[fake->count++];
  entry->id = fake->next_id++;
  entry->subject = strdup(subject);
  entry->schema = strdup(schema);
  return entry->id;
}

static int authorized(registry_fake_t *fake,
                      struct MHD_Connection *connection) {
  if (!fake->user)
    return 1;
  char *password = NULL;
  char *user = MHD_basic_auth_get_username_password(connection, &password);
  int ok = user && password && strcmp(user, fake->user) == 0 &&
           strcmp(password, fake->password) == 0;
  MHD_free(user);
  MHD_free(password);
  return ok;
}

/* The {segment} of prefix{segment}suffix, decoded into out; 0 or -1. */
static int segment(const char *url, const char *prefix, const char *suffix,
                   char *out, size_t size) {
  size_t prefix_len = strlen(prefix), suffix_len = strlen(suffix);
  size_t len = strlen(url);
  if (len <= prefix_len + suffix_len || strncmp(url, prefix, prefix_len) ||
      strcmp(url + len - suffix_len, suffix))
    return -1;
  size_t n = len - prefix_len - suffix_len;
  if (n >= size || memchr(url + prefix_len, '/', n))
    return -1;
  memcpy(out, url + prefix_len, n);
  out[n] = '\0';
  return 0;
}

static fake_result route(registry_fake_t *fake,
                         struct MHD_Connection *connection, const char *url,
                         const char *method, const upload_t *upload) {
  char name[512];
  if (fake->down) {
    fake->refused++;
    return error(connection, 503, 50300, "down for the test");
  }
  if (!authorized(fake, connection))
    return error(connection, 401, 401, "Unauthorized");
  if (strcmp(method, "POST") == 0 &&
      segment(url, "/subjects/", "/versions", name, sizeof(name)) == 0) {
    json_t *body =
        json_loadb(upload->body ? upload->body : "", upload->len, 0, NULL);
    const char *schema = json_string_value(json_object_get(body, "schema"));
    if (!schema) {
      json_decref(body);
      return error(connection, 422, 42201,
                   "Either the input schema or one "
                   "of its references is invalid");
    }
    int32_t id = add_locked(fake, name, schema);
    json_decref(body);
    return answer(connection, 200, json_pack("{s:i}", "id", (int)id));
  }
  if (strcmp(method, "GET") != 0)
    return error(connection, 405, 405, "HTTP 405 Method Not Allowed");
  if (segment(url, "/schemas/ids/", "", name, sizeof(name)) == 0) {
    fake->lookups++;
    long id = strtol(name, NULL, 10);
    for (int i = 0; i < fake->count; i++)
      if (fake->entries[i].id == id)
        return answer(connection, 200,
                      json_pack("{s:s}", "schema", fake->entries[i].schema));
    char message[128];
    snprintf(message, sizeof(message), "Schema %ld not found", id);
    return error(connection, 404, 40403, message);
  }
  if (strcmp(url, "/subjects") == 0) {
    json_t *list = json_array();
    for (int i = 0; i < fake->count; i++)
      json_array_append_new(list, json_string(fake->entries[i].subject));
    return answer(connection, 200, list);
  }
  if (segment(url, "/subjects/", "/versions/latest", name, sizeof(name)) == 0) {
    for (int i = fake->count - 1; i >= 0; i--)
      if (strcmp(fake->entries[i].subject, name) == 0)
        return answer(connection, 200,
                      json_pack("{s:s,s:i,s:i,s:s}", "subject", name, "version",
                                1, "id", (int)fake->entries[i].id, "schema",
                                fake->entries[i].schema));
    return error(connection, 404, 40401, "Subject not found.");
  }
  return error(connection, 404, 404, "HTTP 404 Not Found");
}

static fake_result handle(void *cls, struct MHD_Connection *connection,
                          const char *url, const char *method,
                          const char *version, const char *data,
                          size_t *data_size, void **state) {
  (void)version;
  registry_fake_t *fake = cls;
  upload_t *upload = *state;
  if (!upload) {
    *state = calloc(1, sizeof(upload_t));
    return *state ? MHD_YES : MHD_NO;
  }
  if (*data_size) {
    if (upload->len + *data_size > MAX_BODY)
      return MHD_NO;
    char *grown = realloc(upload->body, upload->len + *data_size + 1);
    if (!grown)
      return MHD_NO;
    memcpy(grown + upload->len, data, *data_size);
    upload->body = grown;
    upload->len += *data_size;
    upload->body[upload->len] = '\0';
    *data_size = 0;
    return MHD_YES;
  }
  pthread_mutex_lock(&fake->lock);
  fake_result rc = route(fake, connection, url, method, upload);
  pthread_mutex_unlock(&fake->lock);
  return rc;
}

static void completed(void *cls, struct MHD_Connection *connection,
                      void **state, enum MHD_RequestTerminationCode code) {
  (void)cls;
  (void)connection;
  (void)code;
  upload_t *upload = *state;
  if (upload) {
    free(upload->body);
    free(upload);
  }
}

registry_fake_t *registry_fake_start(int32_t first_id, const char *user,
                                     const char *password) {
  registry_fake_t *fake = calloc(1, sizeof(*fake));
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  fake->next_id = first_id;
  pthread_mutex_init(&fake->lock, NULL);
  if (user) {
    fake->user = strdup(user);
    fake->password = strdup(password ? password : "");
  }
  fake->daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
      handle, fake, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED,
      completed, fake, MHD_OPTION_END);
  if (!fake->daemon) {
    registry_fake_stop(fake);
    return NULL;
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(fake->daemon, MHD_DAEMON_INFO_BIND_PORT);
  fake->port = info ? info->port : 0;
  snprintf(fake->url, sizeof(fake->url), "http://127.0.0.1:%d", fake->port);
  return fake;
}

void registry_fake_stop(registry_fake_t *fake) {
  if (!fake)
    return;
  if (fake->daemon)
    MHD_stop_daemon(fake->daemon);
  for (int i = 0; i < fake->count; i++) {
    free(fake->entries[i].subject);
    free(fake->entries[i].schema);
  }
  free(fake->user);
  free(fake->password);
  pthread_mutex_destroy(&fake->lock);
  free(fake);
}

int registry_fake_port(const registry_fake_t *fake) { return fake->port; }

const char *registry_fake_url(const registry_fake_t *fake) { return fake->url; }

int32_t registry_fake_add(registry_fake_t *fake, const char *subject,
                          const char *schema_json) {
  pthread_mutex_lock(&fake->lock);
  int32_t id = add_locked(fake, subject, schema_json);
  pthread_mutex_unlock(&fake->lock);
  return id;
}

int32_t registry_fake_subject_id(registry_fake_t *fake, const char *subject) {
  int32_t id = -1;
  pthread_mutex_lock(&fake->lock);
  for (int i = 0; i < fake->count; i++)
    if (strcmp(fake->entries[i].subject, subject) == 0)
      id = fake->entries[i].id;
  pthread_mutex_unlock(&fake->lock);
  return id;
}

void registry_fake_down(registry_fake_t *fake, int down) {
  pthread_mutex_lock(&fake->lock);
  fake->down = down;
  pthread_mutex_unlock(&fake->lock);
}

long registry_fake_lookups(registry_fake_t *fake) {
  pthread_mutex_lock(&fake->lock);
  long count = fake->lookups;
  pthread_mutex_unlock(&fake->lock);
  return count;
}

long registry_fake_refused(registry_fake_t *fake) {
  pthread_mutex_lock(&fake->lock);
  long count = fake->refused;
  pthread_mutex_unlock(&fake->lock);
  return count;
}
