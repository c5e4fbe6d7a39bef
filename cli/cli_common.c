/*
 * cli_common.c - signals, property lists, files and the embedded broker
 * shared by the subcommands.
 */
#include "cli.h"

#include "tally_producer.h"
#include "tly_kafka_client.h"
#include "tly_processor.h"
#include "tly_topics.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t cli_stop;

static void on_signal(int sig) {
  (void)sig;
  if (cli_stop < 100) /* counts signals: a second one may mean "now" */
    cli_stop = cli_stop + 1;
}

void cli_install_signals(void) {
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, NULL);
  sigaction(SIGTERM, &action, NULL);
  signal(SIGPIPE, SIG_IGN);
}

int cli_parse_int(const char *command, const char *flag, const char *text,
                  int64_t min, int64_t max, const char *hint, int64_t *out) {
  const char *digits = text && *text == '-' ? text + 1 : text;
  int64_t value = 0;
  int ok = digits && *digits && strlen(digits) <= 19;
  for (const char *p = digits; ok && *p; p++) {
    int digit = *p - '0';
    ok = digit >= 0 && digit <= 9 &&
         !__builtin_mul_overflow(value, (int64_t)10, &value) &&
         !__builtin_add_overflow(value, (int64_t)digit, &value);
  }
  if (ok && digits != text)
    value = -value;
  if (ok && value >= min && value <= max) {
    *out = value;
    return 0;
  }
  fprintf(stderr,
          "tally %s: --%s %s: must be an integer from %lld to %lld%s%s\n",
          command, flag, text ? text : "(none)", (long long)min, (long long)max,
          hint ? " " : "", hint ? hint : "");
  return -1;
}

int cli_write_file_atomic(const char *path, const char *text) {
  char tmp[4096];
  FILE *file;
  if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
    return -1;
  file = fopen(tmp, "w");
  if (!file)
    return -1;
  if (fputs(text, file) < 0 || fclose(file) != 0)
    return -1;
  return rename(tmp, path);
}

struct cli_broker {
  rd_kafka_t *rk;
  rd_kafka_mock_cluster_t *cluster;
};

cli_broker_t *cli_broker_start(const cli_broker_conf_t *conf, char *errstr,
                               size_t errstr_size) {
  cli_broker_t *broker = calloc(1, sizeof(*broker));
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  char kafka_err[512];
  int partitions = conf->partitions > 0 ? conf->partitions : 16;
  rd_kafka_resp_err_t err;

  if (!broker) {
    rd_kafka_conf_destroy(kconf);
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  /* The mock cluster lives inside a client instance; this one only hosts
   * it and never talks to it. */
  rd_kafka_conf_set(kconf, "log_level", "3", NULL, 0);
  tly_kafka_conf_log(kconf);
  broker->rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kafka_err, sizeof(kafka_err));
  if (!broker->rk) {
    snprintf(errstr, errstr_size, "embedded broker: %s", kafka_err);
    free(broker);
    return NULL;
  }
  broker->cluster = rd_kafka_mock_cluster_new(broker->rk, 1);
  if (!broker->cluster) {
    snprintf(errstr, errstr_size, "embedded broker: cannot start mock cluster");
    goto fail;
  }
  err = rd_kafka_mock_topic_create(
      broker->cluster,
      conf->usage_topic ? conf->usage_topic : TALLY_DEFAULT_USAGE_TOPIC,
      partitions, 1);
  if (!err)
    err = rd_kafka_mock_topic_create(
        broker->cluster,
        conf->dlq_topic ? conf->dlq_topic : TLY_DEFAULT_DLQ_TOPIC, 1, 1);
  if (!err)
    err = rd_kafka_mock_topic_create(
        broker->cluster,
        conf->alerts_topic ? conf->alerts_topic : TLY_DEFAULT_ALERTS_TOPIC, 4,
        1);
  if (!err)
    err = rd_kafka_mock_topic_create(broker->cluster, TLY_DEFAULT_MEMBERS_TOPIC,
                                     1, 1);
  /* The state changelog: partition p restores input partition p. (The mock
   * does not compact; it keeps ~5 MiB per partition like any topic.) */
  if (!err)
    err = rd_kafka_mock_topic_create(
        broker->cluster, TLY_DEFAULT_CHANGELOG_TOPIC, partitions, 1);
  if (err) {
    snprintf(errstr, errstr_size, "embedded broker: creating topics: %s",
             rd_kafka_err2str(err));
    goto fail;
  }
  return broker;
fail:
  if (broker->cluster)
    rd_kafka_mock_cluster_destroy(broker->cluster);
  rd_kafka_destroy(broker->rk);
  free(broker);
  return NULL;
}

const char *cli_broker_bootstrap(const cli_broker_t *broker) {
  return rd_kafka_mock_cluster_bootstraps(broker->cluster);
}

void cli_broker_stop(cli_broker_t *broker) {
  if (!broker)
    return;
  rd_kafka_mock_cluster_destroy(broker->cluster);
  rd_kafka_destroy(broker->rk);
  free(broker);
}
