/*
 * test_crash_meters.c - the crash matrix (test_crash_matrix.c) with meters
 * (tly_meters.h): besides the reference's API calls and tokens, every
 * other event is followed by one of a unique_count feature ("seats",
 * distinct values of property "seat"), a max ("peak") and a latest
 * ("gauge"). The processor is SIGKILLed at random moments and right after
 * an outbox ack; afterwards every subject's values equal the reference
 * computed from the test's own input, to the unit (the distinct values
 * counted exactly, the maximum, the latest value), the hourly buckets
 * summed over days equal them too, and every alert is there once.
 *
 * With corrections (th_stream_t.correct_every, as in the crash matrix):
 * amends and retractions of api_calls and AI events folded into the
 * reference, and corrections of the metered events (unique_count, max,
 * latest), which keep no contribution: each dead-lettered exactly once
 * with its reason, counting nothing, under the same SIGKILLs.
 */
#include "harness.h"

#include "reference.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 24
#define SUBJECTS 400
#define EVENTS_PER_SECOND 1000
/* TALLY_CRASH_METERS_EVENTS sets its events; TALLY_CRASH_MATRIX_EVENTS,
 * _SUBJECTS and _KILLS shrink it, as for the crash matrix (never past its
 * own default). */
static int setting(const char *name, int fallback) {
  const char *value = getenv(name);
  return value && atoi(value) > 0 ? atoi(value) : fallback;
}

/* Waits until the instance serves every subject's partition (a fresh run
 * reports its committed offsets before its partitions serve reads). */
static void wait_served(int port, int subjects) {
  int64_t deadline = th_now_ms() + 60000;
  for (int s = 0; s < subjects; s++) {
    char path[128], *body = NULL;
    long status = 503;
    snprintf(path, sizeof(path), "/v1/subjects/user:m%04d/usage", s);
    while (status == 503 && th_now_ms() < deadline) {
      assert_int_equal(th_http_get(port, path, &status, &body), 0);
      free(body);
      if (status == 503)
        th_sleep_ms(100);
    }
    assert_int_not_equal(status, 503);
  }
}

static void test_crash_meters(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  pthread_t producer;
  char *dir = th_mkdtemp("meters");
  char state_dir[600];
  static th_expected_t expected[SUBJECTS];
  int events = setting("TALLY_CRASH_MATRIX_EVENTS", 40000);
  if (events > 40000)
    events = 40000;
  events = setting("TALLY_CRASH_METERS_EVENTS", events);
  const int min_kills = setting("TALLY_CRASH_MATRIX_KILLS", 10);
  int subjects = setting("TALLY_CRASH_MATRIX_SUBJECTS", SUBJECTS);
  if (subjects > SUBJECTS)
    subjects = SUBJECTS;
  /* About 100 events per subject, so each crosses every threshold. */
  if (subjects > events / 100)
    subjects = events / 100 > 1 ? events / 100 : 1;
  th_stream_t stream = {.events = events,
                        .subjects = subjects,
                        .events_per_second = EVENTS_PER_SECOND,
                        .seed = 13,
                        .meters = 1,
                        .correct_every = 50,
                        .expected = expected};
  unsigned seed = (unsigned)th_now_ms();
  int kills, self_kills;

  printf("# crash meters seed %u\n", seed);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  char *config_path = th_reference_meters_config_file(dir);
  const char *extra[] = {"--config", config_path, NULL};

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  stream.bootstrap = broker.bootstrap;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  assert_int_equal(pthread_create(&producer, NULL, th_stream_main, &stream), 0);

  kills = th_crash_loop(&run, &stream, producer, state_dir, extra, min_kills,
                        &seed, &self_kills);
  printf("# %d kills, %d of them right after an outbox ack\n", kills,
         self_kills);
  assert_true(self_kills >= 1);

  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 240000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);

  wait_served(run.port, subjects);
  th_verify_reference(run.port, broker.bootstrap, &stream);
  th_verify_corrections_dlq(broker.bootstrap, &stream);
  assert_true(stream.corrections_applied > 0);
  free(stream.refused);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(config_path);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crash_meters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
