/*
 * test_split_subject.c - one subject's events spread over several
 * partitions (librdkafka's consistent_random partitioner beside tally's
 * murmur2 one, explicit partitions, the same event id on two partitions)
 * are each counted once, in the subject's home state: /usage shows all of
 * them, the hard-limit pre-check refuses past the limit, and
 * tally_events_forwarded_total counts the records forwarded home. Each
 * forward is in the input topic exactly once, with the original's key,
 * value and Kafka timestamp, also across SIGKILLs (some between Kafka's
 * ack and the outbox delete). A record forwarded once already that is
 * still off its home goes to the dead-letter topic; ticks stay where they
 * are written.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_codec.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 8
#define EVENT_TIME 1763800000000LL
#define USAGE_AT "at=1763800000000"

/* Where each produced record landed (its delivery report). */
typedef struct {
  int32_t partition;
  int64_t offset;
} landed_t;

static void landed_report(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                          void *opaque) {
  landed_t *landed = msg->_private;
  (void)rk, (void)opaque;
  if (landed && !msg->err) {
    landed->partition = msg->partition;
    landed->offset = msg->offset;
  }
}

static rd_kafka_t *raw_producer(const char *bootstrap,
                                const char *partitioner) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap,
                                     errstr, sizeof(errstr)),
                   RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(conf, "partitioner", partitioner, errstr,
                                     sizeof(errstr)),
                   RD_KAFKA_CONF_OK);
  rd_kafka_conf_set(conf, "linger.ms", "5", errstr, sizeof(errstr));
  rd_kafka_conf_set_dr_msg_cb(conf, landed_report);
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  return rk;
}

static tly_codec_t *codec;

/* A UsageRecorded of api_calls, encoded (the codec's buffer). */
static void encode_usage(const char *subject_id, const char *event_id,
                         long long quantity, int64_t occurred_ms,
                         const void **value, size_t *len) {
  char errstr[512];
  tly_event_t event = {0};
  event.event_id = (char *)event_id;
  event.occurred_at_ms = occurred_ms;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = (char *)subject_id;
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.unit = "call";
  event.body.usage.quantity = quantity;
  assert_int_equal(
      tly_codec_encode(codec, &event, value, len, errstr, sizeof(errstr)), 0);
}

/* Produces one usage record with rk: to partition (RD_KAFKA_PARTITION_UA:
 * the partitioner's choice), keyed by key (NULL: no key), with its event
 * time as Kafka timestamp; landed is filled on delivery. */
static void produce_usage(rd_kafka_t *rk, int32_t partition, const char *key,
                          const char *subject_id, const char *event_id,
                          long long quantity, int64_t occurred_ms,
                          landed_t *landed) {
  const void *value;
  size_t len;
  encode_usage(subject_id, event_id, quantity, occurred_ms, &value, &len);
  landed->partition = -1;
  assert_int_equal(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("tally.usage"),
                                     RD_KAFKA_V_PARTITION(partition),
                                     RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                                     RD_KAFKA_V_VALUE((void *)value, len),
                                     RD_KAFKA_V_TIMESTAMP(occurred_ms),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_OPAQUE(landed), RD_KAFKA_V_END),
                   0);
  rd_kafka_poll(rk, 0);
}

static int32_t home_of(const char *subject_key) {
  return rd_kafka_msg_partitioner_murmur2(
      NULL, subject_key, strlen(subject_key), PARTITIONS, NULL, NULL);
}

/* Waits until the processor has folded everything, forwards included (a
 * forward adds a record after the commit that sends it): caught up with
 * the log end, nothing in the outbox, and the log end unchanged since. */
static void settle(const th_run_t *run, const char *bootstrap) {
  int64_t before[PARTITIONS], after[PARTITIONS];
  int64_t deadline = th_now_ms() + 120000;
  for (;;) {
    assert_true(th_now_ms() < deadline);
    assert_int_equal(
        th_high_watermarks(bootstrap, "tally.usage", PARTITIONS, before), 0);
    assert_int_equal(th_wait_caught_up(run->port, bootstrap, "tally.usage",
                                       PARTITIONS, 120000),
                     0);
    assert_int_equal(th_wait_outbox_empty(run->port, 60000), 0);
    assert_int_equal(
        th_high_watermarks(bootstrap, "tally.usage", PARTITIONS, after), 0);
    if (!memcmp(before, after, sizeof(before)))
      return;
  }
}

