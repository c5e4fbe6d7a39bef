/*
 * cmd_emit.c - `tally emit`: JSON lines (format: schema/tly_event_json.h)
 * from the files named on the command line, in order ("-" or none: stdin),
 * one usage event each, produced to the usage topic through the client
 * library. A line whose occurred_at lies more than --max-future-skew-ms
 * (default 5 min, the processor's default events.max_future_skew_ms) after
 * now is refused: the processor would dead-letter it. Bad lines are
 * reported with their number and reason and the rest still go out.
 *
 * Each event must be acknowledged within --timeout (librdkafka's
 * message.timeout.ms); the first one that is not (the brokers cannot be
 * reached, or do not answer) stops the input, and emit ends with one line
 * saying so. Ctrl-C or SIGTERM stops the input too and waits for the
 * events already sent, at most EMIT_INTERRUPT_WAIT_MS (or --timeout if
 * shorter; a second signal stops waiting), then gives up on the rest. The
 * summary on stdout counts delivered, rejected and not delivered events;
 * the exit code is non-zero if any line was rejected or any event was not
 * delivered.
 */
#include "cli.h"

#include "tally_producer.h"
#include "tly_event_json.h"
#include "tly_event_time.h"
#include "tly_kafka_client.h"
#include "tly_log.h"

#include <errno.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EMIT_DEFAULT_TIMEOUT_S 30
#define EMIT_MAX_TIMEOUT_S 3600
#define EMIT_INTERRUPT_WAIT_MS 10000
#define EMIT_MAX_FILES 1024

typedef struct {
  atomic_int timed_out;  /* an event was not acknowledged within --timeout */
  atomic_int input_done; /* the main thread stopped reading */
  tally_producer_t *producer;
  pthread_t main_thread;
} emit_state_t;

static void on_wake(int sig) { (void)sig; }

/* Serves delivery reports while the main thread may be blocked reading an
 * idle stdin, and once an event timed out, interrupts that read (SIGUSR1,
 * installed without SA_RESTART; sent again until the reader noticed, so a
 * signal landing just before the read is not lost). */
static void *poller_main(void *arg) {
  emit_state_t *state = arg;
  while (!atomic_load(&state->input_done)) {
    tally_producer_poll(state->producer, 100);
    if (atomic_load(&state->timed_out) && !atomic_load(&state->input_done))
      pthread_kill(state->main_thread, SIGUSR1);
  }
  return NULL;
}

/* Starts the poller with SIGINT and SIGTERM blocked in it, so they reach
 * the main thread (and interrupt its read). 0 or -1. */
static int poller_start(emit_state_t *state, pthread_t *thread) {
  struct sigaction wake;
  sigset_t block, old;
  memset(&wake, 0, sizeof(wake));
  wake.sa_handler = on_wake;
  sigemptyset(&wake.sa_mask);
  sigaction(SIGUSR1, &wake, NULL);
  state->main_thread = pthread_self();
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int rc = pthread_create(thread, NULL, poller_main, state);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc ? -1 : 0;
}

static void on_delivery(void *opaque, void *msg_opaque, int error,
                        const char *errstr) {
  emit_state_t *state = opaque;
  (void)msg_opaque;
  (void)errstr;
  if (error == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT)
    atomic_store(&state->timed_out, 1);
}

