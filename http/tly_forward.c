/*
 * tly_forward.c - request forwarding on detached threads (see
 * tly_forward.h). A thread per forward, as for the billing portal: simple,
 * and the in-flight bound keeps their number (and the owners' load) in
 * check; shutdown waits for them through the same count.
 */
#include "tly_forward.h"

#include "tly_cluster_auth.h"
#include "tly_request.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_IN_FLIGHT 64
#define DEFAULT_CONNECT_TIMEOUT_MS 1000
#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_MAX_RESPONSE_BYTES (8u * 1024 * 1024)

struct tly_forward {
  tly_forward_conf_t conf;
  pthread_mutex_t lock;
  pthread_cond_t idle;
  unsigned in_flight;
  int closing;
};

struct tly_forward_call {
  tly_forward_t *forward;
  char *url, *method, *credential, *content_type_in, *body_in;
  int accept_csv; /* send Accept: text/csv */
  size_t body_in_len;
  long timeout_ms;
  void (*done)(void *opaque);
  void *opaque;
  /* The answer. */
  long status;
  char content_type[128];
  char *body;
  size_t body_len;
  int too_large;
  char error[CURL_ERROR_SIZE + 64];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_setup(void) {
  curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

tly_forward_t *tly_forward_new(const tly_forward_conf_t *conf) {
  pthread_once(&curl_once, curl_setup);
  if (!curl_ready)
    return NULL;
  tly_forward_t *forward = calloc(1, sizeof(*forward));
  if (!forward)
    return NULL;
  if (conf)
    forward->conf = *conf;
  if (!forward->conf.max_in_flight)
    forward->conf.max_in_flight = DEFAULT_MAX_IN_FLIGHT;
  if (forward->conf.connect_timeout_ms <= 0)
    forward->conf.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
  if (forward->conf.timeout_ms <= 0)
    forward->conf.timeout_ms = DEFAULT_TIMEOUT_MS;
  if (!forward->conf.max_response_bytes)
    forward->conf.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES;
  pthread_mutex_init(&forward->lock, NULL);
  pthread_cond_init(&forward->idle, NULL);
  return forward;
}

static size_t collect(char *data, size_t size, size_t nmemb, void *opaque) {
  tly_forward_call_t *call = opaque;
  size_t n = size * nmemb;
  if (call->body_len + n > call->forward->conf.max_response_bytes) {
    call->too_large = 1;
    return 0; /* aborts the transfer */
  }
  char *grown = realloc(call->body, call->body_len + n + 1);
  if (!grown)
    return 0;
  memcpy(grown + call->body_len, data, n);
  call->body = grown;
  call->body_len += n;
  call->body[call->body_len] = '\0';
  return n;
}

static void perform(tly_forward_call_t *call) {
  char errbuf[CURL_ERROR_SIZE] = "", header[1024];
  struct curl_slist *headers = NULL;
  CURL *curl = curl_easy_init();
  if (!curl) {
    snprintf(call->error, sizeof(call->error), "out of memory");
    return;
  }
  curl_easy_setopt(curl, CURLOPT_URL, call->url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, call->method);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   call->forward->conf.connect_timeout_ms);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, call->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, call);
  if (call->body_in) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, call->body_in);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)call->body_in_len);
  }
  headers = curl_slist_append(headers, TLY_FORWARDED_HEADER ": 1");
  /* No "Expect: 100-continue" round trip for bodies. */
  headers = curl_slist_append(headers, "Expect:");
  if (call->credential &&
      (size_t)snprintf(header, sizeof(header), TLY_FORWARD_AUTH_HEADER ": %s",
                       call->credential) < sizeof(header))
    headers = curl_slist_append(headers, header);
  if (call->content_type_in &&
      (size_t)snprintf(header, sizeof(header), "Content-Type: %s",
                       call->content_type_in) < sizeof(header))
    headers = curl_slist_append(headers, header);
  if (call->accept_csv)
    headers = curl_slist_append(headers, "Accept: text/csv");
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    char *type = NULL;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &call->status);
    if (curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK &&
        type)
      snprintf(call->content_type, sizeof(call->content_type), "%s", type);
  } else {
    call->status = 0;
    if (call->too_large)
      snprintf(call->error, sizeof(call->error),
               "the owner's answer is larger than %zu bytes",
               call->forward->conf.max_response_bytes);
    else
      snprintf(call->error, sizeof(call->error), "%s",
               errbuf[0] ? errbuf : curl_easy_strerror(rc));
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
}