static json_t *get_json(int port, const char *path, long expect_status) {
  long status;
  char *body;
  json_error_t error;
  assert_int_equal(th_http_get(port, path, &status, &body), 0);
  if (status != expect_status)
    fail_msg("GET %s: %ld %s", path, status, body);
  json_t *json = json_loads(body, 0, &error);
  free(body);
  assert_non_null(json);
  return json;
}

/* The subject's api_calls events and quantity in the cycle of EVENT_TIME. */
static void usage_of(int port, const char *subject, long long *events,
                     long long *quantity) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/subjects/%s/usage?" USAGE_AT, subject);
  json_t *json = get_json(port, path, 200);
  json_t *row = json_object_get(json_object_get(json, "features"), "api_calls");
  *events = json_integer_value(json_object_get(row, "events"));
  *quantity = json_integer_value(json_object_get(row, "quantity"));
  json_decref(json);
}

/* The hard-limit pre-check: 1 allowed, 0 refused. */
static int quota_allows(int port, const char *subject, long long quantity) {
  char path[256];
  snprintf(path, sizeof(path),
           "/v1/subjects/%s/quota?feature=api_calls&quantity=%lld&" USAGE_AT,
           subject, quantity);
  json_t *json = get_json(port, path, 200);
  int allowed = json_is_true(json_object_get(json, "allowed"));
  if (!allowed)
    assert_string_equal(json_string_value(json_object_get(json, "mode")),
                        "hard");
  json_decref(json);
  return allowed;
}

/* ---- the input topic, read back ------------------------------------- */

typedef struct {
  int32_t partition;
  int64_t offset, timestamp;
  char *key, *value;
  size_t key_len, value_len;
  char from[64], output_id[128], source[16];
} record_t;

typedef struct {
  record_t *items;
  size_t count, cap;
} records_t;

static char *copy_bytes(const void *data, size_t len) {
  char *copy = malloc(len + 1);
  assert_non_null(copy);
  if (len)
    memcpy(copy, data, len);
  copy[len] = '\0';
  return copy;
}

static void keep_record(void *opaque, const rd_kafka_message_t *msg) {
  records_t *records = opaque;
  if (records->count == records->cap) {
    records->cap = records->cap ? records->cap * 2 : 1024;
    records->items = realloc(records->items, records->cap * sizeof(record_t));
    assert_non_null(records->items);
  }
  record_t *record = &records->items[records->count++];
  memset(record, 0, sizeof(*record));
  record->partition = msg->partition;
  record->offset = msg->offset;
  record->timestamp = rd_kafka_message_timestamp(msg, NULL);
  record->key = copy_bytes(msg->key, msg->key ? msg->key_len : 0);
  record->key_len = msg->key ? msg->key_len : 0;
  record->value = copy_bytes(msg->payload, msg->payload ? msg->len : 0);
  record->value_len = msg->payload ? msg->len : 0;
  th_header(msg, "tally.forwarded.from", record->from, sizeof(record->from));
  th_header(msg, "tally.output.id", record->output_id,
            sizeof(record->output_id));
  th_header(msg, "tally.source.partition", record->source,
            sizeof(record->source));
}

static void records_free(records_t *records) {
  for (size_t i = 0; i < records->count; i++) {
    free(records->items[i].key);
    free(records->items[i].value);
  }
  free(records->items);
}

static const record_t *record_at(const records_t *records, int32_t partition,
                                 int64_t offset) {
  for (size_t i = 0; i < records->count; i++)
    if (records->items[i].partition == partition &&
        records->items[i].offset == offset)
      return &records->items[i];
  return NULL;
}