static void show_progress(tally_producer_t *producer,
                          unsigned long long rejected, int final) {
  tally_producer_stats_t stats;
  tally_producer_stats(producer, &stats);
  fprintf(stderr, "\r%llu sent, %llu delivered, %llu rejected%s",
          (unsigned long long)stats.sent, (unsigned long long)stats.delivered,
          rejected, final ? "\n" : "");
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: tally emit --brokers HOST:PORT [options] [FILE...]\n"
          "  FILE...                 JSON lines, one event each, read in "
          "order\n"
          "                          (none or \"-\": stdin)\n"
          "  --topic NAME            usage topic (default tally.usage)\n"
          "  --timeout S             each event must be acknowledged within "
          "S\n"
          "                          seconds (default %d, 1..%d); the first "
          "one\n"
          "                          that is not stops emit\n"
          "  --max-future-skew-ms N  refuse events more than N ms ahead of "
          "now\n"
          "                          (default %lld)\n"
          "  --quiet                 no progress line\n"
          "  --verbose               librdkafka's own log lines too\n"
          "  -X name=value           librdkafka property (TLS, SASL, ...)\n"
          "  -F FILE                 librdkafka properties file; "
          "TALLY_KAFKA_*\n"
          "                          environment variables too; -F < "
          "environment < -X\n"
          "Ctrl-C waits up to %d s for the events already sent (a second "
          "one: not at all)\n",
          EMIT_DEFAULT_TIMEOUT_S, EMIT_MAX_TIMEOUT_S,
          TLY_DEFAULT_MAX_FUTURE_SKEW_MS, EMIT_INTERRUPT_WAIT_MS / 1000);
  fputs(cli_registry_usage, out);
}

/* Every input can be read, before anything is sent. 0, or -1 after a
 * message naming the file. */
static int check_inputs(char **files, int count) {
  if (count > EMIT_MAX_FILES) {
    fprintf(stderr, "tally emit: at most %d input files\n", EMIT_MAX_FILES);
    return -1;
  }
  for (int i = 0; i < count; i++) {
    struct stat st;
    if (!strcmp(files[i], "-"))
      continue;
    if (stat(files[i], &st) || access(files[i], R_OK)) {
      fprintf(stderr, "tally emit: %s: %s\n", files[i], strerror(errno));
      return -1;
    }
    if (S_ISDIR(st.st_mode)) {
      fprintf(stderr, "tally emit: %s: is a directory\n", files[i]);
      return -1;
    }
  }
  return 0;
}

typedef struct {
  tally_producer_t *producer;
  emit_state_t *state;
  int64_t max_future_skew_ms;
  int progress;
  int64_t next_progress;
  unsigned long long rejected;
} emit_run_t;

/* Sends every line of input; name is NULL for stdin. 0, or -1 on a read
 * error (reported). Returns early when stopped. */
static int emit_stream(emit_run_t *run, FILE *input, const char *name) {
  char errstr[1024];
  char *line = NULL;
  size_t line_cap = 0;
  ssize_t line_len;
  unsigned long long line_no = 0;
  int rc = 0;

  while (!cli_stop && !atomic_load(&run->state->timed_out) &&
         (line_len = getline(&line, &line_cap, input)) != -1) {
    tly_event_t event = {0};
    line_no++;
    size_t start = strspn(line, " \t\r\n");
    if ((size_t)line_len == start)
      continue; /* blank line */
    int64_t now_ms = tly_wall_ms();
    if (tly_event_from_json_text(line, (size_t)line_len, now_ms, &event, errstr,
                                 sizeof(errstr)) ||
        tly_event_time_check(&event, now_ms, run->max_future_skew_ms, "now",
                             errstr, sizeof(errstr)) ||
        tally_producer_send(run->producer, &event, NULL, errstr,
                            sizeof(errstr))) {
      if (run->progress)
        fputc('\n', stderr);
      fprintf(stderr, "%s%sline %llu: %s\n", name ? name : "", name ? " " : "",
              line_no, errstr);
      run->rejected++;
    }
    tly_event_clear(&event);
    if ((line_no & 1023) == 0 && run->progress &&
        tly_monotonic_ms() >= run->next_progress) {
      show_progress(run->producer, run->rejected, 0);
      run->next_progress = tly_monotonic_ms() + 250;
    }
  }
  /* EINTR: a signal stopped the read, not an error of the input. */
  if (ferror(input) && !cli_stop && !atomic_load(&run->state->timed_out)) {
    fprintf(stderr, "tally emit: %s: %s\n", name ? name : "stdin",
            strerror(errno));
    rc = -1;
  }
  free(line);
  return rc;
}

