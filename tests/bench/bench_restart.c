/*
 * bench_restart.c - how fast a killed `tally run` is back (issue 15):
 * SIGKILL -> its partitions assigned again -> serving, on the embedded
 * broker, with events flowing the whole time.
 *
 *   build/bench_restart [kills] [events per second]
 *
 * Defaults: 5 kills, 1,000 events/s over 500 subjects on 16 partitions.
 * A real `tally broker` and `tally run` (its default flags; loopback
 * only). Each round: the instance folds for a while, is killed with
 * SIGKILL and started again at once on the same state dir:
 *   assigned  the kill to the new process's assignment (its log line
 *             "assigned N partitions (X ms after the process started)")
 *   serving   the kill to GET /readyz answering 200 (every partition
 *             assigned and caught up with the log end seen at assignment)
 *   restored  partitions the new process restored from the changelog
 *             (0: the state dir is current, only the tail is replayed)
 * Then two clean restarts (SIGTERM) the same way. Prints each round, then
 * the median and max of each figure next to the goal (< 5 s) and, from
 * the same run, the process's own startup (exec -> HTTP port bound) and
 * the embedded broker's floor: a dead member is gone only after its
 * session (3 s) plus up to 1 s (the mock checks sessions once a second),
 * and the one election that gives its partitions back comes after that.
 * Exits 1 if an instance does not come back or does not catch up; asserts
 * nothing about speed. Stops by itself.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_log.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PARTITIONS 16
#define SUBJECTS 500
#define MAX_ROUNDS 64
#define CLEAN_ROUNDS 2
#define GOAL_MS 5000

static const char *bootstrap;
static int rate;
static atomic_int stop_producer;
static atomic_llong produced;

static void *produce(void *arg) {
  (void)arg;
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[48];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    fprintf(stderr, "bench_restart: producer: %s\n", errstr);
    exit(1);
  }
  int64_t started = th_now_ms();
  for (long long i = 0; !atomic_load(&stop_producer); i++) {
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "bench-%lld", i % SUBJECTS);
    snprintf(event_id, sizeof(event_id), "restart-%lld-%lld",
             (long long)started, i);
    event.event_id = event_id;
    event.occurred_at_ms = tly_wall_ms();
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    event.body.usage.feature = "api_calls";
    event.body.usage.unit = "call";
    event.body.usage.quantity = 1;
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      fprintf(stderr, "bench_restart: send: %s\n", errstr);
      exit(1);
    }
    atomic_fetch_add(&produced, 1);
    int64_t wait = started + (i + 1) * 1000 / rate - th_now_ms();
    tally_producer_poll(producer, wait > 0 ? (int)wait : 0);
  }
  tally_producer_flush(producer, 30000);
  tally_producer_destroy(producer);
  return NULL;
}

typedef struct {
  pid_t pid;
  int port;
  char log[700];
  int64_t spawned_ms;
} instance_t;

/* `tally run` with its defaults on state_dir; 0 once its HTTP port is
 * bound, -1 otherwise. */
static int start(instance_t *run, const char *dir, const char *state_dir,
                 int number) {
  char port_file[700];
  snprintf(port_file, sizeof(port_file), "%s/port", dir);
  snprintf(run->log, sizeof(run->log), "%s/run-%d.log", dir, number);
  unlink(port_file);
  char *argv[] = {(char *)th_tally_bin(),
                  "run",
                  "--brokers",
                  (char *)bootstrap,
                  "--state-dir",
                  (char *)state_dir,
                  "--http",
                  "127.0.0.1:0",
                  "--http-port-file",
                  port_file,
                  "--api-key-sha256",
                  (char *)th_api_key_sha256(),
                  NULL};
  run->spawned_ms = th_now_ms();
  run->pid = th_spawn(argv, NULL, run->log, run->log);
  char *port = th_wait_file(port_file, 30000);
  if (!port)
    return -1;
  run->port = atoi(port);
  free(port);
  return 0;
}

static int ready(int port) {
  long status = 0;
  char *body = NULL;
  int rc = th_http_get(port, "/readyz", &status, &body);
  free(body);
  return rc == 0 && status == 200;
}

/* The process age at its last assignment, from its log; -1 if none. */
static long long assigned_after_start_ms(const char *log) {
  char *text = th_read_file(log);
  long long at = -1;
  for (const char *p = text; p && (p = strstr(p, " assigned ")); p++) {
    int partitions;
    long long ms;
    if (sscanf(p, " assigned %d partitions (%lld ms after the process",
               &partitions, &ms) == 2)
      at = ms;
  }
  free(text);
  return at;
}

