/*
 * fuzz_http_request.c - libFuzzer target for the HTTP port's request
 * parsing (http/tly_request.c): subject path segments, the quota
 * query, the "at" parameter, and the JSON bodies of /v1/events,
 * /v1/estimate, /v1/prorate, /v1/subjects/{subject}/plan and
 * /v1/subjects/{subject}/reservations (with the reservation id segment) and
 * /v1/subjects/{subject}/notifications/read (with ?unread=). These
 * take bytes from any client that can reach the port (authenticated or not, for
 * the parsers that run before a handler), so they must never crash, leak
 * or hang whatever they get.
 *
 * Build and run: scripts/fuzz.sh [seconds].
 *
 * The first byte picks the parser; the rest is its input. Query inputs are
 * split at the first NUL into two parameters. Whatever parses is also
 * answered (quota and usage JSON from a made-up state), so the answer
 * builders see every value the parsers let through. Invariants checked:
 * a parse either succeeds or fills an error with a 4xx/5xx status and a
 * code; an accepted event is valid by the shared rule book.
 */
#include "tly_config.h"
#include "tly_request.h"
#include "tly_request_notify.h"
#include "tly_request_reserve.h"
#include "tly_request_subject.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tly_config_t *config;

static void destroy_config(void) {
  tly_config_free(config);
  config = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  config = tly_config_default();
  if (!config)
    abort();
  atexit(destroy_config);
  return 0;
}

static void check_error(const tly_req_error_t *err) {
  if (err->status < 400 || err->status > 599 || !err->code[0])
    abort();
}

/* A made-up committed state for the answer builders. */
static void fake_state(tly_subject_state_t *state, tly_state_row_t *rows,
                       int64_t seed) {
  memset(state, 0, sizeof(*state));
  state->partition = 3;
  state->account.exists = 1;
  snprintf(state->account.plan, sizeof(state->account.plan), "%s",
           seed & 1 ? "free" : "paid");
  state->account.cycle.start_ms = 1793491200000LL;
  state->account.cycle.end_ms = 1796083200000LL;
  state->account.cycle.cost_micros = seed & 0xffffff;
  state->account.stripe_period = (seed >> 1) & 1;
  memset(rows, 0, 2 * sizeof(*rows));
  rows[0].cycle_start_ms = 1793491200000LL;
  snprintf(rows[0].feature, sizeof(rows[0].feature), "api_calls");
  rows[0].row.quantity = seed;
  rows[1].cycle_start_ms = 1790812800000LL;
  snprintf(rows[1].feature, sizeof(rows[1].feature), "ai_tokens");
  rows[1].row.quantity = INT64_MAX;
  state->rows = rows;
  state->row_count = 2;
}

static void fuzz_query(const char *text, size_t len) {
  const char *second = memchr(text, '\0', len) ? text + strlen(text) + 1 : NULL;
  tly_req_subject_t subject;
  tly_req_quota_query_t query;
  tly_req_error_t err;
  int64_t at = 0;
  tly_subject_state_t state;
  tly_state_row_t rows[2];

  if (tly_req_parse_subject("user:fuzz", &subject, &err))
    abort();
  if (tly_req_parse_quota(config, text, second, &query, &err)) {
    check_error(&err);
    return;
  }
  if (tly_req_parse_at(second, 1795400000000LL, &at, &err)) {
    check_error(&err);
    at = 1795400000000LL;
  }
  fake_state(&state, rows, query.quantity);
  for (int known = 0; known < 2; known++) {
    json_t *answer = tly_req_quota_json(config, &subject, known ? &state : NULL,
                                        &query, at, &err);
    if (!answer)
      check_error(&err);
    /* The hot path's text is jansson's dump, byte for byte. */
    tly_req_quota_answer_t fast;
    if (answer && tly_req_quota_answer(config, &subject, known ? &state : NULL,
                                       &query, at, &fast, &err) == 0) {
      char *fast_text = tly_req_quota_answer_text(&fast);
      char *dump = json_dumps(answer, JSON_COMPACT);
      if (!fast_text || !dump || strcmp(fast_text, dump) != 0)
        abort();
      free(fast_text);
      free(dump);
    }
    json_decref(answer);
  }
  json_decref(tly_req_usage_json(config, &subject, &state, at));
}

/* A raw path segment, as the port sees it: percent-decoded, then parsed.
 * A subject that parses always makes a JSON answer (bytes that are no
 * UTF-8 once made it NULL: a 500). */
static void fuzz_subject(const char *text, size_t len) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  char decoded[TLY_REQ_SUBJECT_MAX + 2];
  if (tly_req_decode_segment(text, len, decoded, sizeof(decoded), &err) ||
      tly_req_parse_subject(decoded, &subject, &err)) {
    check_error(&err);
    return;
  }
  if (strlen(subject.key) <= strlen(subject.id) ||
      strlen(subject.key) > TLY_REQ_SUBJECT_MAX ||
      !tly_req_utf8_valid(subject.key, strlen(subject.key)))
    abort();
  tly_subject_state_t state;
  tly_state_row_t rows[2];
  fake_state(&state, rows, (int64_t)strlen(text));
  json_t *answer =
      tly_req_usage_json(config, &subject, &state, 1795400000000LL);
  if (!answer)
    abort();
  json_decref(answer);
}

