/*
 * tly_http_stream.c - live usage: GET /v1/subjects/{subject}/stream, a
 * Server-Sent Events stream (bearer auth, as every /v1 route) of the
 * subject's usage and alerts:
 *
 *   event: usage   the /usage answer, sent on connect and after each commit
 *                  that changed it
 *   event: alert   each alert of the subject (the /alerts shape), as the
 *                  commit that wrote it becomes visible
 *   : keepalive    a comment every 2 s (how a client that went away is
 *                  noticed: its slot is freed then)
 *
 * Each event's id is "<newest alert time sent, ms>.<sequence>". A client
 * reconnecting with Last-Event-ID gets the current usage (a snapshot holds
 * every change before it) and every alert of the subject at or after that
 * time, so nothing is missed (an alert at exactly that millisecond may come
 * twice: alert_id dedupes).
 *
 * One notifier thread watches the processor's commit count every
 * STREAM_POLL_MS and, when it moved, reads each subscriber's subject
 * through the read cache and queues what changed; the connection, suspended
 * while it has nothing to send, is resumed. At most
 * http.max_streams (STREAM_MAX) subscribers per instance: one more is 503
 * too_many_streams; streams relayed from the owner count too. The stream
 * is served by the owner of the subject's partition: another instance
 * relays it (tly_http_stream_relay.c, routed by tly_http.c as any
 * per-subject read), and a stream whose partition moves away ends (the
 * client reconnects, with Last-Event-ID, to any instance).
 */
#include "tly_http_internal.h"

#include "tly_alert.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_sha256.h"
#include "tly_state.h"
#include "tly_state_cache.h"

#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STREAM_MAX 64
#define STREAM_POLL_MS 5
/* A comment this often: a suspended connection is not polled, so a client
 * that went away is noticed (and its slot freed) only when written to. */
#define STREAM_KEEPALIVE_MS 2000
/* Queued bytes a subscriber that does not read may hold: past it the
 * stream ends (the client reconnects with Last-Event-ID). */
#define STREAM_BUFFER_MAX (1024 * 1024)

typedef struct stream stream_t;
struct stream {
  tly_http_streams_t *owner;
  struct MHD_Connection *connection;
  tly_req_subject_t subject;
  char *buf; /* queued SSE text */
  size_t len, off, cap;
  int suspended; /* in the reader, with nothing to send */
  int ended;     /* no more events: end the answer */
  int gone;      /* the response was freed (never touch connection) */
  unsigned char usage_digest[TLY_SHA256_LEN]; /* of the last usage sent */
  int usage_sent;
  int64_t alert_ms;       /* newest alert time sent (-1: none) */
  int64_t alerts_from_ms; /* send alerts at or after this */
  uint64_t seq;
  int64_t keepalive_at;
  stream_t *next;
};

struct tly_http_streams {
  tly_http_t *http;
  pthread_mutex_t lock; /* the list and every stream's fields */
  stream_t *list;
  size_t count;
  size_t relayed;             /* streams relayed from their owner, open */
  pthread_cond_t relays_idle; /* relayed went to 0 */
  atomic_int relay_stop;
  pthread_t thread;
  int started;
  atomic_int stop;
  uint64_t seen_commits;
  atomic_uint_least64_t opened, refused, sent, relays_opened;
};

static int64_t now_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t commits(tly_http_t *http) {
  return tly_processor_epoch(http->conf.processor);
}

/* Appends text to the stream's queue (the lock held); 0, or -1 past the
 * bound (the stream then ends). */
static int queue_text(stream_t *s, const char *text, size_t len) {
  if (s->len - s->off + len > STREAM_BUFFER_MAX)
    return -1;
  if (s->off && s->off == s->len)
    s->off = s->len = 0;
  if (s->len + len > s->cap) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < s->len + len)
      cap *= 2;
    char *grown = realloc(s->buf, cap);
    if (!grown)
      return -1;
    s->buf = grown;
    s->cap = cap;
  }
  memcpy(s->buf + s->len, text, len);
  s->len += len;
  return 0;
}

static int queue_event(stream_t *s, const char *type, json_t *data) {
  char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
  if (!text)
    return -1;
  char head[128];
  int n = snprintf(head, sizeof(head),
                   "id: %" PRId64 ".%" PRIu64 "\nevent: %s\ndata: ",
                   s->alert_ms < 0 ? 0 : s->alert_ms, ++s->seq, type);
  int rc = queue_text(s, head, (size_t)n) ||
           queue_text(s, text, strlen(text)) || queue_text(s, "\n\n", 2);
  free(text);
  return rc ? -1 : 0;
}

