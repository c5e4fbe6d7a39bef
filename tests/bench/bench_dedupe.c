/*
 * bench_dedupe.c - bench_fold's dedupe-scale run (issue 21): N event ids
 * in the dedupe window on one instance, then more events of which 1 % are
 * duplicates of random old ids, with the memory budget bounding the
 * dedupe index (older ids spilled to RocksDB). Prints, each next to its
 * ceiling or bound measured in the same run:
 *   - peak RSS of the processor's process against the budget: the
 *     embedded broker, which holds every event in memory, runs in a
 *     process of its own (this program run again, BENCH_BROKER_CHILD), so
 *     the figure is the processor's alone (with the bench's producer and
 *     raw consumer, freed and trimmed before each phase); the broker's RSS
 *     is printed beside;
 *   - the fold rate against the raw consume rate of the same topic: filling
 *     the window, then with it full and the duplicates (the same
 *     processor folding on: the figure, goal >= 0.5), then after a
 *     restart on the full window, counted from its assignment on;
 *   - the duplicates refused against those sent (must be equal);
 *   - bytes per id on disk (SST files after a compaction, all state) and
 *     RocksDB bytes per million ids of the two dedupe families;
 *   - the assignment time of a restart on the full window.
 * BENCH_DEDUPE_WINDOWS=1 makes the run twice, at a dedupe window of 7 days
 * and of 35 (the default), the ids' event times spread over 35 days, and
 * prints the two side by side (issue 17's backfill: what 35 days cost).
 *
 *   BENCH_DEDUPE_IDS=2000000 build/bench_fold
 *
 * BENCH_DEDUPE_IDS: ids in the window (the full run: 20000000);
 * BENCH_DEDUPE_MORE: events after it, and as many again after the
 * restart (default a tenth of the ids each);
 * BENCH_MEMORY_BUDGET: bytes (default 1 GiB scaled by ids / 20 M, so a
 * smaller run keeps the full run's proportion; 1099511627776 spills
 * nothing, as before issue 21); BENCH_DEDUPE_PARTITIONS (default one per
 * 25,000 events, 64 at least: the embedded broker keeps ~5 MiB a
 * partition). 4,096 subjects, so the subject cache stays small; ids of 16
 * characters.
 */
#define _GNU_SOURCE /* nftw */
#include "bench_http.h"
#include "tally_producer.h"
#include "tly_config.h"
#include "tly_log.h"
#include "tly_processor.h"
#include "tly_store.h"
#include "tly_topics.h"

#include <ftw.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* Enough subjects that every partition gets its share of the events: the
 * embedded broker keeps about 5 MiB per partition and drops older
 * records past it. Still a small subject cache (a few MiB). */
#define SUBJECTS 4096
#define FIRST_MS 1794268800000LL

static volatile sig_atomic_t dedupe_stop;

typedef struct {
  tly_processor_t *processor;
  int rc;
  char errstr[512];
} dedupe_run_t;

static void *dedupe_run_main(void *arg) {
  dedupe_run_t *run = arg;
  prctl(PR_SET_NAME, "tly-fold"); /* for bench_thread_cpu_seconds */
  run->rc = tly_processor_run(run->processor, &dedupe_stop, run->errstr,
                              sizeof(run->errstr));
  return NULL;
}

static long env_long(const char *name, long fallback) {
  const char *value = getenv(name);
  return value && atol(value) > 0 ? atol(value) : fallback;
}

/* Event time per event (ms per 1,000 events): by default 10, 1 ms per
 * 100 events (20 M span 2.3 days: all in any window); the window
 * comparison spreads the fill over 35 days. */
static double ms_per_kevent = 10;
static int64_t first_ms = FIRST_MS; /* the first event's time */

