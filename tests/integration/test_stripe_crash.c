/*
 * test_stripe_crash.c - usage reporting to Stripe under crashes, end to
 * end: the sum of meter events Stripe (tests/stripe_fake) accepted per
 * customer and meter equals the folded usage, to the unit.
 *
 * 40 subjects, each linked to its own customer, use two metered features
 * over the last three hours (late events included) in rounds. Each round
 * injects faults into the fake (500s, a 429 with Retry-After, dropped
 * connections after the event was applied, a hang beyond the client's
 * time limit), starts `tally run`, lets it fold and report for a random
 * moment and SIGKILLs it: 10 times. A last run reports what is
 * left; then every customer's ledger must equal the test's own sums and
 * tally's folded history, and stay so.
 */
#include "harness.h"
#include "stripe_fake.h"

#include "tally_producer.h"
#include "tly_billing.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECTS 40
#define ROUNDS 10
#define DAY_MS 86400000LL

static const char *const features[] = {"api_calls", "storage_bytes"};
static const char *const meters[] = {"api_requests", "storage"};

static long long expected[SUBJECTS][2];

/* One round of usage: every subject uses one or two features, in one of
 * the last three hours (so later rounds bring late events to windows
 * already reported). */
static void produce_round(tally_producer_t *producer, int round,
                          int64_t hour_ms, unsigned *seed) {
  int64_t now = (int64_t)time(NULL) * 1000;
  for (int s = 0; s < SUBJECTS; s++) {
    char user[32], event_id[64];
    snprintf(user, sizeof(user), "crash-%02d", s);
    int events = 1 + (int)(rand_r(seed) % 2);
    for (int k = 0; k < events; k++) {
      int f = (int)(rand_r(seed) % 2);
      int64_t at = hour_ms - (int64_t)(rand_r(seed) % 3) * TLY_HOUR_MS +
                   (int64_t)(rand_r(seed) % 3000000);
      if (at > now)
        at = now;
      long long quantity = 1 + rand_r(seed) % (f ? 5000 : 100);
      snprintf(event_id, sizeof(event_id), "crash-%d-%d-%d", round, s, k);
      assert_int_equal(
          th_send_usage(producer, event_id, at, user, features[f], quantity),
          0);
      expected[s][f] += quantity;
    }
  }
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
}

/* The API requests the fake has answered (or dropped) so far. */
static long long fake_requests(const th_stripe_fake_t *fake) {
  json_t *ledger = th_stripe_fake_ledger(fake);
  assert_non_null(ledger);
  long long requests = json_integer_value(json_object_get(ledger, "requests"));
  json_decref(ledger);
  return requests;
}

/* 1 when every customer's ledger equals the expected sums; fails the test
 * at once on a ledger above them (reported twice). */
static int ledger_matches(const th_stripe_fake_t *fake) {
  int all = 1;
  for (int s = 0; s < SUBJECTS; s++) {
    char customer[32];
    snprintf(customer, sizeof(customer), "cus_crash_%02d", s);
    for (int f = 0; f < 2; f++) {
      long long sum = th_stripe_fake_sum(fake, customer, meters[f]);
      if (sum > expected[s][f])
        fail_msg("%s %s: Stripe has %lld, folded %lld: reported twice",
                 customer, meters[f], sum, expected[s][f]);
      all &= sum == expected[s][f];
    }
  }
  return all;
}

static void test_stripe_crash(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  th_stripe_fake_t fake;
  char state_dir[600], errstr[256];
  char *dir = th_mkdtemp("stripe-crash");
  unsigned seed = (unsigned)th_now_ms();
  int64_t now = (int64_t)time(NULL) * 1000;
  int64_t hour_ms = now - now % TLY_HOUR_MS;
  printf("# stripe crash seed %u\n", seed);

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_stripe_fake_start(&fake), 0);
  /* A short time limit and retry cap keep the faults' cost small. */
  char *config = th_stripe_report_config(dir, &fake, 100, 500, 1);
  assert_non_null(config);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  /* A consumer group of its own per run: offsets live in RocksDB only, and
   * a fresh group need not wait out the killed member's session. */
  char group[32];
  const char *const extra[] = {"--config", config, "--group", group, NULL};
  tally_producer_conf_t pconf = {.brokers = broker.bootstrap};
  tally_producer_t *producer =
      tally_producer_new(&pconf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int s = 0; s < SUBJECTS; s++) {
    char user[32], customer[32], event_id[32];
    snprintf(user, sizeof(user), "crash-%02d", s);
    snprintf(customer, sizeof(customer), "cus_crash_%02d", s);
    snprintf(event_id, sizeof(event_id), "crash-link-%d", s);
    assert_int_equal(th_stripe_fake_add_customer(&fake, customer), 0);
    assert_int_equal(th_send_link(producer, event_id, hour_ms - 3 * TLY_HOUR_MS,
                                  user, customer),
                     0);
  }

  int kills = 0, busy_kills = 0;
  for (int round = 0; round < ROUNDS; round++) {
    static const char *const faults[] = {
        "{\"count\": 3, \"status\": 500}",
        "{\"count\": 1, \"status\": 429, \"retry_after_s\": 1}",
        "{\"count\": 2, \"drop_after_apply\": true}",
        "{\"count\": 1, \"hang_ms\": 1200}",
    };
    assert_int_equal(th_stripe_fake_fault(&fake, faults[rand_r(&seed) % 4]), 0);
    produce_round(producer, round, hour_ms, &seed);
    th_run_env = th_stripe_fake_key_env(&fake);
    snprintf(group, sizeof(group), "crash-%d", round);
    assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
    /* Once its requests reach the fake, kill it at a random moment of
     * the reporting (a round is some 100 requests, a second's worth). */
    long long started = fake_requests(&fake);
    int64_t deadline = th_now_ms() + 30000;
    while (fake_requests(&fake) == started && th_now_ms() < deadline)
      th_sleep_ms(5);
    assert_true(fake_requests(&fake) > started);
    int rc = th_wait_exit(run.pid, (int)(rand_r(&seed) % 500));
    assert_int_equal(rc, -1); /* it must not exit by itself */
    th_kill9(run.pid);
    kills++;
    busy_kills += !ledger_matches(&fake); /* it died with work left */
  }
  printf("# %d kills, %d of them before all was reported\n", kills, busy_kills);
  assert_true(busy_kills >= ROUNDS / 2);

  th_run_env = th_stripe_fake_key_env(&fake);
  snprintf(group, sizeof(group), "crash-last");
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  int64_t deadline = th_now_ms() + 60000;
  while (!ledger_matches(&fake) && th_now_ms() < deadline)
    th_sleep_ms(200);
  assert_true(ledger_matches(&fake));
  for (int s = 0; s < SUBJECTS; s++) {
    char user[32];
    snprintf(user, sizeof(user), "crash-%02d", s);
    for (int f = 0; f < 2; f++)
      assert_int_equal(th_folded_quantity(run.port, user, features[f],
                                          hour_ms - DAY_MS, hour_ms + DAY_MS),
                       expected[s][f]);
  }
  /* Settled: nothing more goes out. */
  th_sleep_ms(1500);
  assert_true(ledger_matches(&fake));
  assert_int_equal(th_stop(run.pid), 0);

  tally_producer_destroy(producer);
  th_broker_stop(&broker);
  th_stripe_fake_stop(&fake);
  th_rmrf(dir);
  free(config);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stripe_crash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
