/*
 * test_oversized.c - oversized fields and fatal errors against the real
 * binary (issue 13, finding 3).
 *
 * test_oversized_fields: a 70,000-byte event_id and a 1,200-byte subject
 * id, through every way in. POST /v1/events answers 400 naming the field
 * and `tally emit` refuses the line; written straight to Kafka (as any
 * client could) they go to the dead-letter topic with the reason, bytes
 * unchanged, counted nowhere, and the processor keeps running. A duplicate
 * of a normal id, and of the oversized one, is still refused; a restart
 * shows the same totals and still refuses them.
 *
 * test_commit_failure: the store fails one batch's commit for good (every
 * retry; TALLY_FAULT_STORE_WRITE) while events stream in, each to a subject
 * of its own. The processor exits non-zero saying why, having committed
 * nothing of that batch or any later one; restarted without the fault it
 * folds them from the stored offsets: every subject exact, nothing lost or
 * doubled (a second copy of every event is refused as a duplicate).
 *
 * test_fold_failure: the fold stops mid-batch (a subject record cannot be
 * read; TALLY_FAULT_STORE_READ) with the first events of the batch already
 * folded. Nothing of the batch is committed, and a restart folds it whole.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_codec.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <cmocka.h>

#define OCCURRED_AT 1763800000000LL
#define HUGE_ID 70000
#define HUGE_SUBJECT 1200

/* ---- records written as any Kafka client could ------------------------ */

/* A valid usage event, encoded (malloc'd, *len set). */
static unsigned char *encode_usage(const char *event_id, const char *subject,
                                   long long quantity, size_t *len) {
  char errstr[512];
  tly_codec_t *codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  assert_non_null(codec);
  tly_event_t event = {0};
  event.event_id = (char *)event_id;
  event.occurred_at_ms = OCCURRED_AT;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = (char *)subject;
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.unit = "call";
  event.body.usage.quantity = quantity;
  const void *bytes;
  if (tly_codec_encode(codec, &event, &bytes, len, errstr, sizeof(errstr)))
    fail_msg("encode: %s", errstr);
  unsigned char *copy = malloc(*len);
  assert_non_null(copy);
  memcpy(copy, bytes, *len);
  tly_codec_destroy(codec);
  return copy;
}

static size_t put_long(unsigned char *out, int64_t value) {
  uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
  size_t len = 0;
  while (n & ~(uint64_t)0x7F) {
    out[len++] = (unsigned char)((n & 0x7F) | 0x80);
    n >>= 7;
  }
  out[len++] = (unsigned char)n;
  return len;
}

/* bytes with the Avro string `from` replaced by new_len copies of fill
 * (the length prefix re-encoded): a field no tally producer would write.
 * malloc'd, *len updated. */
static unsigned char *splice(unsigned char *bytes, size_t *len,
                             const char *from, char fill, size_t new_len) {
  unsigned char prefix[10], longer[10];
  size_t from_len = strlen(from);
  size_t prefix_len = put_long(prefix, (int64_t)from_len);
  size_t longer_len = put_long(longer, (int64_t)new_len);
  for (size_t at = 0; at + prefix_len + from_len <= *len; at++) {
    if (memcmp(bytes + at, prefix, prefix_len) ||
        memcmp(bytes + at + prefix_len, from, from_len))
      continue;
    size_t tail = *len - at - prefix_len - from_len;
    size_t out_len = at + longer_len + new_len + tail;
    unsigned char *out = malloc(out_len);
    assert_non_null(out);
    memcpy(out, bytes, at);
    memcpy(out + at, longer, longer_len);
    memset(out + at + longer_len, fill, new_len);
    memcpy(out + at + longer_len + new_len, bytes + *len - tail, tail);
    free(bytes);
    *len = out_len;
    return out;
  }
  fail_msg("'%s' is not in the encoded event", from);
  return NULL;
}

typedef struct {
  int64_t offset;
  int32_t partition;
} delivered_t;