/*
 * Reads the input topic back and checks the forwards: every original off
 * its subject's home partition (a usage record of subject_prefix) was
 * forwarded exactly once, to the home partition, with its key, value and
 * Kafka timestamp, and nothing else was. Returns the number of forwards.
 */
static long long check_forwards(const char *bootstrap,
                                const char *subject_prefix) {
  records_t records = {0};
  assert_true(th_read_topic(bootstrap, "tally.usage", PARTITIONS, keep_record,
                            &records) >= 0);
  long long originals_off_home = 0, forwards = 0;
  json_t *seen = json_object();
  for (size_t i = 0; i < records.count; i++) {
    const record_t *record = &records.items[i];
    tly_event_t event;
    char errstr[256], key[256];
    if (tly_codec_decode_view(codec, record->value, record->value_len, &event,
                              errstr, sizeof(errstr)) ||
        event.subject_kind == TLY_SUBJECT_SYSTEM)
      continue;
    tly_subject_key(event.subject_kind, event.subject_id, key, sizeof(key));
    if (strncmp(key, subject_prefix, strlen(subject_prefix)))
      continue;
    int32_t home = home_of(key);
    if (!record->from[0]) {
      originals_off_home += record->partition != home;
      continue;
    }
    /* A forward: home, once, a copy of its original. */
    forwards++;
    assert_int_equal(record->partition, home);
    int32_t from_partition = -1;
    long long from_offset = -1;
    assert_int_equal(
        sscanf(record->from, "%d@%lld", &from_partition, &from_offset), 2);
    char id[128];
    snprintf(id, sizeof(id), "fwd:tally.usage:%d:%lld", (int)from_partition,
             from_offset);
    assert_string_equal(record->output_id, id);
    assert_int_equal(atoi(record->source), from_partition);
    if (json_object_get(seen, id))
      fail_msg("forward %s is in the input topic twice (partition %d, "
               "offsets %lld and %lld)",
               id, (int)record->partition,
               (long long)json_integer_value(json_object_get(seen, id)),
               (long long)record->offset);
    json_object_set_new(seen, id, json_integer(record->offset));
    const record_t *original = record_at(&records, from_partition, from_offset);
    assert_non_null(original);
    assert_int_not_equal(original->partition, home);
    assert_int_equal(original->timestamp, record->timestamp);
    assert_int_equal(original->key_len, record->key_len);
    assert_memory_equal(original->key, record->key, record->key_len);
    assert_int_equal(original->value_len, record->value_len);
    assert_memory_equal(original->value, record->value, record->value_len);
  }
  assert_int_equal(forwards, originals_off_home);
  json_decref(seen);
  records_free(&records);
  return forwards;
}

/* ---- tests ------------------------------------------------------------ */

/* A subject whose murmur2 home differs from librdkafka's consistent_random
 * (CRC32) choice for its key. */
static void split_subject(char *id, size_t size) {
  for (int i = 0;; i++) {
    char key[96];
    snprintf(id, size, "mixed-%d", i);
    snprintf(key, sizeof(key), "user:%s", id);
    if (rd_kafka_msg_partitioner_consistent(NULL, key, strlen(key), PARTITIONS,
                                            NULL, NULL) != home_of(key))
      return;
  }
}

/*
 * A mixed fleet: 55 events through tally's producer (murmur2: the home
 * partition), 40 through librdkafka's default partitioner with the same
 * key (CRC32: another partition), 15 with no key (random partitions). 110
 * events of 9 api_calls: 990 of the free plan's hard 1,000.
 */