static void fuzz_events(const char *text, size_t len) {
  tly_req_events_t events;
  tly_req_error_t err;
  char reason[512];
  if (tly_req_parse_events(config, text, len, 1795400000000LL, &events, &err)) {
    check_error(&err);
    return;
  }
  for (size_t i = 0; i < events.count; i++) {
    if (events.items[i].ok &&
        tly_event_validate(&events.items[i].event, reason, sizeof(reason)))
      abort();
    if (!events.items[i].ok)
      check_error(&events.items[i].error);
  }
  tly_req_events_clear(&events);
}

static void fuzz_plan(const char *text, size_t len) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_event_t event = {0};
  if (tly_req_parse_subject("anonymous:fp", &subject, &err))
    abort();
  if (tly_req_parse_plan(config, &subject, text, len, 1795400000000LL,
                         "plan-fuzz", &event, &err)) {
    check_error(&err);
    return;
  }
  if (event.body_kind != TLY_BODY_PLAN_ASSIGNED)
    abort();
  tly_event_clear(&event);
}

/* A reservation body, then the decision and its answer with the
 * reservation held (and the same bytes as a reservation id). */
static void fuzz_reservation(const char *text, size_t len) {
  tly_req_reservation_t body;
  tly_req_error_t err;
  char id[TLY_RESERVATION_ID_MAX + 1];
  if (tly_req_parse_reservation_id(text, len, id, sizeof(id), &err))
    check_error(&err);
  else if (!tly_reservation_id_is_valid(id))
    abort();
  if (tly_req_parse_reservation(config, text, len, &body, &err)) {
    check_error(&err);
    return;
  }
  if (body.quantity < 1 || body.quantity > TLY_RESERVATION_QUANTITY_MAX ||
      body.ttl_ms < TLY_RESERVATION_TTL_MIN_MS ||
      body.ttl_ms > TLY_RESERVATION_TTL_MAX_MS)
    abort();
  tly_subject_state_t state;
  tly_state_row_t rows[2];
  fake_state(&state, rows, (int64_t)len);
  tly_hold_t holds[2] = {
      {.id = "rsv_a", .quantity = body.quantity, .expires_at_ms = INT64_MAX},
      {.id = "rsv_b", .quantity = INT64_MAX, .expires_at_ms = INT64_MAX}};
  snprintf(holds[0].feature, sizeof(holds[0].feature), "%s", body.feature);
  snprintf(holds[1].feature, sizeof(holds[1].feature), "%s", body.feature);
  state.holds = holds;
  state.hold_count = 1;
  tly_req_held_quota_t quota;
  if (tly_req_quota_held(config, TLY_SUBJECT_USER, &state, holds + 1, 1,
                         body.feature, body.quantity, 1795400000000LL, &quota,
                         &err)) {
    check_error(&err);
    return;
  }
  json_t *answer = json_object();
  if (tly_req_held_quota_put(answer, &quota) == 0 && quota.quota.allowed &&
      strcmp(quota.quota.mode, "hard") == 0)
    abort(); /* INT64_MAX held never fits a hard limit */
  json_decref(answer);
}

/* A notifications/read body (and the same bytes as ?unread=): every id
 * kept is 1..TLY_NOTIFICATION_ID_MAX bytes, none twice. */
static void fuzz_read_ids(const char *text, size_t len) {
  tly_req_read_ids_t ids;
  tly_req_error_t err;
  int unread;
  if (tly_req_parse_unread(text, &unread, &err))
    check_error(&err);
  if (tly_req_parse_read_ids(text, len, &ids, &err)) {
    check_error(&err);
    return;
  }
  if (ids.count < 1 || ids.count > TLY_REQ_READ_IDS_MAX)
    abort();
  for (size_t i = 0; i < ids.count; i++) {
    size_t id_len = strlen(ids.ids[i]);
    if (id_len < 1 || id_len > TLY_NOTIFICATION_ID_MAX)
      abort();
    for (size_t j = 0; j < i; j++)
      if (strcmp(ids.ids[i], ids.ids[j]) == 0)
        abort();
  }
  tly_req_read_ids_clear(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  /* A NUL-terminated copy: the port's parsers get C strings (path and
   * query values) or counted bodies. */
  char *text = malloc(size);
  memcpy(text, data + 1, size - 1);
  text[size - 1] = '\0';
  size_t len = size - 1;
  tly_req_error_t err;
  json_t *answer;

  switch (data[0] % 8) {
  case 0:
    fuzz_subject(text, len);
    break;
  case 1:
    fuzz_query(text, len);
    break;
  case 2:
    fuzz_events(text, len);
    break;
  case 3:
    answer = tly_req_estimate(config, text, len, &err);
    if (!answer)
      check_error(&err);
    json_decref(answer);
    break;
  case 4:
    answer = tly_req_prorate(config, text, len, &err);
    if (!answer)
      check_error(&err);
    json_decref(answer);
    break;
  case 5:
    fuzz_plan(text, len);
    break;
  case 6:
    fuzz_reservation(text, len);
    break;
  case 7:
    fuzz_read_ids(text, len);
    break;
  }
  free(text);
  return 0;
}
