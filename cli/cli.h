/*
 * cli.h - what the subcommands of the `tally` binary share: the entry point
 * of each subcommand (one file each), signal handling for a clean Ctrl-C,
 * the embedded broker, and repeated "-X name=value" Kafka properties.
 */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

#include "tly_registry_client.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

int cmd_broker(int argc, char **argv);
int cmd_emit(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_dev(int argc, char **argv);
int cmd_topics(int argc, char **argv);

/* Non-zero once SIGINT/SIGTERM arrived (cli_install_signals() ran); it
 * counts them (up to 100). */
extern volatile sig_atomic_t cli_stop;
void cli_install_signals(void);

/* librdkafka properties of `run` and `emit` (cli_properties.c): -F FILE,
 * then TALLY_KAFKA_* environment variables, then -X name=value, the later
 * winning for one name. Bounds: 64 properties in all, a file of at most
 * 64 KiB with lines of at most 4096 bytes. */
#define CLI_MAX_PROPERTIES 64
#define CLI_PROPERTIES_FILE_MAX 65536
#define CLI_PROPERTIES_LINE_MAX 4096
#define CLI_ORIGIN_MAX 400
typedef struct {
  const char *args[CLI_MAX_PROPERTIES]; /* -X, as given */
  size_t arg_count;
  const char *file; /* -F */
  /* After cli_properties_finish: "name=value" each name once, NULL-
   * terminated (for the clients' kafka_properties), and where each came
   * from ("-F FILE line N", "environment NAME", "-X"). */
  char *items[CLI_MAX_PROPERTIES + 1];
  char *origins[CLI_MAX_PROPERTIES];
  size_t count;
} cli_properties_t;
/* -X name=value; 0, or -1 (with a message on stderr) when full or
 * malformed. */
int cli_properties_add(cli_properties_t *list, const char *property);
/* -F FILE (read by cli_properties_finish); 0, or -1 if given twice. */
int cli_properties_file(cli_properties_t *list, const char *path);
/* Reads the file and the environment, merges the three sources and checks
 * every value with librdkafka. 0, or -1 after "tally <command>: <source>:
 * <property>: <reason>" on stderr (never the value). */
int cli_properties_finish(cli_properties_t *list, const char *command);
/* The merged value of name, or NULL. */
const char *cli_properties_get(const cli_properties_t *list, const char *name);
/* As the clients take them. */
#define CLI_PROPERTIES_LIST(list) ((const char *const *)(list)->items)
/* Frees the merged list (wiping the values). */
void cli_properties_free(cli_properties_t *list);

/* The embedded broker: librdkafka's mock cluster on loopback. */
typedef struct cli_broker cli_broker_t;
typedef struct {
  int partitions;           /* of the usage topic; default 16 */
  const char *usage_topic;  /* default tally.usage */
  const char *dlq_topic;    /* default tally.usage.dlq */
  const char *alerts_topic; /* default tally.alerts */
} cli_broker_conf_t;
/* Also creates tally.members (1 partition), where instances announce. */
cli_broker_t *cli_broker_start(const cli_broker_conf_t *conf, char *errstr,
                               size_t errstr_size);
const char *cli_broker_bootstrap(const cli_broker_t *broker);
void cli_broker_stop(cli_broker_t *broker);

/* A numeric flag's value: decimal digits with an optional leading '-',
 * nothing else (no spaces, no "5x", no "1e3"), within [min, max]. 0, or -1
 * after printing "tally <command>: --<flag> <text>: must be an integer
 * from <min> to <max>" (plus hint, when not NULL) on stderr, so startup
 * stops naming the flag. */
int cli_parse_int(const char *command, const char *flag, const char *text,
                  int64_t min, int64_t max, const char *hint, int64_t *out);

/* The --schema-registry flags (cli_registry.c), for getopt_long tables:
 * CLI_REGISTRY_OPTIONS in the options, cli_registry_option() in the
 * switch's default, cli_registry_usage in the help. */
enum {
  CLI_OPT_REGISTRY_URL = 0x5201,
  CLI_OPT_REGISTRY_USER,
  CLI_OPT_REGISTRY_PASSWORD_FILE,
  CLI_OPT_REGISTRY_CA
};
#define CLI_REGISTRY_OPTIONS                                                   \
  {"schema-registry", required_argument, NULL, CLI_OPT_REGISTRY_URL},          \
      {"schema-registry-user", required_argument, NULL,                        \
       CLI_OPT_REGISTRY_USER},                                                 \
      {"schema-registry-password-file", required_argument, NULL,               \
       CLI_OPT_REGISTRY_PASSWORD_FILE},                                        \
  {                                                                            \
    "schema-registry-ca", required_argument, NULL, CLI_OPT_REGISTRY_CA         \
  }
typedef struct {
  const char *url, *user, *password_file, *ca_file;
} cli_registry_opts_t;
extern const char cli_registry_usage[];
/* 1 when opt is one of the flags (arg kept in opts), 0 when not. */
int cli_registry_option(cli_registry_opts_t *opts, int opt, const char *arg);
/* Without --schema-registry: 0 (*registry NULL, ids untouched). With it: a
 * client, tally's schemas registered under "<usage_topic>-value" and
 * "<alerts_topic>-value" (a NULL topic is skipped), their ids in
 * *event_id / *alert_id, and 1. -1 after a message naming the flag. */
int cli_registry_start(const char *command, const cli_registry_opts_t *opts,
                       const char *usage_topic, const char *alerts_topic,
                       tly_registry_t **registry, int32_t *event_id,
                       int32_t *alert_id);

/* Writes text to path atomically (write to path.tmp, rename), so a process
 * polling for the file never reads it half-written. 0 or -1. */
int cli_write_file_atomic(const char *path, const char *text);

#endif

#define CLI_MAX_API_KEYS 32

/* What `run` and `dev` share: open the store, start the processor and the
 * HTTP port, print where they are, run until Ctrl-C or a fatal error. */
typedef struct {
  const char *brokers;
  const char *state_dir;
  const char *http_address;   /* "127.0.0.1" */
  uint16_t http_port;         /* 0: any free port */
  const char *http_port_file; /* optional: the bound port is written here */
  const char *group_id, *usage_topic, *dlq_topic, *alerts_topic;
  const char *changelog_topic; /* NULL: tally.changelog; "": none */
  const char *config_path;     /* NULL: the built-in configuration */
  int64_t tick_interval_ms;    /* 0: no ticks */
  int batch_max_events, batch_max_ms;
  int64_t memory_budget_bytes; /* --memory-budget; 0: the default (1 GiB) */
  const char *const *kafka_properties;
  /* HTTP auth: digests (64 hex) added to the config's http.api_keys. With
   * none in either place, cli_serve refuses to start unless no_auth. */
  const char *api_key_sha256[CLI_MAX_API_KEYS];
  size_t api_key_count;
  int no_auth;
  /* Membership (tly_members.h): the URL other instances reach this HTTP
   * port at (NULL: http://127.0.0.1:<bound port>), this instance's id
   * (NULL: <hostname>-<host:port of the URL>) and the heartbeat (0: the
   * default; members silent for 3 heartbeats are dropped). */
  const char *advertise;
  const char *instance_id; /* also the group.instance.id (tly_group.h) */
  /* On the embedded broker: short group timeouts and a timed rejoin after
   * a run that did not leave the group (tly_group.h); `tally run`. */
  int fast_rejoin;
  int64_t members_heartbeat_ms;
  /* --standby-replicas (tly_standby.c): copies kept per partition by
   * instances that do not own it; 0: none. */
  int64_t standby_replicas;
  /* The cluster secret (tly_cluster_auth.h): from this file, else from
   * $TALLY_CLUSTER_SECRET; with neither, a random one when
   * cluster_secret_random (`tally dev`), else none (no forwarding). */
  const char *cluster_secret_file;
  int cluster_secret_random;
  /* --schema-registry and its auth (cli_registry.c); url NULL: none. */
  cli_registry_opts_t registry;
} cli_serve_conf_t;
/* Adds one --api-key-sha256 value (checked: 64 hex). 0, or -1 with a
 * message on stderr. */
int cli_serve_add_api_key(cli_serve_conf_t *conf, const char *hex);
/* Returns the process exit code. */
int cli_serve(const cli_serve_conf_t *conf);

/* Parses "ADDR:PORT" or ":PORT" or "PORT". 0 or -1. */
int cli_parse_listen(const char *text, char *address, size_t address_size,
                     uint16_t *port);
