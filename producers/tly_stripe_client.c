/*
 * tly_stripe_client.c - Stripe API requests over libcurl (see
 * tly_stripe_client.h). A fresh easy handle per request keeps calls from
 * different threads apart; the response headers the callers act on
 * (Retry-After, Stripe-Should-Retry, Idempotent-Replayed, Request-Id) are
 * picked out as they arrive.
 */
#include "tly_stripe_client.h"

#include "tly_bytes.h"

#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A response body larger than this is cut off: Stripe's are kilobytes. */
#define BODY_MAX (1024 * 1024)

struct tly_stripe_client {
  char *api_base;
  char *secret_key;
  char *api_version;
  long timeout_ms;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_setup(void) {
  curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

static void secret_free(char *secret) {
  if (!secret)
    return;
  OPENSSL_cleanse(secret, strlen(secret));
  free(secret);
}

void tly_stripe_client_destroy(tly_stripe_client_t *client) {
  if (!client)
    return;
  free(client->api_base);
  secret_free(client->secret_key);
  free(client->api_version);
  free(client);
}

tly_stripe_client_t *tly_stripe_client_new(const tly_stripe_client_conf_t *conf,
                                           char *errstr, size_t errstr_size) {
  pthread_once(&curl_once, curl_setup);
  if (!curl_ready) {
    snprintf(errstr, errstr_size, "stripe: libcurl did not initialise");
    return NULL;
  }
  if (!conf->api_base || !*conf->api_base || !conf->secret_key ||
      !*conf->secret_key) {
    snprintf(errstr, errstr_size,
             "stripe: an API base and a secret key are "
             "required");
    return NULL;
  }
  tly_stripe_client_t *client = calloc(1, sizeof(*client));
  if (!client || !(client->api_base = strdup(conf->api_base)) ||
      !(client->secret_key = strdup(conf->secret_key)) ||
      !(client->api_version =
            strdup(conf->api_version ? conf->api_version : ""))) {
    tly_stripe_client_destroy(client);
    snprintf(errstr, errstr_size, "stripe: out of memory");
    return NULL;
  }
  client->timeout_ms = conf->timeout_ms > 0 ? conf->timeout_ms : 10000;
  return client;
}

char *tly_stripe_form_encode(const tly_stripe_param_t *params, size_t count) {
  size_t len = 0, cap = 256;
  char *out = malloc(cap);
  if (!out)
    return NULL;
  out[0] = '\0';
  for (size_t i = 0; i < count; i++) {
    const char *parts[2] = {params[i].key,
                            params[i].value ? params[i].value : ""};
    for (int p = 0; p < 2; p++) {
      /* curl_easy_escape needs no handle and keeps only RFC 3986's
       * unreserved characters, so '[' and ']' go out as %5B and %5D. */
      char *escaped = curl_easy_escape(NULL, parts[p], 0);
      if (!escaped) {
        free(out);
        return NULL;
      }
      size_t need = len + strlen(escaped) + 2;
      if (need > cap) {
        while (cap < need)
          cap *= 2;
        char *grown = realloc(out, cap);
        if (!grown) {
          curl_free(escaped);
          free(out);
          return NULL;
        }
        out = grown;
      }
      if (p == 0 && i > 0)
        out[len++] = '&';
      memcpy(out + len, escaped, strlen(escaped));
      len += strlen(escaped);
      if (p == 0)
        out[len++] = '=';
      out[len] = '\0';
      curl_free(escaped);
    }
  }
  return out;
}

typedef struct {
  tly_stripe_response_t *out;
  size_t cap;
  int overflow;
} collect_t;

static size_t on_body(char *data, size_t size, size_t nmemb, void *opaque) {
  collect_t *collect = opaque;
  tly_stripe_response_t *out = collect->out;
  size_t n = size * nmemb;
  switch (tly_text_append(&out->body, &out->body_len, &collect->cap, data, n,
                          BODY_MAX)) {
  case 0:
    return n;
  case 1:
    collect->overflow = 1;
    return 0;
  default:
    return 0;
  }
}

/* The value of header "Name: value\r\n" when line is that header, else
 * NULL; *len is the value's length without trailing white space. */
static const char *header_value(const char *line, size_t size, const char *name,
                                size_t *len) {
  size_t name_len = strlen(name);
  if (size <= name_len || strncasecmp(line, name, name_len) != 0 ||
      line[name_len] != ':')
    return NULL;
  const char *value = line + name_len + 1;
  const char *end = line + size;
  while (value < end && (*value == ' ' || *value == '\t'))
    value++;
  while (end > value && isspace((unsigned char)end[-1]))
    end--;
  *len = (size_t)(end - value);
  return value;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *opaque) {
  tly_stripe_response_t *out = opaque;
  size_t n = size * nmemb, len;
  const char *value;
  char text[64];
  if ((value = header_value(line, n, "Retry-After", &len)) && len &&
      len < sizeof(text)) {
    memcpy(text, value, len);
    text[len] = '\0';
    char *end;
    long long seconds = strtoll(text, &end, 10);
    if (!*end && seconds >= 0)
      out->retry_after_s = seconds;
  } else if ((value = header_value(line, n, "Stripe-Should-Retry", &len))) {
    out->should_retry = len == 4 && strncasecmp(value, "true", 4) == 0    ? 1
                        : len == 5 && strncasecmp(value, "false", 5) == 0 ? 0
                                                                          : -1;
  } else if ((value = header_value(line, n, "Idempotent-Replayed", &len))) {
    out->idempotent_replayed = len == 4 && strncasecmp(value, "true", 4) == 0;
  } else if ((value = header_value(line, n, "Request-Id", &len)) &&
             len < sizeof(out->request_id)) {
    memcpy(out->request_id, value, len);
    out->request_id[len] = '\0';
  }
  return n;
}

/* "Name: value" into a header list; NULL on OOM (the list is freed). */
static struct curl_slist *add_header(struct curl_slist *list, const char *name,
                                     const char *value) {
  size_t size = strlen(name) + strlen(value) + 3;
  char *line = malloc(size);
  if (!line) {
    curl_slist_free_all(list);
    return NULL;
  }
  snprintf(line, size, "%s: %s", name, value);
  struct curl_slist *grown = curl_slist_append(list, line);
  OPENSSL_cleanse(line, size); /* the Authorization line holds the key */
  free(line);
  if (!grown)
    curl_slist_free_all(list);
  return grown;
}

static void free_headers(struct curl_slist *list) {
  for (struct curl_slist *item = list; item; item = item->next)
    OPENSSL_cleanse(item->data, strlen(item->data));
  curl_slist_free_all(list);
}

/* One request: POST with the form as its body, or GET or DELETE with it as
 * the query string (what Stripe's own libraries do for both). */
static int request(tly_stripe_client_t *client, const char *method,
                   const char *path, const tly_stripe_param_t *params,
                   size_t param_count, const char *idempotency_key,
                   tly_stripe_response_t *out) {
  char bearer[512], *url = NULL;
  collect_t collect = {out, 0, 0};
  struct curl_slist *headers = NULL;
  int rc = -1;
  int post = strcmp(method, "POST") == 0;

  memset(out, 0, sizeof(*out));
  out->retry_after_s = -1;
  out->should_retry = -1;
  char *form = tly_stripe_form_encode(params, param_count);
  CURL *curl = curl_easy_init();
  size_t url_size =
      strlen(client->api_base) + strlen(path) + (form ? strlen(form) : 0) + 2;
  if ((url = malloc(url_size)))
    snprintf(url, url_size, "%s%s%s%s", client->api_base, path,
             !post && form && *form ? "?" : "", !post && form ? form : "");
  snprintf(bearer, sizeof(bearer), "Bearer %s", client->secret_key);
  if (!form || !curl || !url ||
      !(headers = add_header(NULL, "Authorization", bearer)) ||
      (post && !(headers = add_header(headers, "Content-Type",
                                      "application/x-www-form-urlencoded"))) ||
      (client->api_version[0] &&
       !(headers =
             add_header(headers, "Stripe-Version", client->api_version))) ||
      (idempotency_key &&
       !(headers = add_header(headers, "Idempotency-Key", idempotency_key)))) {
    snprintf(out->error, sizeof(out->error), "out of memory");
    goto done;
  }
  /* Expect: 100-continue would cost a round trip on every larger body. */
  if (!(headers = curl_slist_append(headers, "Expect:"))) {
    snprintf(out->error, sizeof(out->error), "out of memory");
    goto done;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url);
  if (post) {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, form);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)strlen(form));
  } else {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    if (strcmp(method, "GET") != 0)
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, client->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, client->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); /* threads, no SIGALRM */
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &collect);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, out);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "tally/1 (+libcurl)");
  CURLcode code = curl_easy_perform(curl);
  if (code != CURLE_OK) {
    out->timed_out = code == CURLE_OPERATION_TIMEDOUT;
    snprintf(out->error, sizeof(out->error), "%s%s",
             collect.overflow ? "response body too large: " : "",
             curl_easy_strerror(code));
    /* Headers of a cut-off answer say nothing reliable. */
    out->retry_after_s = -1;
    out->should_retry = -1;
    out->idempotent_replayed = 0;
    free(out->body);
    out->body = NULL;
    out->body_len = 0;
    goto done;
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
  if (!out->body && !(out->body = strdup(""))) {
    snprintf(out->error, sizeof(out->error), "out of memory");
    out->status = 0;
    goto done;
  }
  rc = 0;
done:
  OPENSSL_cleanse(bearer, sizeof(bearer));
  free_headers(headers);
  if (curl)
    curl_easy_cleanup(curl);
  free(form);
  free(url);
  return rc;
}

