/*
 * test_holds.c - the fold's reservation rules (tly_holds.h) over an
 * in-memory state view: a ReservationHeld records its hold, a usage event
 * naming it settles it in the same step that counts the usage (more or
 * less than held), a ReservationReleased releases it, the fold's clock
 * (the record's time, or a tick's) expires it, an unknown or settled id
 * just counts the usage, the per-subject bound rejects without changing
 * anything, replays decide the same, and the subject record keeps holds
 * (version 4) while a subject without holds keeps version 3's bytes.
 */
#include "tly_billing.h"
#include "tly_holds.h"
#include "tly_mem_view.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define JAN1 1767225600000LL /* 2026-01-01T00:00:00Z */
#define MIN_MS 60000LL

static const char *config_json =
    "{\"thresholds\": [50, 100],"
    " \"cycles\": {\"anchor\": \"2026-01-01T00:00:00Z\"},"
    " \"default_plans\": {\"user\": \"t\", \"api_key\": \"t\", "
    "                     \"anonymous\": \"t\"},"
    " \"plans\": {\"t\": {\"credits\": -1,"
    "   \"limits\": {\"api_calls\": {\"limit\": 50, \"mode\": \"hard\"}}}}}";

typedef tly_mem_fixture_t fixture_t;

static int setup(void **ctx) {
  *ctx = tly_mem_fixture_new(config_json, TLY_MEM_WITH_HOLDS, 0);
  return *ctx ? 0 : -1;
}

static int teardown(void **ctx) {
  tly_mem_fixture_free(*ctx);
  return 0;
}

/* ---- events ------------------------------------------------------------ */

/* Folds one event at time t with the record's Kafka timestamp record_ms
 * (0: none) into m. */
static tly_fold_result_t fold_at(fixture_t *f, tly_mem_view_t *m,
                                 tly_event_t *event, int64_t record_ms) {
  char event_id[32];
  if (!event->event_id) {
    snprintf(event_id, sizeof(event_id), "e-%d", ++f->counter);
    event->event_id = event_id;
  }
  m->view.record_ms = record_ms;
  tly_fold_result_t result = tly_billing_fold(
      &f->billing, &m->view, event, &f->alerts, f->errstr, sizeof(f->errstr));
  if (event->event_id == event_id)
    event->event_id = NULL;
  return result;
}

static tly_event_t held(const char *who, const char *id, int64_t quantity,
                        int64_t ttl_ms, int64_t t) {
  tly_event_t e = {.occurred_at_ms = t,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = (char *)who,
                   .body_kind = TLY_BODY_RESERVATION_HELD};
  e.body.reservation_held.reservation_id = (char *)id;
  e.body.reservation_held.feature = "api_calls";
  e.body.reservation_held.quantity = quantity;
  e.body.reservation_held.ttl_ms = ttl_ms;
  return e;
}

static tly_event_t released(const char *who, const char *id, int64_t t) {
  tly_event_t e = {.occurred_at_ms = t,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = (char *)who,
                   .body_kind = TLY_BODY_RESERVATION_RELEASED};
  e.body.reservation_released.reservation_id = (char *)id;
  return e;
}

static tly_property_t settle_property[1];

/* Usage of api_calls; settles reservation id when it is not NULL. */
static tly_event_t usage(const char *who, int64_t quantity, const char *id,
                         int64_t t) {
  tly_event_t e = {.occurred_at_ms = t,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = (char *)who,
                   .body_kind = TLY_BODY_USAGE_RECORDED};
  e.body.usage.feature = "api_calls";
  e.body.usage.unit = "";
  e.body.usage.quantity = quantity;
  if (id) {
    settle_property[0] = (tly_property_t){TLY_RESERVATION_PROPERTY, (char *)id};
    e.body.usage.properties = settle_property;
    e.body.usage.property_count = 1;
  }
  return e;
}

/* The subject's holds and usage in m (tly_mem_view.h). */
static const tly_holds_t *holds_of(fixture_t *f, const char *who) {
  return &tly_mem_subject(f->m, who)->holds;
}

/* Its rows' quantities added up (one feature, one cycle in these tests). */
static int64_t used_of(tly_mem_view_t *m, const char *who) {
  int64_t used = 0;
  for (size_t i = 0; i < m->row_count; i++)
    if (!strcmp(m->rows[i].subject, who))
      used += m->rows[i].row.quantity;
  return used;
}

