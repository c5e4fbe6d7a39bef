/*
 * test_standby.c - standby replicas (issue 20, --standby-replicas, default
 * 1), end to end over the embedded broker with two `tally run` instances.
 *
 *   1. Each instance keeps a standby copy of every partition the other
 *      owns (two instances, one replica: the only other member), applied
 *      from the changelog until it is at the owner's offset
 *      (tally_standby_partitions, tally_standby_lag_records 0).
 *   2. The owner is SIGKILLed: reads of its subjects on the survivor are
 *      answered from the standby copy, marked (as_of, X-Tally-Stale) and
 *      exact (the stream is done: the copy is at the log end, lag 0), where
 *      without a copy they were 503 partition_moving; the quota pre-check
 *      from the copy counts the reservations (holds) folded into it.
 *   3. The survivor is given the dead owner's partitions and resumes from
 *      its copies: no restore from the changelog
 *      (tally_changelog_restores_total stays 0), and after more events every
 *      subject is exact.
 *   4. The killed instance restarts on its state dir; with both caught up
 *      every subject is exact on both (fresh reads, max_staleness_ms=0).
 */
#include "harness.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "tally_producer.h"

#define PARTITIONS 4
#define SUBJECTS 40

static long long expected_quantity[SUBJECTS];

/* Reservations are made against api_calls' limit (the built-in plan
 * "free": 1,000, hard; the usage stays below it). Events are dated now:
 * usage and holds in the current cycle. */
#define HOLD 7

/* A reservation of HOLD api_calls for subject s, asked of port (503s while
 * a partition moves are asked again). */
static void reserve(int port, int s) {
  char path[128], body[128], *answer = NULL;
  long status = 0;
  snprintf(path, sizeof(path), "/v1/subjects/user:sb-%d/reservations", s);
  snprintf(body, sizeof(body),
           "{\"feature\": \"api_calls\", \"quantity\": %d, \"ttl_s\": "
           "3600}",
           HOLD);
  for (int attempt = 0; attempt < 100; attempt++) {
    free(answer);
    answer = NULL;
    assert_int_equal(th_http_request(port, "POST", path, TH_AUTH_DEFAULT, body,
                                     strlen(body), NULL, &status, &answer),
                     0);
    if (status != 503)
      break;
    th_sleep_ms(100);
  }
  json_t *json = json_loads(answer ? answer : "", 0, NULL);
  if (status != 200 || !json_is_true(json_object_get(json, "allowed")))
    fail_msg("reserve sb-%d: %ld %s", s, status, answer ? answer : "");
  json_decref(json);
  free(answer);
}

/* The quota pre-check of subject s on port: its "held", and whether it
 * came from a copy (*stale). -1: not 200. */
static long long quota_held(int port, int s, int *stale) {
  char path[128], *body = NULL;
  long status = 0;
  snprintf(path, sizeof(path),
           "/v1/subjects/user:sb-%d/quota?feature=api_calls", s);
  assert_int_equal(th_http_get(port, path, &status, &body), 0);
  json_t *json = status == 200 ? json_loads(body, 0, NULL) : NULL;
  free(body);
  if (!json)
    return -1;
  *stale = json_object_get(json, "as_of") != NULL;
  long long held = json_integer_value(json_object_get(json, "held"));
  json_decref(json);
  return held;
}

static void produce(const char *bootstrap, int count, int first) {
  char errstr[512], subject[32], id[32];
  tally_producer_conf_t conf = {.brokers = bootstrap};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int i = 0; i < count; i++) {
    int s = (first + i) % SUBJECTS;
    snprintf(subject, sizeof(subject), "sb-%d", s);
    snprintf(id, sizeof(id), "sb-ev-%d", first + i);
    tly_event_t event = {0};
    event.event_id = id;
    event.occurred_at_ms = (int64_t)time(NULL) * 1000;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = subject;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    event.body.usage.feature = "api_calls";
    event.body.usage.quantity = 1 + (first + i) % 5;
    assert_int_equal(
        tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
    expected_quantity[s] += event.body.usage.quantity;
  }
  assert_int_equal(tally_producer_flush(producer, 60000), 0);
  tally_producer_destroy(producer);
}

