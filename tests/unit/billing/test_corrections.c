/*
 * test_corrections.c - usage_corrected (tly_corrections.h) over an
 * in-memory state view. The table: streams of usage events and
 * corrections (amend, retract, correct twice, retract then bring back,
 * count, tokens with their sub-micro remainder, graduated tiers, a closed
 * cycle), each folded and compared with the stream "as if sent right"
 * (the corrected events' final quantities in their place, retracted ones
 * left out): the rows (value, tokens, events, cost and remainder), the
 * cycles' cost and events, and every hour's quantity, tokens and events
 * must be equal, and the hours' costs must add up to the cycle's. Then the
 * refusals (unknown id, another feature, max/latest/unique_count, an
 * original older than the dedupe window, a correction of a correction)
 * with their reasons and nothing changed; a correction folded twice (its
 * own id) applied once; thresholds crossed once; the contribution
 * encoding round trip and its malformed prefixes.
 */
#include "tly_billing.h"
#include "tly_corrections.h"
#include "tly_mem_view.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define JAN1 1767225600000LL /* 2026-01-01T00:00:00Z */
#define FEB1 1769904000000LL /* 2026-02-01T00:00:00Z */
#define HOUR 3600000LL
#define DAY 86400000LL

static const char *config_json =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"pricing\": {\"margin_bps\": 2000, \"unknown_model\": \"dead_letter\","
    "   \"models\": {\"m1\": {\"input_per_mtok\": 1000003, "
    "                        \"output_per_mtok\": 3000007}}},"
    " \"thresholds\": [50, 100],"
    " \"cycles\": {\"anchor\": \"2026-01-01T00:00:00Z\"},"
    " \"default_plans\": {\"user\": \"t\", \"api_key\": \"t\", "
    "                     \"anonymous\": \"t\"},"
    " \"meters\": {\"calls\": {\"aggregation\": \"count\"},"
    "              \"peak\": {\"aggregation\": \"max\"},"
    "              \"gauge\": {\"aggregation\": \"latest\"}},"
    " \"plans\": {\"t\": {\"credits\": -1,"
    "   \"limits\": {\"api\": {\"limit\": 10, \"mode\": \"hard\"}},"
    "   \"prices\": {"
    "     \"api\": {\"model\": \"graduated\", \"tiers\": ["
    "        {\"up_to\": 5, \"unit_micros\": 1000},"
    "        {\"up_to\": null, \"unit_micros\": 300}]},"
    "     \"bytes\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 3}]},"
    "     \"calls\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 10}]}}"
    "}}}";

/* A view with contributions (tly_mem_view.h), afresh. */
static tly_mem_view_t *renew(tly_mem_view_t *m) {
  tly_mem_view_free(m);
  return tly_mem_view_new(TLY_MEM_WITH_CONTRIBUTIONS);
}

/* The one subject's account. */
static tly_account_t *account_of(tly_mem_view_t *m) {
  return &tly_mem_subject(m, "alice")->account;
}

typedef tly_mem_fixture_t fixture_t;

static int setup(void **ctx) {
  *ctx = tly_mem_fixture_new(config_json, TLY_MEM_WITH_CONTRIBUTIONS, 1);
  return *ctx ? 0 : -1;
}

static int teardown(void **ctx) {
  tly_mem_fixture_free(*ctx);
  return 0;
}

/* One step: usage (corrects NULL) or a correction. tokens < 0: no ai. */
typedef struct {
  const char *event_id;
  const char *corrects;
  const char *feature;
  int64_t quantity;
  int64_t at_ms;
  int64_t in, out; /* ai tokens (model m1) when in >= 0 */
} step_t;