static void test_consistent_random_partitioner_counts_all(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("split-random");
  char state_dir[600], id[64], subject[80], event_id[64], errstr[512];
  landed_t landed[110];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  split_subject(id, sizeof(id));
  snprintf(subject, sizeof(subject), "user:%s", id);
  int32_t home = home_of(subject);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);

  tally_producer_conf_t conf = {.brokers = broker.bootstrap};
  tally_producer_t *tally = tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(tally);
  rd_kafka_t *rk = raw_producer(broker.bootstrap, "consistent_random");
  for (int i = 0; i < 110; i++) {
    snprintf(event_id, sizeof(event_id), "mixed-%d", i);
    if (i % 2 == 0) {
      tly_event_t event = {0};
      event.event_id = event_id;
      event.occurred_at_ms = EVENT_TIME + i;
      event.subject_kind = TLY_SUBJECT_USER;
      event.subject_id = id;
      event.body_kind = TLY_BODY_USAGE_RECORDED;
      event.body.usage.feature = "api_calls";
      event.body.usage.unit = "call";
      event.body.usage.quantity = 9;
      assert_int_equal(
          tally_producer_send(tally, &event, NULL, errstr, sizeof(errstr)), 0);
      landed[i].partition = home;
    } else {
      produce_usage(rk, RD_KAFKA_PARTITION_UA, i % 7 == 1 ? NULL : subject, id,
                    event_id, 9, EVENT_TIME + i, &landed[i]);
    }
  }
  assert_int_equal(tally_producer_flush(tally, 30000), 0);
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  tally_producer_destroy(tally);
  rd_kafka_destroy(rk);
  long long off_home = 0;
  for (int i = 0; i < 110; i++) {
    assert_true(landed[i].partition >= 0);
    off_home += landed[i].partition != home;
  }
  printf("# subject %s, home partition %d: %lld of 110 records elsewhere\n",
         subject, (int)home, off_home);
  assert_true(off_home >= 40); /* it is split: the test means something */

  settle(&run, broker.bootstrap);
  long long events, quantity;
  usage_of(run.port, subject, &events, &quantity);
  assert_int_equal(events, 110);
  assert_int_equal(quantity, 990);
  assert_true(quota_allows(run.port, subject, 10));
  assert_false(quota_allows(run.port, subject, 11));
  assert_int_equal(th_metric_sum(run.port, "tally_events_forwarded_total"),
                   off_home);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 0);
  assert_int_equal(check_forwards(broker.bootstrap, subject), off_home);
  char *log = th_read_file(run.log_path);
  assert_non_null(log);
  assert_non_null(strstr(log, "forwarded there"));
  free(log);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/*
 * Explicit partitions: 110 events of one subject round-robin over every
 * partition, then 30 of them sent again (same event id, same bytes) to
 * another partition, the home one included: 110 counted, the 30 once.
 */
static void test_explicit_partitions_and_duplicates_count_once(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("split-explicit");
  char state_dir[600], event_id[64];
  const char *id = "explicit", *subject = "user:explicit";
  landed_t landed[140];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  int32_t home = home_of(subject);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);

  rd_kafka_t *rk = raw_producer(broker.bootstrap, "consistent_random");
  for (int i = 0; i < 110; i++) {
    snprintf(event_id, sizeof(event_id), "explicit-%d", i);
    produce_usage(rk, i % PARTITIONS, subject, id, event_id, 9, EVENT_TIME + i,
                  &landed[i]);
  }
  for (int i = 0; i < 30; i++) {
    snprintf(event_id, sizeof(event_id), "explicit-%d", i);
    produce_usage(rk, (i + 3) % PARTITIONS, i % 3 ? subject : "other-key", id,
                  event_id, 9, EVENT_TIME + i, &landed[110 + i]);
  }
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
  long long off_home = 0, dup_at_home = 0;
  for (int i = 0; i < 140; i++) {
    assert_true(landed[i].partition >= 0);
    off_home += landed[i].partition != home;
    dup_at_home += i >= 110 && landed[i].partition == home;
  }
  assert_true(dup_at_home > 0); /* a duplicate arrives at home directly */

  settle(&run, broker.bootstrap);
  long long events, quantity;
  usage_of(run.port, subject, &events, &quantity);
  assert_int_equal(events, 110);
  assert_int_equal(quantity, 990);
  assert_true(quota_allows(run.port, subject, 10));
  assert_false(quota_allows(run.port, subject, 11));
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 30);
  assert_int_equal(th_metric_sum(run.port, "tally_events_forwarded_total"),
                   off_home);
  for (int p = 0; p < PARTITIONS; p++) {
    long long expected = 0;
    for (int i = 0; i < 140; i++)
      expected += landed[i].partition == p && p != home;
    assert_int_equal(
        th_metric_partition(run.port, "tally_events_forwarded_total", p),
        expected);
  }
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 0);
  assert_int_equal(check_forwards(broker.bootstrap, subject), off_home);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/*
 * A stream of 40 subjects' events on random partitions (a tenth of them
 * sent twice, to two partitions) while the processor is SIGKILLed: at
 * random moments, and right after Kafka acknowledged an output (before the
 * outbox delete: the forward is in the input topic and still in the
 * outbox). At the end every subject is exact and every forward is in the
 * input topic once.
 */