/* Every partition committed to the log end by whichever instance owns it,
 * and every outbox (changelog bundles included) acknowledged. */
static void settle(const th_run_t *runs, int count, const char *bootstrap) {
  int64_t high[PARTITIONS];
  assert_int_equal(
      th_high_watermarks(bootstrap, "tally.usage", PARTITIONS, high), 0);
  int64_t deadline = th_now_ms() + 120000;
  int behind = 1;
  while (behind && th_now_ms() < deadline) {
    behind = 0;
    for (int p = 0; p < PARTITIONS && !behind; p++) {
      long long best = -1;
      for (int i = 0; i < count; i++) {
        long long committed = th_metric_partition(
            runs[i].port, "tally_partition_committed_offset", p);
        if (committed > best)
          best = committed;
      }
      behind = high[p] > 0 && best < high[p];
    }
    if (behind)
      th_sleep_ms(100);
  }
  assert_false(behind);
  for (int i = 0; i < count; i++)
    assert_int_equal(th_wait_outbox_empty(runs[i].port, 60000), 0);
}

/* Partitions assigned to the instance at port (those with a replay
 * target in its /metrics); 0 when it does not answer. */
static int assigned(int port) {
  long status = 0;
  char *body = NULL;
  int count = 0;
  if (th_http_get(port, "/metrics", &status, &body) == 0 && status == 200)
    for (const char *at = body;
         (at = strstr(at, "\ntally_partition_replay_target{")) != NULL; at++)
      count++;
  free(body);
  return count;
}

/* The instance at port holds standby copies of want partitions, each at
 * the log end (no record of the input past it). */
static int standby_current(int port, int want) {
  if (th_metric_sum(port, "tally_standby_partitions") != want)
    return 0;
  for (int p = 0; p < PARTITIONS; p++) {
    long long lag = th_metric_partition(port, "tally_standby_lag_records", p);
    if (lag > 0)
      return 0;
  }
  return 1;
}

/* Subject s's api_calls on port: the quantity, and whether the answer came
 * from a copy (*stale; then *lag is its as_of.lag_records). -1: not 200. */
static long long usage(int port, int s, const char *bound, int *stale,
                       long long *lag) {
  char path[160], *body = NULL;
  long status = 0;
  snprintf(path, sizeof(path), "/v1/subjects/user:sb-%d/usage%s%s", s,
           *bound ? "?" : "", *bound ? bound + 1 : "");
  assert_int_equal(th_http_get(port, path, &status, &body), 0);
  if (status != 200) {
    free(body);
    return -1;
  }
  json_t *json = json_loads(body, 0, NULL);
  free(body);
  assert_non_null(json);
  json_t *as_of = json_object_get(json, "as_of");
  *stale = as_of != NULL;
  *lag = as_of ? json_integer_value(json_object_get(as_of, "lag_records")) : 0;
  long long quantity = json_integer_value(json_object_get(
      json_object_get(json_object_get(json, "features"), "api_calls"),
      "quantity"));
  json_decref(json);
  return quantity;
}

/* Every subject exact on port, asked with max_staleness_ms=0 (a 503
 * while a partition still moves is asked again, for up to 30 s). */
static void verify_fresh(int port) {
  for (int s = 0; s < SUBJECTS; s++) {
    int stale = 0;
    long long lag = 0, quantity = -1;
    int64_t deadline = th_now_ms() + 30000;
    while ((quantity = usage(port, s, "&max_staleness_ms=0", &stale, &lag)) <
               0 &&
           th_now_ms() < deadline)
      th_sleep_ms(200);
    assert_int_equal(quantity, expected_quantity[s]);
    /* (a copy at the log end answers max_staleness_ms=0 too: exact) */
  }
}