static tly_fold_result_t fold_into(fixture_t *f, tly_mem_view_t *m,
                                   const step_t *s) {
  tly_event_t e = {.event_id = (char *)s->event_id,
                   .occurred_at_ms = s->at_ms,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = "alice",
                   .body_kind = s->corrects ? TLY_BODY_USAGE_CORRECTED
                                            : TLY_BODY_USAGE_RECORDED};
  e.body.usage.feature = (char *)s->feature;
  e.body.usage.quantity = s->quantity;
  e.body.usage.unit = "";
  e.body.usage.corrects = (char *)s->corrects;
  if (s->in >= 0) {
    e.body.usage.has_ai = 1;
    e.body.usage.ai = (tly_ai_usage_t){"p", "m1", s->in, s->out};
  }
  return tly_billing_fold(&f->billing, &m->view, &e, &f->alerts, f->errstr,
                          sizeof(f->errstr));
}

static void assert_rows_equal(const tly_mem_view_t *a,
                              const tly_mem_view_t *b) {
  for (size_t i = 0; i < b->row_count; i++) {
    const tly_billing_row_t *want = &b->rows[i].row, *got = NULL;
    for (size_t j = 0; j < a->row_count && !got; j++)
      if (a->rows[j].cycle == b->rows[i].cycle &&
          !strcmp(a->rows[j].feature, b->rows[i].feature))
        got = &a->rows[j].row;
    if (!got)
      fail_msg("row %s missing", b->rows[i].feature);
    if (got->quantity != want->quantity ||
        got->input_tokens != want->input_tokens ||
        got->output_tokens != want->output_tokens ||
        got->event_count != want->event_count ||
        got->cost_micros != want->cost_micros ||
        got->cost_remainder != want->cost_remainder)
      fail_msg("row %s: quantity %lld/%lld tokens %lld,%lld/%lld,%lld events "
               "%lld/%lld cost %lld/%lld remainder %lld/%lld",
               b->rows[i].feature, (long long)got->quantity,
               (long long)want->quantity, (long long)got->input_tokens,
               (long long)got->output_tokens, (long long)want->input_tokens,
               (long long)want->output_tokens, (long long)got->event_count,
               (long long)want->event_count, (long long)got->cost_micros,
               (long long)want->cost_micros, (long long)got->cost_remainder,
               (long long)want->cost_remainder);
  }
  /* rows a has that b lacks must be empty */
  for (size_t i = 0; i < a->row_count; i++) {
    int in_b = 0;
    for (size_t j = 0; j < b->row_count; j++)
      in_b |= a->rows[i].cycle == b->rows[j].cycle &&
              !strcmp(a->rows[i].feature, b->rows[j].feature);
    if (!in_b)
      assert_int_equal(a->rows[i].row.event_count, 0);
  }
}

/* Every hour's quantity, tokens and events; the costs' sum per feature. */
static void assert_hours_equal(const tly_mem_view_t *a,
                               const tly_mem_view_t *b) {
  const tly_mem_view_t *sides[2] = {a, b};
  for (int s = 0; s < 2; s++)
    for (size_t i = 0; i < sides[s]->bucket_count; i++) {
      const tly_mem_bucket_t *x = &sides[s]->buckets[i];
      tly_bucket_t other = {0};
      const tly_mem_view_t *o = sides[1 - s];
      for (size_t j = 0; j < o->bucket_count; j++)
        if (o->buckets[j].hour == x->hour &&
            !strcmp(o->buckets[j].name, x->name))
          other = o->buckets[j].bucket;
      if (x->bucket.quantity != other.quantity ||
          x->bucket.input_tokens != other.input_tokens ||
          x->bucket.output_tokens != other.output_tokens ||
          x->bucket.event_count != other.event_count)
        fail_msg("hour %d of %s: %lld events %lld against %lld events %lld",
                 (int)x->hour, x->name, (long long)x->bucket.quantity,
                 (long long)x->bucket.event_count, (long long)other.quantity,
                 (long long)other.event_count);
    }
}

/* The buckets' costs add up to the cycles' cost (one subject). */
static void assert_costs_add_up(tly_mem_view_t *m) {
  const tly_account_t *account = account_of(m);
  int64_t hours = 0, cycles = account->cycle.cost_micros;
  for (size_t i = 0; i < m->bucket_count; i++)
    hours += m->buckets[i].bucket.cost_micros;
  for (size_t i = 0; i < account->history_count; i++)
    cycles += account->history[i].cost_micros;
  assert_int_equal(hours, cycles);
}