/* Event i: id d<15 digits>, subject s<i % 64>. */
static void fill_event(tly_event_t *event, long i, char *id, char *subject) {
  snprintf(id, 32, "d%015ld", i);
  snprintf(subject, 16, "s%ld", i % SUBJECTS);
  memset(event, 0, sizeof(*event));
  event->event_id = id;
  event->occurred_at_ms = first_ms + (int64_t)((double)i * ms_per_kevent / 1e3);
  event->subject_kind = TLY_SUBJECT_USER;
  event->subject_id = subject;
  event->body.usage.feature = "api_calls";
  event->body.usage.quantity = 1;
}

/* Events from..to-1; with old > 0, every 100th is instead a duplicate of a
 * random event below old. Returns the duplicates sent. */
static long produce_range(const char *bootstrap, long from, long to, long old) {
  char errstr[512], id[32], subject[16];
  const char *fast[] = {"linger.ms=20", "batch.size=1000000", NULL};
  tally_producer_conf_t conf = {.brokers = bootstrap, .kafka_properties = fast};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  unsigned seed = 7 + (unsigned)from; /* other old ids in each range */
  long duplicates = 0;
  if (!producer) {
    fprintf(stderr, "bench: %s\n", errstr);
    exit(1);
  }
  for (long i = from; i < to; i++) {
    tly_event_t event;
    long n = i;
    if (old > 0 && i % 100 == 99) {
      n = (long)(((unsigned long)rand_r(&seed) << 16 ^
                  (unsigned long)rand_r(&seed)) %
                 (unsigned long)old);
      duplicates++;
    }
    fill_event(&event, n, id, subject);
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      fprintf(stderr, "bench: %s\n", errstr);
      exit(1);
    }
    if (i % 200000 == 0)
      fprintf(stderr, "\rproducing %ld/%ld", i - from, to - from);
  }
  tally_producer_flush(producer, 600000);
  tally_producer_destroy(producer);
  fprintf(stderr, "\rproduced %ld events            \n", to - from);
  return duplicates;
}

static double dedupe_raw_consume(const char *bootstrap, long events,
                                 int partitions) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", "bench-dedupe-raw", errstr,
                    sizeof(errstr));
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

/* VmRSS of the process whose status file is path. */
static long rss_kib_of(const char *path) {
  FILE *file = fopen(path, "r");
  char line[256];
  long kib = 0;
  while (file && fgets(line, sizeof(line), file))
    if (!strncmp(line, "VmRSS:", 6))
      kib = atol(line + 6);
  if (file)
    fclose(file);
  return kib;
}

static long rss_kib(void) { return rss_kib_of("/proc/self/status"); }

static long long sst_bytes, all_bytes;
static int add_file(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)ftw;
  if (flag == FTW_F) {
    all_bytes += st->st_size;
    size_t len = strlen(path);
    if (len > 4 && !strcmp(path + len - 4, ".sst"))
      sst_bytes += st->st_size;
  }
  return 0;
}

typedef struct {
  double rate;       /* events (folded + duplicates) per second */
  int64_t ms;        /* from the first folded to the last */
  int64_t assign_ms; /* the assignment's setup */
  tly_processor_stats_t stats;
  long peak_rss_kib, end_rss_kib;
  double fold_us, writer_us; /* CPU per event of the two threads */
  double rocksdb_us;         /* and of RocksDB's flushes and compactions */
} phase_t;

/* The figures of a phase from the sample `from` to the latest one. */
typedef struct {
  int64_t ms;
  uint64_t done;
  double fold_cpu, writer_cpu, rocksdb_cpu;
  tly_processor_stats_t stats;
} sample_t;

static void phase_between(const sample_t *from, const sample_t *to,
                          phase_t *out) {
  double folded = (double)(to->done > from->done ? to->done - from->done : 1);
  out->fold_us = (to->fold_cpu - from->fold_cpu) * 1e6 / folded;
  out->writer_us = (to->writer_cpu - from->writer_cpu) * 1e6 / folded;
  out->rocksdb_us = (to->rocksdb_cpu - from->rocksdb_cpu) * 1e6 / folded;
  out->stats = to->stats;
  /* The counters of this part alone (the gauges are as at its end). */
  out->stats.duplicates -= from->stats.duplicates;
  out->stats.dead_letters -= from->stats.dead_letters;
  out->stats.dedupe_ids_spilled -= from->stats.dedupe_ids_spilled;
  out->stats.dedupe_store_reads -= from->stats.dedupe_store_reads;
  out->stats.dedupe_filter_skips -= from->stats.dedupe_filter_skips;
  out->ms = to->ms - from->ms;
  out->rate = (double)(to->done - from->done) * 1000.0 /
              (double)(out->ms ? out->ms : 1);
}

