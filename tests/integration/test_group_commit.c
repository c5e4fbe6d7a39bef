/*
 * test_group_commit.c - at a low rate every event is committed, and
 * visible over HTTP, as soon as the previous commit is durable, not when
 * --batch-ms runs out (group commit, consumers/tly_group_commit.h).
 *
 * `tally broker`, then `tally run --batch-ms 30000` (otherwise default
 * flags). Events are posted one at a time over HTTP, each once the one
 * before is visible. Each must show in GET /v1/subjects/.../usage within
 * 10 s of its POST, and each must bring a commit of its own
 * (tally_batches_committed_total grows per event). A batch that waits for
 * --batch-ms cannot do either: an event posted right after the previous
 * one became visible (at the end of a 30 s round) waits for the end of
 * the next one, 30 s on.
 */
#include "harness.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 2
#define EVENTS 4
#define VISIBLE_WITHIN_MS 10000 /* a third of --batch-ms */

/* The subject's api_calls events as GET .../usage answers them; -1 when
 * the answer is not 200 (not ready yet, or no such subject yet). */
static long long usage_events(int port) {
  long status = 0;
  char *body = NULL;
  long long events = -1;
  if (th_http_get(port, "/v1/subjects/user:group-commit/usage", &status,
                  &body) != 0)
    return -1;
  json_t *json = status == 200 ? json_loads(body, 0, NULL) : NULL;
  json_t *row = json_object_get(json_object_get(json, "features"), "api_calls");
  if (row)
    events = json_integer_value(json_object_get(row, "events"));
  json_decref(json);
  free(body);
  return events;
}

static int64_t wall_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static void post_event(int port, int i) {
  char body[512];
  long status = 0;
  char *response = NULL;
  snprintf(body, sizeof(body),
           "{\"event_id\": \"gc-%d\", \"occurred_at\": %lld, \"subject\": "
           "\"user:group-commit\", \"feature\": \"api_calls\", \"quantity\": "
           "1}",
           i, (long long)wall_ms());
  assert_int_equal(th_http_request(port, "POST", "/v1/events", TH_AUTH_DEFAULT,
                                   body, strlen(body), NULL, &status,
                                   &response),
                   0);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, response);
  free(response);
}

static void test_each_event_commits_without_waiting_for_batch_ms(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("group-commit");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  const char *extra[] = {"--batch-ms", "30000", NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);

  /* Ready: the partitions are assigned (the group join is not what this
   * test measures). */
  long status = 0;
  int64_t deadline = th_now_ms() + 60000;
  do {
    char *body = NULL;
    if (th_http_get(run.port, "/readyz", &status, &body) == 0)
      free(body);
    if (status != 200)
      th_sleep_ms(50);
  } while (status != 200 && th_now_ms() < deadline);
  assert_int_equal(status, 200);

  for (int i = 0; i < EVENTS; i++) {
    long long commits =
        th_metric_sum(run.port, "tally_batches_committed_total");
    int64_t posted = th_now_ms();
    post_event(run.port, i);
    /* Visible over HTTP, and its commit released (counted) too. */
    long long seen, now_commits;
    while (((seen = usage_events(run.port)) < i + 1 ||
            (now_commits = th_metric_sum(
                 run.port, "tally_batches_committed_total")) <= commits) &&
           th_now_ms() - posted < VISIBLE_WITHIN_MS)
      th_sleep_ms(10);
    fprintf(stderr, "group commit: event %d visible after %lld ms\n", i,
            (long long)(th_now_ms() - posted));
    assert_int_equal(seen, i + 1);
    assert_true(th_metric_sum(run.port, "tally_batches_committed_total") >
                commits);
  }
  /* The processor's own figure agrees: every record it made visible was
   * visible within 10 s of being produced (the histogram's 10 s bucket
   * holds them all; both read from one answer). */
  char *metrics = NULL;
  assert_int_equal(th_http_get(run.port, "/metrics", &status, &metrics), 0);
  assert_int_equal(status, 200);
  const char *count = strstr(metrics, "tally_event_visible_seconds_count ");
  const char *within =
      strstr(metrics, "tally_event_visible_seconds_bucket{le=\"10\"} ");
  assert_non_null(count);
  assert_non_null(within);
  long long visible =
      atoll(count + strlen("tally_event_visible_seconds_count "));
  assert_true(visible >= EVENTS);
  assert_int_equal(
      atoll(within + strlen("tally_event_visible_seconds_bucket{le=\"10\"} ")),
      visible);
  free(metrics);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_event_commits_without_waiting_for_batch_ms),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
