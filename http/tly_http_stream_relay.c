/*
 * tly_http_stream_relay.c - live usage routed to the owner: an instance
 * that does not serve the subject's partition opens the stream on the
 * owner (GET /v1/subjects/{s}/stream, with the signed forwarding
 * credential of tly_forward.h, never the client's token, and the client's
 * Last-Event-ID) and relays its bytes to the client as they come.
 *
 * One thread per relayed stream (libcurl, blocking), counted against the
 * instance's stream bound (tly_http_streams_relay_begin): one more is 503
 * too_many_streams. The client's connection is suspended until the owner's
 * answer starts: a 200 becomes this answer's stream; anything else (or no
 * answer) is relayed as the owner's status and body, or 503
 * partition_moving as for a forwarded read. Then:
 *   - the owner ends the stream (its partition moved, it stopped, it died:
 *     no byte for RELAY_LOW_SPEED_S although it writes a keepalive every
 *     2 s): the client's stream ends, and the client reconnects with
 *     Last-Event-ID (to any instance: each routes it to the new owner);
 *   - the client goes away (noticed when a keepalive is written to it):
 *     the transfer is aborted at once;
 *   - a client that does not read is cut once RELAY_BUFFER_MAX is queued.
 * Shutdown (tly_http_streams_close) aborts every transfer and waits for
 * the threads.
 *
 * Never reads state; never sends the client's Authorization.
 */
#include "tly_http_internal.h"

#include "tly_cluster_auth.h"
#include "tly_forward.h"

#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_BUFFER_MAX (1024 * 1024)
#define RELAY_ERROR_BODY_MAX (64 * 1024)
#define RELAY_CONNECT_TIMEOUT_MS 1000L
#define RELAY_LOW_SPEED_S 10L
#define RELAY_LAST_EVENT_ID_MAX 64

struct tly_stream_relay {
  tly_http_streams_t *streams;
  struct MHD_Connection *connection;
  pthread_mutex_t lock;
  int refs;      /* the request (then its answer) and the thread */
  int waiting;   /* the connection is suspended for the owner's answer */
  int streaming; /* the owner answered 200: its bytes are relayed */
  int ended;     /* the transfer is over */
  int suspended; /* the answer's reader waits for bytes */
  int gone;      /* the client's side is over (never touch connection) */
  long status;   /* the owner's answer when not streaming (0: none) */
  char content_type[128];
  char error[CURL_ERROR_SIZE];
  char *buf; /* relayed bytes, or the owner's error body */
  size_t len, off, cap;
  char *url, *credential;
  CURL *curl; /* the relay's thread's only */
  char last_event_id[RELAY_LAST_EVENT_ID_MAX + 1];
};

static void relay_unref(tly_stream_relay_t *r) {
  pthread_mutex_lock(&r->lock);
  int refs = --r->refs;
  pthread_mutex_unlock(&r->lock);
  if (refs)
    return;
  pthread_mutex_destroy(&r->lock);
  free(r->buf);
  free(r->url);
  free(r->credential);
  free(r);
}

/* Resumes the client's connection if it waits (the lock held). */
static void wake(tly_stream_relay_t *r) {
  if (r->gone)
    return;
  if (r->waiting) {
    r->waiting = 0;
    MHD_resume_connection(r->connection);
  } else if (r->suspended) {
    r->suspended = 0;
    MHD_resume_connection(r->connection);
  }
}

static int append(tly_stream_relay_t *r, const char *data, size_t n,
                  size_t max) {
  if (r->off && r->off == r->len)
    r->off = r->len = 0;
  if (r->len - r->off + n > max)
    return -1;
  if (r->len + n > r->cap) {
    size_t cap = r->cap ? r->cap : 4096;
    while (cap < r->len + n)
      cap *= 2;
    char *grown = realloc(r->buf, cap);
    if (!grown)
      return -1;
    r->buf = grown;
    r->cap = cap;
  }
  memcpy(r->buf + r->len, data, n);
  r->len += n;
  return 0;
}

/* ---- the owner's side (the relay's thread) ------------------------------ */

