/*
 * tly_registry_client.c - the Confluent Schema Registry client
 * (tly_registry_client.h): one libcurl handle per call, answers bounded,
 * results sorted into "definitive" and "worth retrying".
 */
#include "tly_registry_client.h"

#include "tly_bytes.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tly_registry {
  char *url; /* without a trailing '/' */
  char *user, *password, *ca_file;
  long timeout_ms;
};

typedef struct {
  char *body;
  size_t len, cap;
  int overflow;
} answer_t;

static size_t on_body(char *data, size_t size, size_t count, void *opaque) {
  answer_t *answer = opaque;
  size_t bytes = size * count;
  switch (tly_text_append(&answer->body, &answer->len, &answer->cap, data,
                          bytes, TLY_REGISTRY_ANSWER_MAX)) {
  case 0:
    return bytes;
  case 1:
    answer->overflow = 1;
    return 0; /* stops the transfer */
  default:
    return 0;
  }
}

tly_registry_t *tly_registry_new(const tly_registry_conf_t *conf, char *errstr,
                                 size_t errstr_size) {
  if (!conf->url || (strncmp(conf->url, "http://", 7) != 0 &&
                     strncmp(conf->url, "https://", 8) != 0)) {
    snprintf(errstr, errstr_size,
             "schema registry URL '%.200s': must start with http:// or "
             "https://",
             conf->url ? conf->url : "");
    return NULL;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    snprintf(errstr, errstr_size, "libcurl: cannot initialise");
    return NULL;
  }
  tly_registry_t *registry = calloc(1, sizeof(*registry));
  if (!registry)
    goto oom;
  registry->url = strdup(conf->url);
  if (!registry->url)
    goto oom;
  size_t len = strlen(registry->url);
  while (len && registry->url[len - 1] == '/')
    registry->url[--len] = '\0';
  if ((conf->user && !(registry->user = strdup(conf->user))) ||
      (conf->user &&
       !(registry->password = strdup(conf->password ? conf->password : ""))) ||
      (conf->ca_file && !(registry->ca_file = strdup(conf->ca_file))))
    goto oom;
  registry->timeout_ms =
      conf->timeout_ms > 0 ? conf->timeout_ms : TLY_REGISTRY_DEFAULT_TIMEOUT_MS;
  return registry;
oom:
  tly_registry_destroy(registry);
  snprintf(errstr, errstr_size, "out of memory");
  return NULL;
}

void tly_registry_destroy(tly_registry_t *registry) {
  if (!registry)
    return;
  if (registry->password) {
    OPENSSL_cleanse(registry->password, strlen(registry->password));
    free(registry->password);
  }
  free(registry->user);
  free(registry->ca_file);
  free(registry->url);
  free(registry);
}

const char *tly_registry_url(const tly_registry_t *registry) {
  return registry->url;
}

/* One call: GET (body NULL) or POST body, at url + path. *status is the
 * HTTP status (0: none) and *answer the body. 0, or -1 with errstr (no
 * answer). */
static int call(tly_registry_t *registry, const char *path, const char *body,
                long *status, answer_t *answer, char *errstr,
                size_t errstr_size) {
  char url[2048];
  struct curl_slist *headers = NULL;
  int rc = -1;
  *status = 0;
  if ((size_t)snprintf(url, sizeof(url), "%s%s", registry->url, path) >=
      sizeof(url)) {
    snprintf(errstr, errstr_size, "schema registry URL too long");
    return -1;
  }
  CURL *curl = curl_easy_init();
  if (!curl ||
      !(headers = curl_slist_append(
            headers, "Accept: application/vnd.schemaregistry.v1+json, "
                     "application/json")) ||
      !(headers = curl_slist_append(
            headers, "Content-Type: application/vnd.schemaregistry.v1+json")) ||
      !(headers = curl_slist_append(headers, "Expect:"))) {
    snprintf(errstr, errstr_size, "out of memory");
    goto done;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url);
  if (body) {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)strlen(body));
  } else {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  if (registry->user) {
    curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(curl, CURLOPT_USERNAME, registry->user);
    curl_easy_setopt(curl, CURLOPT_PASSWORD, registry->password);
  }
  if (registry->ca_file)
    curl_easy_setopt(curl, CURLOPT_CAINFO, registry->ca_file);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, registry->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, registry->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, answer);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "tally/1 (+libcurl)");
  CURLcode code = curl_easy_perform(curl);
  if (code != CURLE_OK) {
    snprintf(errstr, errstr_size, "schema registry %s: %s%s", registry->url,
             answer->overflow ? "answer larger than 512 KiB: " : "",
             curl_easy_strerror(code));
    goto done;
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
  rc = 0;
done:
  curl_slist_free_all(headers);
  if (curl)
    curl_easy_cleanup(curl);
  return rc;
}

/* The registry's error_code and message in answer into errstr, and what
 * they mean for a call whose "does not exist" code is not_found_code. */
