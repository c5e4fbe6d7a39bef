/*
 * fuzz_record.c - libFuzzer target for whole Kafka records of the usage
 * topic, through the processor's path into the fold: not only the decoder.
 *
 * Build and run: scripts/fuzz.sh [seconds] (part of scripts/test.sh).
 *
 * An input is a short sequence of records, each
 *     flags:u8  key_len:u8  value_len:u16 (big-endian)
 *     [timestamp:i64 big-endian, when flags & 1]  key  value
 * (flags & 2: the value gets a valid frame header in front, so the fuzzer
 * need not find the magic byte and schema id; flags & 4: no value at all, a
 * tombstone; flags & 8: the key is 8 times key_len bytes, to reach the key
 * bound). Lengths are cut to what the input holds.
 *
 * Each record goes through tly_record_prepare, the very function the
 * processor's fold_message calls (bounds, decode, validation); what passes
 * is folded by tly_billing_fold over an in-memory state (as the unit tests
 * do), ticks close the cycles due as the processor's fold_tick does, and
 * every alert is encoded as queue_alerts does. The invariants, each of
 * which would be a processor that stops, loses or miscounts:
 *   - a record tly_record_prepare refuses says why (a dead letter with a
 *     reason), and one it passes has every field within its bound
 *     (tly_event.h): nothing oversized reaches the fold;
 *   - every key the processor would build for what reaches the fold fits
 *     (the account key, an alert's history key: TLY_KEY_MAX), every event
 *     id fits the dedupe index, every alert id is whole and every alert
 *     encodes; the fold never fails (TLY_FOLD_FAILED: the processor would
 *     stop) when the state view does not;
 *   - an event folded is a duplicate the second time;
 *   - totals never go negative (a wrapped sum): quantities, tokens, event
 *     counts and row costs, per row, hour and cycle;
 *   - no crash, leak or undefined behaviour (ASan, UBSan) and no hang
 *     (scripts/fuzz.sh passes -timeout).
 *
 * Event time is bounded by tly_record_prepare (against the record's
 * timestamp, with the default skew), so every time that reaches the fold
 * is one the processor would fold.
 */
#include "tly_alert.h"
#include "tly_billing.h"
#include "tly_codec.h"
#include "tly_config.h"
#include "tly_dedupe.h"
#include "tly_event.h"
#include "tly_event_time.h"
#include "tly_keys.h"
#include "tly_record.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RECORDS 16

static tly_codec_t *codec;
static tly_alert_codec_t *alert_codec;
static tly_config_t *config;

const char *__lsan_default_suppressions(void);
/* As fuzz_codec.c: avro-c's reused values look leaked to LSan. */
const char *__lsan_default_suppressions(void) { return "leak:libavro.so\n"; }

