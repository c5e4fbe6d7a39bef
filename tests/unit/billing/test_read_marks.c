/*
 * test_read_marks.c - notifications' read state (tly_read_marks.h): a
 * mark makes its alert read and nothing else; marking twice changes
 * nothing; past TLY_READ_MARKS_MAX marks the oldest collapse into the
 * watermark (alerts before it read, newer unmarked ones still unread);
 * the fold applies a NotificationRead (and a replay decides the same);
 * the subject record keeps the marks as version 6 (version 5's layout,
 * with or without holds), reads versions 3 and 4 as before (no marks),
 * keeps version 3's bytes for a subject without marks, and refuses a cut
 * or bad version 6.
 */
#include "tly_billing.h"
#include "tly_read_marks.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define T0 1793491200000LL /* 2026-11-01T00:00:00Z */

static uint64_t h(const char *id) { return tly_read_mark_hash(id, strlen(id)); }

static void test_mark_and_read(void **state) {
  (void)state;
  tly_read_marks_t marks = {0};
  assert_false(tly_read_marks_any(&marks));
  assert_false(tly_read_marks_is_read(&marks, h("a"), T0));
  tly_read_marks_add(&marks, h("a"), T0);
  assert_true(tly_read_marks_any(&marks));
  assert_true(tly_read_marks_is_read(&marks, h("a"), T0));
  assert_false(tly_read_marks_is_read(&marks, h("b"), T0));
  assert_false(tly_read_marks_is_read(&marks, h("b"), T0 - 1));
  tly_read_marks_t before = marks;
  tly_read_marks_add(&marks, h("a"), T0);
  assert_memory_equal(&before, &marks, sizeof(marks));
  assert_int_equal(marks.count, 1);
  assert_true(h("a") != h("b"));
}

static void test_overflow_moves_the_watermark(void **state) {
  (void)state;
  tly_read_marks_t marks = {0};
  char id[32];
  /* Marks arrive out of time order; kept sorted by alert time. */
  for (int i = 0; i < TLY_READ_MARKS_MAX; i++) {
    int at = (i * 7) % TLY_READ_MARKS_MAX;
    snprintf(id, sizeof(id), "alert-%d", at);
    tly_read_marks_add(&marks, h(id), T0 + at * 1000);
  }
  assert_int_equal(marks.count, TLY_READ_MARKS_MAX);
  assert_int_equal(marks.read_before_ms, 0);
  for (uint32_t i = 1; i < marks.count; i++)
    assert_true(marks.marks[i - 1].alert_at_ms <= marks.marks[i].alert_at_ms);
  /* One more: the oldest (alert-0 at T0) collapses into the watermark. */
  tly_read_marks_add(&marks, h("newest"), T0 + 100000);
  assert_int_equal(marks.count, TLY_READ_MARKS_MAX);
  assert_true(marks.read_before_ms == T0 + 1);
  for (int at = 0; at < TLY_READ_MARKS_MAX; at++) {
    snprintf(id, sizeof(id), "alert-%d", at);
    assert_true(tly_read_marks_is_read(&marks, h(id), T0 + at * 1000));
  }
  assert_true(tly_read_marks_is_read(&marks, h("newest"), T0 + 100000));
  /* Older than the watermark: read; newer and unmarked: not. */
  assert_true(tly_read_marks_is_read(&marks, h("old"), T0 - 5));
  assert_false(tly_read_marks_is_read(&marks, h("other"), T0 + 500));
  /* A full set and an alert older than every mark: the watermark covers
   * it, no mark is dropped. */
  tly_read_marks_add(&marks, h("older"), T0 + 1);
  assert_int_equal(marks.count, TLY_READ_MARKS_MAX);
  assert_true(marks.read_before_ms == T0 + 2);
  assert_true(tly_read_marks_is_read(&marks, h("older"), T0 + 1));
}

/* ---- the fold ------------------------------------------------------------ */

typedef struct {
  tly_billing_view_t view;
  tly_account_t account;
  tly_read_marks_t marks;
  tly_billing_row_t row;
  tly_bucket_t bucket;
  char seen[64][96];
  size_t seen_count;
  int64_t watermark;
} memory_t;

static tly_account_t *mem_account(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id) {
  (void)kind, (void)id;
  return &((memory_t *)view->opaque)->account;
}
static tly_read_marks_t *mem_read_marks(tly_billing_view_t *view,
                                        tly_subject_kind_t kind,
                                        const char *id) {
  (void)kind, (void)id;
  return &((memory_t *)view->opaque)->marks;
}
static tly_billing_row_t *mem_row(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id,
                                  int64_t cycle, const char *feature) {
  (void)kind, (void)id, (void)cycle, (void)feature;
  return &((memory_t *)view->opaque)->row;
}
static tly_bucket_t *mem_bucket(tly_billing_view_t *view,
                                tly_subject_kind_t kind, const char *id,
                                int32_t hour, const char *feature) {
  (void)kind, (void)id, (void)hour, (void)feature;
  return &((memory_t *)view->opaque)->bucket;
}
static int mem_seen(tly_billing_view_t *view, const char *event_id,
                    int64_t occurred_at, int record) {
  memory_t *m = view->opaque;
  (void)occurred_at;
  for (size_t i = 0; i < m->seen_count; i++)
    if (!strcmp(m->seen[i], event_id))
      return record ? 0 : 1;
  if (record)
    snprintf(m->seen[m->seen_count++], sizeof(m->seen[0]), "%s", event_id);
  return 0;
}