/* Every poll reads the counters; the threads' CPU (a walk of /proc) only
 * the samples a phase keeps (sample_cpu), not 50 times a second beside the
 * fold it measures. */
static void take_sample(tly_processor_t *processor, sample_t *sample) {
  tly_processor_stats(processor, &sample->stats);
  sample->done = sample->stats.events_folded + sample->stats.duplicates +
                 sample->stats.dead_letters;
  sample->ms = tly_monotonic_ms();
}

static void sample_cpu(sample_t *sample) {
  sample->fold_cpu = bench_thread_cpu_seconds("tly-fold", 0);
  sample->writer_cpu = bench_thread_cpu_seconds("tly-writer", 0);
  sample->rocksdb_cpu = bench_thread_cpu_seconds("rocksdb:", 1);
}

/* A processor on store until it has folded or refused `events` records;
 * then stopped (graceful: it leaves the group). With mark > 0 the records
 * up to mark are out's and the rest after's (one processor folding
 * through both without a pause); otherwise all are out's. */
static int fold_phase(const char *bootstrap, tly_store_t *store,
                      tly_config_t *config, int64_t budget, long events,
                      long mark, phase_t *out, phase_t *after) {
  char errstr[512];
  tly_processor_conf_t conf = {.brokers = bootstrap,
                               .group_id = "bench-dedupe",
                               .config = config,
                               .tick_interval_ms = -1,
                               .memory_budget_bytes = budget};
  dedupe_run_t run = {0};
  run.processor = tly_processor_new(&conf, store, errstr, sizeof(errstr));
  if (!run.processor) {
    fprintf(stderr, "bench: %s\n", errstr);
    return -1;
  }
  pthread_t thread;
  dedupe_stop = 0;
  pthread_create(&thread, NULL, dedupe_run_main, &run);
  sample_t first = {0}, at_mark = {0}, now = {0};
  int64_t shown = 0;
  long peak = 0, peak_at_mark = 0;
  for (;;) {
    usleep(20000);
    take_sample(run.processor, &now);
    const tly_processor_stats_t *stats = &now.stats;
    uint64_t done = now.done;
    long rss = rss_kib();
    if (rss > peak)
      peak = rss;
    /* From the assignment on (the group join is not the fold's). */
    if (!first.ms && stats->rebalances) {
      first = now;
      sample_cpu(&first);
    }
    if (mark > 0 && !at_mark.ms && done >= (uint64_t)mark) {
      at_mark = now;
      sample_cpu(&at_mark);
      peak_at_mark = peak;
    }
    int64_t last = now.ms;
    if (last - shown >= 2000) {
      fprintf(
          stderr, "\rfolded %llu/%ld, dedupe memory %llu MiB",
          (unsigned long long)done, events,
          (unsigned long long)(stats->memory_bytes[TLY_MEMORY_DEDUPE] >> 20));
      shown = last;
    }
    if (done >= (uint64_t)events)
      break;
    if (run.rc) {
      fprintf(stderr, "bench: processor stopped: %s\n", run.errstr);
      return -1;
    }
  }
  fprintf(stderr, "\n");
  sample_cpu(&now);
  if (mark > 0 && after) {
    phase_between(&first, &at_mark, out);
    phase_between(&at_mark, &now, after);
    out->peak_rss_kib = peak_at_mark;
    after->peak_rss_kib = peak;
    after->end_rss_kib = rss_kib();
    after->assign_ms = (int64_t)now.stats.last_assignment_ms;
  } else {
    phase_between(&first, &now, out);
    out->peak_rss_kib = peak;
  }
  out->end_rss_kib = rss_kib();
  out->assign_ms = (int64_t)now.stats.last_assignment_ms;
  dedupe_stop = 1;
  pthread_join(thread, NULL);
  tly_processor_destroy(run.processor);
  return run.rc;
}