/* Waits until every sent event is acknowledged or failed: without limit
 * (message.timeout.ms fails each in time) unless interrupted, then for at
 * most wait_ms or until a second signal. 1 if events were left. */
static int wait_deliveries(emit_run_t *run, int64_t wait_ms) {
  int64_t deadline = -1;
  sig_atomic_t signals_seen = cli_stop;
  for (;;) {
    if (tally_producer_flush(run->producer, 200) == 0)
      return 0;
    if (run->progress)
      show_progress(run->producer, run->rejected, 0);
    if (cli_stop && deadline < 0) {
      deadline = tly_monotonic_ms() + wait_ms;
      signals_seen = cli_stop;
      if (run->progress)
        fputc('\n', stderr);
      fprintf(stderr,
              "tally emit: interrupted; waiting up to %lld s for the events "
              "already sent (again to stop now)\n",
              (long long)(wait_ms / 1000));
    }
    if (deadline >= 0 &&
        (tly_monotonic_ms() >= deadline || cli_stop != signals_seen))
      return 1;
  }
}

int cmd_emit(int argc, char **argv) {
  static const struct option options[] = {
      {"brokers", required_argument, NULL, 'b'},
      {"topic", required_argument, NULL, 't'},
      {"quiet", no_argument, NULL, 'q'},
      {"verbose", no_argument, NULL, 'v'},
      {"timeout", required_argument, NULL, 'T'},
      {"max-future-skew-ms", required_argument, NULL, 'S'},
      CLI_REGISTRY_OPTIONS,
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  cli_properties_t properties = {0};
  cli_registry_opts_t registry_opts = {0};
  tly_registry_t *registry = NULL;
  int32_t unused_alert_id = 0;
  tally_producer_conf_t conf = {0};
  emit_state_t state = {0};
  emit_run_t run = {.state = &state,
                    .max_future_skew_ms = TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
  int opt, quiet = 0, verbose = 0, rc = 0;
  int64_t timeout_s = EMIT_DEFAULT_TIMEOUT_S;
  char errstr[1024];

  /* First: a signal during startup is a clean stop with a summary too. */
  cli_install_signals();
  while ((opt = getopt_long(argc, argv, "b:t:X:F:qvh", options, NULL)) != -1) {
    switch (opt) {
    case 'b':
      conf.brokers = optarg;
      break;
    case 't':
      conf.topic = optarg;
      break;
    case 'q':
      quiet = 1;
      break;
    case 'v':
      verbose = 1;
      break;
    case 'T':
      if (cli_parse_int("emit", "timeout", optarg, 1, EMIT_MAX_TIMEOUT_S,
                        "(seconds)", &timeout_s))
        return 2;
      break;
    case 'S':
      if (cli_parse_int("emit", "max-future-skew-ms", optarg, 0,
                        TLY_MAX_FUTURE_SKEW_LIMIT_MS, NULL,
                        &run.max_future_skew_ms))
        return 2;
      break;
    case 'X':
      if (cli_properties_add(&properties, optarg))
        return 2;
      break;
    case 'F':
      if (cli_properties_file(&properties, optarg))
        return 2;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      if (cli_registry_option(&registry_opts, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  char **files = argv + optind;
  int file_count = argc - optind;
  if (check_inputs(files, file_count))
    return 2;
  if (cli_properties_finish(&properties, "emit")) {
    cli_properties_free(&properties);
    return 2;
  }
  if (!conf.brokers)
    conf.brokers = cli_properties_get(&properties, "bootstrap.servers");
  if (!conf.brokers) {
    fprintf(stderr, "tally emit: --brokers is required\n");
    cli_properties_free(&properties);
    return 2;
  }
  /* --timeout is librdkafka's message.timeout.ms, after the properties so
   * the flag wins. */
  const char *kafka[CLI_MAX_PROPERTIES + 2];
  char timeout_property[64];
  size_t kafka_count = 0;
  for (; kafka_count < properties.count; kafka_count++)
    kafka[kafka_count] = properties.items[kafka_count];
  snprintf(timeout_property, sizeof(timeout_property),
           "message.timeout.ms=%lld", (long long)timeout_s * 1000);
  kafka[kafka_count++] = timeout_property;
  kafka[kafka_count] = NULL;
  conf.kafka_properties = kafka;
  conf.on_delivery = on_delivery;
  conf.opaque = &state;
  /* One clear line instead of librdkafka's reconnect chatter. */
  if (!verbose)
    tly_kafka_log_set_level(TLY_LOG_ERROR);

  /* With a registry, events are framed with the id it holds tally's
   * schema under ("<topic>-value"). */
  if (cli_registry_start("emit", &registry_opts,
                         conf.topic ? conf.topic : TALLY_DEFAULT_USAGE_TOPIC,
                         NULL, &registry, &conf.schema_id,
                         &unused_alert_id) < 0) {
    cli_properties_free(&properties);
    return 2;
  }
  tly_registry_destroy(registry); /* only the id was needed */
  run.producer = tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!run.producer) {
    fprintf(stderr, "tally emit: %s\n", errstr);
    cli_properties_free(&properties);
    return 1;
  }
  pthread_t poller;
  state.producer = run.producer;
  if (poller_start(&state, &poller)) {
    fprintf(stderr, "tally emit: cannot start a thread\n");
    tally_producer_destroy(run.producer);
    cli_properties_free(&properties);
    return 1;
  }
  run.progress = !quiet && isatty(STDERR_FILENO);
  run.next_progress = tly_monotonic_ms() + 250;

  if (file_count == 0)
    rc = emit_stream(&run, stdin, NULL);
  for (int i = 0;
       i < file_count && !rc && !cli_stop && !atomic_load(&state.timed_out);
       i++) {
    int is_stdin = !strcmp(files[i], "-");
    FILE *input = is_stdin ? stdin : fopen(files[i], "r");
    if (!input) {
      fprintf(stderr, "tally emit: %s: %s\n", files[i], strerror(errno));
      rc = -1;
      break;
    }
    rc = emit_stream(&run, input, is_stdin ? NULL : files[i]);
    if (!is_stdin)
      fclose(input);
  }

  atomic_store(&state.input_done, 1);
  pthread_join(poller, NULL);
  int64_t wait_ms = EMIT_INTERRUPT_WAIT_MS < timeout_s * 1000
                        ? EMIT_INTERRUPT_WAIT_MS
                        : timeout_s * 1000;
  int interrupted = cli_stop != 0;
  if (atomic_load(&state.timed_out) || wait_deliveries(&run, wait_ms))
    tally_producer_purge(run.producer); /* gives up on the rest */
  interrupted = interrupted || cli_stop;
  if (run.progress)
    show_progress(run.producer, run.rejected, 1);
  tally_producer_stats_t stats;
  tally_producer_stats(run.producer, &stats);
  uint64_t not_delivered = stats.sent - stats.delivered;
  if (atomic_load(&state.timed_out)) {
    char last[512];
    int known = tally_producer_last_error(run.producer, last, sizeof(last));
    fprintf(stderr,
            "tally emit: no acknowledgement from Kafka at %s within %lld "
            "s%s%s%s; stopped with %llu event(s) not delivered (safe to send "
            "again: deduplicated by event_id)\n",
            conf.brokers, (long long)timeout_s, known ? " (last error: " : "",
            known ? last : "", known ? ")" : "",
            (unsigned long long)not_delivered);
  }
  tally_producer_destroy(run.producer);
  cli_properties_free(&properties);
  printf("emit: %llu events delivered, %llu lines rejected, %llu not "
         "delivered%s\n",
         (unsigned long long)stats.delivered, run.rejected,
         (unsigned long long)not_delivered,
         interrupted ? " (interrupted)" : "");
  return rc || run.rejected || not_delivered ? 1 : 0;
}