static void raw_delivered(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                          void *opaque) {
  delivered_t *delivered = msg->_private;
  (void)rk, (void)opaque;
  if (!msg->err) {
    delivered->offset = msg->offset;
    delivered->partition = msg->partition;
  }
}

/* Produces one record (key as given) and waits for its acknowledgement. */
static delivered_t produce_raw(const char *bootstrap, const char *key,
                               const void *value, size_t len) {
  char errstr[512];
  delivered_t delivered = {-1, -1};
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set_dr_msg_cb(conf, raw_delivered);
  /* Records up to 2 MB (test_record_too_large_for_the_producer); Kafka's
   * topics default to 1 MB. */
  rd_kafka_conf_set(conf, "message.max.bytes", "2000000", errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  assert_int_equal(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("tally.usage"),
                                     RD_KAFKA_V_KEY(key, strlen(key)),
                                     RD_KAFKA_V_VALUE((void *)value, len),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_OPAQUE(&delivered),
                                     RD_KAFKA_V_END),
                   0);
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
  assert_true(delivered.offset >= 0);
  return delivered;
}

/* Sends valid events through the producer library. */
static void produce_events(const char *bootstrap, const tly_event_t *events,
                           size_t count) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (size_t i = 0; i < count; i++)
    if (tally_producer_send(producer, &events[i], NULL, errstr, sizeof(errstr)))
      fail_msg("send %zu: %s", i, errstr);
  assert_int_equal(tally_producer_flush(producer, 30000), 0);
  tally_producer_destroy(producer);
}

static tly_event_t usage_event(const char *event_id, const char *subject,
                               long long quantity) {
  tly_event_t event = {0};
  event.event_id = (char *)event_id;
  event.occurred_at_ms = OCCURRED_AT;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = (char *)subject;
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.unit = "call";
  event.body.usage.quantity = quantity;
  return event;
}

/* ---- reading what the processor did ----------------------------------- */

/* api_calls used by user:<subject> (0 when it has no usage). */
static long long usage_of(int port, const char *subject) {
  char path[256], *body = NULL;
  long status = 0;
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/usage?at=%lld", subject,
           OCCURRED_AT);
  if (th_http_get(port, path, &status, &body))
    fail_msg("GET %s: no answer", path);
  if (status == 404) {
    free(body);
    return 0;
  }
  if (status != 200)
    fail_msg("GET %s: %ld %s", path, status, body);
  json_t *json = json_loads(body, 0, NULL);
  free(body);
  json_t *quantity = json_object_get(
      json_object_get(json_object_get(json, "features"), "api_calls"),
      "quantity");
  long long value =
      json_is_integer(quantity) ? json_integer_value(quantity) : 0;
  json_decref(json);
  return value;
}

static int alive(pid_t pid) { return th_wait_exit(pid, 0) == -1; }

typedef struct {
  int count;
  char reasons[4][512];
  size_t lengths[4];
  int64_t offsets[4];
  char truncated[4][32]; /* tally.truncated, "" if none */
  int all_z[4];          /* every byte 'z' */
} dead_letters_t;

static void visit_dead_letter(void *opaque,
                              const struct rd_kafka_message_s *msg) {
  dead_letters_t *seen = opaque;
  char offset[32];
  if (seen->count >= 4) {
    seen->count++;
    return;
  }
  th_header(msg, "tally.error", seen->reasons[seen->count],
            sizeof(seen->reasons[0]));
  seen->offsets[seen->count] =
      th_header(msg, "tally.source.offset", offset, sizeof(offset))
          ? atoll(offset)
          : -1;
  if (!th_header(msg, "tally.truncated", seen->truncated[seen->count],
                 sizeof(seen->truncated[0])))
    seen->truncated[seen->count][0] = '\0';
  const unsigned char *bytes = msg->payload;
  seen->all_z[seen->count] = msg->len > 0;
  for (size_t i = 0; i < msg->len; i++)
    if (bytes[i] != 'z') {
      seen->all_z[seen->count] = 0;
      break;
    }
  seen->lengths[seen->count++] = msg->len;
}