/* What one dedupe run measured (one window). */
typedef struct {
  int64_t window_ms;
  double raw;
  /* The fill, then the same processor on through the full window's more
   * events (full), then a restarted one through as many again (tail). */
  phase_t fill, full, tail;
  long long spilled_fill, sst_after_fill, dir_after_fill;
  long long dedupe_sst; /* dedupe + dedupe_ids families, compacted */
  long duplicates_full, duplicates;
  long broker_rss_kib; /* the broker's process, holding every event */
  long base_rss_kib;   /* this process before the fill's processor */
} dedupe_result_t;

/* The embedded broker's process: BENCH_BROKER_CHILD=<partitions>. Creates
 * the mock cluster and the topics, writes its bootstrap servers as one line
 * to stdout, and serves until stdin closes (the bench is done with it or
 * gone; it also dies with the bench, PR_SET_PDEATHSIG). */
int bench_broker_child_main(void) {
  char errstr[512], line[64];
  int partitions = atoi(getenv("BENCH_BROKER_CHILD"));
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (!host || partitions <= 0) {
    fprintf(stderr, "bench broker: %s\n", host ? "no partitions" : errstr);
    return 1;
  }
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  rd_kafka_mock_topic_create(cluster, TALLY_DEFAULT_USAGE_TOPIC, partitions, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_DLQ_TOPIC, 1, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_ALERTS_TOPIC, 4, 1);
  printf("%s\n", rd_kafka_mock_cluster_bootstraps(cluster));
  fflush(stdout);
  while (fgets(line, sizeof(line), stdin))
    ;
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
  return 0;
}

typedef struct {
  pid_t pid;
  FILE *to_child; /* closed: the child ends */
  char bootstrap[256];
} broker_child_t;

extern char **environ;

/* Starts the broker's process (this program again). 0, or -1. */
static int broker_child_start(int partitions, broker_child_t *b) {
  int in[2], out[2];
  char setting[64], *argv[] = {"bench_fold", NULL};
  if (pipe(in) || pipe(out))
    return -1;
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + 2, sizeof(*env));
  if (!env)
    return -1;
  memcpy(env, environ, n * sizeof(*env));
  snprintf(setting, sizeof(setting), "BENCH_BROKER_CHILD=%d", partitions);
  env[n] = setting;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addclose(&actions, in[1]);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  int rc = posix_spawn(&b->pid, "/proc/self/exe", &actions, NULL, argv, env);
  posix_spawn_file_actions_destroy(&actions);
  free(env);
  close(in[0]);
  close(out[1]);
  FILE *from = fdopen(out[0], "r");
  b->to_child = fdopen(in[1], "w");
  int ok = !rc && from && b->to_child &&
           fgets(b->bootstrap, sizeof(b->bootstrap), from);
  if (from)
    fclose(from);
  b->bootstrap[strcspn(b->bootstrap, "\n")] = 0;
  if (!ok || !b->bootstrap[0]) {
    fprintf(stderr, "bench: the broker's process did not start\n");
    return -1;
  }
  return 0;
}

static long broker_child_rss_kib(const broker_child_t *b) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)b->pid);
  return rss_kib_of(path);
}

static void broker_child_stop(broker_child_t *b) {
  if (b->to_child)
    fclose(b->to_child);
  b->to_child = NULL;
  if (b->pid > 0)
    waitpid(b->pid, NULL, 0);
  b->pid = 0;
}

/* One run: a fresh embedded broker and store, the window filled and the
 * same processor folding on with it full, then a restart and the tail. */