static void assert_cycles_equal(tly_mem_view_t *m, tly_mem_view_t *ref) {
  const tly_account_t *a = account_of(m), *b = account_of(ref);
  assert_int_equal(a->cycle.cost_micros, b->cycle.cost_micros);
  assert_int_equal(a->cycle.events, b->cycle.events);
  assert_int_equal(a->history_count, b->history_count);
  for (size_t i = 0; i < a->history_count; i++) {
    assert_int_equal(a->history[i].cost_micros, b->history[i].cost_micros);
    assert_int_equal(a->history[i].events, b->history[i].events);
  }
}

#define NO_AI -1, 0
#define MAX_STEPS 8

typedef struct {
  const char *name;
  step_t stream[MAX_STEPS];    /* with corrections */
  step_t reference[MAX_STEPS]; /* as if sent right */
} case_t;

static void table(void **ctx) {
  fixture_t *f = *ctx;
  const case_t cases[] = {
      {"sum amend",
       {{"e1", NULL, "bytes", 5, JAN1, NO_AI},
        {"e2", NULL, "bytes", 3, JAN1 + HOUR, NO_AI},
        {"c1", "e1", "bytes", 2, JAN1 + 2 * HOUR, NO_AI}},
       {{"e1", NULL, "bytes", 2, JAN1, NO_AI},
        {"e2", NULL, "bytes", 3, JAN1 + HOUR, NO_AI}}},
      {"sum retract",
       {{"e1", NULL, "bytes", 5, JAN1, NO_AI},
        {"e2", NULL, "bytes", 3, JAN1 + HOUR, NO_AI},
        {"c1", "e1", "bytes", 0, JAN1 + HOUR, NO_AI}},
       {{"e2", NULL, "bytes", 3, JAN1 + HOUR, NO_AI}}},
      {"sum corrected twice: the latest wins",
       {{"e1", NULL, "bytes", 5, JAN1, NO_AI},
        {"c1", "e1", "bytes", 2, JAN1 + HOUR, NO_AI},
        {"c2", "e1", "bytes", 7, JAN1 + HOUR, NO_AI}},
       {{"e1", NULL, "bytes", 7, JAN1, NO_AI}}},
      {"retracted, then brought back",
       {{"e1", NULL, "bytes", 5, JAN1, NO_AI},
        {"e2", NULL, "bytes", 1, JAN1 + 3 * HOUR, NO_AI},
        {"c1", "e1", "bytes", 0, JAN1 + 3 * HOUR, NO_AI},
        {"c2", "e1", "bytes", 4, JAN1 + 3 * HOUR, NO_AI}},
       {{"e1", NULL, "bytes", 4, JAN1, NO_AI},
        {"e2", NULL, "bytes", 1, JAN1 + 3 * HOUR, NO_AI}}},
      {"count: retraction removes the event, an amend keeps it",
       {{"e1", NULL, "calls", 1, JAN1, NO_AI},
        {"e2", NULL, "calls", 1, JAN1 + HOUR, NO_AI},
        {"e3", NULL, "calls", 1, JAN1 + HOUR, NO_AI},
        {"c1", "e2", "calls", 0, JAN1 + 2 * HOUR, NO_AI},
        {"c2", "e3", "calls", 9, JAN1 + 2 * HOUR, NO_AI}},
       {{"e1", NULL, "calls", 1, JAN1, NO_AI},
        {"e3", NULL, "calls", 9, JAN1 + HOUR, NO_AI}}},
      {"tokens: the remainder stays exact",
       {{"e1", NULL, "tok", 1500, JAN1, 1000, 500},
        {"e2", NULL, "tok", 7, JAN1 + HOUR, 3, 4},
        {"c1", "e1", "tok", 20, JAN1 + HOUR, 13, 7},
        {"c2", "e2", "tok", 0, JAN1 + HOUR, 0, 0}},
       {{"e1", NULL, "tok", 20, JAN1, 13, 7}}},
      {"graduated tiers priced on the corrected value",
       {{"e1", NULL, "api", 4, JAN1, NO_AI},
        {"e2", NULL, "api", 4, JAN1 + HOUR, NO_AI},
        {"c1", "e1", "api", 1, JAN1 + HOUR, NO_AI}},
       {{"e1", NULL, "api", 1, JAN1, NO_AI},
        {"e2", NULL, "api", 4, JAN1 + HOUR, NO_AI}}},
      {"a closed cycle's event",
       {{"e1", NULL, "bytes", 5, FEB1 - HOUR, NO_AI},
        {"e2", NULL, "bytes", 2, FEB1 + HOUR, NO_AI},
        {"c1", "e1", "bytes", 1, FEB1 + 2 * HOUR, NO_AI}},
       {{"e1", NULL, "bytes", 1, FEB1 - HOUR, NO_AI},
        {"e2", NULL, "bytes", 2, FEB1 + HOUR, NO_AI}}},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    f->m = renew(f->m);
    f->ref = renew(f->ref);
    for (size_t i = 0; i < MAX_STEPS && cases[c].stream[i].event_id; i++)
      if (fold_into(f, f->m, &cases[c].stream[i]) != TLY_FOLD_APPLIED)
        fail_msg("%s: step %zu: %s", cases[c].name, i, f->errstr);
    for (size_t i = 0; i < MAX_STEPS && cases[c].reference[i].event_id; i++)
      if (fold_into(f, f->ref, &cases[c].reference[i]) != TLY_FOLD_APPLIED)
        fail_msg("%s: reference step %zu: %s", cases[c].name, i, f->errstr);
    print_message("case: %s\n", cases[c].name);
    assert_rows_equal(f->m, f->ref);
    assert_hours_equal(f->m, f->ref);
    assert_cycles_equal(f->m, f->ref);
    assert_costs_add_up(f->m);
  }
}

