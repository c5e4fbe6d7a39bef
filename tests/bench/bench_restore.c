/*
 * bench_restore.c - how long a new instance takes to restore state from the
 * changelog (issue 6): subject records holding `rows` subject-feature rows
 * in all, published to `tally.changelog` on the embedded broker exactly as
 * the processor publishes them (bundles of a commit's records plus its
 * marker, expanded by tly_changelog_bundle_next), then restored partition
 * by partition into a fresh RocksDB with tly_changelog_restore, the code a
 * processor runs when a partition it has no state for is assigned to it.
 *
 *   build/bench_restore [rows] [features per subject] [partitions]
 *
 * Defaults: 1,000,000 rows = 250,000 subjects x 4 features, on 32
 * partitions (the embedded broker keeps ~5 MiB per partition; 32 hold the
 * ~70 MB with room to spare), 1,000 subjects per commit. Prints the
 * restore time and rate; checks that every subject came back (exit 1 if
 * not) and asserts nothing about speed.
 */
#define _GNU_SOURCE /* nftw */
#include "tly_billing.h"
#include "tly_changelog_restore.h"
#include "tly_keys.h"
#include "tly_store.h"
#include "tly_topics.h"

#include <ftw.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SUBJECTS_PER_COMMIT 1000
#define CYCLE_START 1793491200000LL /* 2026-11-01 */
#define CYCLE_END 1796083200000LL   /* 2026-12-01 */

static int64_t now_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

static void die(const char *what, const char *why) {
  fprintf(stderr, "bench_restore: %s: %s\n", what, why);
  exit(1);
}

/* One subject record with `features` rows of the current cycle. */
static size_t encode_subject(int64_t n, int features, unsigned char *out,
                             size_t size) {
  tly_account_t account = {.exists = 1};
  tly_subject_row_t rows[16];
  const tly_subject_row_t *row_ptrs[16];
  snprintf(account.plan, sizeof(account.plan), "pro");
  account.cycle = (tly_cycle_t){CYCLE_START, CYCLE_END, 1000 * n % 977, 40};
  for (int f = 0; f < features; f++) {
    memset(&rows[f], 0, sizeof(rows[f]));
    rows[f].cycle_start_ms = CYCLE_START;
    snprintf(rows[f].feature, sizeof(rows[f].feature), "feature_%d", f);
    rows[f].row = (tly_billing_row_t){.quantity = 1000 + n % 5000,
                                      .input_tokens = 700 * f,
                                      .output_tokens = 300 * f,
                                      .event_count = 10 + f,
                                      .cost_micros = 12345 + n % 100};
    row_ptrs[f] = &rows[f];
  }
  return tly_subject_record_encode(&account, row_ptrs, (size_t)features, NULL,
                                   0, out, size);
}

