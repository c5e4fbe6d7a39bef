/*
 * test_availability.c - reads under churn (issue 20), end to end over the
 * embedded broker.
 *
 * Three `tally run` instances share six partitions while a stream of usage
 * events goes in and two reader threads ask every live instance for the
 * usage of random subjects, without pause. First a rolling restart: each
 * instance in turn is taken out of the readers' rotation, SIGTERMed and
 * restarted on its state dir, and the group left to settle. Then SIGKILLs:
 * two instances in turn are killed and restarted after a second.
 *
 * Every answer is checked against the stream's own record of where each
 * event landed (partition, offset) and when it was produced:
 *   - an answer from a copy (it carries "as_of") must equal, to the unit,
 *     the subject's events on as_of.partition below as_of.offset, and its
 *     age_ms must be at least the true age of the first record it misses
 *     (when that record is one of the stream's);
 *   - any other answer must equal the subject's events below some offset
 *     (a prefix of its partition's log: nothing lost, nothing counted
 *     twice); its staleness is reported (how long ago the first event it
 *     misses was acknowledged), not asserted: a loaded machine folds later.
 * It reports the share of reads answered in each phase and the p99
 * staleness of the answered ones, and whether the goals are met
 * (at least 99 % answered during the rolling restart, 95 % under SIGKILL;
 * asserted with TALLY_AVAILABILITY_GOALS=1, see the end) and why the
 * refused reads were refused.
 * Finally, with the stream done and every partition caught up, every
 * subject's usage equals the reference.
 */
#include "harness.h"

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tally_producer.h"

#define PARTITIONS 6
#define SUBJECTS 60
#define EVENTS_PER_SECOND 200
#define MAX_EVENTS 40000
#define READERS 2
#define MAX_READS 200000
#define INSTANCES 3

static const char *config_json =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"default_plans\": {\"user\": \"big\"},"
    " \"plans\": {\"big\": {\"credits\": 1000000000,"
    "   \"limits\": {\"api_calls\": {\"limit\": 1000000000, \"mode\": "
    "\"soft\"}}}}}";

/* One event as the broker acknowledged it. */
typedef struct {
  int subject;
  int quantity;
  int32_t partition;
  int64_t offset;
  int64_t sent_ms, acked_ms;
} event_t;

typedef enum { PHASE_SETTLE = 0, PHASE_ROLLING, PHASE_KILL, PHASES } phase_t;
static const char *phase_names[PHASES] = {"settle", "rolling restart",
                                          "SIGKILL"};

typedef struct {
  int subject, phase, status, stale, port;
  long long value;
  int32_t partition;
  long long offset, lag_records, age_ms;
  int64_t sent_ms;
  char reason[80]; /* a refusal's error message (its start) */
} read_t;

typedef struct {
  const char *bootstrap;
  event_t *events;
  atomic_int count; /* events produced so far (reports may lag) */
  atomic_int stop;
  char error[1024];
  /* The instances' HTTP ports (0: out of the readers' rotation). */
  pthread_mutex_t lock;
  int ports[INSTANCES];
  atomic_int phase;
  read_t *reads;
  atomic_int read_count;
  atomic_int readers_stop;
  int64_t started_ms;
  char bound[64]; /* "&max_staleness_ms=N" or "" (the default) */
} world_t;

static void delivered(void *opaque, void *msg_opaque, int error,
                      const char *errstr, int32_t partition, int64_t offset) {
  world_t *world = opaque;
  event_t *event = &world->events[(intptr_t)msg_opaque];
  if (error) {
    snprintf(world->error, sizeof(world->error), "delivery: %s", errstr);
    return;
  }
  event->partition = partition;
  event->offset = offset;
  event->acked_ms = th_now_ms();
}

