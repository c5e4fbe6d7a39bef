/*
 * cmd_run.c - `tally run`: the processor and the HTTP port against any
 * Kafka cluster (the embedded broker of `tally broker` included).
 */
#include "cli.h"

#include "tly_group.h"
#include "tly_members.h"
#include "tly_processor.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out) {
  fprintf(
      out,
      "usage: tally run --brokers HOST:PORT --state-dir DIR [options]\n"
      "  --http ADDR:PORT        HTTP port (default 127.0.0.1:8080; port 0 = "
      "any)\n"
      "  --http-port-file FILE   write the bound HTTP port to FILE\n"
      "  --advertise URL         this HTTP port's URL for the other instances\n"
      "                          (default http://127.0.0.1:<port>)\n"
      "  --instance-id ID        this instance's stable id: announced on\n"
      "                          tally.members (default <hostname>-<host:port\n"
      "                          of --advertise>) and, when given, its\n"
      "                          group.instance.id (static group membership:\n"
      "                          a restart gets its partitions back without a\n"
      "                          rebalance); 1-127 of A-Z a-z 0-9 . _ -\n"
      "  --members-heartbeat-ms N  announce this often (default 2000,\n"
      "                          100..600000; silent for 3 heartbeats = gone)\n"
      "  --standby-replicas N    keep a standby copy of each partition on N\n"
      "                          instances that do not own it, applied from\n"
      "                          the changelog (default 1, 0..8; 0: none)\n"
      "  --cluster-secret-file F the secret every instance shares (16 to 1024\n"
      "                          bytes; or $TALLY_CLUSTER_SECRET): signs\n"
      "                          announcements and forwarded requests;\n"
      "                          without one, no forwarding\n"
      "  --group ID              consumer group (default tally)\n"
      "  --topic NAME            usage topic (default tally.usage)\n"
      "  --dlq-topic NAME        dead-letter topic (default tally.usage.dlq)\n"
      "  --batch-events N        max events per commit (default 400000,\n"
      "                          less under a budget below ~1.06 GiB: a\n"
      "                          commit fits RocksDB's memtables; "
      "1..10000000)\n"
      "  --batch-ms N            max ms per commit (default 100; 1..60000)\n"
      "  --memory-budget BYTES   what the processor keeps in memory (default\n"
      "                          1073741824 = 1 GiB; 1048576..1099511627776):\n"
      "                          dedupe ids 20/40 (older ones spill to "
      "RocksDB),\n"
      "                          subject records 5/40, outbox 2/40, HTTP\n"
      "                          subject cache 4/40, RocksDB block cache\n"
      "                          3/40 and memtables 3/40, Kafka consumer\n"
      "                          prefetch 2/40 and producer queues 1/40\n"
      "                          (-X settings win)\n"
      "  --config FILE           plans, prices, thresholds (default: built "
      "in)\n"
      "  --alerts-topic NAME     alerts topic (default tally.alerts)\n"
      "  --changelog-topic NAME  state changelog (default tally.changelog;\n"
      "                          \"\" = none: moved partitions replay the "
      "input)\n"
      "  --tick-interval-ms N    write Tick events this often (default 60000,\n"
      "                          0 = never; at most 86400000)\n"
      "  --api-key-sha256 HEX    accept the API key with this SHA-256 (hex) "
      "as\n"
      "                          a bearer token; repeatable, adds to the "
      "config's\n"
      "                          http.api_keys\n"
      "  --no-auth               serve HTTP without authentication (refused\n"
      "                          otherwise when no API key is configured)\n"
      "  -X name=value           librdkafka property (TLS, SASL, ...);\n"
      "                          repeatable\n"
      "  -F FILE                 librdkafka properties file (name=value "
      "lines,\n"
      "                          # comments); TALLY_KAFKA_* environment\n"
      "                          variables too (TALLY_KAFKA_SASL_PASSWORD ->\n"
      "                          sasl.password); -F < environment < -X\n"
      "%s",
      cli_registry_usage);
}

