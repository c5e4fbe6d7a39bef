/*
 * tly_http_reserve.c - reservations: POST /v1/subjects/{subject}/reservations
 * decides and holds a quantity against the subject's quota; DELETE
 * .../reservations/{id} releases it. Both are owner-only routes: tly_http.c
 * forwards them to the instance serving the subject's partition, and only
 * that instance decides (tly_holds.h says how holds are folded).
 *
 * The decision, under one lock (so concurrent reservations are decided one
 * after another):
 *   remaining = limit - used - held - granted
 * used and held from the subject's committed state (RocksDB, read after
 * the partition's committed offset, so every grant below that offset is
 * in it), granted: this instance's grants that are produced but not in that
 * state yet (tly_http_reserve_t's table). A grant leaves the table once the
 * partition's committed offset passes the offset Kafka acknowledged for it
 * (its hold, or its settlement, is then in the state read); one whose
 * produce failed (it may or may not be in the log) stays counted until its
 * expiry. Only a granted reservation is produced (a ReservationHeld keyed
 * by the subject, so on its partition), and the answer "allowed" waits for
 * Kafka's acknowledgement. From the decision to that acknowledgement the
 * partition is held (tly_processor_hold): a revocation waits for it, so the
 * partition's next owner, which serves only once it folded the log up to
 * the end it saw when assigned, always counts this grant.
 *
 * A DELETE produces a ReservationReleased for a hold open in the state or
 * in the table (404 otherwise) and answers once Kafka acknowledged it; the
 * hold stops counting once the release is folded, like any event.
 */
#include "tly_http_internal.h"

#include "tly_log.h"
#include "tly_request_reserve.h"
#include "tly_state.h"

#include <jansson.h>
#include <microhttpd.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Grants produced but not yet known folded, at most (every instance-wide
 * reservation between two commits; past it: 503, retry). */
#define GRANTS_MAX 100000

enum { GRANT_SENT = 0, GRANT_DELIVERED, GRANT_FAILED };

typedef struct {
  char subject[TLY_REQ_SUBJECT_MAX + 16]; /* "kind:id" */
  int32_t partition;
  int state;      /* GRANT_* */
  int64_t offset; /* GRANT_DELIVERED: where Kafka wrote it */
  tly_hold_t hold;
} grant_t;

struct tly_http_reserve {
  pthread_mutex_t lock;
  grant_t *grants;
  size_t count, cap;
  atomic_uint_least64_t granted, denied, refused, failed, released;
};

tly_http_reserve_t *tly_http_reserve_new(void) {
  tly_http_reserve_t *reserve = calloc(1, sizeof(*reserve));
  if (reserve)
    pthread_mutex_init(&reserve->lock, NULL);
  return reserve;
}

void tly_http_reserve_free(tly_http_reserve_t *reserve) {
  if (!reserve)
    return;
  free(reserve->grants);
  pthread_mutex_destroy(&reserve->lock);
  free(reserve);
}

/* Drops the grants of partition that its committed state holds (offset
 * below committed) and every grant past its expiry. Under the lock. */
static void prune(tly_http_reserve_t *reserve, int32_t partition,
                  int64_t committed, int64_t now_ms) {
  size_t kept = 0;
  for (size_t i = 0; i < reserve->count; i++) {
    const grant_t *grant = &reserve->grants[i];
    int folded = grant->partition == partition &&
                 grant->state == GRANT_DELIVERED && grant->offset < committed;
    if (folded || grant->hold.expires_at_ms <= now_ms)
      continue;
    if (kept != i)
      reserve->grants[kept] = reserve->grants[i];
    kept++;
  }
  reserve->count = kept;
}

/* The subject's grants in the table, into *out (malloc'd); the count, or
 * (size_t)-1 when out of memory. Under the lock. */