static size_t on_header(char *line, size_t size, size_t n, void *opaque) {
  tly_stream_relay_t *r = opaque;
  size_t len = size * n;
  long status = 0;
  if (len > 2 || (len && line[0] != '\r' && line[0] != '\n'))
    return len;
  /* The end of a header block: a final 200 starts the relay (any other
   * answer is collected whole and relayed once it is in). */
  curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200)
    return len;
  char *type = NULL;
  pthread_mutex_lock(&r->lock);
  r->streaming = 1;
  if (curl_easy_getinfo(r->curl, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK &&
      type)
    snprintf(r->content_type, sizeof(r->content_type), "%s", type);
  wake(r);
  pthread_mutex_unlock(&r->lock);
  return len;
}

static size_t on_body(char *data, size_t size, size_t n, void *opaque) {
  tly_stream_relay_t *r = opaque;
  size_t len = size * n;
  pthread_mutex_lock(&r->lock);
  int ok = !r->gone &&
           append(r, data, len,
                  r->streaming ? RELAY_BUFFER_MAX : RELAY_ERROR_BODY_MAX) == 0;
  if (ok && r->streaming)
    wake(r);
  pthread_mutex_unlock(&r->lock);
  return ok ? len : 0; /* 0 aborts the transfer */
}

static int on_progress(void *opaque, curl_off_t a, curl_off_t b, curl_off_t c,
                       curl_off_t d) {
  tly_stream_relay_t *r = opaque;
  (void)a, (void)b, (void)c, (void)d;
  pthread_mutex_lock(&r->lock);
  int stop = r->gone;
  pthread_mutex_unlock(&r->lock);
  return stop || tly_http_streams_relay_stopping(r->streams);
}

static void *relay_main(void *arg) {
  tly_stream_relay_t *r = arg;
  char errbuf[CURL_ERROR_SIZE] = "", header[1024];
  struct curl_slist *headers = NULL;
  CURL *curl = r->curl = curl_easy_init();
  CURLcode rc = CURLE_FAILED_INIT;
  if (curl) {
    headers = curl_slist_append(headers, TLY_FORWARDED_HEADER ": 1");
    if ((size_t)snprintf(header, sizeof(header), TLY_FORWARD_AUTH_HEADER ": %s",
                         r->credential) < sizeof(header))
      headers = curl_slist_append(headers, header);
    headers = curl_slist_append(headers, "Accept: text/event-stream");
    if (r->last_event_id[0]) {
      snprintf(header, sizeof(header), "Last-Event-ID: %s", r->last_event_id);
      headers = curl_slist_append(headers, header);
    }
    curl_easy_setopt(curl, CURLOPT_URL, r->url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, RELAY_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, RELAY_LOW_SPEED_S);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, r);
    rc = curl_easy_perform(curl);
  }
  pthread_mutex_lock(&r->lock);
  r->ended = 1;
  if (!r->streaming) {
    long status = 0;
    char *type = NULL;
    if (rc == CURLE_OK) {
      curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
      if (curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK &&
          type)
        snprintf(r->content_type, sizeof(r->content_type), "%s", type);
    } else {
      snprintf(r->error, sizeof(r->error), "%s",
               errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    r->status = status;
  }
  wake(r);
  pthread_mutex_unlock(&r->lock);
  curl_slist_free_all(headers);
  if (curl)
    curl_easy_cleanup(curl);
  tly_http_streams_relay_end(r->streams);
  relay_unref(r);
  return NULL;
}

/* ---- the client's side ----------------------------------------------------
 */

static ssize_t relay_read(void *cls, uint64_t pos, char *buf, size_t max) {
  tly_stream_relay_t *r = cls;
  (void)pos;
  ssize_t n = 0;
  pthread_mutex_lock(&r->lock);
  if (r->len > r->off) {
    size_t take = r->len - r->off < max ? r->len - r->off : max;
    memcpy(buf, r->buf + r->off, take);
    r->off += take;
    n = (ssize_t)take;
  } else if (r->ended) {
    n = MHD_CONTENT_READER_END_OF_STREAM;
  } else {
    r->suspended = 1; /* resumed by the relay's thread */
    MHD_suspend_connection(r->connection);
  }
  pthread_mutex_unlock(&r->lock);
  return n;
}

static void relay_free(void *cls) {
  tly_stream_relay_t *r = cls;
  pthread_mutex_lock(&r->lock);
  r->gone = 1; /* the thread aborts the transfer */
  pthread_mutex_unlock(&r->lock);
  relay_unref(r);
}

int tly_http_stream_relay(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, const char *owner,
                          const char *credential, response_t *out) {
  const char *last =
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Last-Event-ID");
  tly_stream_relay_t *r = calloc(1, sizeof(*r));
  size_t url_len = strlen(owner) + strlen(req->target) + 1;
  if (r) {
    r->url = malloc(url_len);
    r->credential = strdup(credential);
  }
  if (!r || !r->url || !r->credential) {
    if (r) {
      free(r->url);
      free(r->credential);
    }
    free(r);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return 0;
  }
  snprintf(r->url, url_len, "%s%s", owner, req->target);
  /* Only an id of the form this port writes ("<ms>.<seq>") goes along. */
  if (last && strlen(last) <= RELAY_LAST_EVENT_ID_MAX &&
      strspn(last, "0123456789.") == strlen(last))
    snprintf(r->last_event_id, sizeof(r->last_event_id), "%s", last);
  r->streams = http->streams;
  r->connection = connection;
  r->refs = 2;
  r->waiting = 1;
  pthread_mutex_init(&r->lock, NULL);
  if (tly_http_streams_relay_begin(http->streams)) {
    r->refs = 1;
    relay_unref(r);
    tly_http_respond_error(out, 503, "too_many_streams",
                           "this instance serves its maximum of live streams; "
                           "retry later");
    out->retry_after_s = 5;
    return 0;
  }
  pthread_attr_t attr;
  pthread_t thread;
  MHD_suspend_connection(connection);
  int started = pthread_attr_init(&attr) == 0;
  if (started) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    started = pthread_create(&thread, &attr, relay_main, r) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!started) {
    MHD_resume_connection(connection);
    tly_http_streams_relay_end(http->streams);
    r->refs = 1;
    relay_unref(r);
    tly_http_respond_moving(out, req->partition, owner,
                            "cannot start relaying the stream; retry");
    return 0;
  }
  req->relay = r;
  req->phase = PHASE_WAIT;
  out->suspended = 1;
  return 1;
}