/* m emptied, its view set up (with read marks or without). */
static void memory_reset(memory_t *m, int with_marks) {
  memset(m, 0, sizeof(*m));
  m->view =
      (tly_billing_view_t){.opaque = m,
                           .account = mem_account,
                           .row = mem_row,
                           .bucket = mem_bucket,
                           .seen = mem_seen,
                           .read_marks = with_marks ? mem_read_marks : NULL,
                           .watermark_ms = &m->watermark};
  m->watermark = INT64_MIN;
}

static void fold_reads(memory_t *m, const tly_config_t *config) {
  memory_reset(m, 1);
  tly_billing_t billing = {config, 7 * 86400000LL};
  tly_alert_list_t alerts = {0};
  char errstr[256];
  static const char *const ids[] = {"limit_warning:user:a:1:api_calls:25",
                                    "limit_warning:user:a:1:api_calls:50",
                                    "limit_warning:user:a:1:api_calls:25"};
  for (size_t i = 0; i < 3; i++) {
    char event_id[96];
    snprintf(event_id, sizeof(event_id), "read-%zu", i);
    tly_event_t e = {.event_id = event_id,
                     .occurred_at_ms = T0 + 60000 * (int64_t)(i + 1),
                     .subject_kind = TLY_SUBJECT_USER,
                     .subject_id = "a",
                     .body_kind = TLY_BODY_NOTIFICATION_READ};
    e.body.notification_read.alert_id = (char *)ids[i];
    e.body.notification_read.alert_at_ms = T0 + (int64_t)i;
    assert_int_equal(tly_billing_fold(&billing, &m->view, &e, &alerts, errstr,
                                      sizeof(errstr)),
                     TLY_FOLD_APPLIED);
  }
  assert_int_equal(alerts.count, 0);
  tly_alert_list_clear(&alerts);
}

/* One plan, no limits, for every kind of subject. */
static tly_config_t *unlimited_config(void) {
  static const char config_json[] =
      "{\"default_plans\": {\"user\": \"t\", \"api_key\": \"t\", "
      "\"anonymous\": \"t\"}, \"plans\": {\"t\": {\"credits\": -1}}}";
  char errstr[256];
  tly_config_t *config = tly_config_load_text(config_json, strlen(config_json),
                                              errstr, sizeof(errstr));
  assert_non_null(config);
  return config;
}

static void test_fold_applies_reads(void **state) {
  (void)state;
  tly_config_t *config = unlimited_config();
  memory_t *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
  fold_reads(a, config);
  assert_int_equal(a->marks.count, 2);
  assert_true(tly_read_marks_is_read(
      &a->marks, h("limit_warning:user:a:1:api_calls:50"), T0 + 1));
  assert_false(tly_read_marks_is_read(
      &a->marks, h("limit_warning:user:a:1:api_calls:75"), T0 + 2));
  /* A replay decides the same. */
  fold_reads(b, config);
  assert_memory_equal(&a->marks, &b->marks, sizeof(a->marks));
  free(a);
  free(b);
  tly_config_free(config);
}

/* The marks live beside the account (the view's read_marks), not in it:
 * a view without them refuses a read instead of losing it, and leaves the
 * account as it was; a read's marks change only once it is applied. */
static void test_fold_without_marks_refuses(void **state) {
  (void)state;
  char errstr[256];
  tly_config_t *config = unlimited_config();
  memory_t *m = calloc(1, sizeof(*m));
  assert_non_null(m);
  memory_reset(m, 0);
  tly_billing_t billing = {config, 7 * 86400000LL};
  tly_alert_list_t alerts = {0};
  tly_event_t e = {.event_id = "read-1",
                   .occurred_at_ms = T0,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = "a",
                   .body_kind = TLY_BODY_NOTIFICATION_READ};
  e.body.notification_read.alert_id = "limit_warning:user:a:1:api_calls:25";
  e.body.notification_read.alert_at_ms = T0;
  errstr[0] = '\0';
  assert_int_equal(
      tly_billing_fold(&billing, &m->view, &e, &alerts, errstr, sizeof(errstr)),
      TLY_FOLD_REJECTED);
  assert_non_null(strstr(errstr, "notification reads"));
  assert_false(m->account.exists);
  assert_false(tly_read_marks_any(&m->marks));
  /* With them, the same read is kept. */
  m->view.read_marks = mem_read_marks;
  assert_int_equal(
      tly_billing_fold(&billing, &m->view, &e, &alerts, errstr, sizeof(errstr)),
      TLY_FOLD_APPLIED);
  assert_true(tly_read_marks_is_read(
      &m->marks, h("limit_warning:user:a:1:api_calls:25"), T0));
  tly_alert_list_clear(&alerts);
  free(m);
  tly_config_free(config);
}

/* ---- the subject record -------------------------------------------------- */

