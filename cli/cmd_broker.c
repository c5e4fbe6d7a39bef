/*
 * cmd_broker.c - `tally broker`: the embedded broker (librdkafka's mock
 * cluster, real Kafka protocol on loopback) alone, with tally's topics
 * created, until Ctrl-C. For tests, and for running the processor as a
 * separate process. Note: it keeps only ~5 MiB per partition (DESIGN.md).
 */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int cmd_broker(int argc, char **argv) {
  static const struct option options[] = {
      {"partitions", required_argument, NULL, 'p'},
      {"bootstrap-file", required_argument, NULL, 'f'},
      {"topic", required_argument, NULL, 't'},
      {"dlq-topic", required_argument, NULL, 'd'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  cli_broker_conf_t conf = {.partitions = 16};
  const char *bootstrap_file = NULL;
  char errstr[512];
  int opt;
  int64_t number;

  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
    case 'p':
      if (cli_parse_int("broker", "partitions", optarg, 1, 10000, NULL,
                        &number))
        return 2;
      conf.partitions = (int)number;
      break;
    case 'f': bootstrap_file = optarg; break;
    case 't': conf.usage_topic = optarg; break;
    case 'd': conf.dlq_topic = optarg; break;
    case 'h':
      printf("usage: tally broker [--partitions N] [--bootstrap-file FILE] "
             "[--topic NAME] [--dlq-topic NAME]\n");
      return 0;
    default: return 2;
    }
  }
  cli_install_signals();
  cli_broker_t *broker = cli_broker_start(&conf, errstr, sizeof(errstr));
  if (!broker) {
    fprintf(stderr, "tally broker: %s\n", errstr);
    return 1;
  }
  printf("tally: bootstrap %s\n", cli_broker_bootstrap(broker));
  fflush(stdout);
  if (bootstrap_file) {
    char text[512];
    snprintf(text, sizeof(text), "%s\n", cli_broker_bootstrap(broker));
    if (cli_write_file_atomic(bootstrap_file, text)) {
      fprintf(stderr, "tally broker: cannot write %s\n", bootstrap_file);
      cli_broker_stop(broker);
      return 1;
    }
  }
  while (!cli_stop) {
    struct timespec pause_time = {0, 100 * 1000000L};
    nanosleep(&pause_time, NULL);
  }
  cli_broker_stop(broker);
  return 0;
}
