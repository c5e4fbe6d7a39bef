/*
 * test_ticks.c - an idle subject's cycle still closes: the processor writes
 * Tick events into its partitions on a schedule, and a tick past a cycle's
 * end closes it (billing_cycle_end on the alerts topic, once), although no
 * event of that subject arrives after the end. Ticks re-sent for the same
 * slot (another restart) are deduplicated.
 */
#include "harness.h"

#include "reference.h"
#include "tally_producer.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define DAY 86400000LL

typedef struct {
  int cycle_ends, others;
} idle_alerts_t;

/* Counts the alerts of subject user:idle, billing_cycle_end apart. */
static void count_idle(void *opaque, const tly_alert_t *alert) {
  idle_alerts_t *counts = opaque;
  if (strcmp(alert->subject_id, "idle") != 0)
    return;
  if (alert->type == TLY_ALERT_BILLING_CYCLE_END)
    counts->cycle_ends++;
  else
    counts->others++;
}

static void test_tick_closes_an_idle_cycle(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("ticks");
  char state_dir[600], errstr[512];
  /* Passed after the harness's "--tick-interval-ms 0", so it wins. */
  const char *extra[] = {"--tick-interval-ms", "300", NULL};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, 4), 0);

  /* One event 45 days ago: its monthly cycle has ended, and the subject
   * never sends another. */
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t now_ms = (int64_t)now.tv_sec * 1000;
  tally_producer_conf_t conf = {.brokers = broker.bootstrap};
  tally_producer_t *producer = tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  tly_event_t event = {.event_id = "idle-1",
                       .occurred_at_ms = now_ms - 45 * DAY,
                       .subject_kind = TLY_SUBJECT_USER,
                       .subject_id = "idle",
                       .body_kind = TLY_BODY_USAGE_RECORDED,
                       .body.usage = {.feature = "api_calls", .quantity = 3}};
  assert_int_equal(tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
  tally_producer_destroy(producer);

  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  /* Ticks arrive every 300 ms; wait until one closed the cycle. */
  long status;
  char *body = NULL;
  int64_t deadline = th_now_ms() + 30000;
  json_t *usage = NULL;
  while (th_now_ms() < deadline) {
    if (th_http_get(run.port, "/v1/subjects/user:idle/usage", &status, &body) == 0 &&
        status == 200) {
      json_decref(usage);
      usage = json_loads(body, 0, NULL);
      /* The port shows an ended cycle as reset at once (cycle_ended); wait
       * for the fold itself to have closed it. */
      if (json_integer_value(json_object_get(json_object_get(usage, "cycle"),
                                             "end_ms")) > now_ms &&
          json_is_false(json_object_get(usage, "cycle_ended"))) {
        free(body);
        break;
      }
    }
    free(body);
    body = NULL;
    th_sleep_ms(200);
  }
  assert_non_null(usage);
  json_t *cycle = json_object_get(usage, "cycle");
  assert_true(json_integer_value(json_object_get(cycle, "start_ms")) <= now_ms);
  assert_true(json_integer_value(json_object_get(cycle, "end_ms")) > now_ms);
  /* The new cycle starts empty: the old usage belongs to the closed one. */
  assert_int_equal(json_object_size(json_object_get(usage, "features")), 0);
  json_decref(usage);

  /* Several more ticks, then a restart that re-sends the current slot's
   * ticks: still exactly one billing_cycle_end. */
  assert_int_equal(th_wait_outbox_empty(run.port, 10000), 0);
  th_kill9(run.pid);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  deadline = th_now_ms() + 30000;
  while (th_metric_sum(run.port, "tally_events_folded_total") < 3 &&
         th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_int_equal(th_wait_outbox_empty(run.port, 10000), 0);
  idle_alerts_t counts = {0, 0};
  th_read_alerts(broker.bootstrap, count_idle, &counts);
  assert_int_equal(counts.cycle_ends, 1);
  assert_int_equal(counts.others, 0);
  /* The restarted processor did fold ticks of its own. */
  assert_true(th_metric_sum(run.port, "tally_events_folded_total") >= 3);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tick_closes_an_idle_cycle),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