/* ---- tests ------------------------------------------------------------- */

static void test_held_is_recorded(void **ctx) {
  fixture_t *f = *ctx;
  tly_event_t e = held("alice", "rsv_a", 7, 30000, JAN1 + MIN_MS);
  assert_int_equal(fold_at(f, f->m, &e, JAN1 + MIN_MS), TLY_FOLD_APPLIED);
  const tly_holds_t *holds = holds_of(f, "alice");
  assert_int_equal(holds->count, 1);
  assert_string_equal(holds->items[0].id, "rsv_a");
  assert_string_equal(holds->items[0].feature, "api_calls");
  assert_true(holds->items[0].quantity == 7);
  assert_true(holds->items[0].expires_at_ms == JAN1 + MIN_MS + 30000);
  /* A hold is no usage: no row, no event counted, no alert. */
  assert_true(used_of(f->m, "alice") == 0);
  assert_true(tly_mem_subject(f->m, "alice")->account.exists);
  assert_true(tly_mem_subject(f->m, "alice")->account.cycle.events == 0);
  assert_int_equal(f->alerts.count, 0);
  assert_true(tly_holds_held(holds->items, holds->count, "api_calls",
                             JAN1 + MIN_MS) == 7);
  assert_true(
      tly_holds_held(holds->items, holds->count, "other", JAN1 + MIN_MS) == 0);
  /* Readers leave it out once their clock passed expires_at. */
  assert_true(tly_holds_held(holds->items, holds->count, "api_calls",
                             JAN1 + MIN_MS + 30000) == 0);
  assert_int_equal(
      tly_holds_open(holds->items, holds->count, JAN1 + MIN_MS + 29999), 1);
}

/* The settling event releases the hold and counts the actual usage, more
 * or less than held, in one step. */
static void test_usage_settles(void **ctx) {
  fixture_t *f = *ctx;
  int64_t t = JAN1 + MIN_MS;
  tly_event_t a = held("alice", "rsv_a", 10, 300000, t);
  tly_event_t b = held("alice", "rsv_b", 10, 300000, t);
  assert_int_equal(fold_at(f, f->m, &a, t), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &b, t), TLY_FOLD_APPLIED);
  tly_event_t less = usage("alice", 3, "rsv_a", t + 1000);
  assert_int_equal(fold_at(f, f->m, &less, t + 1000), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  assert_string_equal(holds_of(f, "alice")->items[0].id, "rsv_b");
  assert_true(used_of(f->m, "alice") == 3);
  tly_event_t more = usage("alice", 14, "rsv_b", t + 2000);
  assert_int_equal(fold_at(f, f->m, &more, t + 2000), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 0);
  assert_true(used_of(f->m, "alice") == 17);
  /* Settled already, or never held: the usage just counts. */
  tly_event_t again = usage("alice", 2, "rsv_b", t + 3000);
  tly_event_t unknown = usage("alice", 1, "rsv_nobody", t + 3000);
  assert_int_equal(fold_at(f, f->m, &again, t + 3000), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &unknown, t + 3000), TLY_FOLD_APPLIED);
  assert_true(used_of(f->m, "alice") == 20);
  assert_int_equal(holds_of(f, "alice")->count, 0);
}

/* Another subject's id settles nothing here; a duplicate settling event
 * counts once. */
static void test_settle_is_per_subject_and_once(void **ctx) {
  fixture_t *f = *ctx;
  int64_t t = JAN1 + MIN_MS;
  tly_event_t a = held("alice", "rsv_x", 5, 300000, t);
  tly_event_t b = held("bob", "rsv_y", 5, 300000, t);
  assert_int_equal(fold_at(f, f->m, &a, t), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &b, t), TLY_FOLD_APPLIED);
  tly_event_t cross = usage("alice", 1, "rsv_y", t + 1);
  assert_int_equal(fold_at(f, f->m, &cross, t + 1), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "bob")->count, 1);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  tly_event_t settle = usage("bob", 4, "rsv_y", t + 2);
  settle.event_id = "settle-1";
  assert_int_equal(fold_at(f, f->m, &settle, t + 2), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &settle, t + 2), TLY_FOLD_DUPLICATE);
  assert_true(used_of(f->m, "bob") == 4);
  assert_int_equal(holds_of(f, "bob")->count, 0);
}