int tly_stripe_post(tly_stripe_client_t *client, const char *path,
                    const tly_stripe_param_t *params, size_t param_count,
                    const char *idempotency_key, tly_stripe_response_t *out) {
  return request(client, "POST", path, params, param_count, idempotency_key,
                 out);
}

int tly_stripe_get(tly_stripe_client_t *client, const char *path,
                   const tly_stripe_param_t *params, size_t param_count,
                   tly_stripe_response_t *out) {
  return request(client, "GET", path, params, param_count, NULL, out);
}

int tly_stripe_delete(tly_stripe_client_t *client, const char *path,
                      const tly_stripe_param_t *params, size_t param_count,
                      const char *idempotency_key, tly_stripe_response_t *out) {
  return request(client, "DELETE", path, params, param_count, idempotency_key,
                 out);
}

void tly_stripe_response_clear(tly_stripe_response_t *response) {
  if (!response)
    return;
  free(response->body);
  memset(response, 0, sizeof(*response));
}

/* A string field of a Stripe error body ("error.<name>"), or "". */
static void error_field(const char *body, const char *name, char *out,
                        size_t out_size) {
  json_t *root = body ? json_loads(body, 0, NULL) : NULL;
  const char *value =
      json_string_value(json_object_get(json_object_get(root, "error"), name));
  snprintf(out, out_size, "%s", value ? value : "");
  json_decref(root);
}

