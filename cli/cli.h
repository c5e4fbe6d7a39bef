/*
 * cli.h - what the subcommands of the `tally` binary share: the entry point
 * of each subcommand (one file each), signal handling for a clean Ctrl-C,
 * the embedded broker, and repeated "-X name=value" Kafka properties.
 */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

int cmd_broker(int argc, char **argv);
int cmd_emit(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_dev(int argc, char **argv);
int cmd_topics(int argc, char **argv);

/* Set by SIGINT/SIGTERM once cli_install_signals() ran. */
extern volatile sig_atomic_t cli_stop;
void cli_install_signals(void);

/* A NULL-terminated list of "name=value" strings (not owning them). */
typedef struct {
  const char *items[65];
  size_t count;
} cli_properties_t;
/* Adds one; 0, or -1 (with a message on stderr) when full or malformed. */
int cli_properties_add(cli_properties_t *list, const char *property);

/* The embedded broker: librdkafka's mock cluster on loopback. */
typedef struct cli_broker cli_broker_t;
typedef struct {
  int partitions;          /* of the usage topic; default 16 */
  const char *usage_topic; /* default tally.usage */
  const char *dlq_topic;   /* default tally.usage.dlq */
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
  const char *http_address; /* "127.0.0.1" */
  uint16_t http_port;       /* 0: any free port */
  const char *http_port_file; /* optional: the bound port is written here */
  const char *group_id, *usage_topic, *dlq_topic, *alerts_topic;
  const char *changelog_topic; /* NULL: tally.changelog; "": none */
  const char *config_path; /* NULL: the built-in configuration */
  int64_t tick_interval_ms; /* 0: no ticks */
  int batch_max_events, batch_max_ms;
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
  /* The cluster secret (tly_cluster_auth.h): from this file, else from
   * $TALLY_CLUSTER_SECRET; with neither, a random one when
   * cluster_secret_random (`tally dev`), else none (no forwarding). */
  const char *cluster_secret_file;
  int cluster_secret_random;
} cli_serve_conf_t;
/* Adds one --api-key-sha256 value (checked: 64 hex). 0, or -1 with a
 * message on stderr. */
int cli_serve_add_api_key(cli_serve_conf_t *conf, const char *hex);
/* Returns the process exit code. */
int cli_serve(const cli_serve_conf_t *conf);

/* Parses "ADDR:PORT" or ":PORT" or "PORT". 0 or -1. */
int cli_parse_listen(const char *text, char *address, size_t address_size,
                     uint16_t *port);
