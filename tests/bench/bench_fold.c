/*
 * bench_fold.c - the end-to-end benchmark: how fast the processor folds
 * with the exactly-once protocol on, next to the ceiling measured in the
 * same run (the raw consume rate of the same topic with no processing),
 * then, on the same state:
 *   (c) event-to-visible latency (produced -> durably committed, i.e.
 *       readable over HTTP) in two paced runs, at 5,000 events/s and at
 *       half of (b)'s rate, each next to the time of one synced RocksDB
 *       write measured in the same run (the floor of any commit) and the
 *       goal (p99 <= 100 ms);
 *   (d) the HTTP port (wrk on loopback): the quota pre-check rotating over
 *       every subject, /usage and /healthz, next to a bare libmicrohttpd
 *       server started in the same process (bench_http.c);
 *   (e) peak memory of the process (broker, processor and HTTP port) and
 *       the RocksDB size.
 *
 *   build/bench_fold [events] [subjects] [partitions]
 *
 * Defaults: 2,000,000 events over 100,000 subjects on 200 partitions of
 * the embedded broker (which keeps ~5 MiB per partition: 200 partitions
 * hold 2 M events of ~90 bytes with room to spare). The state goes to a
 * fresh RocksDB under /tmp, WAL synced on every commit, as in production.
 * Shows progress on stderr and prints a table; asserts nothing about
 * speed. BENCH_LATENCY_S (default 10) sets each (c) run's length
 * (0 skips (c)), BENCH_HTTP_S
 * (default 10) each wrk run; BENCH_HTTP_S=0 skips (d). BENCH_CHANGELOG=1
 * adds the state changelog topic, so the fold publishes it (its cost).
 * BENCH_MEMORY_BUDGET sets --memory-budget (bytes; default 1 GiB): a small
 * one makes (b) spill event ids to RocksDB (tly_dedupe.h).
 * BENCH_METERS=1 gives every feature a meter (api_calls max, ai_tokens
 * sum: tly_meters.h) and groups ai_tokens by model (tly_dims.h);
 * BENCH_METERS=2 the same meters without dimensions (group_by []).
 * Without meters, AI events group by model and provider (the default).
 * BENCH_ONLY_HTTP=1 runs (d) alone on a small data set (bench_http.h).
 * BENCH_DEDUPE_IDS=N runs the dedupe-scale run alone (bench_dedupe.c):
 * N ids in the window under the memory budget, then 1 % duplicates.
 */
#define _GNU_SOURCE /* nftw, usleep */
#include "bench_http.h"
#include "tally_producer.h"
#include "tly_config.h"
#include "tly_http.h"
#include "tly_log.h"
#include "tly_malloc.h"
#include "tly_processor.h"
#include "tly_store.h"
#include "tly_topics.h"

#include <ftw.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

typedef struct {
  tly_processor_t *processor;
  int rc;
  char errstr[512];
} run_t;

static void *run_processor(void *arg) {
  run_t *run = arg;
  prctl(PR_SET_NAME, "tly-fold"); /* for perf */
  run->rc = tly_processor_run(run->processor, &stop, run->errstr,
                              sizeof(run->errstr));
  return NULL;
}

static const char *models[] = {"gpt-4o", "gpt-4o-mini", "claude-sonnet",
                               "gemini-flash"};

/* Produces events over subjects user:b0.. (ids prefix-N). rate 0: as fast
 * as possible; otherwise paced to about rate events/s. Returns the ms it
 * took. */