static size_t subject_grants(const tly_http_reserve_t *reserve,
                             const char *subject, tly_hold_t **out) {
  size_t count = 0;
  *out = NULL;
  for (size_t i = 0; i < reserve->count; i++)
    count += strcmp(reserve->grants[i].subject, subject) == 0;
  if (!count)
    return 0;
  tly_hold_t *holds = malloc(count * sizeof(*holds));
  if (!holds)
    return (size_t)-1;
  count = 0;
  for (size_t i = 0; i < reserve->count; i++)
    if (strcmp(reserve->grants[i].subject, subject) == 0)
      holds[count++] = reserve->grants[i].hold;
  *out = holds;
  return count;
}

static grant_t *find_grant(tly_http_reserve_t *reserve, const char *subject,
                           const char *id) {
  for (size_t i = 0; i < reserve->count; i++)
    if (strcmp(reserve->grants[i].hold.id, id) == 0 &&
        strcmp(reserve->grants[i].subject, subject) == 0)
      return &reserve->grants[i];
  return NULL;
}

/* "rsv_" and 26 characters of base32: 130 random bits. 0, or -1. */
static int make_id(char *out, size_t size) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
  unsigned char random[17];
  if (size < 31 || RAND_bytes(random, sizeof(random)) != 1)
    return -1;
  memcpy(out, "rsv_", 4);
  for (size_t i = 0; i < 26; i++) {
    size_t bit = i * 5;
    unsigned value = ((unsigned)random[bit / 8] << 8 |
                      (bit / 8 + 1 < sizeof(random) ? random[bit / 8 + 1] : 0));
    out[4 + i] = alphabet[(value >> (11 - bit % 8)) & 31];
  }
  out[30] = '\0';
  return 0;
}

static int partition_served(void *processor, int32_t partition) {
  return tly_processor_partition_role(processor, partition) ==
         TLY_PARTITION_SERVING;
}

/* The subject's committed state, read now from RocksDB (not the cache: the
 * read must come after the committed offset the caller took). 1, 0, or -1
 * (errstr). */
static int read_state(tly_http_t *http, const tly_req_subject_t *subject,
                      tly_subject_state_t *state, char *errstr,
                      size_t errstr_size) {
  return tly_state_find_subject(
      http->conf.store, tly_processor_partition_count(http->conf.processor),
      partition_served, http->conf.processor, subject->kind, subject->id, state,
      errstr, errstr_size);
}

/* ---- one request's call --------------------------------------------- */

typedef struct {
  tly_http_t *http;
  int release; /* a DELETE */
  tly_req_subject_t subject;
  int32_t partition;
  int partition_held; /* tly_processor_hold taken: release on the report */
  tly_hold_t hold;
  int64_t ttl_ms;
  tly_req_held_quota_t after; /* the quota with this grant counted */
  /* From the report. */
  int error;
  char errstr[256];
  int32_t reported_partition;
} call_t;

static void call_free(void *opaque) { free(opaque); }

/* The delivery report (or the failure to send): the grant's fate; the
 * partition may move again. */
static void call_reported(void *opaque, int error, const char *errstr,
                          int32_t partition, int64_t offset) {
  call_t *call = opaque;
  tly_http_reserve_t *reserve = call->http->reserve;
  call->error = error;
  call->reported_partition = partition;
  snprintf(call->errstr, sizeof(call->errstr), "%s", errstr ? errstr : "");
  pthread_mutex_lock(&reserve->lock);
  grant_t *grant = find_grant(reserve, call->subject.key, call->hold.id);
  if (!call->release && grant) {
    /* Written elsewhere than decided (the partition count changed): its
     * offset says nothing here, so it counts until it expires. */
    int here = !error && partition == grant->partition;
    grant->state = here ? GRANT_DELIVERED : GRANT_FAILED;
    grant->offset = here ? offset : -1;
  } else if (call->release && grant && !error && grant->state == GRANT_FAILED) {
    /* A grant that may or may not be in the log: the release follows it
     * there, so the state will never show it open; stop counting it. */
    *grant = reserve->grants[--reserve->count];
  }
  pthread_mutex_unlock(&reserve->lock);
  if (call->partition_held) {
    tly_processor_release(call->http->conf.processor, call->partition);
    call->partition_held = 0;
  }
  if (error)
    atomic_fetch_add(&reserve->failed, 1);
  else if (call->release)
    atomic_fetch_add(&reserve->released, 1);
  else if (partition == call->partition)
    atomic_fetch_add(&reserve->granted, 1);
}