/* The dead letter from source offset, or -1. */
static int dead_letter_at(const dead_letters_t *seen, int64_t offset) {
  for (int i = 0; i < seen->count && i < 4; i++)
    if (seen->offsets[i] == offset)
      return i;
  return -1;
}

static char *log_of(const th_run_t *run) {
  char *log = th_read_file(run->log_path);
  return log ? log : strdup("");
}

/* ---- 70,000-byte event id, 1,200-byte subject ------------------------- */

static void test_oversized_fields(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("oversized");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  /* One partition: the duplicate checks below compare ids within it. */
  assert_int_equal(th_broker_start(&broker, 1), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);

  /* HTTP: 400 naming the field, nothing produced. */
  char *huge_id = malloc(HUGE_ID + 1), *huge_subject = malloc(HUGE_SUBJECT + 1);
  assert_non_null(huge_id);
  assert_non_null(huge_subject);
  memset(huge_id, 'i', HUGE_ID);
  huge_id[HUGE_ID] = '\0';
  memset(huge_subject, 's', HUGE_SUBJECT);
  huge_subject[HUGE_SUBJECT] = '\0';
  size_t body_size = HUGE_ID + 256;
  char *body = malloc(body_size);
  assert_non_null(body);
  struct {
    const char *event_id, *subject, *field, *message;
  } posts[] = {
      {huge_id, "alice", "event_id", "70000 bytes, at most 256"},
      {"h-2", huge_subject, "subject", "1200 bytes, at most 256"},
  };
  for (size_t i = 0; i < 2; i++) {
    long status = 0;
    char *answer = NULL;
    snprintf(body, body_size,
             "{\"event_id\":\"%s\",\"subject\":\"user:%s\",\"feature\":"
             "\"api_calls\",\"quantity\":1000,\"occurred_at\":%lld}",
             posts[i].event_id, posts[i].subject, OCCURRED_AT);
    assert_int_equal(th_http_request(run.port, "POST", "/v1/events",
                                     TH_AUTH_DEFAULT, body, strlen(body), NULL,
                                     &status, &answer),
                     0);
    printf("# POST /v1/events with an oversized %s: %ld %.300s\n",
           posts[i].field, status, answer);
    assert_int_equal(status, 400);
    json_t *json = json_loads(answer, 0, NULL);
    json_t *error = json_object_get(json, "error");
    assert_string_equal(json_string_value(json_object_get(error, "field")),
                        posts[i].field);
    assert_non_null(strstr(json_string_value(json_object_get(error, "message")),
                           posts[i].message));
    json_decref(json);
    free(answer);
  }

  /* tally emit: the line is refused with the reason, exit 1. */
  char in_path[700], err_path[700];
  snprintf(in_path, sizeof(in_path), "%s/emit.jsonl", dir);
  snprintf(err_path, sizeof(err_path), "%s/emit.err", dir);
  FILE *in = fopen(in_path, "w");
  assert_non_null(in);
  fprintf(in,
          "{\"event_id\":\"%s\",\"subject\":\"user:alice\",\"feature\":"
          "\"api_calls\",\"quantity\":1000}\n",
          huge_id);
  fclose(in);
  char *emit_argv[] = {(char *)th_tally_bin(), "emit", "--brokers",
                       broker.bootstrap, NULL};
  pid_t emit = th_spawn(emit_argv, in_path, NULL, err_path);
  assert_int_equal(th_wait_exit(emit, 30000), 1);
  char *emit_err = th_read_file(err_path);
  assert_non_null(emit_err);
  assert_non_null(
      strstr(emit_err, "line 1: field 'event_id': 70000 bytes, at most 256"));
  free(emit_err);

  /* Kafka: a normal event, the oversized ones (the huge id twice), a
   * duplicate of the normal one, another normal one. */
  tly_event_t first = usage_event("n-1", "alice", 5);
  produce_events(broker.bootstrap, &first, 1);
  size_t len;
  unsigned char *value = encode_usage("PLACEHOLDER", "alice", 1000, &len);
  value = splice(value, &len, "PLACEHOLDER", 'i', HUGE_ID);
  size_t huge_id_len = len;
  delivered_t huge_id_at =
      produce_raw(broker.bootstrap, "user:alice", value, len);
  delivered_t huge_id_again =
      produce_raw(broker.bootstrap, "user:alice", value, len);
  free(value);
  value = encode_usage("big-subject", "PLACEHOLDER", 1000, &len);
  value = splice(value, &len, "PLACEHOLDER", 's', HUGE_SUBJECT);
  size_t huge_subject_len = len;
  char key[HUGE_SUBJECT + 16];
  snprintf(key, sizeof(key), "user:%s", huge_subject);
  delivered_t huge_subject_at = produce_raw(broker.bootstrap, key, value, len);
  free(value);
  tly_event_t later[] = {usage_event("n-1", "alice", 5),
                         usage_event("n-2", "alice", 11)};
  produce_events(broker.bootstrap, later, 2);

  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 60000),
      0);
  assert_true(alive(run.pid));
  assert_int_equal(usage_of(run.port, "alice"), 16);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"), 2);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 1);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 3);

  /* The dead letters: the records unchanged, the reason in tally.error. */
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  dead_letters_t seen = {0};
  assert_true(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1,
                            visit_dead_letter, &seen) >= 0);
  assert_int_equal(seen.count, 3);
  int at = dead_letter_at(&seen, huge_id_at.offset);
  assert_true(at >= 0);
  printf("# dead letter: %s\n", seen.reasons[at]);
  assert_string_equal(seen.reasons[at],
                      "invalid event: field 'event_id': 70000 bytes, at most "
                      "256");
  assert_int_equal(seen.lengths[at], huge_id_len);
  at = dead_letter_at(&seen, huge_id_again.offset);
  assert_true(at >= 0);
  assert_int_equal(seen.lengths[at], huge_id_len);
  at = dead_letter_at(&seen, huge_subject_at.offset);
  assert_true(at >= 0);
  printf("# dead letter: %s\n", seen.reasons[at]);
  assert_string_equal(seen.reasons[at],
                      "invalid event: field 'subject': subject id: 1200 bytes, "
                      "at most 256");
  assert_int_equal(seen.lengths[at], huge_subject_len);

  /* A restart: the same totals, and the duplicates still refused. */
  assert_int_equal(th_stop(run.pid), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  tly_event_t again[] = {usage_event("n-1", "alice", 5),
                         usage_event("n-2", "alice", 11),
                         usage_event("n-3", "alice", 100)};
  produce_events(broker.bootstrap, again, 3);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 60000),
      0);
  assert_true(alive(run.pid));
  assert_int_equal(usage_of(run.port, "alice"), 116);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"), 1);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 2);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 0);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  free(body);
  free(huge_id);
  free(huge_subject);
  th_rmrf(dir);
  free(dir);
}

