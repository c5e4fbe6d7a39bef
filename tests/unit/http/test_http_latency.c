/*
 * test_http_latency.c - the per-route latency histograms behind
 * tally_http_request_duration_seconds: bucket bounds are inclusive upper
 * bounds and cumulative, rows stay apart, and threads counting at once
 * (more threads than shards) lose nothing.
 */
#include "tly_http_latency.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

static const int64_t bounds[TLY_HTTP_LATENCY_BUCKETS] =
    TLY_HTTP_LATENCY_BOUNDS_US;

static void test_buckets_are_cumulative_upper_bounds(void **state) {
  (void)state;
  tly_http_latency_t *latency = tly_http_latency_new(3);
  assert_non_null(latency);
  /* On a bound: that bucket; one past it: the next. */
  tly_http_latency_observe(latency, 1, bounds[0]);
  tly_http_latency_observe(latency, 1, bounds[0] + 1);
  tly_http_latency_observe(latency, 1, -5); /* a clock step: 0 */
  tly_http_latency_observe(latency, 1, bounds[TLY_HTTP_LATENCY_BUCKETS - 1]);
  tly_http_latency_observe(latency, 1,
                           bounds[TLY_HTTP_LATENCY_BUCKETS - 1] + 1);
  tly_http_latency_observe(latency, 3, 1); /* no such row: ignored */
  tly_http_latency_snapshot_t snap;
  tly_http_latency_read(latency, 1, &snap);
  assert_int_equal(snap.buckets[0], 2);
  assert_int_equal(snap.buckets[1], 3);
  assert_int_equal(snap.buckets[TLY_HTTP_LATENCY_BUCKETS - 2], 3);
  assert_int_equal(snap.buckets[TLY_HTTP_LATENCY_BUCKETS - 1], 4);
  assert_int_equal(snap.count, 5); /* +Inf */
  assert_int_equal(snap.sum_us,
                   (uint64_t)(bounds[0] + bounds[0] + 1 +
                              2 * bounds[TLY_HTTP_LATENCY_BUCKETS - 1] + 1));
  /* The other rows saw nothing. */
  tly_http_latency_read(latency, 0, &snap);
  assert_int_equal(snap.count, 0);
  assert_int_equal(snap.buckets[TLY_HTTP_LATENCY_BUCKETS - 1], 0);
  tly_http_latency_read(latency, 2, &snap);
  assert_int_equal(snap.count, 0);
  tly_http_latency_free(latency);
}

#define THREADS (TLY_HTTP_LATENCY_SHARDS + 4)
#define PER_THREAD 20000

static void *observer(void *arg) {
  tly_http_latency_t *latency = arg;
  for (int i = 0; i < PER_THREAD; i++)
    tly_http_latency_observe(latency, (size_t)(i % 2), i % 1000);
  return NULL;
}

static void test_threads_lose_nothing(void **state) {
  (void)state;
  tly_http_latency_t *latency = tly_http_latency_new(2);
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; t++)
    assert_int_equal(pthread_create(&threads[t], NULL, observer, latency), 0);
  for (int t = 0; t < THREADS; t++)
    pthread_join(threads[t], NULL);
  uint64_t expected_sum = 0, at_most_100 = 0;
  for (int i = 0; i < PER_THREAD; i += 2) {
    expected_sum += (uint64_t)(i % 1000);
    at_most_100 += i % 1000 <= 100;
  }
  tly_http_latency_snapshot_t snap;
  tly_http_latency_read(latency, 0, &snap);
  assert_int_equal(snap.count, (uint64_t)THREADS * PER_THREAD / 2);
  assert_int_equal(snap.sum_us, expected_sum * THREADS);
  assert_int_equal(snap.buckets[0], at_most_100 * THREADS);
  tly_http_latency_read(latency, 1, &snap);
  assert_int_equal(snap.count, (uint64_t)THREADS * PER_THREAD / 2);
  tly_http_latency_free(latency);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buckets_are_cumulative_upper_bounds),
      cmocka_unit_test(test_threads_lose_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
