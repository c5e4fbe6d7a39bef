/*
 * test_dedupe_floor.c - raising the dedupe window never counts an event
 * whose id the smaller window may have let go (issue 17, backfill):
 *   1. `tally run` with events.dedupe_window_ms = 1 hour: an event at T, one
 *      at T - 30 min (folded) and one at T - 2 h (dead-lettered: older than
 *      the window);
 *   2. stopped, restarted on the same state dir with the default window
 *      (35 days): the T - 30 min event again is a duplicate (refused), a
 *      new event at T - 2 h is dead-lettered (older than the dedupe floor
 *      T - 1 h: the old window's ids before it are not all known, although
 *      35 days reach back that far), a new event at T - 50 min counts;
 *   3. the totals are exact to the unit.
 * Without the floor, step 2's T - 2 h event would count.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_log.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 1
#define MINUTE_MS 60000LL

static int64_t base_ms; /* T */

static void send(const char *bootstrap, const char *event_id, int64_t at,
                 int64_t quantity) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  tly_event_t event = {0};
  event.event_id = (char *)event_id;
  event.occurred_at_ms = at;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = "floor-1";
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.unit = "call";
  event.body.usage.quantity = quantity;
  assert_int_equal(
      tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
  assert_int_equal(tally_producer_flush(producer, 60000), 0);
  tally_producer_destroy(producer);
}

/* The subject's api_calls events and quantity over the whole cycle. */
static void expect_totals(int port, long long events, long long quantity) {
  char path[128], *body;
  long status;
  json_error_t error;
  snprintf(path, sizeof(path), "/v1/subjects/user:floor-1/usage?at=%lld",
           (long long)base_ms);
  assert_int_equal(th_http_get(port, path, &status, &body), 0);
  assert_int_equal(status, 200);
  json_t *json = json_loads(body, 0, &error);
  free(body);
  json_t *row = json_object_get(json_object_get(json, "features"), "api_calls");
  assert_int_equal(json_integer_value(json_object_get(row, "events")), events);
  assert_int_equal(json_integer_value(json_object_get(row, "quantity")),
                   quantity);
  json_decref(json);
}

static void settle(const th_run_t *run, const char *bootstrap) {
  assert_int_equal(th_wait_caught_up(run->port, bootstrap, "tally.usage",
                                     PARTITIONS, 120000),
                   0);
}

static void test_raised_window_keeps_exactly_once(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("dedupe-floor");
  char state_dir[600], small[700], large[700];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(small, sizeof(small), "%s/small.json", dir);
  snprintf(large, sizeof(large), "%s/large.json", dir);
  FILE *file = fopen(small, "w");
  assert_non_null(file);
  fputs("{\"events\": {\"dedupe_window_ms\": 3600000}}\n", file);
  fclose(file);
  file = fopen(large, "w");
  assert_non_null(file);
  fputs("{}\n", file); /* the default: 35 days */
  fclose(file);
  /* Inside the current cycle (a month), hours before now. */
  base_ms = tly_wall_ms() - 5 * MINUTE_MS;
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);

  /* 1. A 1-hour window. */
  const char *extra_small[] = {"--config", small, NULL};
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra_small),
                   0);
  send(broker.bootstrap, "floor-now", base_ms, 1);
  send(broker.bootstrap, "floor-30m", base_ms - 30 * MINUTE_MS, 10);
  send(broker.bootstrap, "floor-2h", base_ms - 120 * MINUTE_MS, 100);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 1);
  expect_totals(run.port, 2, 11);
  assert_int_equal(th_stop(run.pid), 0);

  /* 2. Restarted with 35 days. */
  const char *extra_large[] = {"--config", large, NULL};
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra_large),
                   0);
  send(broker.bootstrap, "floor-30m", base_ms - 30 * MINUTE_MS, 10);
  send(broker.bootstrap, "floor-2h-new", base_ms - 120 * MINUTE_MS, 1000);
  send(broker.bootstrap, "floor-50m", base_ms - 50 * MINUTE_MS, 10000);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 1);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 1);
  expect_totals(run.port, 3, 10011);

  /* 3. Once more after a SIGKILL: the floor is stored, not remembered. */
  th_kill9(run.pid);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra_large),
                   0);
  send(broker.bootstrap, "floor-2h-again", base_ms - 119 * MINUTE_MS, 100000);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 1);
  expect_totals(run.port, 3, 10011);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_raised_window_keeps_exactly_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