/* Refused with the reason, and nothing changed. */
static void refusals(void **ctx) {
  fixture_t *f = *ctx;
  static const struct {
    step_t step;
    const char *reason;
  } bad[] = {
      {{"r1", "nope", "bytes", 1, JAN1 + 8 * DAY, NO_AI},
       "no usage event of subject user:alice"},
      {{"r2", "e2", "calls", 1, JAN1 + 8 * DAY, NO_AI},
       "the event is of feature 'bytes', not 'calls'"},
      {{"r3", "p1", "peak", 1, JAN1 + 8 * DAY, NO_AI},
       "feature 'peak' aggregates with max"},
      {{"r4", "g1", "gauge", 1, JAN1 + 8 * DAY, NO_AI},
       "feature 'gauge' aggregates with latest"},
      {{"r5", "e1", "bytes", 1, JAN1 + 8 * DAY, NO_AI},
       "older than the dedupe window"},
      {{"r6", "c1", "bytes", 1, JAN1 + 8 * DAY, NO_AI}, "no usage event"},
  };
  const step_t before[] = {
      {"e1", NULL, "bytes", 5, JAN1, NO_AI},
      {"p1", NULL, "peak", 5, JAN1 + 2 * DAY, NO_AI},
      {"g1", NULL, "gauge", 5, JAN1 + 2 * DAY, NO_AI},
      {"e2", NULL, "bytes", 3, JAN1 + 2 * DAY, NO_AI},
      {"c1", "e2", "bytes", 4, JAN1 + 8 * DAY, NO_AI},
  };
  f->m = renew(f->m);
  for (size_t i = 0; i < sizeof(before) / sizeof(before[0]); i++)
    assert_int_equal(fold_into(f, f->m, &before[i]), TLY_FOLD_APPLIED);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    static tly_mem_view_t snapshot;
    memcpy(&snapshot, f->m, sizeof(snapshot)); /* compared as bytes */
    tly_fold_result_t result = fold_into(f, f->m, &bad[i].step);
    if (result != TLY_FOLD_REJECTED || !strstr(f->errstr, bad[i].reason))
      fail_msg("case %zu: result %d, '%s' lacks '%s'", i, (int)result,
               f->errstr, bad[i].reason);
    assert_memory_equal(f->m->rows, snapshot.rows, sizeof(snapshot.rows));
    assert_memory_equal(f->m->buckets, snapshot.buckets,
                        sizeof(snapshot.buckets));
    assert_memory_equal(f->m->contributions, snapshot.contributions,
                        sizeof(snapshot.contributions));
    assert_memory_equal(account_of(f->m), account_of(&snapshot),
                        sizeof(tly_account_t));
    assert_int_equal(f->m->seen_count, snapshot.seen_count);
  }
  /* The correction c1 again (its own id): a duplicate, applied once. */
  step_t again = before[4];
  again.quantity = 1;
  assert_int_equal(fold_into(f, f->m, &again), TLY_FOLD_DUPLICATE);
  const tly_billing_row_t *row =
      f->m->view.row(&f->m->view, TLY_SUBJECT_USER, "alice", JAN1, "bytes");
  assert_int_equal(row->quantity, 9); /* 5 + 4 */
  assert_int_equal(row->event_count, 2);
}