static int compare(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

static void summary(const char *name, long long *values, int count,
                    const char *note) {
  qsort(values, (size_t)count, sizeof(*values), compare);
  long long median = count % 2
                         ? values[count / 2]
                         : (values[count / 2 - 1] + values[count / 2]) / 2;
  printf("  %-34s median %6lld ms   max %6lld ms   %s\n", name, median,
         values[count - 1], note);
}

int main(int argc, char **argv) {
  int kills = argc > 1 ? atoi(argv[1]) : 5;
  rate = argc > 2 ? atoi(argv[2]) : 1000;
  if (kills < 1 || kills + CLEAN_ROUNDS > MAX_ROUNDS || rate < 1) {
    fprintf(stderr, "usage: bench_restart [kills 1..%d] [events/s]\n",
            MAX_ROUNDS - CLEAN_ROUNDS);
    return 2;
  }
  setenv("TALLY_BIN", TALLY_BIN_PATH, 0);
  signal(SIGPIPE, SIG_IGN);
  th_broker_t broker;
  if (th_broker_start(&broker, PARTITIONS)) {
    fprintf(stderr, "bench_restart: cannot start the embedded broker\n");
    return 1;
  }
  bootstrap = broker.bootstrap;
  char *dir = th_mkdtemp("bench-restart");
  char state_dir[700];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  printf("bench_restart: %d SIGKILLs and %d clean restarts of `tally run` "
         "(default flags) on the embedded broker, %d partitions, %d events/s "
         "over %d subjects\n",
         kills, CLEAN_ROUNDS, PARTITIONS, rate, SUBJECTS);
  fflush(stdout);
  pthread_t producer;
  pthread_create(&producer, NULL, produce, NULL);

  instance_t run;
  int failed = start(&run, dir, state_dir, 0);
  int64_t deadline = th_now_ms() + 60000;
  while (!failed && !ready(run.port) && th_now_ms() < deadline)
    th_sleep_ms(20);
  long long assigned[MAX_ROUNDS], serving[MAX_ROUNDS], startup[MAX_ROUNDS];
  long long clean_serving[CLEAN_ROUNDS];
  int rounds = 0;
  for (int round = 0; !failed && round < kills + CLEAN_ROUNDS; round++) {
    int clean = round >= kills;
    th_sleep_ms(2000); /* folding meanwhile */
    int64_t stopped_ms = th_now_ms();
    if (clean) {
      kill(run.pid, SIGTERM);
      th_wait_exit(run.pid, 30000);
    } else {
      th_kill9(run.pid);
    }
    if (start(&run, dir, state_dir, round + 1)) {
      failed = 1;
      break;
    }
    long long bound_ms = th_now_ms() - run.spawned_ms;
    deadline = th_now_ms() + 60000;
    while (!ready(run.port) && th_now_ms() < deadline)
      th_sleep_ms(20);
    if (!ready(run.port)) {
      fprintf(stderr, "bench_restart: not ready 60 s after the restart\n");
      failed = 1;
      break;
    }
    long long serving_ms = th_now_ms() - stopped_ms;
    long long age = assigned_after_start_ms(run.log);
    long long assigned_ms = age < 0 ? -1 : run.spawned_ms + age - stopped_ms;
    long long restored =
        th_metric_sum(run.port, "tally_changelog_restores_total");
    printf("  %s %d: assigned %6lld ms, serving %6lld ms (restarted %lld "
           "ms after the signal, HTTP port bound %lld ms later), %lld "
           "partitions restored\n",
           clean ? "SIGTERM" : "SIGKILL", clean ? round - kills + 1 : round + 1,
           assigned_ms, serving_ms, (long long)(run.spawned_ms - stopped_ms),
           bound_ms, restored);
    fflush(stdout);
    if (clean) {
      clean_serving[round - kills] = serving_ms;
    } else {
      assigned[rounds] = assigned_ms;
      serving[rounds] = serving_ms;
      startup[rounds] = bound_ms;
      rounds++;
    }
  }
  atomic_store(&stop_producer, 1);
  pthread_join(producer, NULL);
  if (!failed && th_wait_caught_up(run.port, bootstrap, "tally.usage",
                                   PARTITIONS, 60000)) {
    fprintf(stderr, "bench_restart: did not catch up with the input\n");
    failed = 1;
  }
  if (!failed) {
    printf("restart after SIGKILL (%d rounds), embedded broker:\n", rounds);
    summary("SIGKILL -> partitions assigned", assigned, rounds, "");
    summary("SIGKILL -> serving (/readyz 200)", serving, rounds,
            "goal < 5000 ms");
    summary("same run: exec -> HTTP port bound", startup, rounds,
            "(the process's own startup)");
    summary("same run: SIGTERM -> serving", clean_serving, CLEAN_ROUNDS,
            "(a clean restart)");
    printf("  floor of the embedded broker: the dead member's session "
           "(3000 ms) + up to 1000 ms\n");
    printf("  %lld events produced, all folded\n",
           (long long)atomic_load(&produced));
  }
  th_stop(run.pid);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
  return failed;
}