static int64_t produce(const char *bootstrap, long events, long subjects,
                       const char *prefix, double rate) {
  char errstr[512], id[32], event_id[48];
  const char *fast[] = {"linger.ms=20", "batch.size=1000000", NULL};
  /* Paced: tally's own client's linger (the HTTP ingest sends with it),
   * counted in (c): the embedded broker hands a consumer one produce
   * request's records per partition per fetch, so a smaller linger only
   * caps the rate it can be read at. */
  const char *paced[] = {"linger.ms=5", NULL};
  tally_producer_conf_t conf = {.brokers = bootstrap,
                                .kafka_properties = rate > 0 ? paced : fast};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  unsigned seed = 42;
  if (!producer) {
    fprintf(stderr, "bench: %s\n", errstr);
    exit(1);
  }
  int64_t started = tly_monotonic_ms();
  for (long i = 0; i < events; i++) {
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "b%ld", (long)(rand_r(&seed) % subjects));
    snprintf(event_id, sizeof(event_id), "%s-%ld", prefix, i);
    event.event_id = event_id;
    event.occurred_at_ms = 1794268800000LL + i / 100;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    /* A mix: two in three are API calls, the rest AI tokens of four
     * models. */
    if (i % 3) {
      event.body.usage.feature = "api_calls";
      event.body.usage.quantity = 1;
    } else {
      event.body.usage.feature = "ai_tokens";
      event.body.usage.has_ai = 1;
      event.body.usage.ai = (tly_ai_usage_t){"p", (char *)models[i % 4],
                                             200 + i % 900, 50 + i % 300};
      event.body.usage.quantity =
          event.body.usage.ai.input_tokens + event.body.usage.ai.output_tokens;
    }
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      fprintf(stderr, "bench: %s\n", errstr);
      exit(1);
    }
    if (rate > 0) { /* wait until this event is due */
      int64_t due = started + (int64_t)((double)(i + 1) * 1000.0 / rate);
      int64_t now = tly_monotonic_ms();
      if (due > now)
        usleep((useconds_t)(due - now) * 1000);
    }
    if (i % 100000 == 0)
      fprintf(stderr, "\rproducing %ld/%ld", i, events);
  }
  tally_producer_flush(producer, 120000);
  tally_producer_destroy(producer);
  fprintf(stderr, "\rproduced %ld events            \n", events);
  return tly_monotonic_ms() - started;
}

/* The upper bound (ms) of the histogram bucket holding quantile q of the
 * records counted between two snapshots; -1 beyond the last bound. */
static long visible_quantile(const tly_processor_stats_t *before,
                             const tly_processor_stats_t *after, double q) {
  static const int64_t bounds[TLY_VISIBLE_BUCKETS] =
      TLY_VISIBLE_BUCKET_BOUNDS_MS;
  double total = (double)(after->visible_count - before->visible_count);
  for (int b = 0; b < TLY_VISIBLE_BUCKETS; b++)
    if ((double)(after->visible_buckets[b] - before->visible_buckets[b]) >=
        q * total)
      return (long)bounds[b];
  return -1;
}

/* (c)'s ceiling: the median time (ms) of count synced RocksDB writes of
 * one bytes-long value, in a store of its own under dir (a commit can be
 * no faster than one such write). -1 when the store cannot be used. */
#define FSYNC_PROBE_BYTES 65536
#define FSYNC_PROBE_WRITES 21
static double synced_write_ms(const char *dir) {
  char path[600], errstr[512], key[16];
  double took[FSYNC_PROBE_WRITES];
  snprintf(path, sizeof(path), "%s/fsync-probe", dir);
  tly_store_t *store = tly_store_open(path, 0, errstr, sizeof(errstr));
  tly_store_batch_t *batch = tly_store_batch_new();
  char *value = malloc(FSYNC_PROBE_BYTES);
  int failed = !store || !batch || !value;
  for (int i = 0; i < FSYNC_PROBE_WRITES && !failed; i++) {
    memset(value, 'a' + i % 26, FSYNC_PROBE_BYTES);
    snprintf(key, sizeof(key), "probe%d", i);
    tly_store_batch_clear(batch);
    tly_store_batch_put(batch, TLY_CF_META, key, strlen(key), value,
                        FSYNC_PROBE_BYTES);
    struct timespec begun, ended;
    clock_gettime(CLOCK_MONOTONIC, &begun);
    failed = tly_store_commit(store, batch, 1, errstr, sizeof(errstr)) != 0;
    clock_gettime(CLOCK_MONOTONIC, &ended);
    took[i] = (double)(ended.tv_sec - begun.tv_sec) * 1e3 +
              (double)(ended.tv_nsec - begun.tv_nsec) / 1e6;
  }
  free(value);
  tly_store_batch_destroy(batch);
  tly_store_close(store);
  if (failed)
    return -1;
  for (int i = 1; i < FSYNC_PROBE_WRITES; i++) /* insertion sort */
    for (int j = i; j > 0 && took[j] < took[j - 1]; j--) {
      double swap = took[j];
      took[j] = took[j - 1];
      took[j - 1] = swap;
    }
  return took[FSYNC_PROBE_WRITES / 2];
}