/* Thresholds: reached by a correction, fired once; a fall re-arms none. */
static void thresholds(void **ctx) {
  fixture_t *f = *ctx;
  const step_t steps[] = {
      {"e1", NULL, "api", 4, JAN1, NO_AI},
      {"e2", NULL, "api", 4, JAN1 + HOUR, NO_AI}, /* 8 of 10: 50 % */
      {"c1", "e1", "api", 6, JAN1 + HOUR, NO_AI}, /* 10: 100 % */
      {"c2", "e1", "api", 1, JAN1 + HOUR, NO_AI}, /* 5: nothing */
      {"c3", "e1", "api", 7, JAN1 + HOUR, NO_AI}, /* 11: nothing again */
  };
  const size_t alerts_after[] = {0, 1, 2, 2, 2};
  f->m = renew(f->m);
  tly_alert_list_clear(&f->alerts);
  for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
    assert_int_equal(fold_into(f, f->m, &steps[i]), TLY_FOLD_APPLIED);
    assert_int_equal(f->alerts.count, alerts_after[i]);
  }
  assert_string_equal(f->alerts.items[1].alert_id,
                      "limit_exceeded:user:alice:1767225600000:api:100");
  tly_alert_list_clear(&f->alerts);
}

static void encoding(void **state) {
  (void)state;
  tly_contribution_t c = {.occurred_at_ms = JAN1 + 5,
                          .cycle_start_ms = JAN1,
                          .quantity = INT64_MAX,
                          .input_tokens = 3,
                          .output_tokens = 0,
                          .numerator = 123456789012345LL,
                          .counted = 1,
                          .feature = "ai_tokens"},
                     back;
  unsigned char bytes[TLY_CONTRIBUTION_MAX];
  size_t len = tly_contribution_encode(&c, bytes);
  assert_true(len <= TLY_CONTRIBUTION_MAX);
  assert_int_equal(tly_contribution_decode(bytes, len, &back), 0);
  assert_true(back.occurred_at_ms == c.occurred_at_ms &&
              back.cycle_start_ms == c.cycle_start_ms &&
              back.quantity == c.quantity &&
              back.input_tokens == c.input_tokens &&
              back.output_tokens == c.output_tokens &&
              back.numerator == c.numerator && back.counted == c.counted);
  assert_string_equal(back.feature, c.feature);
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_contribution_decode(bytes, cut, &back), -1);
  bytes[8] = 9; /* another version */
  assert_int_equal(tly_contribution_decode(bytes, len, &back), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(table, setup, teardown),
      cmocka_unit_test_setup_teardown(refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(thresholds, setup, teardown),
      cmocka_unit_test(encoding),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