/* ---- alerts ----------------------------------------------------------- */

/* ---- one subscriber's update ----------------------------------------- */

/* What changed for s since its last update, queued (lock not held: reads
 * state). 0, or -1: the stream ends (moved away, store error, too slow). */
static int update(tly_http_streams_t *streams, stream_t *s,
                  const tly_req_subject_t *subject, int64_t alerts_from,
                  json_t **usage_out, json_t **alerts_out) {
  tly_http_t *http = streams->http;
  tly_subject_state_t state = {0};
  response_t out = {0};
  char errstr[256];
  (void)s;
  *usage_out = NULL;
  *alerts_out = NULL;
  /* No request (a stale copy is never read here): the served state. */
  static const request_t no_request = {.route = -1, .partition = -1};
  int found = tly_http_find_subject(http, &no_request, subject, &state, &out);
  free(out.body);
  if (found < 0)
    return -1;
  if (found > 0) {
    *usage_out =
        tly_req_usage_json(http->conf.config, subject, &state, tly_wall_ms());
    tly_http_alert_scan_t scan = {http, alerts_from, json_array(), 0};
    if (!scan.list ||
        (tly_state_history(http->conf.store, state.partition, subject->kind,
                           subject->id, TLY_HISTORY_ALERT, INT64_MIN,
                           tly_http_visit_alert, &scan, errstr,
                           sizeof(errstr)) ||
         scan.failed)) {
      json_decref(scan.list);
      json_decref(*usage_out);
      *usage_out = NULL;
      tly_state_subject_clear(&state);
      return -1;
    }
    *alerts_out = scan.list;
  }
  tly_state_subject_clear(&state);
  return 0;
}

/* Queues the usage (when it differs from the last sent) and the alerts
 * newer than those sent (send 0: only notes the newest alert's time, for
 * a new stream); the lock held. 0 or -1. */
static int queue_update(stream_t *s, json_t *usage, json_t *alerts, int send) {
  if (usage) {
    char *text = json_dumps(usage, JSON_COMPACT);
    unsigned char digest[TLY_SHA256_LEN];
    if (!text)
      return -1;
    tly_sha256(text, strlen(text), digest);
    free(text);
    if (!s->usage_sent || memcmp(digest, s->usage_digest, sizeof(digest))) {
      memcpy(s->usage_digest, digest, sizeof(digest));
      s->usage_sent = 1;
      if (queue_event(s, "usage", usage))
        return -1;
    }
  }
  for (size_t i = 0; i < json_array_size(alerts); i++) {
    json_t *alert = json_array_get(alerts, i);
    int64_t at = json_integer_value(json_object_get(alert, "occurred_at_ms"));
    if (at < s->alerts_from_ms)
      continue;
    if (at > s->alert_ms)
      s->alert_ms = at;
    if (send && queue_event(s, "alert", alert))
      return -1;
  }
  /* From now on: alerts newer than the newest sent (those at the same
   * millisecond were all in this scan). */
  s->alerts_from_ms = s->alert_ms < 0 ? INT64_MIN : s->alert_ms + 1;
  return 0;
}

static void wake(stream_t *s) {
  if (s->suspended && !s->gone) {
    s->suspended = 0;
    MHD_resume_connection(s->connection);
  }
}

/* One pass over the subscribers; force: even when no commit happened. */
static void notify_all(tly_http_streams_t *streams, int force) {
  uint64_t now_commits = commits(streams->http);
  int changed = now_commits != streams->seen_commits;
  streams->seen_commits = now_commits;
  int64_t now = now_mono_ms();
  pthread_mutex_lock(&streams->lock);
  for (stream_t *s = streams->list; s; s = s->next) {
    if (s->ended || s->gone)
      continue;
    if (changed || force) {
      tly_req_subject_t subject = s->subject;
      int64_t from = s->alerts_from_ms;
      json_t *usage, *alerts;
      /* Reads state without the lock: the stream stays in the list (only
       * this thread removes gone ones). */
      pthread_mutex_unlock(&streams->lock);
      int rc = update(streams, s, &subject, from, &usage, &alerts);
      pthread_mutex_lock(&streams->lock);
      if (rc || queue_update(s, usage, alerts, 1))
        s->ended = 1;
      json_decref(usage);
      json_decref(alerts);
    }
    if (now >= s->keepalive_at) {
      s->keepalive_at = now + STREAM_KEEPALIVE_MS;
      if (queue_text(s, ": keepalive\n\n", 13))
        s->ended = 1;
    }
    if (s->len > s->off || s->ended)
      wake(s);
  }
  /* Free the streams whose answers are gone. */
  for (stream_t **p = &streams->list; *p;) {
    stream_t *s = *p;
    if (s->gone) {
      *p = s->next;
      streams->count--;
      free(s->buf);
      free(s);
    } else {
      p = &s->next;
    }
  }
  pthread_mutex_unlock(&streams->lock);
}