/* A quantile as the table shows it: "<= N ms", or past the last bound. */
static const char *quantile_text(long bound_ms, char *out, size_t size) {
  static const int64_t bounds[TLY_VISIBLE_BUCKETS] =
      TLY_VISIBLE_BUCKET_BOUNDS_MS;
  if (bound_ms < 0)
    snprintf(out, size, "> %lld ms",
             (long long)bounds[TLY_VISIBLE_BUCKETS - 1]);
  else
    snprintf(out, size, "<= %ld ms", bound_ms);
  return out;
}

/* One (c) run: what the processor's histograms counted while events were
 * produced at rate. */
typedef struct {
  double rate;
  long events;
  tly_processor_stats_t before, after;
} latency_run_t;

/* Produces events at rate for seconds (ids prefix-N) and waits until the
 * processor has taken every one of them. */
static void latency_run(latency_run_t *out, run_t *run, const char *bootstrap,
                        long subjects, double rate, int seconds,
                        const char *prefix) {
  out->rate = rate;
  out->events = (long)(rate * seconds);
  tly_processor_stats(run->processor, &out->before);
  fprintf(stderr, "(c) event-to-visible latency at %.0f events/s for %d s...\n",
          rate, seconds);
  produce(bootstrap, out->events, subjects, prefix, rate);
  uint64_t target = out->before.events_folded + out->before.dead_letters +
                    out->before.duplicates + (uint64_t)out->events;
  tly_processor_stats_t stats = out->before;
  while (stats.events_folded + stats.dead_letters + stats.duplicates < target &&
         !run->rc) {
    usleep(20000);
    tly_processor_stats(run->processor, &stats);
  }
  /* The records' batches are durable, and counted, once they are folded
   * and the commit is released: wait for the counts to settle. */
  for (int i = 0; i < 50 && stats.visible_count < out->before.visible_count +
                                                      (uint64_t)out->events;
       i++) {
    usleep(20000);
    tly_processor_stats(run->processor, &stats);
  }
  out->after = stats;
}

static void print_latency_run(const latency_run_t *run, const char *label,
                              double fsync_ms) {
  char p50[32], p99[32];
  double visible_n =
      (double)(run->after.visible_count - run->before.visible_count);
  uint64_t batches =
      run->after.batches_committed - run->before.batches_committed;
  uint64_t commits = run->after.commit_count - run->before.commit_count;
  printf(
      "| (c) event to visible at %.0f events/s (%s): p50 / p99 / mean | %s / "
      "%s / %.1f ms (%.0f events, %llu batches, commit mean %.2f ms) | "
      "ceiling: synced write %.2f ms; goal p99 <= 100 ms |\n",
      run->rate, label,
      quantile_text(visible_quantile(&run->before, &run->after, 0.5), p50,
                    sizeof(p50)),
      quantile_text(visible_quantile(&run->before, &run->after, 0.99), p99,
                    sizeof(p99)),
      visible_n ? (double)(run->after.visible_ms_total -
                           run->before.visible_ms_total) /
                      visible_n
                : 0.0,
      visible_n, (unsigned long long)batches,
      commits ? (double)(run->after.commit_micros_total -
                         run->before.commit_micros_total) /
                    1e3 / (double)commits
              : 0.0,
      fsync_ms);
}