int cmd_run(int argc, char **argv) {
  static const struct option options[] = {
      {"brokers", required_argument, NULL, 'b'},
      {"state-dir", required_argument, NULL, 's'},
      {"http", required_argument, NULL, 'H'},
      {"http-port-file", required_argument, NULL, 'P'},
      {"group", required_argument, NULL, 'g'},
      {"topic", required_argument, NULL, 't'},
      {"dlq-topic", required_argument, NULL, 'd'},
      {"batch-events", required_argument, NULL, 'e'},
      {"batch-ms", required_argument, NULL, 'm'},
      {"memory-budget", required_argument, NULL, 'B'},
      {"config", required_argument, NULL, 'c'},
      {"alerts-topic", required_argument, NULL, 'a'},
      {"changelog-topic", required_argument, NULL, 'C'},
      {"tick-interval-ms", required_argument, NULL, 'T'},
      {"api-key-sha256", required_argument, NULL, 'K'},
      {"no-auth", no_argument, NULL, 'N'},
      {"advertise", required_argument, NULL, 'A'},
      {"instance-id", required_argument, NULL, 'I'},
      {"members-heartbeat-ms", required_argument, NULL, 'M'},
      {"cluster-secret-file", required_argument, NULL, 'S'},
      {"standby-replicas", required_argument, NULL, 'Y'},
      CLI_REGISTRY_OPTIONS,
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  cli_properties_t properties = {0};
  char address[64] = "127.0.0.1";
  cli_serve_conf_t conf = {.http_address = address,
                           .http_port = 8080,
                           .tick_interval_ms = 60000,
                           .standby_replicas = 1};
  int opt;
  int64_t number;

  while ((opt = getopt_long(argc, argv, "b:s:X:F:h", options, NULL)) != -1) {
    switch (opt) {
    case 'b':
      conf.brokers = optarg;
      break;
    case 's':
      conf.state_dir = optarg;
      break;
    case 'H':
      if (cli_parse_listen(optarg, address, sizeof(address), &conf.http_port)) {
        fprintf(stderr, "tally run: --http %s: expected ADDR:PORT\n", optarg);
        return 2;
      }
      break;
    case 'P':
      conf.http_port_file = optarg;
      break;
    case 'g':
      conf.group_id = optarg;
      break;
    case 't':
      conf.usage_topic = optarg;
      break;
    case 'd':
      conf.dlq_topic = optarg;
      break;
    case 'e':
      if (cli_parse_int("run", "batch-events", optarg, 1, 10000000, NULL,
                        &number))
        return 2;
      conf.batch_max_events = (int)number;
      break;
    case 'm':
      if (cli_parse_int("run", "batch-ms", optarg, 1, 60000, NULL, &number))
        return 2;
      conf.batch_max_ms = (int)number;
      break;
    case 'B':
      if (cli_parse_int("run", "memory-budget", optarg, TLY_MEMORY_BUDGET_MIN,
                        TLY_MEMORY_BUDGET_MAX, "(bytes)",
                        &conf.memory_budget_bytes))
        return 2;
      break;
    case 'c':
      conf.config_path = optarg;
      break;
    case 'a':
      conf.alerts_topic = optarg;
      break;
    case 'C':
      conf.changelog_topic = optarg;
      break;
    case 'T':
      if (cli_parse_int("run", "tick-interval-ms", optarg, 0, 86400000,
                        "(0 = no ticks)", &conf.tick_interval_ms))
        return 2;
      break;
    case 'K':
      if (cli_serve_add_api_key(&conf, optarg))
        return 2;
      break;
    case 'N':
      conf.no_auth = 1;
      break;
    case 'A':
      conf.advertise = optarg;
      break;
    case 'I': {
      char why[200];
      if (tly_group_instance_id_check(optarg, why, sizeof(why))) {
        fprintf(stderr, "tally run: --instance-id %s: %s\n", optarg, why);
        return 2;
      }
      conf.instance_id = optarg;
      break;
    }
    case 'M':
      if (cli_parse_int("run", "members-heartbeat-ms", optarg, 100, 600000,
                        NULL, &conf.members_heartbeat_ms))
        return 2;
      break;
    case 'Y':
      if (cli_parse_int("run", "standby-replicas", optarg, 0,
                        TLY_MEMBERS_STANDBY_MAX, NULL, &conf.standby_replicas))
        return 2;
      break;
    case 'S':
      conf.cluster_secret_file = optarg;
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
      if (cli_registry_option(&conf.registry, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  if (cli_properties_finish(&properties, "run")) {
    cli_properties_free(&properties);
    return 2;
  }
  if (!conf.brokers) /* kcat's way: bootstrap.servers in -F or the env */
    conf.brokers = cli_properties_get(&properties, "bootstrap.servers");
  if (!conf.brokers || !conf.state_dir) {
    fprintf(stderr, "tally run: --brokers and --state-dir are required\n");
    usage(stderr);
    cli_properties_free(&properties);
    return 2;
  }
  conf.kafka_properties = CLI_PROPERTIES_LIST(&properties);
  conf.fast_rejoin = 1;
  cli_install_signals();
  int rc = cli_serve(&conf);
  cli_properties_free(&properties);
  return rc;
}
