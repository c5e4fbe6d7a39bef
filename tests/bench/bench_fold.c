/*
 * bench_fold.c - how fast the processor folds with the exactly-once
 * protocol on, next to the ceiling measured in the same run: the raw
 * consume rate of the same topic with no processing.
 *
 *   build/bench_fold [events] [subjects] [partitions]
 *
 * Defaults: 1,000,000 events over 100,000 subjects on 100 partitions of
 * the embedded broker (which keeps ~5 MiB per partition: 100 partitions
 * hold 1 M events of ~90 bytes with room to spare). The state goes to a
 * fresh RocksDB under /tmp, WAL synced on every commit, as in production.
 * Prints figures; asserts nothing about speed.
 */
#include "tally_producer.h"
#include "tly_config.h"
#include "tly_log.h"
#include "tly_processor.h"
#include "tly_store.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

typedef struct {
  tly_processor_t *processor;
  int rc;
  char errstr[512];
} run_t;

static void *run_processor(void *arg) {
  run_t *run = arg;
  run->rc = tly_processor_run(run->processor, &stop, run->errstr,
                              sizeof(run->errstr));
  return NULL;
}

static const char *models[] = {"gpt-4o", "gpt-4o-mini", "claude-sonnet",
                               "gemini-flash"};

static int64_t produce(const char *bootstrap, long events, long subjects) {
  char errstr[512], id[32], event_id[32];
  const char *props[] = {"linger.ms=20", "batch.size=1000000", NULL};
  tally_producer_conf_t conf = {.brokers = bootstrap, .kafka_properties = props};
  tally_producer_t *producer = tally_producer_new(&conf, errstr, sizeof(errstr));
  unsigned seed = 42;
  if (!producer) {
    fprintf(stderr, "bench: %s\n", errstr);
    exit(1);
  }
  int64_t started = tly_monotonic_ms();
  for (long i = 0; i < events; i++) {
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "b%06ld", (long)(rand_r(&seed) % subjects));
    snprintf(event_id, sizeof(event_id), "b-%ld", i);
    event.event_id = event_id;
    event.occurred_at_ms = 1794268800000LL + i / 100;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
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
    if (i % 100000 == 0)
      fprintf(stderr, "\rproducing %ld/%ld", i, events);
  }
  tally_producer_flush(producer, 120000);
  tally_producer_destroy(producer);
  fprintf(stderr, "\rproduced %ld events            \n", events);
  return tly_monotonic_ms() - started;
}

/* (a) the ceiling: read every record, do nothing with it. */
static double raw_consume(const char *bootstrap, long events, int partitions) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", "bench-raw", errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "max.partition.fetch.bytes", "10485760", errstr,
                    sizeof(errstr));
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
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
  long events = argc > 1 ? atol(argv[1]) : 1000000;
  long subjects = argc > 2 ? atol(argv[2]) : 100000;
  int partitions = argc > 3 ? atoi(argv[3]) : 100;
  char errstr[512], dir[] = "/tmp/tally-bench-XXXXXX";

  tly_log_set_level(TLY_LOG_WARN);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_t *host = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  rd_kafka_mock_topic_create(cluster, TALLY_DEFAULT_USAGE_TOPIC, partitions, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_DLQ_TOPIC, 1, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_ALERTS_TOPIC, 4, 1);
  const char *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);

  int64_t produce_ms = produce(bootstrap, events, subjects);
  fprintf(stderr, "measuring the raw consume rate...\n");
  double raw = raw_consume(bootstrap, events, partitions);

  fprintf(stderr, "measuring the fold...\n");
  if (!mkdtemp(dir))
    return 1;
  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  tly_config_t *config = tly_config_default();
  tly_processor_conf_t pconf = {.brokers = bootstrap,
                                .group_id = "bench-fold",
                                .config = config,
                                .tick_interval_ms = -1,
                                .batch_max_events = getenv("BENCH_BATCH") ? atoi(getenv("BENCH_BATCH")) : 0};
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
  uint64_t first_count = 0;
  while (stats.events_folded + stats.dead_letters + stats.duplicates <
         (uint64_t)events) {
    usleep(20000);
    tly_processor_stats(run.processor, &stats);
    if (!first && stats.events_folded) {
      first = tly_monotonic_ms(); /* after the group join */
      first_count = stats.events_folded;
    }
    last = tly_monotonic_ms();
    if (run.rc) {
      fprintf(stderr, "bench: processor stopped: %s\n", run.errstr);
      return 1;
    }
  }
  stop = 1;
  pthread_join(thread, NULL);
  double fold = (double)(stats.events_folded - first_count) * 1000.0 /
                (double)(last - first ? last - first : 1);
  tly_processor_stats(run.processor, &stats);

  printf("\n| figure | value |\n|---|---|\n");
  printf("| events | %ld over %ld subjects, %d partitions |\n", events,
         subjects, partitions);
  printf("| produce (idempotent) | %.0f events/s |\n",
         events * 1000.0 / (double)(produce_ms ? produce_ms : 1));
  printf("| (a) raw consume, no processing | %.0f events/s |\n", raw);
  printf("| (b) fold, exactly-once (synced RocksDB commit per batch) | %.0f "
         "events/s |\n",
         fold);
  printf("| (b)/(a) | %.2f |\n", fold / raw);
  printf("| batches committed | %llu (%.0f events each) |\n",
         (unsigned long long)stats.batches_committed,
         (double)stats.events_folded /
             (double)(stats.batches_committed ? stats.batches_committed : 1));
  printf("| alerts | %llu |\n", (unsigned long long)stats.alerts);

  tly_processor_destroy(run.processor);
  tly_store_close(store);
  tly_config_free(config);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
  char command[600];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  return system(command) == 0 ? 0 : 1;
}