static tly_registry_result_t classify(const tly_registry_t *registry,
                                      long status, const answer_t *answer,
                                      int not_found_code, char *errstr,
                                      size_t errstr_size) {
  json_t *error = answer->body ? json_loads(answer->body, 0, NULL) : NULL;
  json_int_t error_code =
      json_integer_value(json_object_get(error, "error_code"));
  const char *message = json_string_value(json_object_get(error, "message"));
  if (error_code)
    snprintf(errstr, errstr_size,
             "schema registry %s: HTTP %ld, error %" JSON_INTEGER_FORMAT
             ": %.200s",
             registry->url, status, error_code, message ? message : "");
  else
    snprintf(errstr, errstr_size, "schema registry %s: HTTP %ld", registry->url,
             status);
  json_decref(error);
  if (status == 404 && error_code == not_found_code)
    return TLY_REGISTRY_NOT_FOUND;
  if (status >= 400 && status < 500 && status != 408 && status != 429 &&
      (error_code || status == 401 || status == 403))
    return TLY_REGISTRY_REFUSED;
  return TLY_REGISTRY_UNAVAILABLE;
}

static void answer_free(answer_t *answer) {
  free(answer->body);
  memset(answer, 0, sizeof(*answer));
}

tly_registry_result_t tly_registry_register(tly_registry_t *registry,
                                            const char *subject,
                                            const char *schema_json,
                                            int32_t *id, char *errstr,
                                            size_t errstr_size) {
  char path[1024];
  answer_t answer = {0};
  long status = 0;
  tly_registry_result_t result = TLY_REGISTRY_UNAVAILABLE;
  char *escaped = curl_easy_escape(NULL, subject, 0);
  json_t *request = json_pack("{s:s}", "schema", schema_json);
  char *body = request ? json_dumps(request, JSON_COMPACT) : NULL;
  json_decref(request);
  if (!escaped || !body) {
    snprintf(errstr, errstr_size, "out of memory");
    goto done;
  }
  snprintf(path, sizeof(path), "/subjects/%s/versions", escaped);
  if (call(registry, path, body, &status, &answer, errstr, errstr_size))
    goto done;
  if (status != 200) {
    result = classify(registry, status, &answer, 40401, errstr, errstr_size);
    if (result == TLY_REGISTRY_NOT_FOUND)
      result = TLY_REGISTRY_REFUSED; /* a register has no "not found" */
    goto done;
  }
  json_t *reply = json_loads(answer.body ? answer.body : "", 0, NULL);
  json_t *value = json_object_get(reply, "id");
  if (json_is_integer(value) && json_integer_value(value) >= 0 &&
      json_integer_value(value) <= INT32_MAX) {
    *id = (int32_t)json_integer_value(value);
    result = TLY_REGISTRY_OK;
  } else {
    snprintf(errstr, errstr_size,
             "schema registry %s: registering %s: the answer has no id",
             registry->url, subject);
  }
  json_decref(reply);
done:
  curl_free(escaped);
  free(body);
  answer_free(&answer);
  return result;
}

tly_registry_result_t tly_registry_fetch(tly_registry_t *registry, int32_t id,
                                         char **schema_json, size_t *schema_len,
                                         char *errstr, size_t errstr_size) {
  char path[64];
  answer_t answer = {0};
  long status = 0;
  tly_registry_result_t result = TLY_REGISTRY_UNAVAILABLE;
  *schema_json = NULL;
  *schema_len = 0;
  snprintf(path, sizeof(path), "/schemas/ids/%" PRId32, id);
  if (call(registry, path, NULL, &status, &answer, errstr, errstr_size)) {
    /* The registry answered, with more than any schema tally could read:
     * waiting would stall the partition for good, so it is definitive
     * (the records with this id are dead-lettered with the reason). */
    if (answer.overflow)
      result = TLY_REGISTRY_REFUSED;
    goto done;
  }
  if (status != 200) {
    result = classify(registry, status, &answer, 40403, errstr, errstr_size);
    /* Only "no such schema" is definitive for a lookup: a refusal (bad
     * credentials, a proxy's 4xx) is fixed on the registry's side while
     * the record waits. */
    if (result == TLY_REGISTRY_REFUSED)
      result = TLY_REGISTRY_UNAVAILABLE;
    goto done;
  }
  json_t *reply = json_loads(answer.body ? answer.body : "", 0, NULL);
  const char *schema = json_string_value(json_object_get(reply, "schema"));
  const char *type = json_string_value(json_object_get(reply, "schemaType"));
  if (!schema) {
    snprintf(errstr, errstr_size,
             "schema registry %s: schema id %" PRId32
             ": the answer has no schema",
             registry->url, id);
  } else if (type && strcmp(type, "AVRO") != 0) {
    snprintf(errstr, errstr_size,
             "schema id %" PRId32 " is a %.20s schema; tally reads Avro", id,
             type);
    result = TLY_REGISTRY_REFUSED;
  } else if (!(*schema_json = strdup(schema))) {
    snprintf(errstr, errstr_size, "out of memory");
  } else {
    *schema_len = json_string_length(json_object_get(reply, "schema"));
    result = TLY_REGISTRY_OK;
  }
  json_decref(reply);
done:
  answer_free(&answer);
  return result;
}
