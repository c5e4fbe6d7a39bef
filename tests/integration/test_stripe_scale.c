/*
 * test_stripe_scale.c - usage reporting to Stripe with several `tally run`
 * instances in one consumer group: the sum of meter events Stripe
 * (tests/stripe_fake) accepted per customer and meter equals the folded
 * usage, to the unit, while partitions move between instances.
 *
 * Three instances (A, B, C) share the input partitions, each reporting
 * the partitions it owns. Linked subjects use two metered features in the
 * current and the previous hour (late events), round after round, so each
 * window gets many deltas and its cursor moves on. Mid-stream, while
 * reports are in flight, B is SIGKILLed with intents and marks it had
 * not settled, and a fresh instance D (empty state dir) joins: B's
 * partitions move (and so do others, to instances that held them before,
 * with stale cursors). The new owners must continue each window's
 * cursor (an identifier from a cursor started again would be one Stripe
 * already has, and the new owner would count its larger delta as
 * reported), resend B's pending intents exactly and report the unsettled
 * work of B's marks; the old owners must not report what they no longer
 * own. Later D stops (cleanly) and its partitions go back to A and C,
 * whose own copies of some of them (and of their cursors) are now stale:
 * they must restore them rather than report from those. At the end each
 * customer's ledger equals the test's sums and the folded usage, and
 * stays so.
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

#define PARTITIONS 6
#define SUBJECTS 36
#define ROUNDS 80
#define ROUND_MS 300
#define KILL_ROUND 12
#define STOP_ROUND 55
#define DAY_MS 86400000LL

static const char *const features[] = {"api_calls", "storage_bytes"};
static const char *const meters[] = {"api_requests", "storage"};

static long long expected[SUBJECTS][2];

/* One round: every subject uses one or two features in this hour or the
 * previous one; until the kill (last_hours), also in the hour before,
 * whose windows then get no more usage: what B had folded of them but not
 * reported, only its marks restored elsewhere bring to Stripe. */
static void produce_round(tally_producer_t *producer, int round,
                          int64_t hour_ms, int last_hours, unsigned *seed) {
  int64_t now = (int64_t)time(NULL) * 1000;
  for (int s = 0; s < SUBJECTS; s++) {
    char user[32], event_id[64];
    snprintf(user, sizeof(user), "scale-%02d", s);
    int events = 1 + (int)(rand_r(seed) % 2);
    for (int k = 0; k < events + last_hours; k++) {
      int f = (int)(rand_r(seed) % 2);
      int64_t hours_back = k < events ? rand_r(seed) % 2 : 2;
      int64_t at = hour_ms - hours_back * TLY_HOUR_MS +
                   (int64_t)(rand_r(seed) % 3000000);
      if (at > now)
        at = now;
      long long quantity = 1 + rand_r(seed) % (f ? 5000 : 100);
      snprintf(event_id, sizeof(event_id), "scale-%d-%d-%d", round, s, k);
      assert_int_equal(
          th_send_usage(producer, event_id, at, user, features[f], quantity),
          0);
      expected[s][f] += quantity;
    }
  }
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
}

static long long fake_requests(const th_stripe_fake_t *fake) {
  json_t *ledger = th_stripe_fake_ledger(fake);
  assert_non_null(ledger);
  long long requests = json_integer_value(json_object_get(ledger, "requests"));
  json_decref(ledger);
  return requests;
}

/* 1 when every customer's ledger equals the expected sums; fails the test
 * at once on a ledger above them (reported twice). */
static int ledger_matches(const th_stripe_fake_t *fake, int verbose) {
  int all = 1;
  for (int s = 0; s < SUBJECTS; s++) {
    char customer[32];
    snprintf(customer, sizeof(customer), "cus_scale_%02d", s);
    for (int f = 0; f < 2; f++) {
      long long sum = th_stripe_fake_sum(fake, customer, meters[f]);
      if (sum > expected[s][f])
        fail_msg("%s %s: Stripe has %lld, folded %lld: reported twice",
                 customer, meters[f], sum, expected[s][f]);
      if (verbose && sum != expected[s][f])
        printf("# %s %s: Stripe has %lld, folded %lld (%lld missing)\n",
               customer, meters[f], sum, expected[s][f], expected[s][f] - sum);
      all &= sum == expected[s][f];
    }
  }
  return all;
}