/* A reservation's answer: its fields and the quota (after a grant: with
 * it counted). */
static json_t *reservation_json(const call_t *call, int allowed,
                                const tly_req_held_quota_t *quota) {
  json_t *answer = json_pack(
      "{s:s,s:s,s:I,s:I,s:o,s:o}", "subject", call->subject.key, "feature",
      call->hold.feature, "quantity", (json_int_t)call->hold.quantity, "ttl_s",
      (json_int_t)(call->ttl_ms / 1000), "reservation_id",
      allowed ? json_string(call->hold.id) : json_null(), "expires_at_ms",
      allowed ? json_integer(call->hold.expires_at_ms) : json_null());
  if (answer && tly_req_held_quota_put(answer, quota)) {
    json_decref(answer);
    answer = NULL;
  }
  return answer;
}

static void call_answer(void *opaque, response_t *out) {
  call_t *call = opaque;
  if (call->error) {
    char message[400];
    snprintf(message, sizeof(message),
             "Kafka did not acknowledge the %s (%s); it may still take "
             "effect%s: retry",
             call->release ? "release" : "reservation", call->errstr,
             call->release ? "" : " and count until its ttl passes");
    tly_http_respond_error(out, 503, "kafka_unavailable", message);
    return;
  }
  if (call->release) {
    tly_http_respond_json(
        out, 200,
        json_pack("{s:s,s:s,s:s,s:I,s:b}", "subject", call->subject.key,
                  "reservation_id", call->hold.id, "feature",
                  call->hold.feature, "quantity",
                  (json_int_t)call->hold.quantity, "released", 1));
    return;
  }
  if (call->reported_partition != call->partition) {
    tly_http_respond_moving(out, call->partition, NULL,
                            "the reservation was written to another "
                            "partition than its subject's (did the partition "
                            "count change?): not granted, retry");
    return;
  }
  tly_http_respond_json(out, 200, reservation_json(call, 1, &call->after));
}

/* ---- POST /v1/subjects/{subject}/reservations -------------------------- */

/* What the decision under the lock came to. */
typedef enum { DECIDED_GRANT, DECIDED_DENY, DECIDED_ANSWERED } decided_t;

/* Decides call's reservation (body) at now_ms; for a grant, adds it to the
 * table and fills call->hold and call->after. DECIDED_ANSWERED: out holds
 * an error. Takes the lock. */