static void *writer_main(void *arg) {
  world_t *world = arg;
  char errstr[512], id[32], event_id[32];
  tally_producer_conf_t conf = {.brokers = world->bootstrap,
                                .on_delivery_at = delivered,
                                .opaque = world};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    snprintf(world->error, sizeof(world->error), "producer: %s", errstr);
    return NULL;
  }
  unsigned seed = 7;
  int64_t started = th_now_ms();
  for (int i = 0; i < MAX_EVENTS && !atomic_load(&world->stop); i++) {
    event_t *event = &world->events[i];
    event->subject = rand_r(&seed) % SUBJECTS;
    event->quantity = 1 + rand_r(&seed) % 3;
    event->partition = -1;
    event->offset = -1;
    snprintf(id, sizeof(id), "a%03d", event->subject);
    snprintf(event_id, sizeof(event_id), "av-%d", i);
    tly_event_t e = {0};
    e.event_id = event_id;
    e.occurred_at_ms = th_now_ms();
    e.subject_kind = TLY_SUBJECT_USER;
    e.subject_id = id;
    e.body_kind = TLY_BODY_USAGE_RECORDED;
    e.body.usage.feature = "api_calls";
    e.body.usage.quantity = event->quantity;
    event->sent_ms = th_now_ms();
    atomic_store(&world->count, i + 1);
    if (tally_producer_send(producer, &e, (void *)(intptr_t)i, errstr,
                            sizeof(errstr))) {
      snprintf(world->error, sizeof(world->error), "send %d: %s", i, errstr);
      break;
    }
    int64_t due = started + (int64_t)(i + 1) * 1000 / EVENTS_PER_SECOND;
    int64_t wait = due - th_now_ms();
    tally_producer_poll(producer, wait > 0 ? (int)wait : 0);
  }
  if (tally_producer_flush(producer, 60000))
    snprintf(world->error, sizeof(world->error), "flush timed out");
  tally_producer_destroy(producer);
  return NULL;
}

/* The api_calls quantity of a /usage answer (0 when the subject has none);
 * fills the copy fields when it carries "as_of". 0, or -1 when the body
 * is not such an answer. */
static int parse_usage(const char *body, read_t *read) {
  json_t *json = json_loads(body, 0, NULL);
  if (!json)
    return -1;
  json_t *quantity = json_object_get(
      json_object_get(json_object_get(json, "features"), "api_calls"),
      "quantity");
  read->value = quantity ? json_integer_value(quantity) : 0;
  json_t *as_of = json_object_get(json, "as_of");
  if (as_of) {
    read->stale = 1;
    read->partition =
        (int32_t)json_integer_value(json_object_get(as_of, "partition"));
    read->offset = json_integer_value(json_object_get(as_of, "offset"));
    read->lag_records =
        json_integer_value(json_object_get(as_of, "lag_records"));
    read->age_ms = json_integer_value(json_object_get(as_of, "age_ms"));
  }
  int ok = json_is_object(json_object_get(json, "features"));
  json_decref(json);
  return ok ? 0 : -1;
}

static void *reader_main(void *arg) {
  world_t *world = arg;
  unsigned seed = (unsigned)(uintptr_t)&seed;
  char path[128];
  while (!atomic_load(&world->readers_stop)) {
    int port = 0;
    pthread_mutex_lock(&world->lock);
    for (int tries = 0; tries < INSTANCES && !port; tries++)
      port = world->ports[rand_r(&seed) % INSTANCES];
    pthread_mutex_unlock(&world->lock);
    int index = atomic_fetch_add(&world->read_count, 1);
    if (!port || index >= MAX_READS) {
      atomic_fetch_sub(&world->read_count, 1);
      th_sleep_ms(5);
      continue;
    }
    read_t *read = &world->reads[index];
    memset(read, 0, sizeof(*read));
    read->subject = rand_r(&seed) % SUBJECTS;
    read->port = port;
    read->phase = atomic_load(&world->phase);
    read->sent_ms = th_now_ms();
    /* at: inside the cycle the events are folded into (the plan's cycle
     * starts at the epoch; read at now it would show as ended and empty). */
    snprintf(path, sizeof(path), "/v1/subjects/user:a%03d/usage?at=1000%s",
             read->subject, world->bound);
    long status = 0;
    char *body = NULL;
    if (th_http_get(port, path, &status, &body))
      status = 0; /* no answer: counted as refused */
    read->status = (int)status;
    if (status == 200 && parse_usage(body, read))
      read->status = -1; /* malformed: fails the check */
    if (status != 200) {
      json_t *json = body ? json_loads(body, 0, NULL) : NULL;
      const char *message = json_string_value(
          json_object_get(json_object_get(json, "error"), "message"));
      snprintf(read->reason, sizeof(read->reason), "%ld %s", status,
               message ? message : "(no answer)");
      json_decref(json);
    }
    free(body);
    th_sleep_ms(3);
  }
  return NULL;
}

