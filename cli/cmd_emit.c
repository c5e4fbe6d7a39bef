/*
 * cmd_emit.c - `tally emit`: JSON lines on stdin, one usage event each
 * (format: schema/tly_event_json.h), produced to the usage topic through the
 * client library. A line whose occurred_at lies more than
 * --max-future-skew-ms (default 5 min, the processor's default
 * events.max_future_skew_ms) after now is refused: the processor would
 * dead-letter it. Bad lines are reported with their number and reason and
 * the rest still go out; the exit code is non-zero if any line was rejected
 * or any event failed delivery.
 */
#include "cli.h"

#include "tally_producer.h"
#include "tly_event_json.h"
#include "tly_event_time.h"
#include "tly_log.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void show_progress(tally_producer_t *producer,
                          unsigned long long rejected, int final) {
  tally_producer_stats_t stats;
  tally_producer_stats(producer, &stats);
  fprintf(stderr, "\r%llu sent, %llu delivered, %llu rejected%s",
          (unsigned long long)stats.sent, (unsigned long long)stats.delivered,
          rejected, final ? "\n" : "");
}

int cmd_emit(int argc, char **argv) {
  static const struct option options[] = {
      {"brokers", required_argument, NULL, 'b'},
      {"topic", required_argument, NULL, 't'},
      {"quiet", no_argument, NULL, 'q'},
      {"max-future-skew-ms", required_argument, NULL, 'S'},
      CLI_REGISTRY_OPTIONS,
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  cli_properties_t properties = {0};
  cli_registry_opts_t registry_opts = {0};
  tly_registry_t *registry = NULL;
  int32_t unused_alert_id = 0;
  tally_producer_conf_t conf = {0};
  int opt, quiet = 0;
  int64_t max_future_skew_ms = TLY_DEFAULT_MAX_FUTURE_SKEW_MS;
  char errstr[1024];
  char *line = NULL;
  size_t line_cap = 0;
  ssize_t line_len;
  unsigned long long line_no = 0, rejected = 0;

  while ((opt = getopt_long(argc, argv, "b:t:X:qh", options, NULL)) != -1) {
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
    case 'S': {
      char *end;
      long long value = strtoll(optarg, &end, 10);
      if (!*optarg || *end || value < 0 ||
          value > TLY_MAX_FUTURE_SKEW_LIMIT_MS) {
        fprintf(stderr,
                "tally emit: --max-future-skew-ms %s: expected an integer "
                "from 0 to %lld\n",
                optarg, TLY_MAX_FUTURE_SKEW_LIMIT_MS);
        return 2;
      }
      max_future_skew_ms = value;
      break;
    }
    case 'X':
      if (cli_properties_add(&properties, optarg))
        return 2;
      break;
    case 'h':
      printf("usage: tally emit --brokers HOST:PORT [--topic NAME] [-X "
             "name=value] [--quiet] [--max-future-skew-ms N] < "
             "events.jsonl\n"
             "  --max-future-skew-ms N  refuse events more than N ms ahead of "
             "now (default %lld)\n%s",
             TLY_DEFAULT_MAX_FUTURE_SKEW_MS, cli_registry_usage);
      return 0;
    default:
      if (cli_registry_option(&registry_opts, opt, optarg))
        break;
      return 2;
    }
  }
  if (!conf.brokers) {
    fprintf(stderr, "tally emit: --brokers is required\n");
    return 2;
  }
  conf.kafka_properties = properties.items;
  /* With a registry, events are framed with the id it holds tally's
   * schema under ("<topic>-value"). */
  if (cli_registry_start("emit", &registry_opts,
                         conf.topic ? conf.topic : TALLY_DEFAULT_USAGE_TOPIC,
                         NULL, &registry, &conf.schema_id,
                         &unused_alert_id) < 0)
    return 2;
  tly_registry_destroy(registry); /* only the id was needed */
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    fprintf(stderr, "tally emit: %s\n", errstr);
    return 1;
  }
  int progress = !quiet && isatty(STDERR_FILENO);
  int64_t next_progress = tly_monotonic_ms() + 250;

  while ((line_len = getline(&line, &line_cap, stdin)) != -1) {
    tly_event_t event = {0};
    line_no++;
    size_t start = strspn(line, " \t\r\n");
    if ((size_t)line_len == start)
      continue; /* blank line */
    int64_t now_ms = tly_wall_ms();
    if (tly_event_from_json_text(line, (size_t)line_len, now_ms, &event, errstr,
                                 sizeof(errstr)) ||
        tly_event_time_check(&event, now_ms, max_future_skew_ms, "now", errstr,
                             sizeof(errstr)) ||
        tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      if (progress)
        fputc('\n', stderr);
      fprintf(stderr, "line %llu: %s\n", line_no, errstr);
      rejected++;
    }
    tly_event_clear(&event);
    if ((line_no & 1023) == 0) {
      tally_producer_poll(producer, 0);
      if (progress && tly_monotonic_ms() >= next_progress) {
        show_progress(producer, rejected, 0);
        next_progress = tly_monotonic_ms() + 250;
      }
    }
  }
  free(line);

  /* Wait for every delivery report; librdkafka's message.timeout.ms bounds
   * how long a message can stay undelivered before it is reported failed. */
  while (tally_producer_flush(producer, 500) != 0)
    if (progress)
      show_progress(producer, rejected, 0);
  if (progress)
    show_progress(producer, rejected, 1);
  tally_producer_stats_t stats;
  tally_producer_stats(producer, &stats);
  tally_producer_destroy(producer);
  printf("emit: %llu events delivered, %llu lines rejected, %llu delivery "
         "failures\n",
         (unsigned long long)stats.delivered, rejected,
         (unsigned long long)stats.failed);
  return rejected || stats.failed ? 1 : 0;
}