#define STREAM_SUBJECTS 40
#define STREAM_EVENTS 4500

static void test_sigkill_keeps_forwards_exactly_once(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("split-crash");
  char state_dir[600], id[64], subject[80], event_id[64];
  long long expected_events[STREAM_SUBJECTS] = {0};
  long long expected_quantity[STREAM_SUBJECTS] = {0};
  static landed_t landed[STREAM_EVENTS * 2];
  unsigned seed = (unsigned)th_now_ms();
  printf("# seed %u\n", seed);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);

  rd_kafka_t *rk = raw_producer(broker.bootstrap, "consistent_random");
  int sent = 0, kills = 0;
  int64_t started = th_now_ms();
  for (int i = 0; i < STREAM_EVENTS; i++) {
    int s = rand_r(&seed) % STREAM_SUBJECTS;
    long long quantity = 1 + rand_r(&seed) % 5;
    snprintf(id, sizeof(id), "stream-%02d", s);
    snprintf(subject, sizeof(subject), "user:%s", id);
    snprintf(event_id, sizeof(event_id), "stream-%d", i);
    produce_usage(rk, rand_r(&seed) % PARTITIONS, subject, id, event_id,
                  quantity, EVENT_TIME + i, &landed[sent++]);
    if (i % 10 == 0)
      produce_usage(rk, rand_r(&seed) % PARTITIONS, subject, id, event_id,
                    quantity, EVENT_TIME + i, &landed[sent++]);
    expected_events[s]++;
    expected_quantity[s] += quantity;
    /* ~1,500 events a second; a kill every ~1,500 events. */
    int64_t wait = started + i * 2 / 3 - th_now_ms();
    if (wait > 0)
      rd_kafka_poll(rk, (int)wait);
    if (i % 1500 == 1499) {
      th_sleep_ms(rand_r(&seed) % 400);
      th_kill9(run.pid);
      kills++;
      /* Every other restart dies again right after an acknowledged
       * output, before its delete is committed. */
      char env[64];
      if (kills % 2) {
        snprintf(env, sizeof(env), "TALLY_FAULT_KILL_AFTER_ACKS=%d",
                 3 + rand_r(&seed) % 20);
        th_run_env = env;
      }
      assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL),
                       0);
      if (kills % 2) {
        /* It dies by itself once it has published that many outputs; then
         * a clean run goes on. */
        int code = th_wait_exit(run.pid, 30000);
        if (code < 0)
          th_kill9(run.pid);
        printf("# kill %d: fault-injected run ended with %d\n", kills, code);
        assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL),
                         0);
      }
    }
  }
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
  for (int i = 0; i < sent; i++)
    assert_true(landed[i].partition >= 0);
  assert_true(kills >= 3);

  settle(&run, broker.bootstrap);
  long long total = 0;
  for (int s = 0; s < STREAM_SUBJECTS; s++) {
    long long events, quantity;
    snprintf(subject, sizeof(subject), "user:stream-%02d", s);
    usage_of(run.port, subject, &events, &quantity);
    assert_int_equal(events, expected_events[s]);
    assert_int_equal(quantity, expected_quantity[s]);
    total += events;
  }
  assert_int_equal(total, STREAM_EVENTS);
  long long forwards = check_forwards(broker.bootstrap, "user:stream-");
  printf("# %d records, %lld forwarded, %d kills\n", sent, forwards, kills);
  assert_true(forwards > sent / 2);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/* Partitions assigned to the instance on port (they have a replay target
 * in its /metrics); -1 when it does not answer. */