static decided_t decide(tly_http_t *http, call_t *call,
                        const tly_req_reservation_t *body, int64_t now_ms,
                        tly_req_held_quota_t *decision, response_t *out) {
  tly_http_reserve_t *reserve = http->reserve;
  tly_subject_state_t state = {0};
  tly_hold_t *grants = NULL;
  tly_req_error_t err;
  char errstr[512];
  decided_t decided = DECIDED_ANSWERED;
  pthread_mutex_lock(&reserve->lock);
  /* The committed offset first, then the state: every grant below the
   * offset is in the state read after it. */
  prune(reserve, call->partition,
        tly_processor_committed(http->conf.processor, call->partition), now_ms);
  int found = read_state(http, &call->subject, &state, errstr, sizeof(errstr));
  size_t grant_count =
      found < 0 ? 0 : subject_grants(reserve, call->subject.key, &grants);
  if (found < 0 || grant_count == (size_t)-1) {
    tly_http_respond_error(out, 500, found < 0 ? "store_error" : "internal",
                           found < 0 ? errstr : "out of memory");
    goto done;
  }
  if (tly_req_quota_held(
          http->conf.config, call->subject.kind, found ? &state : NULL, grants,
          grant_count, body->feature, body->quantity, now_ms, decision, &err)) {
    tly_http_respond_req_error(out, &err);
    goto done;
  }
  if (decision->open >= TLY_HOLDS_MAX) {
    char message[160];
    snprintf(message, sizeof(message),
             "the subject has %zu open reservations, at most %d: settle or "
             "release some first",
             decision->open, TLY_HOLDS_MAX);
    tly_http_respond_error(out, 409, "too_many_reservations", message);
    atomic_fetch_add(&reserve->refused, 1);
    goto done;
  }
  if (!decision->quota.allowed) {
    decided = DECIDED_DENY;
    atomic_fetch_add(&reserve->denied, 1);
    goto done;
  }
  if (reserve->count >= GRANTS_MAX) {
    tly_http_respond_error(out, 503, "reservations_busy",
                           "too many reservations are waiting to be folded; "
                           "retry");
    goto done;
  }
  if (reserve->count == reserve->cap) {
    size_t cap = reserve->cap ? reserve->cap * 2 : 64;
    grant_t *grown = realloc(reserve->grants, cap * sizeof(*grown));
    if (!grown) {
      tly_http_respond_error(out, 500, "internal", "out of memory");
      goto done;
    }
    reserve->grants = grown;
    reserve->cap = cap;
  }
  if (make_id(call->hold.id, sizeof(call->hold.id))) {
    tly_http_respond_error(out, 500, "internal",
                           "no randomness for a reservation id");
    goto done;
  }
  snprintf(call->hold.feature, sizeof(call->hold.feature), "%s", body->feature);
  call->hold.quantity = body->quantity;
  call->hold.expires_at_ms = now_ms + body->ttl_ms;
  grant_t *grant = &reserve->grants[reserve->count++];
  *grant = (grant_t){.partition = call->partition,
                     .state = GRANT_SENT,
                     .offset = -1,
                     .hold = call->hold};
  snprintf(grant->subject, sizeof(grant->subject), "%s", call->subject.key);
  /* The answer shows the quota with this grant held. */
  tly_hold_t *with = realloc(grants, (grant_count + 1) * sizeof(*with));
  if (with) {
    grants = with;
    grants[grant_count++] = call->hold;
    tly_req_quota_held(http->conf.config, call->subject.kind,
                       found ? &state : NULL, grants, grant_count,
                       body->feature, 0, now_ms, &call->after, &err);
  } else {
    call->after = *decision;
  }
  call->after.quota.allowed = 1;
  call->after.quota.reason = decision->quota.reason;
  decided = DECIDED_GRANT;
done:
  pthread_mutex_unlock(&reserve->lock);
  free(grants);
  tly_state_subject_clear(&state);
  return decided;
}

/* The event that makes a hold (or releases one), its strings malloc'd. */
static int hold_event(const call_t *call, int64_t now_ms, tly_event_t *event) {
  char event_id[TLY_RESERVATION_ID_MAX + 16];
  memset(event, 0, sizeof(*event));
  snprintf(event_id, sizeof(event_id), "%s%s", call->release ? "release:" : "",
           call->hold.id);
  event->event_id = strdup(event_id);
  event->occurred_at_ms = now_ms;
  event->subject_kind = call->subject.kind;
  event->subject_id = strdup(call->subject.id);
  if (call->release) {
    event->body_kind = TLY_BODY_RESERVATION_RELEASED;
    event->body.reservation_released.reservation_id = strdup(call->hold.id);
    return event->event_id && event->subject_id &&
                   event->body.reservation_released.reservation_id
               ? 0
               : -1;
  }
  event->body_kind = TLY_BODY_RESERVATION_HELD;
  tly_reservation_held_t *held = &event->body.reservation_held;
  held->reservation_id = strdup(call->hold.id);
  held->feature = strdup(call->hold.feature);
  held->quantity = call->hold.quantity;
  held->ttl_ms = call->ttl_ms;
  return event->event_id && event->subject_id && held->reservation_id &&
                 held->feature
             ? 0
             : -1;
}

