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
 * usage three hours old, then usage now (all two days back: see below). Every
 * hour key of the old usage must end as a tombstone on the changelog; the
 * recent hour keys must still hold their buckets.
 *
 * The same goes for each batch's dedupe blob (its event ids, 'D' keys):
 * with events.dedupe_window_ms one day, the blobs of the old usage end as
 * tombstones, the recent ones still hold their ids. Then the state is
 * restored from the changelog into an empty state dir (which indexes the
 * restored blobs anew, not knowing the window) and more usage a day later
 * folds: the blobs it leaves behind get their tombstones too.
 */
#include "harness.h"

#include "tly_bytes.h"

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
  assert_int_equal(th_http_request(port, "POST", "/v1/events", TH_AUTH_DEFAULT,
                                   body, strlen(body), NULL, &status,
                                   &response),
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

/* Every dedupe blob key on the changelog ('D' [p][offset], not the floor
 * record at offset INT64_MAX): the newest event time its first value held
 * (tly_changelog.h),
 * and whether its last record is a value (1) or a tombstone (-1). */
#define BLOBS 64
typedef struct {
  unsigned char key[12];
  int64_t newest_ms;
  int state;
} blob_key_t;
typedef struct {
  blob_key_t blobs[BLOBS];
  int count;
} blob_keys_t;

static int64_t be64(const unsigned char *b) { return (int64_t)tly_get_be64(b); }

static void visit_blob(void *opaque, const rd_kafka_message_t *msg) {
  blob_keys_t *keys = opaque;
  const unsigned char *key = msg->key;
  if (!key || msg->key_len != 13 || key[0] != 'D' || be64(key + 5) == INT64_MAX)
    return;
  int i = 0;
  while (i < keys->count && memcmp(keys->blobs[i].key, key + 1, 12))
    i++;
  if (i == keys->count) {
    assert_true(keys->count < BLOBS);
    keys->count++;
    memcpy(keys->blobs[i].key, key + 1, 12);
    keys->blobs[i].newest_ms = INT64_MIN;
  }
  /* [offset the record reflects, 8 BE][the blob: its newest time first] */
  if (msg->payload && msg->len >= 16 && keys->blobs[i].newest_ms == INT64_MIN)
    keys->blobs[i].newest_ms = be64((const unsigned char *)msg->payload + 8);
  keys->blobs[i].state = msg->payload ? 1 : -1;
}

/* Blobs whose newest event is older than horizon_ms must be tombstones, the
 * others values; how many of each through *expired and *kept. */
static void check_blobs(const char *bootstrap, int64_t horizon_ms, int *expired,
                        int *kept) {
  static blob_keys_t keys;
  memset(&keys, 0, sizeof(keys));
  assert_true(th_read_topic(bootstrap, "tally.changelog", PARTITIONS,
                            visit_blob, &keys) > 0);
  *expired = *kept = 0;
  for (int i = 0; i < keys.count; i++) {
    const blob_key_t *blob = &keys.blobs[i];
    assert_true(blob->newest_ms != INT64_MIN); /* a value came first */
    if (blob->newest_ms < horizon_ms) {
      if (blob->state != -1)
        fail_msg("the blob at partition %d offset %lld (newest %lld) is past "
                 "the window but has no tombstone",
                 (int)(be64(blob->key) >> 32), (long long)be64(blob->key + 4),
                 (long long)blob->newest_ms);
      (*expired)++;
    } else {
      if (blob->state != 1)
        fail_msg("the blob at offset %lld (newest %lld) is in the window but "
                 "was deleted",
                 (long long)be64(blob->key + 4), (long long)blob->newest_ms);
      (*kept)++;
    }
  }
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
  fputs("{\"retention\": {\"daily_days\": 1, \"alerts_days\": 1}, "
        "\"events\": {\"dedupe_window_ms\": 86400000}}\n",
        config);
  fclose(config);
  const char *extra[] = {"--config", config_path, NULL};

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);

  /* "now" is two days back, so that the last wave, a day and more later,
   * is not in the future. */
  int64_t now = (int64_t)time(NULL) * 1000 - 2 * DAY_MS;
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

  /* The old wave's blobs (one a partition) are past the window of the
   * latest watermark; the recent and latest waves' are not. */
  int expired_blobs = 0, kept_blobs = 0;
  check_blobs(broker.bootstrap, now_hour + 1 - DAY_MS, &expired_blobs,
              &kept_blobs);
  printf("# %d dedupe blobs past the window tombstoned, %d kept\n",
         expired_blobs, kept_blobs);
  assert_int_equal(expired_blobs, PARTITIONS);
  assert_true(kept_blobs >= 2 * PARTITIONS);
  assert_int_equal(th_stop(run.pid), 0);

  /* Restored from the changelog into an empty state dir, the blobs are
   * indexed anew; usage a day and more later passes the recent and latest
   * waves' blobs by the window: they get their tombstones too. */
  char fresh_dir[640];
  snprintf(fresh_dir, sizeof(fresh_dir), "%s/fresh", dir);
  assert_int_equal(th_run_start(&run, broker.bootstrap, fresh_dir, extra), 0);
  int64_t later[1] = {now_hour + DAY_MS + 2 * HOUR_MS + 1};
  post_usage(run.port, "later", later, 1);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 30000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  check_blobs(broker.bootstrap, later[0] - DAY_MS, &expired_blobs, &kept_blobs);
  printf("# after a restore and a day more: %d dedupe blobs tombstoned, %d "
         "kept\n",
         expired_blobs, kept_blobs);
  assert_true(expired_blobs >= 3 * PARTITIONS);
  assert_true(kept_blobs >= PARTITIONS);
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