/* A usage event the fold rejects settles nothing (and counts nothing). */
static void test_rejected_usage_keeps_the_hold(void **ctx) {
  fixture_t *f = *ctx;
  int64_t t = JAN1 + 2 * 86400000LL;
  tly_event_t a = held("alice", "rsv_a", 5, 300000, t);
  assert_int_equal(fold_at(f, f->m, &a, t), TLY_FOLD_APPLIED);
  /* Before the subject's first cycle (within the dedupe window): the
   * fold rejects it in the usage step. */
  tly_event_t late = usage("alice", 1, "rsv_a", JAN1 - 86400000LL);
  assert_int_equal(fold_at(f, f->m, &late, t), TLY_FOLD_REJECTED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  assert_true(used_of(f->m, "alice") == 0);
}

static void test_release(void **ctx) {
  fixture_t *f = *ctx;
  int64_t t = JAN1 + MIN_MS;
  tly_event_t a = held("alice", "rsv_a", 5, 300000, t);
  tly_event_t b = held("alice", "rsv_b", 6, 300000, t);
  assert_int_equal(fold_at(f, f->m, &a, t), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &b, t), TLY_FOLD_APPLIED);
  tly_event_t r = released("alice", "rsv_a", t + 1);
  assert_int_equal(fold_at(f, f->m, &r, t + 1), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  assert_string_equal(holds_of(f, "alice")->items[0].id, "rsv_b");
  /* Releasing it again, or an unknown id: applied, nothing changes. */
  tly_event_t again = released("alice", "rsv_a", t + 2);
  tly_event_t unknown = released("alice", "rsv_zz", t + 2);
  assert_int_equal(fold_at(f, f->m, &again, t + 2), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &unknown, t + 2), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  assert_true(used_of(f->m, "alice") == 0);
}

/* The fold's clock is the record's Kafka timestamp (occurred_at without
 * one): holds expire at expires_at <= clock, on the subject's reservation
 * and settling events, and on a tick that reaches it; plain usage (the hot
 * path) leaves them alone. */
static void test_expiry_on_the_fold_clock(void **ctx) {
  fixture_t *f = *ctx;
  int64_t t = JAN1 + MIN_MS;
  tly_event_t a = held("alice", "rsv_a", 5, 1000, t);
  tly_event_t b = held("alice", "rsv_b", 5, 5000, t);
  assert_int_equal(fold_at(f, f->m, &a, t), TLY_FOLD_APPLIED);
  assert_int_equal(fold_at(f, f->m, &b, t), TLY_FOLD_APPLIED);
  /* An event dated later but recorded before the expiry: nothing expires
   * (a client's occurred_at does not move the clock). */
  tly_event_t early = usage("alice", 1, "rsv_none", t + 10 * MIN_MS);
  assert_int_equal(fold_at(f, f->m, &early, t + 999), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 2);
  /* Plain usage recorded past rsv_a's expiry leaves the holds alone. */
  tly_event_t plain = usage("alice", 1, NULL, t);
  assert_int_equal(fold_at(f, f->m, &plain, t + 1500), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 2);
  /* A settling event recorded exactly at rsv_a's expiry: it goes (settling
   * nothing: its id names no hold), rsv_b stays. */
  tly_event_t at = usage("alice", 1, "rsv_none", t);
  assert_int_equal(fold_at(f, f->m, &at, t + 1000), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  assert_string_equal(holds_of(f, "alice")->items[0].id, "rsv_b");
  /* Without a record time the event's own time is the clock. */
  tly_event_t untimed = released("alice", "rsv_none", t + 4999);
  assert_int_equal(fold_at(f, f->m, &untimed, 0), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  /* A tick at rsv_b's expiry drops it, with no event of the subject. */
  assert_true(tly_subject_due_ms(&tly_mem_subject(f->m, "alice")->account,
                                 holds_of(f, "alice")->items,
                                 holds_of(f, "alice")->count) == t + 5000);
  assert_int_equal(tly_billing_tick(&f->billing, &f->m->view, TLY_SUBJECT_USER,
                                    "alice", t + 4999, &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 1);
  assert_int_equal(tly_billing_tick(&f->billing, &f->m->view, TLY_SUBJECT_USER,
                                    "alice", t + 5000, &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, 0);
  /* With no holds the subject is due at its cycle's end again. */
  assert_true(
      tly_subject_due_ms(&tly_mem_subject(f->m, "alice")->account, NULL, 0) ==
      tly_mem_subject(f->m, "alice")->account.cycle.end_ms);
  assert_true(used_of(f->m, "alice") == 3);
}

/* The same id twice keeps the first hold; past TLY_HOLDS_MAX open holds a
 * hold is rejected and nothing changes, until one has expired. */
static void test_duplicate_id_and_bound(void **ctx) {
  fixture_t *f = *ctx;
  int64_t t = JAN1 + MIN_MS;
  char ids[TLY_HOLDS_MAX + 1][16];
  for (int i = 0; i < TLY_HOLDS_MAX; i++) {
    snprintf(ids[i], sizeof(ids[i]), "rsv_%d", i);
    /* The first expires soonest. */
    tly_event_t e = held("alice", ids[i], 1, i == 0 ? 1000 : 300000, t);
    assert_int_equal(fold_at(f, f->m, &e, t), TLY_FOLD_APPLIED);
  }
  tly_event_t dup = held("alice", "rsv_0", 9, 300000, t);
  assert_int_equal(fold_at(f, f->m, &dup, t), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, TLY_HOLDS_MAX);
  assert_true(holds_of(f, "alice")->items[0].quantity == 1);
  snprintf(ids[TLY_HOLDS_MAX], sizeof(ids[0]), "rsv_new");
  tly_event_t over = held("alice", ids[TLY_HOLDS_MAX], 1, 300000, t);
  assert_int_equal(fold_at(f, f->m, &over, t + 999), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "at most 100"));
  assert_int_equal(holds_of(f, "alice")->count, TLY_HOLDS_MAX);
  assert_true(holds_of(f, "alice")->items[0].expires_at_ms == t + 1000);
  /* Once rsv_0 expired by the record's time there is room. */
  over.event_id = NULL;
  assert_int_equal(fold_at(f, f->m, &over, t + 1000), TLY_FOLD_APPLIED);
  assert_int_equal(holds_of(f, "alice")->count, TLY_HOLDS_MAX);
  assert_int_equal(tly_holds_find(holds_of(f, "alice")->items,
                                  holds_of(f, "alice")->count, "rsv_0"),
                   -1);
  assert_true(tly_holds_find(holds_of(f, "alice")->items,
                             holds_of(f, "alice")->count, "rsv_new") >= 0);
}

/* A view without holds (an older caller) rejects reservation events and
 * still counts settling usage. */
static void test_view_without_holds(void **ctx) {
  fixture_t *f = *ctx;
  tly_mem_view_t *m = tly_mem_view_new(0);
  tly_event_t a = held("alice", "rsv_a", 5, 300000, JAN1 + MIN_MS);
  assert_int_equal(fold_at(f, m, &a, 0), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "no reservations"));
  tly_event_t u = usage("alice", 2, "rsv_a", JAN1 + MIN_MS);
  assert_int_equal(fold_at(f, m, &u, 0), TLY_FOLD_APPLIED);
  assert_true(used_of(m, "alice") == 2);
  tly_mem_view_free(m);
}

/* The same records give the same holds, whoever folds them. */
static void test_replay_decides_the_same(void **ctx) {
  fixture_t *f = *ctx;
  tly_mem_view_t *runs[2] = {f->m, tly_mem_view_new(TLY_MEM_WITH_HOLDS)};
  int64_t t = JAN1 + MIN_MS;
  for (int run = 0; run < 2; run++) {
    f->counter = 0;
    for (int i = 0; i < 30; i++) {
      char id[16];
      snprintf(id, sizeof(id), "rsv_%d", i);
      tly_event_t e = held("alice", id, i + 1, 1000 + 100 * i, t + 10 * i);
      assert_int_equal(fold_at(f, runs[run], &e, t + 10 * i), TLY_FOLD_APPLIED);
      if (i % 3 == 0) {
        snprintf(id, sizeof(id), "rsv_%d", i / 2);
        tly_event_t u = usage("alice", 1, id, t + 10 * i + 5);
        assert_int_equal(fold_at(f, runs[run], &u, t + 10 * i + 1500),
                         TLY_FOLD_APPLIED);
      }
    }
  }
  const tly_holds_t *a = &tly_mem_subject(runs[0], "alice")->holds;
  const tly_holds_t *b = &tly_mem_subject(runs[1], "alice")->holds;
  assert_true(a->count > 0);
  assert_int_equal(a->count, b->count);
  assert_memory_equal(a->items, b->items, a->count * sizeof(a->items[0]));
  assert_true(used_of(runs[0], "alice") == used_of(runs[1], "alice"));
  tly_mem_view_free(runs[1]);
}

/* The subject record keeps holds (version 4); without holds it is version
 * 3, byte for byte what it was. */
static void test_record_encoding(void **ctx) {
  fixture_t *f = *ctx;
  tly_account_t account = {.exists = 1, .plan = "t"};
  account.cycle = (tly_cycle_t){JAN1, JAN1 + 31 * 86400000LL, 0, 0};
  tly_subject_row_t row = {.cycle_start_ms = JAN1, .feature = "api_calls"};
  row.row.quantity = 3;
  row.row.event_count = 1;
  const tly_subject_row_t *rows[] = {&row};
  tly_hold_t holds[2] = {
      {.id = "rsv_a",
       .feature = "api_calls",
       .quantity = 5,
       .expires_at_ms = JAN1 + 1000},
      {.id = "rsv_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
       .feature = "f",
       .quantity = TLY_RESERVATION_QUANTITY_MAX,
       .expires_at_ms = 253402300799999LL}};
  unsigned char plain[512], with[1024], again[512];
  (void)f;
  size_t plain_len =
      tly_subject_record_encode(&account, rows, 1, NULL, 0, plain, 512);
  size_t again_len = tly_subject_record_encode_holds(&account, rows, 1, NULL, 0,
                                                     NULL, 0, again, 512);
  assert_int_equal(plain_len, again_len);
  assert_memory_equal(plain, again, plain_len);
  assert_int_equal(plain[0], 3);
  size_t len = tly_subject_record_encode_holds(&account, rows, 1, NULL, 0,
                                               holds, 2, with, sizeof(with));
  assert_true(len <= sizeof(with));
  assert_int_equal(with[0], 4);
  /* Version 4 is version 3's bytes, then the holds. */
  assert_memory_equal(with + 1, plain + 1, plain_len - 1);

  tly_subject_record_t record;
  assert_int_equal(tly_subject_record_decode(with, len, &record), 0);
  assert_int_equal(record.hold_count, 2);
  assert_memory_equal(record.holds, holds, sizeof(holds));
  assert_int_equal(record.row_count, 1);
  assert_true(record.rows[0].row.quantity == 3);
  tly_subject_record_clear(&record);
  assert_int_equal(tly_subject_record_decode(plain, plain_len, &record), 0);
  assert_int_equal(record.hold_count, 0);
  assert_null(record.holds);
  tly_subject_record_clear(&record);

  /* Every truncation and a trailing byte are refused. */
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_subject_record_decode(with, cut, &record), -1);
  with[len] = 0;
  assert_int_equal(tly_subject_record_decode(with, len + 1, &record), -1);
  /* Version 4 with no holds, or more than TLY_HOLDS_MAX, is malformed. */
  memcpy(again, plain, plain_len);
  again[0] = 4;
  again[plain_len] = 0;
  assert_int_equal(tly_subject_record_decode(again, plain_len + 1, &record),
                   -1);
  again[plain_len] = TLY_HOLDS_MAX + 1;
  assert_int_equal(tly_subject_record_decode(again, plain_len + 1, &record),
                   -1);
  /* A hold of quantity 0 is malformed. */
  holds[0].quantity = 0;
  len = tly_subject_record_encode_holds(&account, rows, 1, NULL, 0, holds, 1,
                                        with, sizeof(with));
  assert_int_equal(tly_subject_record_decode(with, len, &record), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_held_is_recorded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_usage_settles, setup, teardown),
      cmocka_unit_test_setup_teardown(test_settle_is_per_subject_and_once,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_rejected_usage_keeps_the_hold, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_release, setup, teardown),
      cmocka_unit_test_setup_teardown(test_expiry_on_the_fold_clock, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_duplicate_id_and_bound, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_view_without_holds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_replay_decides_the_same, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_record_encoding, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