int main(int argc, char **argv) {
  long rows = argc > 1 ? atol(argv[1]) : 1000000;
  int features = argc > 2 ? atoi(argv[2]) : 4;
  int partitions = argc > 3 ? atoi(argv[3]) : 32;
  char errstr[512], dir[] = "/tmp/tally-bench-restore-XXXXXX";
  if (rows <= 0 || features <= 0 || features > 16 || partitions <= 0)
    die("usage", "bench_restore [rows] [features 1..16] [partitions]");
  long subjects = rows / features;

  rd_kafka_conf_t *host_conf = rd_kafka_conf_new();
  rd_kafka_conf_set(host_conf, "log_level", "3", NULL, 0);
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, host_conf, errstr, sizeof(errstr));
  if (!host)
    die("mock host", errstr);
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_CHANGELOG_TOPIC, partitions,
                             1);
  const char *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);

  /* Publish: per partition, commits of SUBJECTS_PER_COMMIT subject
   * records, each followed by its marker, as the processor does. */
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "linger.ms", "20", NULL, 0);
  rd_kafka_conf_set(conf, "batch.size", "1000000", NULL, 0);
  rd_kafka_conf_set(conf, "queue.buffering.max.messages", "2000000", NULL, 0);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (!producer)
    die("producer", errstr);
  int64_t started = now_ms();
  tly_changelog_bundle_t bundle = {0};
  unsigned char record[4096], *scratch = NULL;
  size_t scratch_cap = 0, bytes = 0, records = 0;
  char key[TLY_KEY_MAX], id[32];
  for (int32_t p = 0; p < partitions; p++) {
    int64_t offset = 0;
    long in_commit = 0;
    for (long s = p; s < subjects; s += partitions) {
      snprintf(id, sizeof(id), "s%07ld", s);
      size_t key_len = tly_key_account(p, TLY_SUBJECT_USER, id, key,
                                       sizeof(key));
      size_t len = encode_subject(s, features, record, sizeof(record));
      if (!key_len || len > sizeof(record))
        die("encode", "record too large");
      tly_changelog_bundle_add(&bundle, p, TLY_CHANGELOG_ACCOUNT, key, key_len,
                               record, len);
      offset += 3; /* a few input events per subject */
      if (++in_commit < SUBJECTS_PER_COMMIT && s + partitions < subjects)
        continue;
      tly_changelog_marker_t marker = {p, offset, CYCLE_START + offset};
      char *data;
      size_t data_len, cursor = 0;
      if (tly_changelog_bundle_finish(&bundle, &marker, 1, &data, &data_len))
        die("bundle", "out of memory");
      tly_changelog_record_t out;
      int more;
      while ((more = tly_changelog_bundle_next(data, data_len, &cursor,
                                               &scratch, &scratch_cap,
                                               &out)) > 0) {
        rd_kafka_resp_err_t err;
        while ((err = rd_kafka_producev(
                    producer, RD_KAFKA_V_TOPIC(TLY_DEFAULT_CHANGELOG_TOPIC),
                    RD_KAFKA_V_PARTITION(out.partition),
                    RD_KAFKA_V_KEY(out.key, out.key_len),
                    RD_KAFKA_V_VALUE((void *)out.value, out.value_len),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
          rd_kafka_poll(producer, 10);
        if (err)
          die("produce", rd_kafka_err2str(err));
        bytes += out.key_len + out.value_len;
        records++;
      }
      free(data);
      if (more < 0)
        die("bundle", "corrupt");
      in_commit = 0;
    }
  }
  if (rd_kafka_flush(producer, 120000))
    die("flush", "timed out");
  rd_kafka_destroy(producer);
  fprintf(stderr, "published %zu records (%.1f MB) in %lld ms\n", records,
          (double)bytes / 1e6, (long long)(now_ms() - started));

  if (!mkdtemp(dir))
    die("mkdtemp", "failed");
  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  if (!store)
    die("store", errstr);
  conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "group.id", "bench-restore", NULL, 0);
  rd_kafka_conf_set(conf, "enable.auto.commit", "false", NULL, 0);
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", NULL, 0);
  rd_kafka_conf_set(conf, "max.partition.fetch.bytes", "10485760", NULL, 0);
  rd_kafka_conf_set(conf, "queued.min.messages", "1000000", NULL, 0);
  rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", NULL, 0);
  rd_kafka_t *reader =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (!reader)
    die("reader", errstr);

  uint64_t read = 0, accounts = 0;
  started = now_ms();
  for (int32_t p = 0; p < partitions; p++) {
    int64_t low, high;
    tly_changelog_restore_t result;
    if (rd_kafka_query_watermark_offsets(reader, TLY_DEFAULT_CHANGELOG_TOPIC,
                                         p, &low, &high, 10000))
      die("watermarks", "failed");
    if (low > 0)
      die("changelog", "the embedded broker dropped records: use more "
                       "partitions");
    if (tly_changelog_restore(store, reader, TLY_DEFAULT_CHANGELOG_TOPIC, p,
                              low, high, &result, errstr,
                              sizeof(errstr)) < 0)
      die("restore", errstr);
    read += result.records;
    accounts += result.accounts;
  }
  int64_t elapsed = now_ms() - started;
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);

  printf("restore from %s: %ld subject-feature rows (%ld subjects x %d "
         "features) on %d partitions\n",
         TLY_DEFAULT_CHANGELOG_TOPIC, subjects * features, subjects, features,
         partitions);
  printf("  changelog records read   %llu (%.1f MB)\n",
         (unsigned long long)read, (double)bytes / 1e6);
  printf("  subjects restored        %llu\n", (unsigned long long)accounts);
  printf("  restore time             %lld ms (%.0f rows/s, %.0f records/s)\n",
         (long long)elapsed,
         elapsed > 0 ? (double)subjects * features * 1000.0 / elapsed : 0.0,
         elapsed > 0 ? (double)read * 1000.0 / elapsed : 0.0);
  tly_store_close(store);
  nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
  tly_changelog_bundle_free(&bundle);
  free(scratch);
  return accounts == (uint64_t)subjects ? 0 : 1;
}