void tly_stripe_error_message(const char *body, char *out, size_t out_size) {
  error_field(body, "message", out, out_size);
}

void tly_stripe_error_code(const char *body, char *out, size_t out_size) {
  error_field(body, "code", out, out_size);
}

/* Stripe's zero-decimal currencies (the amount is whole units) and
 * three-decimal ones; every other currency counts in hundredths. */
static const struct {
  const char *code;
  int64_t micros_per_unit;
} currency_units[] = {
    {"bif", 1000000}, {"clp", 1000000}, {"djf", 1000000}, {"gnf", 1000000},
    {"jpy", 1000000}, {"kmf", 1000000}, {"krw", 1000000}, {"mga", 1000000},
    {"pyg", 1000000}, {"rwf", 1000000}, {"ugx", 1000000}, {"vnd", 1000000},
    {"vuv", 1000000}, {"xaf", 1000000}, {"xof", 1000000}, {"xpf", 1000000},
    {"bhd", 1000},    {"jod", 1000},    {"kwd", 1000},    {"omr", 1000},
    {"tnd", 1000},
};

int64_t tly_stripe_micros_per_unit(const char *currency) {
  char code[4] = "";
  for (size_t i = 0; currency && currency[i] && i < 3; i++)
    code[i] = (char)tolower((unsigned char)currency[i]);
  for (size_t i = 0; i < sizeof(currency_units) / sizeof(currency_units[0]);
       i++)
    if (strcmp(code, currency_units[i].code) == 0)
      return currency_units[i].micros_per_unit;
  return 10000; /* cents */
}