static long long sent(const th_run_t *run) {
  return th_metric_labeled(run->port, "tally_stripe_reports_total",
                           "{result=\"sent\"}");
}

/* Every instance ready (each has its partitions and caught up). */
static int all_ready(th_run_t *const *runs, int count) {
  for (int i = 0; i < count; i++) {
    long status = 0;
    char *body = NULL;
    int ok = th_http_get(runs[i]->port, "/readyz", &status, &body) == 0 &&
             status == 200;
    free(body);
    if (!ok)
      return 0;
  }
  return 1;
}

static void test_stripe_scale(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b, c, d;
  th_stripe_fake_t fake;
  char dir_a[600], dir_b[600], dir_c[600], dir_d[600], errstr[256];
  char *dir = th_mkdtemp("stripe-scale");
  unsigned seed = (unsigned)th_now_ms();
  int64_t now = (int64_t)time(NULL) * 1000;
  int64_t hour_ms = now - now % TLY_HOUR_MS;
  int64_t started = th_now_ms();
  printf("# stripe scale seed %u\n", seed);

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_stripe_fake_start(&fake), 0);
  char *config = th_stripe_report_config(dir, &fake, 200, 1000, 1);
  assert_non_null(config);
  snprintf(dir_a, sizeof(dir_a), "%s/state-a", dir);
  snprintf(dir_b, sizeof(dir_b), "%s/state-b", dir);
  snprintf(dir_c, sizeof(dir_c), "%s/state-c", dir);
  snprintf(dir_d, sizeof(dir_d), "%s/state-d", dir);
  const char *const extra[] = {"--config", config, NULL};

  tally_producer_conf_t pconf = {.brokers = broker.bootstrap};
  tally_producer_t *producer =
      tally_producer_new(&pconf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int s = 0; s < SUBJECTS; s++) {
    char user[32], customer[32], event_id[32];
    snprintf(user, sizeof(user), "scale-%02d", s);
    snprintf(customer, sizeof(customer), "cus_scale_%02d", s);
    snprintf(event_id, sizeof(event_id), "scale-link-%d", s);
    assert_int_equal(th_stripe_fake_add_customer(&fake, customer), 0);
    assert_int_equal(th_send_link(producer, event_id, hour_ms - 3 * TLY_HOUR_MS,
                                  user, customer),
                     0);
  }
  assert_int_equal(tally_producer_flush(producer, 10000), 0);

  th_run_t *runs[] = {&a, &b, &c};
  const char *dirs[] = {dir_a, dir_b, dir_c};
  for (int i = 0; i < 3; i++) {
    th_run_env = th_stripe_fake_key_env(&fake);
    assert_int_equal(th_run_start(runs[i], broker.bootstrap, dirs[i], extra),
                     0);
  }
  int64_t deadline = th_now_ms() + 30000;
  while (!all_ready(runs, 3) && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(all_ready(runs, 3));
  printf("# a, b, c ready after %lld ms\n", (long long)(th_now_ms() - started));

  int killed = 0;
  for (int round = 0; round < ROUNDS; round++) {
    int64_t round_start = th_now_ms();
    produce_round(producer, round, hour_ms, !killed, &seed);
    if (round >= KILL_ROUND && !killed && sent(&b) > 0) {
      /* Kill B mid-report: the next requests hang (beyond the client's
       * time limit), so B dies with an intent in flight and with the
       * round it has folded since (its marks on the changelog) not yet
       * reported. */
      long long before = fake_requests(&fake);
      assert_int_equal(
          th_stripe_fake_fault(&fake, "{\"count\": 3, \"hang_ms\": 1500}"), 0);
      int64_t until = th_now_ms() + 5000;
      while (fake_requests(&fake) == before && th_now_ms() < until)
        th_sleep_ms(5);
      th_sleep_ms(300 + (int)(rand_r(&seed) % 200));
      long long b_sent = sent(&b);
      th_kill9(b.pid);
      killed = 1;
      printf("# SIGKILL b (%lld meter events sent) in round %d after %lld ms\n",
             b_sent, round, (long long)(th_now_ms() - started));
      th_run_env = th_stripe_fake_key_env(&fake);
      assert_int_equal(th_run_start(&d, broker.bootstrap, dir_d, extra), 0);
    } else if (killed == 1 && round >= STOP_ROUND && sent(&d) > 0) {
      long long d_sent = sent(&d);
      assert_int_equal(th_stop(d.pid), 0);
      killed = 2;
      printf("# d stopped (%lld meter events sent) in round %d after %lld "
             "ms\n",
             d_sent, round, (long long)(th_now_ms() - started));
    }
    int64_t left = ROUND_MS - (th_now_ms() - round_start);
    if (left > 0)
      th_sleep_ms((int)left);
  }
  assert_int_equal(killed, 2);
  printf("# stream done after %lld ms\n", (long long)(th_now_ms() - started));

  th_run_t *live[] = {&a, &c};
  deadline = th_now_ms() + 30000;
  while (!(all_ready(live, 2) && ledger_matches(&fake, 0)) &&
         th_now_ms() < deadline)
    th_sleep_ms(200);
  if (!ledger_matches(&fake, 1))
    fail_msg("Stripe's ledger is not the folded usage after %lld ms",
             (long long)(th_now_ms() - started));
  printf("# ledger equals the folded usage after %lld ms\n",
         (long long)(th_now_ms() - started));
  /* Partitions went to instances with no (or older) state of them, which
   * restored them, cursors and marks included, from the changelog: D
   * (fresh) did, and A and C when partitions came back to them. */
  char *log_d = th_read_file(d.log_path);
  assert_non_null(log_d);
  /* restored, or built as a standby copy first (README "Standby replicas") */
  assert_true(strstr(log_d, "restored from tally.changelog") ||
              strstr(log_d, "assigned here with a standby copy"));
  free(log_d);
  int came_back = 0;
  for (int i = 0; i < 2; i++) {
    char *log = th_read_file(live[i]->log_path);
    assert_non_null(log);
    for (const char *at = log;
         (at = strstr(at, "another instance wrote its changelog since")); at++)
      came_back++;
    free(log);
  }
  printf("# %d partitions restored by a and c because another instance "
         "reported them since\n",
         came_back);
  /* What tally folded is what the test sent, and what Stripe has (asked
   * of each instance in turn: the non-owners forward to the owner). */
  for (int s = 0; s < SUBJECTS; s++) {
    char user[32];
    snprintf(user, sizeof(user), "scale-%02d", s);
    for (int f = 0; f < 2; f++) {
      long long folded = -1;
      int64_t until = th_now_ms() + 10000;
      while ((folded = th_folded_quantity(live[s % 2]->port, user, features[f],
                                          hour_ms - DAY_MS, hour_ms + DAY_MS)) <
                 0 &&
             th_now_ms() < until)
        th_sleep_ms(100);
      assert_int_equal(folded, expected[s][f]);
    }
  }
  /* Settled: nothing more goes out. */
  th_sleep_ms(1000);
  assert_true(ledger_matches(&fake, 1));
  printf("# verified after %lld ms\n", (long long)(th_now_ms() - started));

  for (int i = 0; i < 2; i++)
    assert_int_equal(th_stop(live[i]->pid), 0);
  tally_producer_destroy(producer);
  th_broker_stop(&broker);
  th_stripe_fake_stop(&fake);
  th_rmrf(dir);
  free(config);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stripe_scale),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