#define CHECK(condition, ...)                                                  \
  do {                                                                         \
    if (!(condition)) {                                                        \
      fprintf(stderr, "fuzz_record: " __VA_ARGS__);                            \
      fputc('\n', stderr);                                                     \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static void destroy_all(void) {
  tly_codec_destroy(codec);
  tly_alert_codec_destroy(alert_codec);
  tly_config_free(config);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  char errstr[256];
  (void)argc;
  (void)argv;
  codec = tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  alert_codec = tly_alert_codec_new(errstr, sizeof(errstr));
  config = tly_config_default();
  CHECK(codec && alert_codec && config, "setup: %s", errstr);
  atexit(destroy_all);
  return 0;
}

/* ---- the in-memory state (a fresh one per input) ---------------------- */

typedef struct {
  tly_subject_kind_t kind;
  char *id;
  tly_account_t account;
} account_t;

typedef struct {
  size_t account; /* index into accounts */
  int64_t cycle;
  char feature[TLY_CONFIG_NAME_MAX];
  tly_billing_row_t row;
} row_t;

typedef struct {
  size_t account;
  int32_t hour;
  char feature[TLY_CONFIG_NAME_MAX];
  tly_bucket_t totals;
} bucket_t;

typedef struct {
  tly_billing_view_t view;
  account_t *accounts;
  size_t account_count, account_cap;
  row_t *rows;
  size_t row_count, row_cap;
  bucket_t *buckets;
  size_t bucket_count, bucket_cap;
  char **seen;
  size_t seen_count, seen_cap;
  int64_t watermark;
} state_t;

static void *grow(void *items, size_t *cap, size_t count, size_t size) {
  if (count < *cap)
    return items;
  *cap = *cap ? *cap * 2 : 8;
  items = realloc(items, *cap * size);
  CHECK(items, "out of memory");
  return items;
}

/* The account (created zeroed), after checking that the processor could
 * build its state key. */
static size_t account_index(state_t *state, tly_subject_kind_t kind,
                            const char *id) {
  char key[TLY_KEY_MAX];
  CHECK(tly_key_account(0, kind, id, key, sizeof(key)) > 0,
        "a subject reached the fold whose state key does not fit (%zu bytes)",
        strlen(id));
  for (size_t i = 0; i < state->account_count; i++)
    if (state->accounts[i].kind == kind && !strcmp(state->accounts[i].id, id))
      return i;
  state->accounts = grow(state->accounts, &state->account_cap,
                         state->account_count, sizeof(*state->accounts));
  account_t *account = &state->accounts[state->account_count];
  memset(account, 0, sizeof(*account));
  account->kind = kind;
  account->id = strdup(id);
  CHECK(account->id, "out of memory");
  return state->account_count++;
}

static tly_account_t *mem_account(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id) {
  state_t *state = view->opaque;
  size_t index = account_index(state, kind, id); /* may move the array */
  return &state->accounts[index].account;
}

static void check_feature(const char *feature) {
  CHECK(strlen(feature) < TLY_CONFIG_NAME_MAX,
        "a feature of %zu bytes reached the state", strlen(feature));
}

static tly_billing_row_t *mem_row(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id,
                                  int64_t cycle, const char *feature) {
  state_t *state = view->opaque;
  size_t account = account_index(state, kind, id);
  check_feature(feature);
  for (size_t i = 0; i < state->row_count; i++)
    if (state->rows[i].account == account && state->rows[i].cycle == cycle &&
        !strcmp(state->rows[i].feature, feature))
      return &state->rows[i].row;
  state->rows = grow(state->rows, &state->row_cap, state->row_count,
                     sizeof(*state->rows));
  row_t *row = &state->rows[state->row_count++];
  memset(row, 0, sizeof(*row));
  row->account = account;
  row->cycle = cycle;
  snprintf(row->feature, sizeof(row->feature), "%s", feature);
  return &row->row;
}

static tly_bucket_t *mem_bucket(tly_billing_view_t *view,
                                tly_subject_kind_t kind, const char *id,
                                int32_t hour, const char *feature) {
  state_t *state = view->opaque;
  size_t account = account_index(state, kind, id);
  check_feature(feature);
  for (size_t i = 0; i < state->bucket_count; i++)
    if (state->buckets[i].account == account &&
        state->buckets[i].hour == hour &&
        !strcmp(state->buckets[i].feature, feature))
      return &state->buckets[i].totals;
  state->buckets = grow(state->buckets, &state->bucket_cap, state->bucket_count,
                        sizeof(*state->buckets));
  bucket_t *bucket = &state->buckets[state->bucket_count++];
  memset(bucket, 0, sizeof(*bucket));
  bucket->account = account;
  bucket->hour = hour;
  snprintf(bucket->feature, sizeof(bucket->feature), "%s", feature);
  return &bucket->totals;
}

static int mem_archive(tly_billing_view_t *view, tly_subject_kind_t kind,
                       const char *id, const tly_cycle_t *cycle) {
  state_t *state = view->opaque;
  account_index(state, kind, id);
  CHECK(cycle->cost_micros >= 0 && cycle->events >= 0,
        "an archived cycle with negative totals");
  return 0;
}

static int mem_seen(tly_billing_view_t *view, const char *event_id,
                    int64_t occurred_at_ms, int record) {
  state_t *state = view->opaque;
  size_t len = strlen(event_id);
  (void)occurred_at_ms;
  CHECK(len <= TLY_EVENT_ID_MAX && len <= TLY_DEDUPE_ID_MAX,
        "an event id of %zu bytes reached the dedupe index", len);
  for (size_t i = 0; i < state->seen_count; i++)
    if (!strcmp(state->seen[i], event_id))
      return record ? 0 : 1;
  if (record) {
    state->seen = grow(state->seen, &state->seen_cap, state->seen_count,
                       sizeof(*state->seen));
    state->seen[state->seen_count] = strdup(event_id);
    CHECK(state->seen[state->seen_count], "out of memory");
    state->seen_count++;
  }
  return 0;
}

static void state_init(state_t *state) {
  memset(state, 0, sizeof(*state));
  state->view = (tly_billing_view_t){.opaque = state,
                                     .account = mem_account,
                                     .row = mem_row,
                                     .bucket = mem_bucket,
                                     .archive = mem_archive,
                                     .seen = mem_seen,
                                     .watermark_ms = &state->watermark};
  state->watermark = INT64_MIN;
}

static void state_free(state_t *state) {
  for (size_t i = 0; i < state->account_count; i++)
    free(state->accounts[i].id);
  for (size_t i = 0; i < state->seen_count; i++)
    free(state->seen[i]);
  free(state->accounts);
  free(state->rows);
  free(state->buckets);
  free(state->seen);
}

/* ---- invariants ------------------------------------------------------- */

static void check_bounds(const tly_event_t *event) {
  CHECK(strlen(event->event_id) <= TLY_EVENT_ID_MAX, "event_id over bound");
  CHECK(strlen(event->subject_id) <= TLY_SUBJECT_ID_MAX, "subject over bound");
  if (event->body_kind != TLY_BODY_USAGE_RECORDED)
    return;
  const tly_usage_recorded_t *usage = &event->body.usage;
  CHECK(strlen(usage->feature) <= TLY_EVENT_NAME_MAX, "feature over bound");
  CHECK(strlen(usage->unit) <= TLY_EVENT_NAME_MAX, "unit over bound");
  CHECK(!usage->has_ai || (strlen(usage->ai.provider) <= TLY_EVENT_NAME_MAX &&
                           strlen(usage->ai.model) <= TLY_EVENT_NAME_MAX),
        "ai names over bound");
  CHECK(usage->property_count <= TLY_EVENT_PROPERTIES_MAX,
        "properties over bound");
  for (size_t i = 0; i < usage->property_count; i++)
    CHECK(strlen(usage->properties[i].key) <= TLY_EVENT_PROPERTY_KEY_MAX &&
              strlen(usage->properties[i].value) <=
                  TLY_EVENT_PROPERTY_VALUE_MAX,
          "a property over bound");
}

/* What queue_alerts and record_alert do with each alert: encode it, build
 * its history key. */
static void check_alerts(tly_alert_list_t *alerts) {
  char errstr[256], key[TLY_KEY_MAX];
  for (size_t i = 0; i < alerts->count; i++) {
    const tly_alert_t *alert = &alerts->items[i];
    const void *value;
    size_t value_len, id_len = strlen(alert->alert_id);
    CHECK(id_len < TLY_ALERT_ID_SIZE - 1, "an alert id was cut short");
    CHECK(tly_alert_encode(alert_codec, alert, &value, &value_len, errstr,
                           sizeof(errstr)) == 0,
          "an alert does not encode: %s", errstr);
    size_t len = tly_key_history(0, alert->subject_kind, alert->subject_id,
                                 TLY_HISTORY_ALERT, key, sizeof(key));
    CHECK(len && len + 8 + id_len <= TLY_KEY_MAX,
          "an alert's history key does not fit");
  }
  tly_alert_list_clear(alerts);
}

static void check_totals(const state_t *state) {
  for (size_t i = 0; i < state->row_count; i++) {
    const tly_billing_row_t *row = &state->rows[i].row;
    CHECK(row->quantity >= 0 && row->input_tokens >= 0 &&
              row->output_tokens >= 0 && row->event_count >= 0 &&
              row->cost_micros >= 0 && row->cost_remainder >= 0,
          "a usage row went negative");
  }
  /* An hour's cost may be negative (volume pricing can lower the cycle's
   * cost); its counts may not. */
  for (size_t i = 0; i < state->bucket_count; i++) {
    const tly_bucket_t *hour = &state->buckets[i].totals;
    CHECK(hour->quantity >= 0 && hour->input_tokens >= 0 &&
              hour->output_tokens >= 0 && hour->event_count >= 0,
          "an hour's bucket went negative");
  }
  for (size_t i = 0; i < state->account_count; i++) {
    const tly_account_t *account = &state->accounts[i].account;
    CHECK(account->cycle.cost_micros >= 0 && account->cycle.events >= 0,
          "a cycle's totals went negative");
    for (size_t h = 0; h < account->history_count; h++)
      CHECK(account->history[h].cost_micros >= 0 &&
                account->history[h].events >= 0,
            "a closed cycle's totals went negative");
  }
}

/* ---- one input -------------------------------------------------------- */

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static int64_t be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return (int64_t)v;
}

/* A tick folded: every account whose cycle has ended gets the tick, as
 * fold_tick walks the cycle-end index. */
static void fold_tick(const tly_billing_t *billing, state_t *state,
                      int64_t tick_ms, tly_alert_list_t *alerts) {
  for (size_t i = 0; i < state->account_count; i++) {
    if (state->accounts[i].account.cycle.end_ms > tick_ms)
      continue;
    char *id = strdup(state->accounts[i].id); /* accounts may move */
    CHECK(id, "out of memory");
    CHECK(tly_billing_tick(billing, &state->view, state->accounts[i].kind, id,
                           tick_ms, alerts) == TLY_FOLD_APPLIED,
          "a tick failed to fold");
    free(id);
  }
}

/* FUZZ_RECORD_VERBOSE=1: what became of each record (to read a
 * reproducer or check the seeds). */
static int verbose = -1;

static void fold_record(const tly_billing_t *billing, state_t *state,
                        const tly_record_t *record, tly_alert_list_t *alerts) {
  tly_event_t event;
  char errstr[512] = "";
  if (verbose < 0)
    verbose = getenv("FUZZ_RECORD_VERBOSE") != NULL;
  if (tly_record_prepare(codec, record, &event, errstr, sizeof(errstr))) {
    CHECK(errstr[0], "a record refused without a reason");
    CHECK(!event.event_id, "a refused record left an event");
    if (verbose)
      fprintf(stderr, "dead letter: %s\n", errstr);
    return; /* the processor's dead letter */
  }
  check_bounds(&event);
  tly_fold_result_t result = tly_billing_fold(billing, &state->view, &event,
                                              alerts, errstr, sizeof(errstr));
  if (verbose)
    fprintf(stderr, "%s: %s %s\n", event.event_id,
            result == TLY_FOLD_APPLIED     ? "applied"
            : result == TLY_FOLD_DUPLICATE ? "duplicate"
                                           : "rejected:",
            result == TLY_FOLD_REJECTED ? errstr : "");
  CHECK(result != TLY_FOLD_FAILED, "the fold failed: the processor would stop");
  CHECK(result != TLY_FOLD_REJECTED || errstr[0],
        "an event rejected without a reason");
  if (result == TLY_FOLD_APPLIED) {
    if (event.body_kind == TLY_BODY_TICK)
      fold_tick(billing, state, event.occurred_at_ms, alerts);
    check_alerts(alerts);
    CHECK(tly_billing_fold(billing, &state->view, &event, alerts, errstr,
                           sizeof(errstr)) == TLY_FOLD_DUPLICATE,
          "an event folded twice was not a duplicate");
    CHECK(alerts->count == 0, "a duplicate raised alerts");
  }
  tly_alert_list_clear(alerts);
  check_totals(state);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tly_billing_t billing = {config, TLY_BILLING_DEFAULT_DEDUPE_WINDOW_MS};
  tly_alert_list_t alerts = {0};
  state_t state;
  state_init(&state);
  for (int n = 0; n < MAX_RECORDS && size >= 4; n++) {
    uint8_t flags = data[0];
    size_t key_len = flags & 8 ? (size_t)data[1] * 8 : data[1];
    size_t value_len = be16(data + 2);
    int64_t timestamp_ms = 0;
    data += 4;
    size -= 4;
    if ((flags & 1) && size >= 8) {
      timestamp_ms = be64(data);
      data += 8;
      size -= 8;
    }
    if (key_len > size)
      key_len = size;
    uint8_t *key = malloc(key_len ? key_len : 1); /* exact: ASan sees */
    CHECK(key, "out of memory");
    memcpy(key, data, key_len);
    data += key_len;
    size -= key_len;
    if (value_len > size)
      value_len = size;
    size_t header = flags & 2 ? TLY_CODEC_HEADER_SIZE : 0;
    uint8_t *value = malloc(header + value_len ? header + value_len : 1);
    CHECK(value, "out of memory");
    if (header) {
      memset(value, 0, TLY_CODEC_HEADER_SIZE);
      value[4] = TLY_CODEC_DEFAULT_SCHEMA_ID;
    }
    memcpy(value + header, data, value_len);
    data += value_len;
    size -= value_len;
    tly_record_t record = {
        key_len ? key : NULL, key_len,      flags & 4 ? NULL : value,
        header + value_len,   timestamp_ms, TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
    fold_record(&billing, &state, &record, &alerts);
    free(key);
    free(value);
  }
  tly_alert_list_clear(&alerts);
  state_free(&state);
  return 0;
}
