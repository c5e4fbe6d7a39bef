/*
 * test_crash.c - SIGKILL the processor (never the broker) at random moments
 * while a stream of events is being folded, restart it each time on the
 * same state dir; at the end every subject's totals are exact: no event
 * lost, none counted twice.
 */
#include "harness.h"

#include "tally_producer.h"

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 16
#define SUBJECTS 500
/* ~15 s of stream, and at least MIN_KILLS kill/restart rounds (a restart
 * costs a few seconds of group rebalance on the embedded broker). The
 * quick check: test_crash_matrix kills 20 times over 200,000 events with
 * alerts and a reference fold. */
#define EVENTS 60000
#define EVENTS_PER_SECOND 4000
#define MIN_KILLS 4

typedef struct {
  long long quantity, input_tokens, output_tokens, events;
} expected_t;

static expected_t expected[SUBJECTS];
static atomic_int producer_done;
/* cmocka's asserts longjmp and must stay on the test's thread: the producer
 * thread records its failure here for the test to assert on. */
static char producer_error[1024];
static const char *bootstrap;

static void *produce_stream(void *arg) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[32];
  unsigned seed = 7;
  (void)arg;
  tally_producer_t *producer = tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    snprintf(producer_error, sizeof(producer_error), "producer: %s", errstr);
    atomic_store(&producer_done, 1);
    return NULL;
  }
  int64_t started = th_now_ms();
  for (int i = 0; i < EVENTS; i++) {
    int s = rand_r(&seed) % SUBJECTS;
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "crash-%03d", s);
    snprintf(event_id, sizeof(event_id), "c-%d", i);
    event.event_id = event_id;
    event.occurred_at_ms = 1763800000000LL + i;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    event.body.usage.feature = "ai_tokens";
    event.body.usage.unit = "token";
    event.body.usage.has_ai = 1;
    event.body.usage.ai.provider = "anthropic";
    event.body.usage.ai.model = "claude-sonnet";
    event.body.usage.ai.input_tokens = 1 + rand_r(&seed) % 3000;
    event.body.usage.ai.output_tokens = rand_r(&seed) % 900;
    event.body.usage.quantity =
        event.body.usage.ai.input_tokens + event.body.usage.ai.output_tokens;
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      snprintf(producer_error, sizeof(producer_error), "send %d: %s", i,
               errstr);
      break;
    }
    expected[s].quantity += event.body.usage.quantity;
    expected[s].input_tokens += event.body.usage.ai.input_tokens;
    expected[s].output_tokens += event.body.usage.ai.output_tokens;
    expected[s].events++;
    int64_t due = started + (int64_t)i * 1000 / EVENTS_PER_SECOND;
    int64_t wait = due - th_now_ms();
    tally_producer_poll(producer, wait > 0 ? (int)wait : 0);
  }
  tally_producer_stats_t stats;
  if (tally_producer_flush(producer, 60000))
    snprintf(producer_error, sizeof(producer_error), "flush timed out");
  tally_producer_stats(producer, &stats);
  if (stats.failed || stats.delivered != EVENTS)
    snprintf(producer_error, sizeof(producer_error),
             "%llu delivered, %llu failed of %d",
             (unsigned long long)stats.delivered,
             (unsigned long long)stats.failed, EVENTS);
  tally_producer_destroy(producer);
  atomic_store(&producer_done, 1);
  return NULL;
}

static void test_sigkill_during_stream_keeps_totals_exact(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  pthread_t producer;
  char *dir = th_mkdtemp("crash");
  char state_dir[600];
  unsigned seed = (unsigned)th_now_ms();
  int kills = 0;

  printf("# crash test seed %u\n", seed);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  bootstrap = broker.bootstrap;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(pthread_create(&producer, NULL, produce_stream, NULL), 0);

  while (kills < MIN_KILLS || !atomic_load(&producer_done)) {
    /* While the stream runs, kill only a processor that is folding: wait
     * for its first commit, then a random moment (often mid-batch or
     * mid-commit). Once the stream is over there may be nothing left to
     * fold: the remaining kills land at a random moment of the restart and
     * its recovery instead. */
    int64_t deadline = th_now_ms() + 60000;
    while (th_metric_sum(run.port, "tally_events_folded_total") <= 0 &&
           !atomic_load(&producer_done) && th_now_ms() < deadline)
      th_sleep_ms(20);
    int streaming = !atomic_load(&producer_done);
    th_sleep_ms(rand_r(&seed) % 1500);
    long long folded = th_metric_sum(run.port, "tally_events_folded_total");
    assert_true(folded > 0 || !streaming);
    th_kill9(run.pid);
    kills++;
    printf("# kill %d after this run folded %lld events\n", kills, folded);
    assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  }
  pthread_join(producer, NULL);
  if (producer_error[0])
    fail_msg("%s", producer_error);

  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap,
                                     "tally.usage", PARTITIONS, 180000),
                   0);
  long long total = 0;
  for (int s = 0; s < SUBJECTS; s++) {
    char path[128], *body;
    long status;
    json_error_t error;
    snprintf(path, sizeof(path), "/v1/subjects/user:crash-%03d/usage?at=1763800000000", s);
    assert_int_equal(th_http_get(run.port, path, &status, &body), 0);
    if (!expected[s].events) {
      assert_int_equal(status, 404);
      free(body);
      continue;
    }
    assert_int_equal(status, 200);
    json_t *json = json_loads(body, 0, &error);
    free(body);
    json_t *row =
        json_object_get(json_object_get(json, "features"), "ai_tokens");
    assert_int_equal(json_integer_value(json_object_get(row, "events")),
                     expected[s].events);
    assert_int_equal(json_integer_value(json_object_get(row, "quantity")),
                     expected[s].quantity);
    assert_int_equal(json_integer_value(json_object_get(row, "input_tokens")),
                     expected[s].input_tokens);
    assert_int_equal(json_integer_value(json_object_get(row, "output_tokens")),
                     expected[s].output_tokens);
    total += expected[s].events;
    json_decref(json);
  }
  assert_int_equal(total, EVENTS);
  assert_true(kills >= MIN_KILLS);
  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigkill_during_stream_keeps_totals_exact),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