static int dedupe_once(long ids, long more, int partitions, int64_t budget,
                       int64_t window_ms, dedupe_result_t *out) {
  char errstr[512], dir[] = "/tmp/tally-dedupe-XXXXXX";
  out->window_ms = window_ms;
  broker_child_t broker = {0};
  if (broker_child_start(partitions, &broker))
    return 1;
  const char *bootstrap = broker.bootstrap;

  produce_range(bootstrap, 0, ids, 0);
  fprintf(stderr, "(a) raw consume of the %ld ids...\n", ids);
  out->raw = dedupe_raw_consume(bootstrap, ids, partitions);

  if (!mkdtemp(dir))
    return 1;
  /* RocksDB sized from the budget as `tally run` opens it (cli_serve.c). */
  tly_store_memory_t rocksdb_memory = tly_memory_store_sizes(budget);
  tly_store_t *store =
      tly_store_open_sized(dir, 0, &rocksdb_memory, errstr, sizeof(errstr));
  tly_config_t *config = tly_config_default();
  if (!store || !config) {
    fprintf(stderr, "bench: %s\n", errstr);
    return 1;
  }
  config->events.dedupe_window_ms = window_ms;
  fprintf(stderr,
          "filling the window (%lld days): %ld ids, budget %lld "
          "bytes\n",
          (long long)(window_ms / 86400000), ids, (long long)budget);
  /* Queued behind the fill, so the processor folds through both at
   * saturation: the rate with the window full is the figure. */
  out->duplicates_full = produce_range(bootstrap, ids, ids + more, ids);
  /* What the producer and the raw consumer freed goes back to the system
   * before each phase, so its peak is that phase's processor, not the heap
   * the bench's own clients left behind in this process. */
  malloc_trim(0);
  out->base_rss_kib = rss_kib();
  if (fold_phase(bootstrap, store, config, budget, ids + more, ids, &out->fill,
                 &out->full))
    return 1;
  out->spilled_fill = (long long)out->fill.stats.dedupe_ids_spilled;
  /* The ids on disk: SST files once the families are compacted. */
  for (int cf = 0; cf < TLY_CF__COUNT; cf++)
    tly_store_compact(store, (tly_cf_t)cf);
  sst_bytes = all_bytes = 0;
  nftw(dir, add_file, 16, FTW_PHYS);
  out->sst_after_fill = sst_bytes;
  out->dir_after_fill = all_bytes;
  out->dedupe_sst = (long long)(tly_store_sst_bytes(store, TLY_CF_DEDUPE) +
                                tly_store_sst_bytes(store, TLY_CF_DEDUPE_IDS));

  out->duplicates = produce_range(bootstrap, ids + more, ids + 2 * more, ids);
  fprintf(stderr,
          "restart, then %ld more events (%ld duplicates of old "
          "ids)\n",
          more, out->duplicates);
  malloc_trim(0); /* (see above) */
  if (fold_phase(bootstrap, store, config, budget, more, 0, &out->tail, NULL))
    return 1;
  tly_store_close(store);
  tly_config_free(config);
  out->broker_rss_kib = broker_child_rss_kib(&broker); /* every event in */
  broker_child_stop(&broker);
  char command[600];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  return system(command) == 0 ? 0 : 1;
}

