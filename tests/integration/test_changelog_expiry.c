/*
 * test_changelog_expiry.c - expired history leaves the state changelog.
 *
 * The changelog topic is compacted: a key stays until a tombstone replaces
 * it. Hour buckets expire after retention.daily_days (and the store's
 * compaction filter drops them), so each must also get a tombstone on the
 * changelog, or the topic (and every restore from it) would grow with
 * every hour of every subject forever.
 *
 * With retention.daily_days = 1: usage five days old over six hours, then
 * usage three hours old, then usage now. Every hour key of the old usage
 * must end as a tombstone on the changelog; the recent hour keys must
 * still hold their buckets.
 */
#include "harness.h"

#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 2
#define SUBJECTS 8
#define OLD_HOURS 6
#define HOUR_MS 3600000LL
#define DAY_MS (24 * HOUR_MS)

/* Every subject, quantity 1 of api_calls at each of times[0..count-1]. */
static void post_usage(int port, const char *tag, const int64_t *times,
                       int count) {
  char body[16384];
  size_t n = (size_t)snprintf(body, sizeof(body), "[");
  for (int s = 0; s < SUBJECTS; s++)
    for (int t = 0; t < count; t++)
      n += (size_t)snprintf(
          body + n, sizeof(body) - n,
          "%s{\"event_id\": \"%s-%d-%d\", \"occurred_at\": %lld, "
          "\"subject\": \"user:exp%d\", \"feature\": \"api_calls\", "
          "\"quantity\": 1}",
          n > 1 ? ", " : "", tag, s, t, (long long)times[t], s);
  snprintf(body + n, sizeof(body) - n, "]");
  assert_true(n + 2 < sizeof(body));
  long status = 0;
  char *response = NULL;
  assert_int_equal(th_http_request(port, "POST", "/v1/events",
                                   TH_AUTH_DEFAULT, body, strlen(body), NULL,
                                   &status, &response),
                   0);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, response);
  free(response);
}

/* The last record of every hour key on the changelog: 1 for a value, -1
 * for a tombstone, per (subject, hour). */
typedef struct {
  int64_t hours[SUBJECTS * 16];
  int state[SUBJECTS * 16];
  int subject[SUBJECTS * 16];
  int count;
} hour_keys_t;

static void visit(void *opaque, const rd_kafka_message_t *msg) {
  hour_keys_t *keys = opaque;
  const char *key = msg->key;
  /* 'U' [partition, 4] "user:expN" \0 'H' [hour, 4 BE] */
  if (!key || msg->key_len < 1 + 4 + 7 || key[0] != 'U')
    return;
  const char *subject = key + 5;
  size_t rest = msg->key_len - 5;
  const char *nul = memchr(subject, '\0', rest);
  if (!nul || (size_t)(nul - subject) + 6 != rest || nul[1] != 'H' ||
      strncmp(subject, "user:exp", 8))
    return;
  const unsigned char *h = (const unsigned char *)nul + 2;
  int64_t hour = (int64_t)((uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
                           (uint32_t)h[2] << 8 | h[3]);
  int s = atoi(subject + 8);
  int i = 0;
  while (i < keys->count && !(keys->subject[i] == s && keys->hours[i] == hour))
    i++;
  if (i == keys->count) {
    assert_true(keys->count < SUBJECTS * 16);
    keys->count++;
    keys->subject[i] = s;
    keys->hours[i] = hour;
  }
  keys->state[i] = msg->payload ? 1 : -1;
}

static void test_expired_hours_get_tombstones(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("expiry");
  char state_dir[600], config_path[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
  FILE *config = fopen(config_path, "w");
  assert_non_null(config);
  fputs("{\"retention\": {\"daily_days\": 1, \"alerts_days\": 1}}\n", config);
  fclose(config);
  const char *extra[] = {"--config", config_path, NULL};

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);

  int64_t now = (int64_t)time(NULL) * 1000;
  int64_t now_hour = now - now % HOUR_MS;
  int64_t old_hour = now_hour - 5 * DAY_MS;
  int64_t old[OLD_HOURS], recent[1] = {now_hour - 3 * HOUR_MS + 1},
                          latest[1] = {now_hour + 1};
  for (int h = 0; h < OLD_HOURS; h++)
    old[h] = old_hour + h * HOUR_MS + 1;
  /* Each wave folded before the next, so each is a batch of its own. */
  post_usage(run.port, "old", old, OLD_HOURS);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 30000),
                   0);
  post_usage(run.port, "recent", recent, 1);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 30000),
                   0);
  post_usage(run.port, "latest", latest, 1);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 30000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);

  static hour_keys_t keys;
  assert_true(th_read_topic(broker.bootstrap, "tally.changelog", PARTITIONS,
                            visit, &keys) > 0);
  int tombstoned = 0, kept = 0;
  for (int i = 0; i < keys.count; i++) {
    int64_t hour_ms = keys.hours[i] * HOUR_MS;
    if (hour_ms < now_hour - DAY_MS) {
      if (keys.state[i] != -1)
        fail_msg("user:exp%d hour %lld expired but has no tombstone",
                 keys.subject[i], (long long)keys.hours[i]);
      tombstoned++;
    } else {
      if (keys.state[i] != 1)
        fail_msg("user:exp%d hour %lld is current but was deleted",
                 keys.subject[i], (long long)keys.hours[i]);
      kept++;
    }
  }
  printf("# %d expired hour keys tombstoned, %d current ones kept\n",
         tombstoned, kept);
  /* Every old hour got its own key (a newer hour followed it), and the
   * recent one too once the latest began. */
  assert_int_equal(tombstoned, SUBJECTS * OLD_HOURS);
  assert_int_equal(kept, SUBJECTS);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_expired_hours_get_tombstones),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