/* ---- a record larger than the processor's producer takes ------------- */

/* A malformed record of 1,000,000 bytes (Kafka's topics take up to 1 MB)
 * is a dead letter of more than the processor's producer takes
 * (message.max.bytes, 1,000,000 by default, counts the key and headers
 * too): refused at every try, it held the outbox for good, and with the
 * outbox's hold the fold behind it. Its value is cut to fit, the dead
 * letter says so (tally.truncated: 1000000), the outbox empties and the
 * events after it fold. */
#define TOO_LARGE 1000000
static void test_record_too_large_for_the_producer(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("too-large");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, 1), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  char *value = malloc(TOO_LARGE);
  assert_non_null(value);
  memset(value, 'z', TOO_LARGE);
  delivered_t at = produce_raw(broker.bootstrap, "user:big", value, TOO_LARGE);
  free(value);
  tly_event_t later[] = {usage_event("t-1", "bob", 7),
                         usage_event("t-2", "bob", 8)};
  produce_events(broker.bootstrap, later, 2);

  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 60000),
      0);
  assert_true(alive(run.pid));
  assert_int_equal(usage_of(run.port, "bob"), 15);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 1);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  static dead_letters_t seen;
  assert_true(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1,
                            visit_dead_letter, &seen) >= 0);
  assert_int_equal(seen.count, 1);
  assert_int_equal(seen.offsets[0], at.offset);
  printf("# dead letter of %d bytes: %zu bytes, tally.truncated %s: %s\n",
         TOO_LARGE, seen.lengths[0], seen.truncated[0], seen.reasons[0]);
  assert_string_equal(seen.truncated[0], "1000000");
  assert_true(seen.lengths[0] > TOO_LARGE - 4096 &&
              seen.lengths[0] < TOO_LARGE);
  assert_true(seen.all_z[0]);
  assert_string_equal(seen.reasons[0],
                      "record value: 1000000 bytes, at most 131072");

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/* ---- a commit that fails for good ------------------------------------- */