static void account_for(tly_account_t *account) {
  memset(account, 0, sizeof(*account));
  account->exists = 1;
  snprintf(account->plan, sizeof(account->plan), "pro");
  account->cycle = (tly_cycle_t){T0, T0 + 30 * 86400000LL, 1234, 5};
}

static void test_record_versions(void **state) {
  (void)state;
  unsigned char bytes[4096];
  tly_account_t account;
  tly_read_marks_t marks;
  tly_subject_record_t record;
  account_for(&account);

  /* No marks: version 3, as before. */
  size_t len = tly_subject_record_encode(&account, NULL, 0, NULL, 0, bytes,
                                         sizeof(bytes));
  assert_true(len < sizeof(bytes));
  assert_int_equal(bytes[0], 3);
  assert_int_equal(tly_subject_record_decode(bytes, len, &record), 0);
  assert_false(tly_read_marks_any(&record.read_marks));
  tly_subject_record_clear(&record);

  /* Holds only: version 4, read as before (no marks). */
  tly_hold_t hold = {.quantity = 3, .expires_at_ms = T0 + 5000};
  snprintf(hold.id, sizeof(hold.id), "rsv_1");
  snprintf(hold.feature, sizeof(hold.feature), "api_calls");
  len = tly_subject_record_encode_holds(&account, NULL, 0, NULL, 0, &hold, 1,
                                        bytes, sizeof(bytes));
  assert_int_equal(bytes[0], 4);
  assert_int_equal(tly_subject_record_decode(bytes, len, &record), 0);
  assert_int_equal(record.hold_count, 1);
  assert_false(tly_read_marks_any(&record.read_marks));
  tly_subject_record_clear(&record);

  /* Marks, without and with holds: version 6, read back exactly. */
  for (int with_hold = 0; with_hold < 2; with_hold++) {
    account_for(&account);
    memset(&marks, 0, sizeof(marks));
    char id[32];
    for (int i = 0; i < TLY_READ_MARKS_MAX + 3; i++) {
      snprintf(id, sizeof(id), "alert-%d", i);
      tly_read_marks_add(&marks, h(id), T0 - 86400000LL + i * 10);
    }
    len = tly_subject_record_encode_meters(
        &account, NULL, 0, NULL, 0, with_hold ? &hold : NULL, (size_t)with_hold,
        NULL, &marks, bytes, sizeof(bytes));
    assert_true(len < sizeof(bytes));
    assert_int_equal(bytes[0], 6);
    assert_int_equal(tly_subject_record_decode(bytes, len, &record), 0);
    assert_int_equal(record.hold_count, (size_t)with_hold);
    assert_memory_equal(&record.read_marks, &marks, sizeof(marks));
    assert_string_equal(record.account.plan, "pro");
    tly_subject_record_clear(&record);
    /* Every cut is refused; so is a byte more. */
    for (size_t cut = 0; cut < len; cut++)
      assert_int_equal(tly_subject_record_decode(bytes, cut, &record), -1);
    bytes[len] = 0;
    assert_int_equal(tly_subject_record_decode(bytes, len + 1, &record), -1);
    /* A version this build does not know is refused. */
    bytes[0] = 7;
    assert_int_equal(tly_subject_record_decode(bytes, len, &record), -1);
  }
}

/* Meter state (a latest row's instant) and read marks together: both come
 * back (version 6 carries version 5's meter parts, then the marks). */
static void test_record_meters_and_marks(void **state) {
  (void)state;
  unsigned char bytes[4096];
  tly_account_t account;
  tly_subject_record_t record;
  account_for(&account);
  tly_subject_row_t row = {.cycle_start_ms = T0};
  snprintf(row.feature, sizeof(row.feature), "storage_bytes");
  row.row.quantity = 42;
  row.row.event_count = 3;
  row.row.latest_at_ms = T0 + 777;
  const tly_subject_row_t *rows[] = {&row};
  size_t len = tly_subject_record_encode(&account, rows, 1, NULL, 0, bytes,
                                         sizeof(bytes));
  assert_int_equal(bytes[0], 5); /* meters only: main's version 5 */
  tly_read_marks_t marks = {0};
  tly_read_marks_add(&marks, h("x"), T0 + 5);
  len = tly_subject_record_encode_meters(&account, rows, 1, NULL, 0, NULL, 0,
                                         NULL, &marks, bytes, sizeof(bytes));
  assert_int_equal(bytes[0], 6);
  assert_int_equal(tly_subject_record_decode(bytes, len, &record), 0);
  assert_int_equal(record.row_count, 1);
  assert_true(record.rows[0].row.latest_at_ms == T0 + 777);
  assert_true(record.rows[0].row.quantity == 42);
  assert_memory_equal(&record.read_marks, &marks, sizeof(marks));
  tly_subject_record_clear(&record);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mark_and_read),
      cmocka_unit_test(test_overflow_moves_the_watermark),
      cmocka_unit_test(test_fold_applies_reads),
      cmocka_unit_test(test_fold_without_marks_refuses),
      cmocka_unit_test(test_record_versions),
      cmocka_unit_test(test_record_meters_and_marks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