static void *notifier_main(void *arg) {
  tly_http_streams_t *streams = arg;
  while (!atomic_load(&streams->stop)) {
    notify_all(streams, 0);
    struct timespec pause = {0, STREAM_POLL_MS * 1000000L};
    nanosleep(&pause, NULL);
  }
  return NULL;
}

/* ---- libmicrohttpd's side ---------------------------------------------- */

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  stream_t *s = cls;
  tly_http_streams_t *streams = s->owner;
  (void)pos;
  pthread_mutex_lock(&streams->lock);
  ssize_t n = 0;
  if (s->len > s->off) {
    size_t take = s->len - s->off < max ? s->len - s->off : max;
    memcpy(buf, s->buf + s->off, take);
    s->off += take;
    n = (ssize_t)take;
    atomic_fetch_add(&streams->sent, take);
  } else if (s->ended) {
    n = MHD_CONTENT_READER_END_OF_STREAM;
  } else {
    /* Nothing to send: wait, suspended, for the notifier. */
    s->suspended = 1;
    MHD_suspend_connection(s->connection);
  }
  pthread_mutex_unlock(&streams->lock);
  return n;
}

static void stream_free(void *cls) {
  stream_t *s = cls;
  pthread_mutex_lock(&s->owner->lock);
  s->gone = 1; /* the notifier frees it */
  pthread_mutex_unlock(&s->owner->lock);
}

tly_http_streams_t *tly_http_streams_new(tly_http_t *http) {
  tly_http_streams_t *streams = calloc(1, sizeof(*streams));
  if (!streams)
    return NULL;
  streams->http = http;
  pthread_mutex_init(&streams->lock, NULL);
  pthread_cond_init(&streams->relays_idle, NULL);
  return streams;
}

int tly_http_streams_relay_begin(tly_http_streams_t *streams) {
  pthread_mutex_lock(&streams->lock);
  int full = streams->count + streams->relayed >= STREAM_MAX ||
             atomic_load(&streams->relay_stop);
  if (!full)
    streams->relayed++;
  pthread_mutex_unlock(&streams->lock);
  atomic_fetch_add(full ? &streams->refused : &streams->relays_opened, 1);
  return full ? -1 : 0;
}

void tly_http_streams_relay_end(tly_http_streams_t *streams) {
  pthread_mutex_lock(&streams->lock);
  if (streams->relayed && --streams->relayed == 0)
    pthread_cond_broadcast(&streams->relays_idle);
  pthread_mutex_unlock(&streams->lock);
}

int tly_http_streams_relay_stopping(tly_http_streams_t *streams) {
  return atomic_load(&streams->relay_stop);
}

void tly_http_streams_close(tly_http_streams_t *streams) {
  if (!streams)
    return;
  atomic_store(&streams->relay_stop, 1);
  pthread_mutex_lock(&streams->lock);
  for (stream_t *s = streams->list; s; s = s->next) {
    s->ended = 1;
    wake(s);
  }
  /* Each relay's transfer aborts within about a second (libcurl's
   * progress callback) and resumes its connection. */
  while (streams->relayed)
    pthread_cond_wait(&streams->relays_idle, &streams->lock);
  pthread_mutex_unlock(&streams->lock);
}

void tly_http_streams_free(tly_http_streams_t *streams) {
  if (!streams)
    return;
  atomic_store(&streams->stop, 1);
  if (streams->started)
    pthread_join(streams->thread, NULL);
  while (streams->list) {
    stream_t *s = streams->list;
    streams->list = s->next;
    free(s->buf);
    free(s);
  }
  pthread_cond_destroy(&streams->relays_idle);
  pthread_mutex_destroy(&streams->lock);
  free(streams);
}