/* The call for a request on subject: its partition, and (for a
 * reservation) that partition held until the report. NULL when out holds
 * the answer. */
static call_t *call_new(tly_http_t *http, request_t *req, int release,
                        response_t *out) {
  tly_req_error_t err;
  call_t *call = calloc(1, sizeof(*call));
  if (!call) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return NULL;
  }
  call->http = http;
  call->release = release;
  if (tly_req_parse_subject(req->subject, &call->subject, &err)) {
    tly_http_respond_req_error(out, &err);
    free(call);
    return NULL;
  }
  call->partition = tly_state_home_partition(
      tly_processor_partition_count(http->conf.processor), call->subject.kind,
      call->subject.id);
  /* A grant holds the partition until Kafka acknowledged it: this
   * instance stays its owner meanwhile (a revocation waits). */
  uint64_t generation = 0;
  if (!release &&
      tly_processor_hold(http->conf.processor, call->partition, &generation))
    call->partition_held = 1;
  if ((!release && !call->partition_held) ||
      !partition_served(http->conf.processor, call->partition)) {
    if (call->partition_held)
      tly_processor_release(http->conf.processor, call->partition);
    tly_http_respond_moving(
        out, call->partition, NULL,
        "this instance does not serve the subject's partition now");
    free(call);
    return NULL;
  }
  return call;
}

static void call_abandon(call_t *call) {
  if (call->partition_held)
    tly_processor_release(call->http->conf.processor, call->partition);
  free(call);
}