static long long dir_bytes;
static int add_size(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)path, (void)ftw;
  if (flag == FTW_F)
    dir_bytes += st->st_size;
  return 0;
}

/* CPU seconds (user + system) of the whole process so far. */
static double cpu_seconds(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

/* The threads of (b) besides the fold and the writer, by name (a prefix):
 * where the rest of the process's CPU per event goes. */
static const struct {
  const char *label, *name;
} other_threads[] = {
    {"RocksDB flush + compaction", "rocksdb:"},
    {"librdkafka (fetch, produce)", "rdk:broker"},
    {"the fold's helpers (prefault, release)", "tly-"},
    {"the embedded broker", "rdk:mock"},
};
#define OTHER_THREADS (int)(sizeof(other_threads) / sizeof(other_threads[0]))

/* fold_writer: the fold and writer threads' CPU, read just before (the
 * "tly-" prefix takes them too; theirs are shown apart). */
static void other_threads_cpu(double out[OTHER_THREADS], double fold_writer) {
  for (int i = 0; i < OTHER_THREADS; i++) {
    out[i] = bench_thread_cpu_seconds(other_threads[i].name, 1);
    if (!strcmp(other_threads[i].name, "tly-"))
      out[i] -= fold_writer;
  }
}

static double median3(const double v[3]) {
  double a = v[0], b = v[1], c = v[2];
  if ((a <= b && b <= c) || (c <= b && b <= a))
    return b;
  if ((b <= a && a <= c) || (c <= a && a <= b))
    return a;
  return c;
}

/* (a) the ceiling: read every record, do nothing with it. */
static double raw_consume(const char *bootstrap, long events, int partitions) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", "bench-raw", errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "max.partition.fetch.bytes", "10485760", errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; p++)
    rd_kafka_topic_partition_list_add(parts, TALLY_DEFAULT_USAGE_TOPIC, p)
        ->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  long seen = 0;
  int64_t started = tly_monotonic_ms();
  while (seen < events) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 1000);
    if (!msg)
      continue;
    if (!msg->err)
      seen++;
    rd_kafka_message_destroy(msg);
  }
  int64_t elapsed = tly_monotonic_ms() - started;
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return seen * 1000.0 / (double)(elapsed ? elapsed : 1);
}