static int ready(int port) {
  long status = 0;
  char *body = NULL;
  int ok = th_http_get(port, "/readyz", &status, &body) == 0 && status == 200;
  free(body);
  return ok;
}

/* Partitions assigned to the instance (those with a replay target in its
 * /metrics); -1 when it does not answer. */
static int assigned_count(int port) {
  long status = 0;
  char *body = NULL;
  if (th_http_get(port, "/metrics", &status, &body) || status != 200) {
    free(body);
    return -1;
  }
  int count = 0;
  for (const char *at = body;
       (at = strstr(at, "\ntally_partition_replay_target{")) != NULL; at++)
    count++;
  free(body);
  return count;
}

/* Every instance ready and every partition assigned to one of them. */
static int settled(th_run_t *runs) {
  int assigned = 0;
  for (int i = 0; i < INSTANCES; i++) {
    int count = ready(runs[i].port) ? assigned_count(runs[i].port) : -1;
    if (count < 0)
      return 0;
    assigned += count;
  }
  return assigned == PARTITIONS;
}

static void wait_settled(th_run_t *runs, int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  while (!settled(runs) && th_now_ms() < deadline)
    th_sleep_ms(200);
}

static void set_port(world_t *world, int i, int port) {
  pthread_mutex_lock(&world->lock);
  world->ports[i] = port;
  pthread_mutex_unlock(&world->lock);
}

/* Each subject's events in the order sent: with one partition per
 * subject and an idempotent producer, also their offsets' order. */
typedef struct {
  int *events;
  int count;
} subject_events_t;

static subject_events_t by_subject[SUBJECTS];

static void index_events(const world_t *world, int events) {
  for (int s = 0; s < SUBJECTS; s++) {
    by_subject[s].events = calloc((size_t)events + 1, sizeof(int));
    by_subject[s].count = 0;
    assert_non_null(by_subject[s].events);
  }
  for (int i = 0; i < events; i++) {
    subject_events_t *list = &by_subject[world->events[i].subject];
    list->events[list->count++] = i;
  }
}

/* The subject's quantity over its events on partition below offset. */
static long long reference_below(const world_t *world, int subject,
                                 int32_t partition, long long offset) {
  long long sum = 0;
  for (int k = 0; k < by_subject[subject].count; k++) {
    const event_t *e = &world->events[by_subject[subject].events[k]];
    if (e->partition == partition && e->offset < offset)
      sum += e->quantity;
  }
  return sum;
}

/* The stream's event at offset of partition, or NULL. */
static const event_t *event_at(const world_t *world, int events,
                               int32_t partition, long long offset) {
  for (int i = 0; i < events; i++)
    if (world->events[i].partition == partition &&
        world->events[i].offset == offset)
      return &world->events[i];
  return NULL;
}

static int compare_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