void tly_http_stream_relay_answer(tly_http_t *http, request_t *req,
                                  response_t *out) {
  tly_stream_relay_t *r = req->relay;
  (void)http;
  req->relay = NULL;
  pthread_mutex_lock(&r->lock);
  int streaming = r->streaming;
  long status = r->status;
  pthread_mutex_unlock(&r->lock);
  if (streaming) {
    /* The answer's reader takes the request's reference. */
    struct MHD_Response *response = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 16384, relay_read, r, relay_free);
    if (!response) {
      relay_free(r);
      tly_http_respond_error(out, 500, "internal", "out of memory");
      return;
    }
    req->served_by = req->owner;
    out->status = 200;
    out->stream = response;
    out->content_type = "text/event-stream; charset=utf-8";
    return;
  }
  /* Not a stream: the owner's answer as it is (a 503 partition_moving, a
   * 404, ...), or 503 when it did not answer. A 401 is about the
   * forwarding credential, never the client's key. */
  if (status >= 100 && status <= 599 && status != 401) {
    out->status = (int)status;
    out->body = malloc(r->len - r->off + 1);
    if (out->body) {
      memcpy(out->body, r->buf + r->off, r->len - r->off);
      out->body[r->len - r->off] = '\0';
    }
    snprintf(req->content_type, sizeof(req->content_type), "%s",
             r->content_type[0] ? r->content_type : "application/json");
    out->content_type = req->content_type;
    req->served_by = req->owner;
    if (status == 503)
      out->retry_after_s = 1;
  } else {
    char message[512];
    if (status == 401)
      snprintf(message, sizeof(message),
               "the owner refused the forwarding credential (do all "
               "instances share one cluster secret?)");
    else
      snprintf(message, sizeof(message), "the owner did not answer: %s",
               r->error);
    tly_http_respond_moving(out, req->partition, req->owner, message);
  }
  relay_free(r);
}

void tly_http_stream_relay_drop(tly_stream_relay_t *relay) {
  if (relay)
    relay_free(relay);
}