int main(int argc, char **argv) {
  long events = argc > 1 ? atol(argv[1]) : 2000000;
  long subjects = argc > 2 ? atol(argv[2]) : 100000;
  int partitions = argc > 3 ? atoi(argv[3]) : 200;
  int latency_s =
      getenv("BENCH_LATENCY_S") ? atoi(getenv("BENCH_LATENCY_S")) : 10;
  int http_s = getenv("BENCH_HTTP_S") ? atoi(getenv("BENCH_HTTP_S")) : 10;
  char errstr[512], dir[] = "/tmp/tally-bench-XXXXXX";

  /* As `tally run` and `tally dev` start (tly_malloc.h). */
  tly_malloc_hugepages(argv);
  tly_malloc_arenas();
  if (getenv("BENCH_BROKER_CHILD")) /* first: it inherits the bench's env */
    return bench_broker_child_main();
  if (getenv("BENCH_ONLY_HTTP") && atoi(getenv("BENCH_ONLY_HTTP")))
    return bench_http_only(argc, argv);
  if (getenv("BENCH_DEDUPE_IDS") && atol(getenv("BENCH_DEDUPE_IDS")) > 0)
    return bench_dedupe_main();
  tly_log_set_level(TLY_LOG_WARN);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  rd_kafka_mock_topic_create(cluster, TALLY_DEFAULT_USAGE_TOPIC, partitions, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_DLQ_TOPIC, 1, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_ALERTS_TOPIC, 4, 1);
  /* BENCH_CHANGELOG=1: with the state changelog, as `tally broker` sets it
   * up (without the topic the processor runs without one). */
  const char *with_changelog = getenv("BENCH_CHANGELOG");
  if (with_changelog && atoi(with_changelog))
    rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_CHANGELOG_TOPIC, partitions,
                               1);
  const char *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);

  int64_t produce_ms = produce(bootstrap, events, subjects, "b", 0);
  fprintf(stderr, "(a) measuring the raw consume rate...\n");
  /* (a) is measured three times, twice here and once right after (b)
   * (the processor caught up and idle), and the ceiling is their median:
   * on this VM one measurement of it drifts by a third from the next (635
   * to 935 k events/s within minutes), more than anything (b) is
   * compared for. */
  double raws[3];
  raws[0] = raw_consume(bootstrap, events, partitions);
  raws[1] = raw_consume(bootstrap, events, partitions);

  fprintf(stderr, "(b) measuring the fold...\n");
  if (!mkdtemp(dir))
    return 1;
  /* RocksDB sized from the budget as `tally run` opens it (cli_serve.c):
   * the block cache and memtables of its parts. */
  int64_t budget = getenv("BENCH_MEMORY_BUDGET")
                       ? atoll(getenv("BENCH_MEMORY_BUDGET"))
                       : TLY_DEFAULT_MEMORY_BUDGET;
  tly_store_memory_t rocksdb_memory = tly_memory_store_sizes(budget);
  tly_store_t *store =
      tly_store_open_sized(dir, 0, &rocksdb_memory, errstr, sizeof(errstr));
  tly_config_t *config = tly_config_default();
  bench_http_add_key(config);
  /* BENCH_METERS=1: every feature has a meter (api_calls the max of its
   * quantities, ai_tokens an explicit sum), so each event looks its meter
   * up and takes a non-sum aggregation's path. */
  const char *with_meters = getenv("BENCH_METERS");
  if (with_meters && atoi(with_meters) && config) {
    config->meters = calloc(2, sizeof(*config->meters));
    if (config->meters) {
      snprintf(config->meters[0].feature, TLY_CONFIG_NAME_MAX, "api_calls");
      config->meters[0].aggregation = TLY_AGG_MAX;
      snprintf(config->meters[1].feature, TLY_CONFIG_NAME_MAX, "ai_tokens");
      config->meters[1].aggregation = TLY_AGG_SUM;
      /* Dimensions (tly_dims.h): 1 groups ai_tokens by model, 2 by
       * nothing (group_by []), to measure what grouping costs. */
      config->meters[1].group_by_set = 1;
      config->meters[1].group_count = atoi(with_meters) == 2 ? 0 : 1;
      config->meters[1].group_by[0].kind = TLY_DIM_MODEL;
      config->meter_count = 2;
    }
  }
  /* BENCH_KAFKA="name=value": one librdkafka property for the fold's
   * clients, as -X gives tally run (e.g. queued.max.messages.kbytes). */
  const char *bench_kafka[] = {getenv("BENCH_KAFKA"), NULL};
  tly_processor_conf_t pconf = {
      .brokers = bootstrap,
      .group_id = "bench-fold",
      .config = config,
      .tick_interval_ms = -1,
      .batch_max_events =
          getenv("BENCH_BATCH") ? atoi(getenv("BENCH_BATCH")) : 0,
      .memory_budget_bytes = budget,
      .kafka_properties = bench_kafka};
  run_t run = {0};
  run.processor = tly_processor_new(&pconf, store, errstr, sizeof(errstr));
  if (!store || !run.processor) {
    fprintf(stderr, "bench: %s\n", errstr);
    return 1;
  }
  pthread_t thread;
  pthread_create(&thread, NULL, run_processor, &run);
  tly_processor_stats_t stats = {0};
  int64_t first = 0, last = 0;
  uint64_t first_count = 0; /* every event counts (see below) */
  double cpu_first = 0, cpu_last = 0, fold_first = 0, fold_last = 0;
  double writer_first = 0, writer_last = 0;
  /* The other threads' CPU per event, sampled as the fold's is. */
  double others_first[OTHER_THREADS] = {0}, others_last[OTHER_THREADS] = {0};
  int64_t shown = 0;
  /* (b) is timed from the assignment (the group join behind, the
   * partitions' setup included) and counts every event: whether the first
   * commit is a handful of records or the whole cold batch, the cold fill
   * is inside. Warm: from the first commit that brings the events folded
   * to twice the subjects (nearly every subject's state, overlay, dedupe
   * index and batch buffers filled). */
  int64_t warm = 0;
  uint64_t warm_count = 0;
  while (stats.events_folded + stats.dead_letters + stats.duplicates <
         (uint64_t)events) {
    usleep(20000);
    tly_processor_stats(run.processor, &stats);
    if (!first && stats.partitions_assigned) {
      first = tly_monotonic_ms() - (int64_t)stats.last_assignment_ms;
      cpu_first = cpu_seconds();
      fold_first = bench_thread_cpu_seconds("tly-fold", 0);
      writer_first = bench_thread_cpu_seconds("tly-writer", 0);
      other_threads_cpu(others_first, fold_first + writer_first);
    }
    last = tly_monotonic_ms();
    if (first && !warm && stats.events_folded >= 2 * (uint64_t)subjects) {
      warm = last;
      warm_count = stats.events_folded;
    }
    cpu_last = cpu_seconds();
    if (last - shown >= 1000 ||
        stats.events_folded + stats.dead_letters + stats.duplicates >=
            (uint64_t)events) {
      fold_last = bench_thread_cpu_seconds("tly-fold", 0);
      writer_last = bench_thread_cpu_seconds("tly-writer", 0);
      other_threads_cpu(others_last, fold_last + writer_last);
    }
    if (last - shown >= 1000) {
      fprintf(stderr, "\rfolded %llu/%ld",
              (unsigned long long)stats.events_folded, events);
      shown = last;
    }
    if (run.rc) {
      fprintf(stderr, "bench: processor stopped: %s\n", run.errstr);
      return 1;
    }
  }
  fprintf(stderr, "\n");
  double fold = (double)(stats.events_folded - first_count) * 1000.0 /
                (double)(last - first ? last - first : 1);
  double warm_rate = warm && last > warm && stats.events_folded > warm_count
                         ? (double)(stats.events_folded - warm_count) * 1000.0 /
                               (double)(last - warm)
                         : 0;
  double folded = (double)(stats.events_folded - first_count
                               ? stats.events_folded - first_count
                               : 1);
  double cpu_us = (cpu_last - cpu_first) * 1e6 / folded;
  double fold_us = (fold_last - fold_first) * 1e6 / folded;
  double writer_us = (writer_last - writer_first) * 1e6 / folded;
  tly_processor_stats(run.processor, &stats);
  tly_processor_stats_t after_fold = stats;
  fprintf(stderr, "(a) measuring the raw consume rate again...\n");
  raws[2] = raw_consume(bootstrap, events, partitions);
  double raw = median3(raws), raw_max = raws[0];
  for (int i = 1; i < 3; i++)
    if (raws[i] > raw_max)
      raw_max = raws[i];

  /* (c) on the running processor: at 5,000 events/s, then at half of
   * (b)'s rate, next to a synced write timed here and now. */
  double fsync_ms = synced_write_ms(dir);
  latency_run_t steady = {0}, half = {0};
  if (latency_s > 0) {
    latency_run(&steady, &run, bootstrap, subjects, 5000, latency_s, "c5k");
    latency_run(&half, &run, bootstrap, subjects, fold / 2, latency_s, "ch");
  }
  tly_processor_stats(run.processor, &stats);

  /* (d) the HTTP port, on the same state, next to its ceiling. */
  bench_http_result_t http_result = {0};
  if (http_s > 0 && bench_http_run(store, run.processor, config, subjects,
                                   http_s, &http_result))
    return 1;
  stop = 1;
  pthread_join(thread, NULL);

  /* (e) */
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  nftw(dir, add_size, 16, FTW_PHYS);

  printf("\n| figure | value |\n|---|---|\n");
  printf("| events | %ld over %ld subjects, %d partitions (2 in 3 API calls, "
         "the rest AI tokens of 4 models) |\n",
         events, subjects, partitions);
  printf("| produce (idempotent) | %.0f events/s |\n",
         events * 1000.0 / (double)(produce_ms ? produce_ms : 1));
  printf("| (a) raw consume, no processing (the median of three: two "
         "before (b), one after) | %.0f events/s (%.0f, %.0f; %.0f) |\n",
         raw, raws[0], raws[1], raws[2]);
  printf("| (b) fold, exactly-once (synced RocksDB commit per batch) | %.0f "
         "events/s |\n",
         fold);
  printf("| (b)/(a)%s | %.2f (%.2f of the fastest (a)) |\n",
         !config->meter_count ? " (AI events grouped by model and provider)"
         : config->meters[1].group_count
             ? " (meters: api_calls max, ai_tokens sum by model)"
             : " (meters: api_calls max, ai_tokens sum, no dimensions)",
         fold / raw, fold / raw_max);
  if (warm_rate > 0)
    printf("| (b) once warm (from the first commit past %ld events, twice "
           "the subjects: their state filled) | %.0f events/s, %.2f of "
           "(a) |\n",
           2 * subjects, warm_rate, warm_rate / raw);
  if (warm_rate > 0)
    printf("| (b) until warm: from the assignment to that commit, %llu "
           "events | %lld ms |\n",
           (unsigned long long)(warm_count - first_count),
           (long long)(warm - first));
  printf("| (b) CPU per event: process (broker included) / fold thread / "
         "writer thread | %.2f / %.2f / %.2f us |\n",
         cpu_us, fold_us, writer_us);
  printf("| (b) CPU per event, the other threads:");
  for (int i = 0; i < OTHER_THREADS; i++)
    printf("%s %s", i ? " /" : "", other_threads[i].label);
  printf(" |");
  for (int i = 0; i < OTHER_THREADS; i++)
    printf("%s %.2f", i ? " /" : "",
           (others_last[i] - others_first[i]) * 1e6 / folded);
  printf(" us |\n");
  /* On this machine's cores, at the CPU per event measured: what the
   * whole process (broker included) could fold if no core ever idled. */
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  printf("| (b) against what %ld cores allow at the process's CPU per event "
         "(%.0f events/s) | %.2f |\n",
         cores, cpu_us > 0 ? (double)cores * 1e6 / cpu_us : 0,
         cpu_us > 0 ? fold / ((double)cores * 1e6 / cpu_us) : 0);
  printf("| batches committed in (b) | %llu (%.0f events each) |\n",
         (unsigned long long)after_fold.batches_committed,
         (double)after_fold.events_folded /
             (double)(after_fold.batches_committed
                          ? after_fold.batches_committed
                          : 1));
  if (latency_s > 0) {
    print_latency_run(&steady, "steady", fsync_ms);
    print_latency_run(&half, "half of (b)", fsync_ms);
  } else {
    printf("| (c) event to visible | not run (BENCH_LATENCY_S=0) |\n");
  }
  bench_http_print(&http_result);
  printf("| (e) peak memory (broker + processor + HTTP, one process) | %ld "
         "MiB |\n",
         usage.ru_maxrss / 1024);
  printf("| (e) RocksDB size | %.1f MiB |\n", (double)dir_bytes / 1048576.0);
  printf("| alerts | %llu |\n", (unsigned long long)stats.alerts);
  printf("| dedupe: ids spilled to RocksDB / lookups that read it | %llu / "
         "%llu (memory %llu of %llu bytes) |\n",
         (unsigned long long)stats.dedupe_ids_spilled,
         (unsigned long long)stats.dedupe_store_reads,
         (unsigned long long)stats.memory_bytes[TLY_MEMORY_DEDUPE],
         (unsigned long long)stats.memory_budget[TLY_MEMORY_DEDUPE]);

  tly_processor_destroy(run.processor);
  tly_store_close(store);
  tly_config_free(config);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
  char command[600];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  return system(command) == 0 ? 0 : 1;
}