static int assigned_count(int port) {
  long status = 0;
  char *body = NULL;
  int count = 0;
  if (th_http_get(port, "/metrics", &status, &body) || status != 200) {
    free(body);
    return -1;
  }
  for (const char *at = body;
       (at = strstr(at, "tally_partition_replay_target{")) != NULL; at++)
    count++;
  free(body);
  return count;
}

/*
 * Two instances; A dies right after Kafka acknowledged one of its outputs
 * (its last commit's changelog records still unsent, behind them). B takes
 * A's partitions, restores them from the changelog as of an older commit
 * and replays the rest, forwards included: those A had sent already must
 * not go again (the replay reads the destination partitions for them).
 */
static void test_partition_moves_forwards_not_resent(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b;
  char *dir = th_mkdtemp("split-move");
  char dir_a[600], dir_b[600], id[64], subject[80], event_id[64];
  long long expected_events[STREAM_SUBJECTS] = {0};
  long long expected_quantity[STREAM_SUBJECTS] = {0};
  static landed_t landed[3000];
  unsigned seed = (unsigned)th_now_ms();
  printf("# seed %u\n", seed);
  snprintf(dir_a, sizeof(dir_a), "%s/state-a", dir);
  snprintf(dir_b, sizeof(dir_b), "%s/state-b", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  char env[64];
  snprintf(env, sizeof(env), "TALLY_FAULT_KILL_AFTER_ACKS=%d",
           150 + rand_r(&seed) % 300);
  th_run_env = env;
  assert_int_equal(th_run_start(&a, broker.bootstrap, dir_a, NULL), 0);
  assert_int_equal(th_run_start(&b, broker.bootstrap, dir_b, NULL), 0);
  int64_t deadline = th_now_ms() + 60000;
  while ((assigned_count(a.port) + assigned_count(b.port) != PARTITIONS ||
          assigned_count(a.port) <= 0 || assigned_count(b.port) <= 0) &&
         th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(assigned_count(a.port) > 0 && assigned_count(b.port) > 0);

  rd_kafka_t *rk = raw_producer(broker.bootstrap, "consistent_random");
  int64_t started = th_now_ms();
  for (int i = 0; i < 3000; i++) {
    int s = rand_r(&seed) % STREAM_SUBJECTS;
    long long quantity = 1 + rand_r(&seed) % 5;
    snprintf(id, sizeof(id), "move-%02d", s);
    snprintf(subject, sizeof(subject), "user:%s", id);
    snprintf(event_id, sizeof(event_id), "move-%d", i);
    produce_usage(rk, rand_r(&seed) % PARTITIONS, subject, id, event_id,
                  quantity, EVENT_TIME + i, &landed[i]);
    expected_events[s]++;
    expected_quantity[s] += quantity;
    int64_t wait = started + i / 2 - th_now_ms(); /* 2,000 a second */
    if (wait > 0)
      rd_kafka_poll(rk, (int)wait);
  }
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
  int code = th_wait_exit(a.pid, 30000);
  printf("# a ended with %d\n", code);
  assert_int_equal(code, 128 + 9); /* the fault: it did forward */
  /* B takes every partition and replays A's: what A had forwarded (or
   * alerted) already is found in Kafka and not sent again. */
  deadline = th_now_ms() + 60000;
  while (assigned_count(b.port) != PARTITIONS && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_int_equal(assigned_count(b.port), PARTITIONS);
  settle(&b, broker.bootstrap);
  long long skipped =
      th_metric_sum(b.port, "tally_replay_outputs_skipped_total");
  assert_true(skipped > 0);
  /* B leaves, cleanly; A comes back alone on its state: its outbox holds
   * forwards, most of them in Kafka already, many to partitions it did not
   * fetch before (their scan start was asked of the broker). It finds
   * those in the input topic, sends none twice, and folds everything B
   * folded since (its own partitions replayed, B's restored). */
  assert_int_equal(th_stop(b.pid), 0);
  assert_int_equal(th_run_start(&a, broker.bootstrap, dir_a, NULL), 0);
  settle(&a, broker.bootstrap);
  char *log = th_read_file(a.log_path);
  assert_non_null(log);
  const char *recovery = strstr(log, "recovery: ");
  assert_non_null(recovery);
  printf("# a: %.*s\n", (int)strcspn(recovery, "\n"), recovery);
  free(log);
  for (int s = 0; s < STREAM_SUBJECTS; s++) {
    long long events, quantity;
    if (!expected_events[s])
      continue;
    snprintf(subject, sizeof(subject), "user:move-%02d", s);
    usage_of(a.port, subject, &events, &quantity);
    assert_int_equal(events, expected_events[s]);
    assert_int_equal(quantity, expected_quantity[s]);
  }
  long long forwards = check_forwards(broker.bootstrap, "user:move-");
  printf("# %lld forwarded; b skipped %lld replayed outputs sent already\n",
         forwards, skipped);

  assert_int_equal(th_stop(a.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/* reason[0] becomes 1 when the dead letter says why; the rest holds it. */
static void dlq_record(void *opaque, const rd_kafka_message_t *msg) {
  char *reason = opaque;
  if (th_header(msg, "tally.error", reason + 1, 1023) &&
      strstr(reason + 1, "not its subject's home partition either"))
    reason[0] = 1;
}

/*
 * A record marked as forwarded already that is still not on its home
 * partition (as after a change of the partition count) goes to the
 * dead-letter topic, not round again; ticks, written to every partition,
 * stay where they are.
 */
static void test_stray_forward_dead_lettered_ticks_stay(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("split-stray");
  char state_dir[600], errstr[512];
  const char *subject = "user:stray";
  const char *extra[] = {"--tick-interval-ms", "300", NULL};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  int32_t home = home_of(subject);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);

  const void *value;
  size_t len;
  /* Event time now: the ticks move the watermark to now too. */
  encode_usage("stray", "stray-1", 5, th_now_ms(), &value, &len);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", broker.bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  assert_int_equal(
      rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("tally.usage"),
                        RD_KAFKA_V_PARTITION((home + 1) % PARTITIONS),
                        RD_KAFKA_V_KEY(subject, strlen(subject)),
                        RD_KAFKA_V_VALUE((void *)value, len),
                        RD_KAFKA_V_HEADER("tally.forwarded.from", "2@17", 4),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_END),
      0);
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);

  /* Ticks have gone into every partition and were folded there. */
  int64_t deadline = th_now_ms() + 30000;
  while (th_metric_sum(run.port, "tally_events_folded_total") <
             2 * PARTITIONS &&
         th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(th_metric_sum(run.port, "tally_events_folded_total") >=
              2 * PARTITIONS);
  deadline = th_now_ms() + 30000;
  while (th_metric_sum(run.port, "tally_dead_letters_total") < 1 &&
         th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 1);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_forwarded_total"), 0);
  char reason[1024] = {0};
  assert_int_equal(
      th_read_topic(broker.bootstrap, "tally.usage.dlq", 1, dlq_record, reason),
      1);
  if (!reason[0])
    fail_msg("dead letter reason: %s", reason + 1);
  long status;
  char *body;
  assert_int_equal(
      th_http_get(run.port, "/v1/subjects/user:stray/usage", &status, &body),
      0);
  assert_int_equal(status, 404); /* counted nowhere */
  free(body);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

static int setup(void **state) {
  char errstr[256];
  (void)state;
  codec = tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  return codec ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  tly_codec_destroy(codec);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) /* e.g. "test_partition_*": only those */
    cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_consistent_random_partitioner_counts_all),
      cmocka_unit_test(test_explicit_partitions_and_duplicates_count_once),
      cmocka_unit_test(test_stray_forward_dead_lettered_ticks_stay),
      cmocka_unit_test(test_sigkill_keeps_forwards_exactly_once),
      cmocka_unit_test(test_partition_moves_forwards_not_resent),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
