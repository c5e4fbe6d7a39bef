/*
 * test_restart_state.c - which restarts restore a partition's state from
 * the changelog (tally.changelog) and which replay the input from the
 * state dir (issue 15), each with totals exact to the unit:
 *   1. current: SIGKILL, events arrive while the instance is down (the
 *      input's tail is then far longer than the changelog), restart on
 *      the same state dir: no partition is restored (the store holds all
 *      the changelog holds); only the tail is folded;
 *   2. fresh: another instance on an empty state dir restores every
 *      partition, then folds more (the changelog is now ahead of the
 *      first state dir);
 *   3. stale: the first instance again on its old state dir: the
 *      changelog holds newer state, and reading it is shorter than
 *      replaying the input: restored.
 */
#include "harness.h"

#include "tally_producer.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECTS 8
/* Few subjects, many events each: a commit's changelog records are a few
 * per subject, so each phase's events are far more than the changelog
 * records they make. */
#define EVENTS_BEFORE 2000
#define EVENTS_WHILE_DOWN 4000
#define EVENTS_ELSEWHERE 4000
#define AT_MS 1763800000000LL

static long long expected_quantity[SUBJECTS], expected_events[SUBJECTS];
static int sent;

/* count events from the test's own sequence, flushed before returning. */
static void produce(const char *bootstrap, int count) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[32];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int i = 0; i < count; i++, sent++) {
    int s = sent % SUBJECTS;
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "rs-%d", s);
    snprintf(event_id, sizeof(event_id), "rs-%d", sent);
    event.event_id = event_id;
    event.occurred_at_ms = AT_MS + sent;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    event.body.usage.feature = "api_calls";
    event.body.usage.unit = "call";
    event.body.usage.quantity = 1 + sent % 7;
    assert_int_equal(
        tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
    expected_quantity[s] += event.body.usage.quantity;
    expected_events[s]++;
  }
  assert_int_equal(tally_producer_flush(producer, 60000), 0);
  tally_producer_stats_t stats;
  tally_producer_stats(producer, &stats);
  assert_int_equal(stats.failed, 0);
  tally_producer_destroy(producer);
}

/* Every subject's totals on the instance at port, to the unit. */
static void verify_totals(int port) {
  for (int s = 0; s < SUBJECTS; s++) {
    char path[128], *body;
    long status;
    json_error_t error;
    snprintf(path, sizeof(path), "/v1/subjects/user:rs-%d/usage?at=%lld", s,
             AT_MS);
    assert_int_equal(th_http_get(port, path, &status, &body), 0);
    assert_int_equal(status, 200);
    json_t *json = json_loads(body, 0, &error);
    free(body);
    json_t *row =
        json_object_get(json_object_get(json, "features"), "api_calls");
    assert_int_equal(json_integer_value(json_object_get(row, "events")),
                     expected_events[s]);
    assert_int_equal(json_integer_value(json_object_get(row, "quantity")),
                     expected_quantity[s]);
    json_decref(json);
  }
}

/* Caught up with the input, and every commit's changelog bundle (and
 * output) acknowledged. */
static void settle(const th_run_t *run, const char *bootstrap) {
  assert_int_equal(th_wait_caught_up(run->port, bootstrap, "tally.usage",
                                     PARTITIONS, 120000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run->port, 60000), 0);
}

static void test_restart_restores_only_stale_state(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b;
  /* One instance at a time; no standby copies, which would build a
   * partition's state from the changelog before it is assigned (while a
   * stopped instance still looks alive) and be counted apart from
   * restores (test_standby covers them). */
  const char *const extra[] = {"--standby-replicas", "0", NULL};
  char *dir = th_mkdtemp("restart-state");
  char dir_a[600], dir_b[600];
  snprintf(dir_a, sizeof(dir_a), "%s/a", dir);
  snprintf(dir_b, sizeof(dir_b), "%s/b", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);

  assert_int_equal(th_run_start(&a, broker.bootstrap, dir_a, extra), 0);
  produce(broker.bootstrap, EVENTS_BEFORE);
  settle(&a, broker.bootstrap);
  assert_int_equal(th_metric_sum(a.port, "tally_changelog_restores_total"), 0);
  /* The partitions the subjects landed on: those have state. */
  int64_t high[PARTITIONS];
  int with_state = 0;
  assert_int_equal(
      th_high_watermarks(broker.bootstrap, "tally.usage", PARTITIONS, high), 0);
  for (int p = 0; p < PARTITIONS; p++)
    with_state += high[p] > 0;
  assert_true(with_state >= 2);

  /* 1. Current state dir, long tail: replayed, not restored. */
  th_kill9(a.pid);
  produce(broker.bootstrap, EVENTS_WHILE_DOWN);
  assert_int_equal(th_run_start(&a, broker.bootstrap, dir_a, extra), 0);
  settle(&a, broker.bootstrap);
  long long restores = th_metric_sum(a.port, "tally_changelog_restores_total");
  printf("# restart on a current state dir: %lld partitions restored\n",
         restores);
  assert_int_equal(restores, 0);
  assert_int_equal(th_metric_sum(a.port, "tally_events_folded_total"),
                   EVENTS_WHILE_DOWN);
  verify_totals(a.port);
  assert_int_equal(th_stop(a.pid), 0);

  /* 2. A fresh state dir: every partition restored, then more folded. */
  assert_int_equal(th_run_start(&b, broker.bootstrap, dir_b, extra), 0);
  produce(broker.bootstrap, EVENTS_ELSEWHERE);
  settle(&b, broker.bootstrap);
  restores = th_metric_sum(b.port, "tally_changelog_restores_total");
  printf("# fresh state dir: %lld partitions restored\n", restores);
  assert_int_equal(restores, with_state);
  verify_totals(b.port);
  assert_int_equal(th_stop(b.pid), 0);

  /* 3. The first state dir again: stale, the changelog ahead. */
  assert_int_equal(th_run_start(&a, broker.bootstrap, dir_a, extra), 0);
  settle(&a, broker.bootstrap);
  restores = th_metric_sum(a.port, "tally_changelog_restores_total");
  printf("# stale state dir: %lld partitions restored\n", restores);
  assert_int_equal(restores, with_state);
  verify_totals(a.port);
  assert_int_equal(th_stop(a.pid), 0);

  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_restart_restores_only_stale_state),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