#define STREAM_PARTITIONS 2
#define STREAM_MAX 4000 /* events, each to a subject of its own */

static atomic_int stream_stop;
static atomic_int stream_count;
static char stream_error[1024];
static const char *stream_bootstrap;

/* Event i: "once-<i>", quantity 1 + i % 9. */
static void stream_event(int i, char *event_id, char *subject,
                         tly_event_t *event) {
  snprintf(event_id, 32, "once-%d", i);
  snprintf(subject, 32, "once-%d", i);
  *event = usage_event(event_id, subject, 1 + i % 9);
}

/* A steady stream (about 250 events/s) until told to stop. */
static void *produce_stream(void *arg) {
  tally_producer_conf_t conf = {.brokers = stream_bootstrap};
  char errstr[512], event_id[32], subject[32];
  (void)arg;
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    snprintf(stream_error, sizeof(stream_error), "producer: %s", errstr);
    return NULL;
  }
  int i = 0;
  while (!atomic_load(&stream_stop) && i < STREAM_MAX) {
    for (int burst = 0; burst < 5; burst++, i++) {
      tly_event_t event;
      stream_event(i, event_id, subject, &event);
      if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
        snprintf(stream_error, sizeof(stream_error), "send %d: %s", i, errstr);
        atomic_store(&stream_stop, 1);
        break;
      }
    }
    tally_producer_poll(producer, 0);
    th_sleep_ms(20);
  }
  if (tally_producer_flush(producer, 30000))
    snprintf(stream_error, sizeof(stream_error), "flush failed");
  tally_producer_destroy(producer);
  atomic_store(&stream_count, i);
  return NULL;
}

/* Every subject of the stream has exactly its event's quantity. */
static void check_stream_totals(int port, int count) {
  int wrong = 0;
  for (int i = 0; i < count; i++) {
    char subject[32];
    snprintf(subject, sizeof(subject), "once-%d", i);
    long long used = usage_of(port, subject);
    if (used != 1 + i % 9 && wrong++ < 5)
      printf("# %s: %lld, expected %d\n", subject, used, 1 + i % 9);
  }
  assert_int_equal(wrong, 0);
}