size_t tly_http_streams_metrics(tly_http_streams_t *streams, char *out,
                                size_t size) {
  size_t open = 0;
  pthread_mutex_lock(&streams->lock);
  for (stream_t *s = streams->list; s; s = s->next)
    open += !s->gone;
  open += streams->relayed;
  pthread_mutex_unlock(&streams->lock);
  return (size_t)snprintf(
      out, size,
      "# HELP tally_http_streams_open Live usage streams (SSE) open, those "
      "relayed from their owner included.\n"
      "# TYPE tally_http_streams_open gauge\ntally_http_streams_open %zu\n"
      "# HELP tally_http_streams_total Live usage streams by result "
      "(opened: served here; relayed: relayed from the owner; refused: at "
      "the %d-stream bound).\n"
      "# TYPE tally_http_streams_total counter\n"
      "tally_http_streams_total{result=\"opened\"} %llu\n"
      "tally_http_streams_total{result=\"relayed\"} %llu\n"
      "tally_http_streams_total{result=\"refused\"} %llu\n",
      open, STREAM_MAX, (unsigned long long)atomic_load(&streams->opened),
      (unsigned long long)atomic_load(&streams->relays_opened),
      (unsigned long long)atomic_load(&streams->refused));
}

/* The newest alert time a Last-Event-ID names ("<ms>.<seq>"), or -1. */
static int64_t last_event_alert_ms(const char *id) {
  if (!id || *id < '0' || *id > '9')
    return -1;
  char *end;
  long long ms = strtoll(id, &end, 10);
  return (*end == '.' || !*end) && ms >= 0 ? (int64_t)ms : -1;
}

void tly_http_handle_stream(tly_http_t *http, request_t *req,
                            struct MHD_Connection *connection,
                            response_t *out) {
  tly_http_streams_t *streams = http->streams;
  tly_req_subject_t subject;
  tly_req_error_t err;
  if (tly_req_parse_subject(req->subject, &subject, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  /* The owner answers (tly_http.c relays it here from other instances). */
  int32_t home = tly_state_home_partition(
      tly_processor_partition_count(http->conf.processor), subject.kind,
      subject.id);
  if (home < 0 || tly_processor_partition_role(http->conf.processor, home) !=
                      TLY_PARTITION_SERVING) {
    tly_members_owner_t owner = {0};
    if (http->conf.members && home >= 0)
      tly_members_owner(http->conf.members, home, &owner);
    tly_http_respond_moving(
        out, home, owner.state == TLY_OWNER_SERVING ? owner.http : NULL,
        "streams are served by the owner of the subject's "
        "partition: connect there");
    return;
  }
  stream_t *s = calloc(1, sizeof(*s));
  if (!s) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  s->owner = streams;
  s->connection = connection;
  s->subject = subject;
  int64_t last = last_event_alert_ms(MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, "Last-Event-ID"));
  s->alert_ms = last;
  /* Resumed: every alert at or after the last one sent; new: live ones
   * only (GET .../notifications has the history). */
  s->alerts_from_ms = last >= 0 ? last : INT64_MIN;
  s->keepalive_at = now_mono_ms() + STREAM_KEEPALIVE_MS;
  pthread_mutex_lock(&streams->lock);
  int full = streams->count + streams->relayed >= STREAM_MAX;
  if (!full && !streams->started) {
    streams->seen_commits = commits(http);
    streams->started =
        pthread_create(&streams->thread, NULL, notifier_main, streams) == 0;
  }
  if (full || !streams->started) {
    pthread_mutex_unlock(&streams->lock);
    free(s);
    atomic_fetch_add(&streams->refused, 1);
    tly_http_respond_error(out, 503, "too_many_streams",
                           full ? "this instance serves its maximum of live "
                                  "streams; retry later"
                                : "cannot start the stream notifier");
    out->retry_after_s = 5;
    return;
  }
  /* The first update (usage, and a resumed stream's alerts) before the
   * answer starts. */
  json_t *usage = NULL, *alerts = NULL;
  pthread_mutex_unlock(&streams->lock);
  int rc = update(streams, s, &subject, s->alerts_from_ms, &usage, &alerts);
  if (rc == 0 && queue_update(s, usage, alerts, last >= 0))
    rc = -1;
  json_decref(usage);
  json_decref(alerts);
  if (rc) {
    free(s->buf);
    free(s);
    tly_http_respond_moving(out, home, NULL,
                            "the subject's partition moved; reconnect");
    return;
  }
  struct MHD_Response *response = MHD_create_response_from_callback(
      MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
  if (!response) {
    free(s->buf);
    free(s);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  pthread_mutex_lock(&streams->lock);
  s->next = streams->list;
  streams->list = s;
  streams->count++;
  pthread_mutex_unlock(&streams->lock);
  atomic_fetch_add(&streams->opened, 1);
  out->status = 200;
  out->stream = response;
  out->content_type = "text/event-stream; charset=utf-8";
}