static void test_availability(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t runs[INSTANCES];
  static world_t world;
  pthread_t writer, readers[READERS];
  char *dir = th_mkdtemp("avail");
  char dirs[INSTANCES][600], config_path[700];
  memset(&world, 0, sizeof(world));
  pthread_mutex_init(&world.lock, NULL);
  world.events = calloc(MAX_EVENTS, sizeof(*world.events));
  world.reads = calloc(MAX_READS, sizeof(*world.reads));
  assert_non_null(world.events);
  assert_non_null(world.reads);
  snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
  FILE *config = fopen(config_path, "w");
  assert_non_null(config);
  fputs(config_json, config);
  fclose(config);
  /* For comparison runs: TALLY_AVAILABILITY_BOUND_MS=0 reads without
   * copies; TALLY_AVAILABILITY_EAGER=1 runs the eager protocol. */
  const char *bound = getenv("TALLY_AVAILABILITY_BOUND_MS");
  if (bound && *bound)
    snprintf(world.bound, sizeof(world.bound), "&max_staleness_ms=%d",
             atoi(bound));
  const char *eager = getenv("TALLY_AVAILABILITY_EAGER");
  const char *extra_coop[] = {"--config", config_path, NULL};
  const char *extra_eager[] = {"--config", config_path, "-X",
                               "partition.assignment.strategy=range,roundrobin",
                               NULL};
  const char *const *extra = eager && *eager == '1' ? extra_eager : extra_coop;

  int64_t started = th_now_ms();
  world.started_ms = started;
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  world.bootstrap = broker.bootstrap;
  for (int i = 0; i < INSTANCES; i++) {
    snprintf(dirs[i], sizeof(dirs[i]), "%s/state-%c", dir, 'a' + i);
    assert_int_equal(th_run_start(&runs[i], broker.bootstrap, dirs[i], extra),
                     0);
  }
  wait_settled(runs, 60000);
  assert_true(settled(runs));
  printf("# %d instances share %d partitions after %lld ms\n", INSTANCES,
         PARTITIONS, (long long)(th_now_ms() - started));
  assert_int_equal(pthread_create(&writer, NULL, writer_main, &world), 0);
  th_sleep_ms(2000);
  for (int i = 0; i < INSTANCES; i++)
    set_port(&world, i, runs[i].port);
  for (int r = 0; r < READERS; r++)
    assert_int_equal(pthread_create(&readers[r], NULL, reader_main, &world), 0);
  th_sleep_ms(3000);

  /* Rolling restart: out of rotation, SIGTERM, restart, settle. */
  atomic_store(&world.phase, PHASE_ROLLING);
  for (int i = 0; i < INSTANCES; i++) {
    set_port(&world, i, 0);
    assert_int_equal(th_stop(runs[i].pid), 0);
    assert_int_equal(th_run_start(&runs[i], broker.bootstrap, dirs[i], extra),
                     0);
    set_port(&world, i, runs[i].port);
    wait_settled(runs, 60000);
    printf("# rolling restart: %c back and settled after %lld ms\n", 'a' + i,
           (long long)(th_now_ms() - started));
  }
  th_sleep_ms(2000);

  /* SIGKILLs: killed, restarted a second later, settle. */
  atomic_store(&world.phase, PHASE_KILL);
  for (int i = 0; i < 2; i++) {
    set_port(&world, i, 0);
    th_kill9(runs[i].pid);
    th_sleep_ms(1000);
    assert_int_equal(th_run_start(&runs[i], broker.bootstrap, dirs[i], extra),
                     0);
    set_port(&world, i, runs[i].port);
    wait_settled(runs, 60000);
    printf("# SIGKILL: %c back and settled after %lld ms\n", 'a' + i,
           (long long)(th_now_ms() - started));
  }
  th_sleep_ms(1000);
  atomic_store(&world.readers_stop, 1);
  for (int r = 0; r < READERS; r++)
    pthread_join(readers[r], NULL);
  atomic_store(&world.stop, 1);
  pthread_join(writer, NULL);
  if (world.error[0])
    fail_msg("stream: %s", world.error);
  int events = atomic_load(&world.count);

  /* Every answer fresh or marked with its true staleness. */
  index_events(&world, events);
  int reads = atomic_load(&world.read_count);
  int asked[PHASES] = {0}, answered[PHASES] = {0}, stale[PHASES] = {0};
  int unanswered_503[PHASES] = {0}, unanswered_no_answer[PHASES] = {0},
      unanswered_other[PHASES] = {0};
  long long *staleness = calloc((size_t)reads + 1, sizeof(*staleness));
  int staleness_count = 0;
  assert_non_null(staleness);
  for (int i = 0; i < reads; i++) {
    const read_t *read = &world.reads[i];
    asked[read->phase]++;
    if (read->status == -1)
      fail_msg("read %d: a 200 that is not a usage answer", i);
    if (read->status != 200 && read->status != 404) {
      if (read->status == 0)
        unanswered_no_answer[read->phase]++;
      else if (read->status == 503)
        unanswered_503[read->phase]++;
      else
        unanswered_other[read->phase]++;
      continue;
    }
    answered[read->phase]++;
    const subject_events_t *list = &by_subject[read->subject];
    int32_t home = list->count ? world.events[list->events[0]].partition : -1;
    if (read->stale) {
      stale[read->phase]++;
      if (list->count && read->partition != home)
        fail_msg("read %d of a%03d: as_of partition %d, its events are on %d",
                 i, read->subject, (int)read->partition, (int)home);
      long long expected =
          reference_below(&world, read->subject, read->partition, read->offset);
      if (read->value != expected)
        fail_msg("read %d of a%03d (port %d, %s, %lld ms in): %lld as of "
                 "offset %lld (lag %lld, age %lld ms), the reference says %lld",
                 i, read->subject, read->port, phase_names[read->phase],
                 (long long)(read->sent_ms - world.started_ms), read->value,
                 read->offset, read->lag_records, read->age_ms, expected);
      /* The record at as_of.offset, when it is the stream's: the copy
       * misses it, so the copy is at least that old. */
      const event_t *first =
          read->lag_records
              ? event_at(&world, events, read->partition, read->offset)
              : NULL;
      if (first && read->age_ms + 100 < read->sent_ms - first->sent_ms)
        fail_msg("read %d: age_ms %lld, but the record at offset %lld "
                 "was produced %lld ms before the read",
                 i, read->age_ms, read->offset,
                 (long long)(read->sent_ms - first->sent_ms));
      staleness[staleness_count++] = read->age_ms;
      continue;
    }
    /* Fresh: a prefix of the subject's events in log order; its staleness
     * is how long ago the first event it misses was acknowledged. */
    long long sum = 0, missing_since = -1;
    int k = 0;
    while (k < list->count && sum < read->value)
      sum += world.events[list->events[k++]].quantity;
    if (sum != read->value)
      fail_msg("read %d of a%03d: %lld is no prefix of its events", i,
               read->subject, read->value);
    if (k < list->count) {
      const event_t *missed = &world.events[list->events[k]];
      if (missed->acked_ms && missed->acked_ms < read->sent_ms)
        missing_since = missed->acked_ms;
    }
    staleness[staleness_count++] =
        missing_since < 0 ? 0 : read->sent_ms - missing_since;
  }
  qsort(staleness, (size_t)staleness_count, sizeof(*staleness), compare_ll);
  long long p99 =
      staleness_count ? staleness[(size_t)staleness_count * 99 / 100] : 0;
  for (int phase = PHASE_ROLLING; phase < PHASES; phase++)
    printf("# %s: %d of %d reads answered (%.2f %%), %d of them from a "
           "copy; refused: %d 503, %d no answer, %d other\n",
           phase_names[phase], answered[phase], asked[phase],
           asked[phase] ? 100.0 * answered[phase] / asked[phase] : 0.0,
           stale[phase], unanswered_503[phase], unanswered_no_answer[phase],
           unanswered_other[phase]);
  printf("# p99 staleness of the answered reads: %lld ms (%d reads, %d "
         "events)\n",
         p99, staleness_count, events);
  /* Why the others were refused, by message. */
  for (int phase = PHASE_ROLLING; phase < PHASES; phase++) {
    const char *seen[16];
    int counts[16], kinds = 0;
    for (int i = 0; i < reads; i++) {
      const read_t *read = &world.reads[i];
      if (read->phase != phase || read->status == 200)
        continue;
      int k = 0;
      while (k < kinds && strcmp(seen[k], read->reason) != 0)
        k++;
      if (k == kinds && kinds < 16) {
        seen[kinds] = read->reason;
        counts[kinds++] = 0;
      }
      if (k < kinds)
        counts[k]++;
    }
    for (int k = 0; k < kinds; k++)
      printf("#   %s refused %d: %s\n", phase_names[phase], counts[k], seen[k]);
    if (getenv("TALLY_AVAILABILITY_DEBUG")) {
      int by_status[6] = {0}; /* 200, 404, 503, 0, -1, other */
      for (int i = 0; i < reads; i++) {
        const read_t *read = &world.reads[i];
        if (read->phase != phase)
          continue;
        int st = read->status;
        by_status[st == 200   ? 0
                  : st == 404 ? 1
                  : st == 503 ? 2
                  : st == 0   ? 3
                  : st == -1  ? 4
                              : 5]++;
      }
      fprintf(stderr,
              "#   %s statuses: 200 %d, 404 %d, 503 %d, 0 %d, -1 %d, other "
              "%d\n",
              phase_names[phase], by_status[0], by_status[1], by_status[2],
              by_status[3], by_status[4], by_status[5]);
    }
  }
  free(staleness);
  assert_true(asked[PHASE_ROLLING] > 100 && asked[PHASE_KILL] > 100);
  /* The goals. Met in most runs with standby replicas, not in
   * all (a loaded machine: the suite runs two tests at a time, and under
   * ASan), and a share of answered reads depends on the machine's speed,
   * so they are asserted only when asked (TALLY_AVAILABILITY_GOALS=1) and
   * reported otherwise (the README's availability tests have the runs). */
  int rolling_met = answered[PHASE_ROLLING] * 100 >= asked[PHASE_ROLLING] * 99;
  int kill_met = answered[PHASE_KILL] * 100 >= asked[PHASE_KILL] * 95;
  printf("# goals: >= 99 %% during the rolling restart %s, >= 95 %% under "
         "SIGKILL %s\n",
         rolling_met ? "met" : "NOT met", kill_met ? "met" : "NOT met");
  const char *goals = getenv("TALLY_AVAILABILITY_GOALS");
  if (goals && *goals == '1') {
    assert_true(rolling_met);
    assert_true(kill_met);
  }

  /* At the end: every subject exact through every instance. */
  wait_settled(runs, 60000);
  for (int s = 0; s < SUBJECTS; s++) {
    long long expected = 0;
    for (int k = 0; k < by_subject[s].count; k++)
      expected += world.events[by_subject[s].events[k]].quantity;
    char path[128];
    snprintf(path, sizeof(path),
             "/v1/subjects/user:a%03d/usage?at=1000&max_staleness_ms=0", s);
    read_t read = {0};
    long status = 0;
    char *body = NULL;
    int64_t deadline = th_now_ms() + 30000;
    for (;;) {
      free(body);
      body = NULL;
      assert_int_equal(
          th_http_get(runs[s % INSTANCES].port, path, &status, &body), 0);
      memset(&read, 0, sizeof(read));
      if (status == 200 && !parse_usage(body, &read) && read.value == expected)
        break;
      if (th_now_ms() > deadline)
        fail_msg("a%03d: %ld %s, the reference says %lld", s, status, body,
                 expected);
      th_sleep_ms(100);
    }
    free(body);
  }
  for (int i = 0; i < INSTANCES; i++)
    assert_int_equal(th_stop(runs[i].pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
  for (int s = 0; s < SUBJECTS; s++)
    free(by_subject[s].events);
  free(world.events);
  free(world.reads);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_availability)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