static void test_standby_replicas(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t runs[2];
  char *dir = th_mkdtemp("standby");
  char dirs[2][600];
  const char *const *extra = NULL;
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  for (int i = 0; i < 2; i++) {
    snprintf(dirs[i], sizeof(dirs[i]), "%s/state-%c", dir, 'a' + i);
    assert_int_equal(th_run_start(&runs[i], broker.bootstrap, dirs[i], extra),
                     0);
  }
  /* Both members of the group (each owning some partitions). */
  int64_t deadline = th_now_ms() + 60000;
  while ((assigned(runs[0].port) + assigned(runs[1].port) != PARTITIONS ||
          !assigned(runs[0].port) || !assigned(runs[1].port)) &&
         th_now_ms() < deadline)
    th_sleep_ms(200);
  int owned_a = assigned(runs[0].port), owned_b = assigned(runs[1].port);
  assert_int_equal(owned_a + owned_b, PARTITIONS);
  assert_true(owned_a > 0 && owned_b > 0);
  produce(broker.bootstrap, 2000, 0);
  settle(runs, 2, broker.bootstrap);
  /* A hold on every subject (asked of b: a's subjects are forwarded). */
  for (int s = 0; s < SUBJECTS; s++)
    reserve(runs[1].port, s);
  settle(runs, 2, broker.bootstrap);

  /* 1. Each holds a current copy of the other's partitions. */
  deadline = th_now_ms() + 60000;
  while (!(standby_current(runs[0].port, owned_b) &&
           standby_current(runs[1].port, owned_a)) &&
         th_now_ms() < deadline)
    th_sleep_ms(200);
  assert_true(standby_current(runs[0].port, owned_b));
  assert_true(standby_current(runs[1].port, owned_a));
  printf("# a owns %d partitions, b %d; each holds a current standby copy "
         "of the other's\n",
         owned_a, owned_b);

  /* 2. a dies: its subjects answered on b from the copy, exact. */
  th_kill9(runs[0].pid);
  int from_copy = 0, fresh = 0, refused = 0, quota_from_copy = 0;
  for (int s = 0; s < SUBJECTS; s++) {
    int stale = 0;
    long long lag = -1;
    long long quantity = usage(runs[1].port, s, "", &stale, &lag);
    if (quantity < 0) { /* 503 (e.g. the broker slow to give the log end) */
      refused++;
      continue;
    }
    assert_int_equal(quantity, expected_quantity[s]);
    if (stale)
      assert_int_equal(lag, 0);
    from_copy += stale;
    fresh += !stale;
    /* The pre-check from the copy counts the hold folded into it. */
    long long held = quota_held(runs[1].port, s, &stale);
    if (held >= 0) { /* (a 503 as above) */
      assert_int_equal(held, HOLD);
      quota_from_copy += stale;
    }
  }
  printf("# after the SIGKILL: %d subjects answered from b's standby copy, "
         "%d fresh by their owner, %d refused\n",
         from_copy, fresh, refused);
  assert_true(from_copy > 0);
  printf("# %d quota pre-checks answered from the copy, each counting its "
         "hold\n",
         quota_from_copy);
  assert_true(quota_from_copy > 0);

  /* 3. b takes a's partitions over from its copies: no restore. */
  deadline = th_now_ms() + 60000;
  while (assigned(runs[1].port) != PARTITIONS && th_now_ms() < deadline)
    th_sleep_ms(200);
  assert_int_equal(assigned(runs[1].port), PARTITIONS);
  settle(&runs[1], 1, broker.bootstrap);
  long long restores =
      th_metric_sum(runs[1].port, "tally_changelog_restores_total");
  printf("# b owns all %d partitions: %lld restored from the changelog\n",
         PARTITIONS, restores);
  assert_int_equal(restores, 0);
  produce(broker.bootstrap, 500, 2000);
  settle(&runs[1], 1, broker.bootstrap);
  verify_fresh(runs[1].port);

  /* 4. a back on its state dir: both exact. */
  assert_int_equal(th_run_start(&runs[0], broker.bootstrap, dirs[0], extra), 0);
  deadline = th_now_ms() + 60000;
  while ((assigned(runs[0].port) + assigned(runs[1].port) != PARTITIONS ||
          !assigned(runs[0].port)) &&
         th_now_ms() < deadline)
    th_sleep_ms(200);
  produce(broker.bootstrap, 500, 2500);
  settle(runs, 2, broker.bootstrap);
  verify_fresh(runs[0].port);
  verify_fresh(runs[1].port);

  for (int i = 0; i < 2; i++)
    assert_int_equal(th_stop(runs[i].pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_standby_replicas),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