void tly_http_handle_reserve(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  tly_req_reservation_t body;
  tly_req_error_t err;
  tly_req_subject_t subject;
  /* Input first: a bad request is a 400 wherever the partition is. */
  if (tly_req_parse_subject(req->subject, &subject, &err) ||
      tly_req_parse_reservation(http->conf.config, req->body, req->body_len,
                                &body, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (!tly_http_ingest_available(http, out))
    return;
  call_t *call = call_new(http, req, 0, out);
  if (!call)
    return;
  call->ttl_ms = body.ttl_ms;
  int64_t now_ms = tly_wall_ms();
  tly_req_held_quota_t decision;
  switch (decide(http, call, &body, now_ms, &decision, out)) {
  case DECIDED_ANSWERED:
    call_abandon(call);
    return;
  case DECIDED_DENY:
    snprintf(call->hold.feature, sizeof(call->hold.feature), "%s",
             body.feature);
    call->hold.quantity = body.quantity;
    tly_http_respond_json(out, 200, reservation_json(call, 0, &decision));
    call_abandon(call);
    return;
  case DECIDED_GRANT:
    break;
  }
  tly_event_t event;
  if (hold_event(call, now_ms, &event)) {
    tly_event_clear(&event);
    call_reported(call, -1, "out of memory", -1, -1);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    free(call);
    return;
  }
  tly_http_produce_hooks_t hooks = {call_reported, call_answer, call_free,
                                    call};
  tly_http_produce_one(http, req, connection, &event, &hooks, out);
}

/* ---- DELETE /v1/subjects/{subject}/reservations/{reservation_id} ------- */

/* The {reservation_id} segment: the request target's last one. */
static int target_id(const request_t *req, char *out, size_t size,
                     tly_req_error_t *err) {
  const char *target = req->target ? req->target : "";
  size_t len = strcspn(target, "?#");
  size_t start = len;
  while (start > 0 && target[start - 1] != '/')
    start--;
  return tly_req_parse_reservation_id(target + start, len - start, out, size,
                                      err);
}

void tly_http_handle_release(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  tly_req_error_t err;
  tly_req_subject_t subject;
  char id[TLY_RESERVATION_ID_MAX + 1], errstr[512];
  if (tly_req_parse_subject(req->subject, &subject, &err) ||
      target_id(req, id, sizeof(id), &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (!tly_http_ingest_available(http, out))
    return;
  call_t *call = call_new(http, req, 1, out);
  if (!call)
    return;
  snprintf(call->hold.id, sizeof(call->hold.id), "%s", id);
  /* Open in the committed state, or granted here and not folded yet. */
  int64_t now_ms = tly_wall_ms();
  tly_subject_state_t state = {0};
  tly_http_reserve_t *reserve = http->reserve;
  pthread_mutex_lock(&reserve->lock);
  prune(reserve, call->partition,
        tly_processor_committed(http->conf.processor, call->partition), now_ms);
  int found = read_state(http, &call->subject, &state, errstr, sizeof(errstr));
  const tly_hold_t *open = NULL;
  int index =
      found > 0 ? tly_holds_find(state.holds, state.hold_count, id) : -1;
  if (index >= 0 && state.holds[index].expires_at_ms > now_ms)
    open = &state.holds[index];
  const grant_t *grant = find_grant(reserve, call->subject.key, id);
  if (!open && grant && grant->hold.expires_at_ms > now_ms)
    open = &grant->hold;
  if (open)
    call->hold = *open;
  pthread_mutex_unlock(&reserve->lock);
  tly_state_subject_clear(&state);
  if (found < 0 || !open) {
    char message[TLY_REQ_SUBJECT_MAX + 160];
    snprintf(message, sizeof(message),
             "subject %s has no open reservation '%s' (settled, released, "
             "expired or never made)",
             call->subject.key, id);
    if (found < 0)
      tly_http_respond_error(out, 500, "store_error", errstr);
    else
      tly_http_respond_json(
          out, 404,
          json_pack("{s:o}", "error",
                    tly_http_error_json("reservation_not_found", message,
                                        "reservation_id")));
    free(call);
    return;
  }
  tly_event_t event;
  if (hold_event(call, now_ms, &event)) {
    tly_event_clear(&event);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    free(call);
    return;
  }
  tly_http_produce_hooks_t hooks = {call_reported, call_answer, call_free,
                                    call};
  tly_http_produce_one(http, req, connection, &event, &hooks, out);
}

/* ---- metrics ----------------------------------------------------------- */

size_t tly_http_reserve_metrics(tly_http_t *http, char *out, size_t size) {
  tly_http_reserve_t *reserve = http->reserve;
  pthread_mutex_lock(&reserve->lock);
  size_t pending = reserve->count;
  pthread_mutex_unlock(&reserve->lock);
  int n = snprintf(
      out, size,
      "# HELP tally_reservations_total Reservations decided here (the "
      "owner of the subject's partition), by result.\n"
      "# TYPE tally_reservations_total counter\n"
      "tally_reservations_total{result=\"granted\"} %llu\n"
      "tally_reservations_total{result=\"denied\"} %llu\n"
      "tally_reservations_total{result=\"too_many\"} %llu\n"
      "tally_reservations_total{result=\"failed\"} %llu\n"
      "# HELP tally_reservations_released_total Reservations released by "
      "DELETE.\n# TYPE tally_reservations_released_total counter\n"
      "tally_reservations_released_total %llu\n"
      "# HELP tally_reservation_grants_pending Grants produced here and not "
      "yet in committed state (counted by every decision).\n"
      "# TYPE tally_reservation_grants_pending gauge\n"
      "tally_reservation_grants_pending %zu\n",
      (unsigned long long)atomic_load(&reserve->granted),
      (unsigned long long)atomic_load(&reserve->denied),
      (unsigned long long)atomic_load(&reserve->refused),
      (unsigned long long)atomic_load(&reserve->failed),
      (unsigned long long)atomic_load(&reserve->released), pending);
  return n < 0 ? 0 : (size_t)n;
}