static void test_commit_failure(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("commitfail");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, STREAM_PARTITIONS), 0);
  stream_bootstrap = broker.bootstrap;

  /* Commit 15 and its 5 retries fail (about 3 s); later ones would
   * succeed: a store that recovers must not get the batches after a
   * failed one. */
  th_run_env = "TALLY_FAULT_STORE_WRITE=15:6";
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  pthread_t producer;
  atomic_store(&stream_stop, 0);
  assert_int_equal(pthread_create(&producer, NULL, produce_stream, NULL), 0);
  int code = th_wait_exit(run.pid, 60000);
  atomic_store(&stream_stop, 1);
  pthread_join(producer, NULL);
  if (stream_error[0])
    fail_msg("%s", stream_error);
  int count = atomic_load(&stream_count);
  char *log = log_of(&run);
  printf("# %d events streamed; the processor exited with %d\n", count, code);
  if (code != 1)
    fail_msg("exit code %d, log:\n%s", code, log);
  const char *line = strstr(log, "tally: fatal: ");
  assert_non_null(line);
  printf("# %.*s\n", (int)strcspn(line, "\n"), line);
  assert_non_null(strstr(line, "RocksDB commit failed 6 times, last: injected "
                               "I/O error"));
  assert_non_null(strstr(line, "nothing of the batch in progress was "
                               "committed"));
  free(log);

  /* Restarted without the fault: every event folded once. */
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     STREAM_PARTITIONS, 60000),
                   0);
  long long folded_first = th_metric_sum(run.port, "tally_events_folded_total");
  printf("# the restart folded %lld events the failed run had not committed\n",
         folded_first);
  assert_true(folded_first > 0);
  check_stream_totals(run.port, count);

  /* Every event once more: all duplicates (their ids were committed with
   * their usage). */
  tally_producer_conf_t conf = {.brokers = broker.bootstrap};
  char errstr[512], event_id[32], subject[32];
  tally_producer_t *again = tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(again);
  for (int i = 0; i < count; i++) {
    tly_event_t event;
    stream_event(i, event_id, subject, &event);
    assert_int_equal(
        tally_producer_send(again, &event, NULL, errstr, sizeof(errstr)), 0);
  }
  assert_int_equal(tally_producer_flush(again, 30000), 0);
  tally_producer_destroy(again);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     STREAM_PARTITIONS, 60000),
                   0);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), count);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   folded_first);
  check_stream_totals(run.port, count);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/* ---- the fold stops mid-batch ----------------------------------------- */

#define FOLD_SUBJECTS 10

static void test_fold_failure(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("foldfail");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, 1), 0);

  /* Two rounds over ten subjects, all waiting before the processor starts:
   * one batch. */
  char ids[2 * FOLD_SUBJECTS][32], subjects[FOLD_SUBJECTS][32];
  tly_event_t events[2 * FOLD_SUBJECTS];
  for (int i = 0; i < 2 * FOLD_SUBJECTS; i++) {
    int s = i % FOLD_SUBJECTS;
    snprintf(subjects[s], sizeof(subjects[s]), "fold-%d", s);
    snprintf(ids[i], sizeof(ids[i]), "f-%d", i);
    events[i] = usage_event(ids[i], subjects[s], 1 + i);
  }
  produce_events(broker.bootstrap, events, 2 * FOLD_SUBJECTS);

  /* The fifth subject's record cannot be read: four subjects are folded
   * in the batch by then. */
  th_run_env = "TALLY_FAULT_STORE_READ=5";
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  int code = th_wait_exit(run.pid, 60000);
  char *log = log_of(&run);
  if (code != 1)
    fail_msg("exit code %d, log:\n%s", code, log);
  const char *line = strstr(log, "tally: fatal: ");
  assert_non_null(line);
  printf("# %.*s\n", (int)strcspn(line, "\n"), line);
  assert_non_null(strstr(line, "injected read error"));
  free(log);

  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 60000),
      0);
  /* Nothing of the failed batch was committed: the restart folded it
   * (at least the events up to the one that failed; all 20 when they were
   * one batch, as they normally are), and every total is exact. */
  long long folded = th_metric_sum(run.port, "tally_events_folded_total");
  printf("# the restart folded %lld events\n", folded);
  assert_true(folded >= 5);
  for (int s = 0; s < FOLD_SUBJECTS; s++)
    assert_int_equal(usage_of(run.port, subjects[s]),
                     (1 + s) + (1 + s + FOLD_SUBJECTS));
  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_oversized_fields),
      cmocka_unit_test(test_commit_failure),
      cmocka_unit_test(test_fold_failure),
      cmocka_unit_test(test_record_too_large_for_the_producer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