int bench_dedupe_main(void) {
  long ids = env_long("BENCH_DEDUPE_IDS", 2000000);
  long more = env_long("BENCH_DEDUPE_MORE", ids / 10);
  /* ~25,000 events of ~110 bytes a partition: within what the embedded
   * broker keeps (5 MiB a partition), at least 64. */
  long total = ids + 2 * more;
  int partitions = (int)env_long("BENCH_DEDUPE_PARTITIONS",
                                 total / 25000 > 64 ? total / 25000 : 64);
  double scaled = (double)TLY_DEFAULT_MEMORY_BUDGET * (double)ids / 2e7;
  int64_t budget = (int64_t)env_long(
      "BENCH_MEMORY_BUDGET",
      (long)(scaled < TLY_MEMORY_BUDGET_MIN       ? TLY_MEMORY_BUDGET_MIN
             : scaled > TLY_DEFAULT_MEMORY_BUDGET ? TLY_DEFAULT_MEMORY_BUDGET
                                                  : scaled));
  /* BENCH_DEDUPE_WINDOWS=1: the same run at a 7-day window, then at 35
   * days (the default), the ids' event times spread over 35 days, so the
   * 7-day window holds a fifth of them and 35 days all. */
  int compare = env_long("BENCH_DEDUPE_WINDOWS", 0) > 0;
  int64_t windows[2] = {TLY_LEGACY_DEDUPE_WINDOW_MS,
                        TLY_DEFAULT_DEDUPE_WINDOW_MS};
  dedupe_result_t results[2] = {{0}};
  int runs = compare ? 2 : 1;
  if (compare) { /* 35 days over the ids, the tail just past them, all
                  * before now (no event from the future) */
    ms_per_kevent = 35.0 * 86400000.0 * 1e3 / (double)ids;
    first_ms = tly_wall_ms() -
               (int64_t)(ms_per_kevent * (double)(ids + 2 * more) / 1e3) -
               3600000;
  }
  if (!compare)
    windows[0] = TLY_DEFAULT_DEDUPE_WINDOW_MS;
  tly_log_set_level(TLY_LOG_WARN);
  for (int r = 0; r < runs; r++)
    if (dedupe_once(ids, more, partitions, budget, windows[r], &results[r]))
      return 1;

  printf("\n| figure |");
  for (int r = 0; r < runs; r++)
    printf(" window %lld days |", (long long)(windows[r] / 86400000));
  printf("\n|---|%s\n", runs == 2 ? "---|---|" : "---|");
#define ROW(label, ...)                                                        \
  do {                                                                         \
    printf("| %s |", label);                                                   \
    for (int r = 0; r < runs; r++) {                                           \
      const dedupe_result_t *x = &results[r];                                  \
      (void)x;                                                                 \
      printf(" ");                                                             \
      printf(__VA_ARGS__);                                                     \
      printf(" |");                                                            \
    }                                                                          \
    printf("\n");                                                              \
  } while (0)
  ROW("window",
      "%ld ids of 16 characters over %d subjects, %d partitions, "
      "event times over %.1f days; then %ld events, %ld of them (1 %%) "
      "duplicates of random old ids, folded by the same processor; then a "
      "restart and %ld more (%ld duplicates)",
      ids, SUBJECTS, partitions, ms_per_kevent * (double)ids / 1e3 / 86400000,
      more, x->duplicates_full, more, x->duplicates);
  ROW("memory budget", "%lld bytes (dedupe share %lld)", (long long)budget,
      (long long)tly_memory_share(budget, TLY_MEMORY_DEDUPE));
  ROW("peak RSS of the processor's process, fill / window full / after "
      "the restart, vs budget",
      "%ld / %ld / %ld MiB (%ld MiB before the processor started); budget "
      "%lld MiB; the embedded broker, in a process of its own, holding "
      "every event: %ld MiB",
      x->fill.peak_rss_kib / 1024, x->full.peak_rss_kib / 1024,
      x->tail.peak_rss_kib / 1024, x->base_rss_kib / 1024,
      (long long)(budget >> 20), x->broker_rss_kib / 1024);
  ROW("CPU per event, fold thread / writer thread / RocksDB's flushes and "
      "compactions: fill; window full; after the restart",
      "%.2f / %.2f / %.2f us; %.2f / %.2f / %.2f us; %.2f / %.2f / %.2f us",
      x->fill.fold_us, x->fill.writer_us, x->fill.rocksdb_us, x->full.fold_us,
      x->full.writer_us, x->full.rocksdb_us, x->tail.fold_us, x->tail.writer_us,
      x->tail.rocksdb_us);
  ROW("dedupe memory at the end of the fill / window full / after the "
      "restart",
      "%llu / %llu / %llu bytes (share %llu)",
      (unsigned long long)x->fill.stats.memory_bytes[TLY_MEMORY_DEDUPE],
      (unsigned long long)x->full.stats.memory_bytes[TLY_MEMORY_DEDUPE],
      (unsigned long long)x->tail.stats.memory_bytes[TLY_MEMORY_DEDUPE],
      (unsigned long long)x->fill.stats.memory_budget[TLY_MEMORY_DEDUPE]);
  ROW("RocksDB at the end of the fill: block cache / memtables",
      "%llu of %llu / %llu of %llu bytes",
      (unsigned long long)
          x->fill.stats.memory_bytes[TLY_MEMORY_ROCKSDB_BLOCK_CACHE],
      (unsigned long long)
          x->fill.stats.memory_budget[TLY_MEMORY_ROCKSDB_BLOCK_CACHE],
      (unsigned long long)
          x->fill.stats.memory_bytes[TLY_MEMORY_ROCKSDB_MEMTABLES],
      (unsigned long long)
          x->fill.stats.memory_budget[TLY_MEMORY_ROCKSDB_MEMTABLES]);
  ROW("(a) raw consume, no processing", "%.0f events/s", x->raw);
  ROW("fold, filling the window",
      "%.0f events/s (%.2f of (a)); %lld ids "
      "spilled",
      x->fill.rate, x->fill.rate / x->raw, x->spilled_fill);
/* A phase on the full window: its rate against (a), and how its new ids
 * were answered. */
#define WINDOW_ROW(label, phase, goal)                                         \
  ROW(label,                                                                   \
      "%.0f events/s (%.2f of (a)%s); %llu ids spilled, %llu looked up in "    \
      "RocksDB, %llu answered by the filter",                                  \
      x->phase.rate, x->phase.rate / x->raw, goal,                             \
      (unsigned long long)x->phase.stats.dedupe_ids_spilled,                   \
      (unsigned long long)x->phase.stats.dedupe_store_reads,                   \
      (unsigned long long)x->phase.stats.dedupe_filter_skips)
  WINDOW_ROW("fold with the window full, 1 % duplicates (the same processor)",
             full, ", goal >= 0.5");
  WINDOW_ROW("fold after a restart on the full window, 1 % duplicates, from "
             "the assignment on (its load included)",
             tail, "");
  ROW("duplicates refused + dead-lettered (older than the window) / sent: "
      "window full; after the restart",
      "%llu + %llu / %ld (%s); %llu + %llu / %ld (%s)",
      /* over the whole first processor: near the mark, partitions fold
       * the fill's last events and the next ones' first side by side */
      (unsigned long long)(x->fill.stats.duplicates + x->full.stats.duplicates),
      (unsigned long long)(x->fill.stats.dead_letters +
                           x->full.stats.dead_letters),
      x->duplicates_full,
      (long)(x->fill.stats.duplicates + x->full.stats.duplicates +
             x->fill.stats.dead_letters + x->full.stats.dead_letters) ==
              x->duplicates_full
          ? "exact"
          : "NOT EXACT",
      (unsigned long long)x->tail.stats.duplicates,
      (unsigned long long)x->tail.stats.dead_letters, x->duplicates,
      (long)(x->tail.stats.duplicates + x->tail.stats.dead_letters) ==
              x->duplicates
          ? "exact"
          : "NOT EXACT");
  ROW("RocksDB bytes per million dedupe ids (dedupe + dedupe_ids SST, "
      "compacted)",
      "%.1f MB",
      (double)x->dedupe_sst /
          ((double)(ids + more - x->duplicates_full) / 1e6) / 1e6);
  ROW("bytes per id on disk (SST, all state, compacted)",
      "%.1f (%.1f MiB of SST, %.1f MiB with WAL and logs)",
      (double)x->sst_after_fill / (double)(ids + more - x->duplicates_full),
      (double)x->sst_after_fill / 1048576.0,
      (double)x->dir_after_fill / 1048576.0);
  ROW("assignment time of the restart",
      "%lld ms (then the spilled-id filters, built off the fold thread: %llu "
      "ms)",
      (long long)x->tail.assign_ms,
      (unsigned long long)x->tail.stats.dedupe_filter_build_ms);
#undef WINDOW_ROW
#undef ROW
  return 0;
}