static void *call_main(void *arg) {
  tly_forward_call_t *call = arg;
  tly_forward_t *forward = call->forward;
  perform(call);
  /* The call belongs to the caller from here on: not touched again. */
  call->done(call->opaque);
  pthread_mutex_lock(&forward->lock);
  if (--forward->in_flight == 0)
    pthread_cond_broadcast(&forward->idle);
  pthread_mutex_unlock(&forward->lock);
  return NULL;
}

static char *copy_or_null(const char *text, int *failed) {
  char *copy = text ? strdup(text) : NULL;
  if (text && !copy)
    *failed = 1;
  return copy;
}

int tly_forward_request(tly_forward_t *forward,
                        const tly_forward_request_t *request,
                        void (*done)(void *opaque), void *opaque,
                        tly_forward_call_t **out) {
  int failed = 0;
  *out = NULL;
  tly_forward_call_t *call = calloc(1, sizeof(*call));
  if (!call)
    return -1;
  call->forward = forward;
  size_t url_len = strlen(request->base_url) + strlen(request->target) + 1;
  call->url = malloc(url_len);
  if (call->url)
    snprintf(call->url, url_len, "%s%s", request->base_url, request->target);
  call->method = copy_or_null(request->method, &failed);
  call->credential = copy_or_null(request->credential, &failed);
  call->content_type_in = copy_or_null(request->content_type, &failed);
  call->accept_csv = tly_req_wants_csv(request->accept);
  if (request->body) {
    call->body_in = malloc(request->body_len + 1);
    if (call->body_in) {
      memcpy(call->body_in, request->body, request->body_len);
      call->body_in[request->body_len] = '\0';
      call->body_in_len = request->body_len;
    } else {
      failed = 1;
    }
  }
  call->timeout_ms =
      request->timeout_ms > 0 ? request->timeout_ms : forward->conf.timeout_ms;
  call->done = done;
  call->opaque = opaque;
  if (failed || !call->url || !call->method) {
    tly_forward_call_free(call);
    return -1;
  }
  pthread_attr_t attr;
  pthread_t thread;
  int rc = -1;
  *out = call; /* before the thread may finish with it */
  pthread_mutex_lock(&forward->lock);
  if (!forward->closing && forward->in_flight < forward->conf.max_in_flight &&
      pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    forward->in_flight++;
    rc = pthread_create(&thread, &attr, call_main, call) == 0 ? 0 : -1;
    if (rc)
      forward->in_flight--;
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&forward->lock);
  if (rc) {
    *out = NULL;
    tly_forward_call_free(call);
    return -1;
  }
  return 0;
}

void tly_forward_result(const tly_forward_call_t *call,
                        tly_forward_result_t *out) {
  out->status = call->status;
  out->content_type = call->content_type;
  out->body = call->body;
  out->body_len = call->body_len;
  out->error = call->error;
}

void tly_forward_call_free(tly_forward_call_t *call) {
  if (!call)
    return;
  free(call->url);
  free(call->method);
  free(call->credential);
  free(call->content_type_in);
  free(call->body_in);
  free(call->body);
  free(call);
}

unsigned tly_forward_in_flight(tly_forward_t *forward) {
  pthread_mutex_lock(&forward->lock);
  unsigned in_flight = forward->in_flight;
  pthread_mutex_unlock(&forward->lock);
  return in_flight;
}

void tly_forward_close(tly_forward_t *forward) {
  if (!forward)
    return;
  pthread_mutex_lock(&forward->lock);
  forward->closing = 1;
  while (forward->in_flight)
    pthread_cond_wait(&forward->idle, &forward->lock);
  pthread_mutex_unlock(&forward->lock);
}

void tly_forward_destroy(tly_forward_t *forward) {
  if (!forward)
    return;
  tly_forward_close(forward);
  pthread_cond_destroy(&forward->idle);
  pthread_mutex_destroy(&forward->lock);
  free(forward);
}
