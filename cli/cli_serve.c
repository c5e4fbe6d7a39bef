/*
 * cli_serve.c - the processor and the HTTP port together, as `tally run`
 * and `tally dev` start them. The processor runs on the calling thread; the
 * HTTP port has its own threads and reads committed state, and so does the
 * Stripe usage emitter when the config reports usage.
 */
#include "cli.h"

#include "tly_cluster_auth.h"
#include "tly_config.h"
#include "tly_http.h"
#include "tly_log.h"
#include "tly_members.h"
#include "tly_processor.h"
#include "tly_registry_client.h"
#include "tly_sha256.h"
#include "tly_store.h"
#include "tly_stripe_emitter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_parse_listen(const char *text, char *address, size_t address_size,
                     uint16_t *port) {
  const char *colon = strrchr(text, ':');
  const char *port_text = colon ? colon + 1 : text;
  long value = 0;
  if (!*port_text || strlen(port_text) > 5)
    return -1;
  for (const char *p = port_text; *p; p++) {
    if (*p < '0' || *p > '9')
      return -1; /* digits only: no sign, no spaces */
    value = value * 10 + (*p - '0');
  }
  if (value > 65535)
    return -1;
  *port = (uint16_t)value;
  if (colon && colon != text) {
    size_t len = (size_t)(colon - text);
    if (len >= address_size)
      return -1;
    memcpy(address, text, len);
    address[len] = '\0';
  } else {
    snprintf(address, address_size, "127.0.0.1");
  }
  return 0;
}

int cli_serve_add_api_key(cli_serve_conf_t *conf, const char *hex) {
  unsigned char digest[TLY_SHA256_LEN];
  if (tly_sha256_hex_parse(hex, digest)) {
    fprintf(stderr, "tally: --api-key-sha256: expected the SHA-256 of the "
                    "key as 64 hex characters (printf %%s \"$KEY\" | "
                    "sha256sum), never the key itself\n");
    return -1;
  }
  if (conf->api_key_count == CLI_MAX_API_KEYS) {
    fprintf(stderr,
            "tally: --api-key-sha256: at most %d keys; put more in "
            "the config's http.api_keys\n",
            CLI_MAX_API_KEYS);
    return -1;
  }
  conf->api_key_sha256[conf->api_key_count++] = hex;
  return 0;
}

/* Adds the command line's digests to the config; then either some key is
 * configured or no_auth was asked for explicitly. 0, or the exit code. */
static int setup_auth(const cli_serve_conf_t *conf, tly_config_t *config) {
  for (size_t i = 0; i < conf->api_key_count; i++) {
    unsigned char digest[TLY_SHA256_LEN];
    char name[32];
    snprintf(name, sizeof(name), "cli-%zu", i + 1);
    if (tly_sha256_hex_parse(conf->api_key_sha256[i], digest) ||
        tly_config_add_api_key(config, name, digest)) {
      fprintf(stderr, "tally: --api-key-sha256: invalid or out of memory\n");
      return 2;
    }
  }
  if (conf->no_auth) {
    if (config->http.api_key_count)
      fprintf(stderr, "tally: --no-auth: the configured API keys are "
                      "ignored; the HTTP port is open to anyone who can "
                      "reach it\n");
    return 0;
  }
  if (!config->http.api_key_count) {
    fprintf(stderr,
            "tally: no API key configured for the HTTP port: add "
            "\"http\": {\"api_keys\": [{\"name\": ..., \"sha256\": ...}]} to "
            "--config, or pass --api-key-sha256 HEX (the SHA-256 of the key), "
            "or --no-auth to serve without authentication\n");
    return 2;
  }
  return 0;
}

/* The advertised URL and the instance id, from the flags or the defaults
 * (see cli_serve_conf_t). */
static void member_identity(const cli_serve_conf_t *conf, uint16_t port,
                            char *advertise, size_t advertise_size,
                            char *instance, size_t instance_size) {
  char host[256] = "localhost";
  if (conf->advertise)
    snprintf(advertise, advertise_size, "%s", conf->advertise);
  else
    snprintf(advertise, advertise_size, "http://%s:%u",
             strcmp(conf->http_address, "0.0.0.0") == 0 ? "127.0.0.1"
                                                        : conf->http_address,
             (unsigned)port);
  if (conf->instance_id) {
    snprintf(instance, instance_size, "%s", conf->instance_id);
    return;
  }
  gethostname(host, sizeof(host) - 1);
  const char *rest = strstr(advertise, "://");
  /* Truncated to fit (host first, at most half): unique in practice. */
  const char *where = rest ? rest + 3 : advertise;
  int host_len = (int)strnlen(host, instance_size / 2);
  int where_len = (int)strnlen(where, instance_size - (size_t)host_len - 2);
  snprintf(instance, instance_size, "%.*s-%.*s", host_len, host, where_len,
           where);
}

/* The cluster secret into *secret: 1 (loaded or generated), 0 (none), or
 * -2 (exit code 2) after a message naming the source. */
static int setup_cluster_secret(const cli_serve_conf_t *conf,
                                tly_cluster_secret_t *secret) {
  char errstr[512];
  int rc = tly_cluster_secret_load(conf->cluster_secret_file, secret, errstr,
                                   sizeof(errstr));
  if (rc < 0) {
    fprintf(stderr, "tally: %s\n", errstr);
    return -2;
  }
  if (rc == 0 && conf->cluster_secret_random) {
    if (tly_cluster_secret_random(secret)) {
      fprintf(stderr, "tally: cannot generate a cluster secret\n");
      return -2;
    }
    rc = 1;
  }
  return rc;
}

/* Membership's view of this instance (tly_members_local_t): each
 * partition's role as the processor has it. */
static unsigned char *processor_roles(void *opaque, size_t *count) {
  tly_processor_t *processor = opaque;
  int32_t partitions = tly_processor_partition_count(processor);
  *count = partitions > 0 ? (size_t)partitions : 0;
  unsigned char *roles = calloc(*count ? *count : 1, 1);
  if (!roles)
    return NULL;
  for (size_t i = 0; i < *count; i++)
    switch (tly_processor_partition_role(processor, (int32_t)i)) {
    case TLY_PARTITION_SERVING:
      roles[i] = TLY_MEMBERS_SERVING;
      break;
    case TLY_PARTITION_REPLAYING:
      roles[i] = TLY_MEMBERS_REPLAYING;
      break;
    case TLY_PARTITION_NOT_OWNED:
      roles[i] = tly_processor_standby_applied(processor, (int32_t)i)
                     ? TLY_MEMBERS_STANDBY
                     : TLY_MEMBERS_NOT_HERE;
      break;
    }
  return roles;
}

/* The standby gate (tly_standby_gate_t): the membership's ranking. */
static int members_standby_chosen(void *opaque, int32_t partition,
                                  size_t replicas) {
  return tly_members_standby_chosen(opaque, partition, replicas);
}

/* The Stripe emitter's gate (tly_partition_gate.h): the partitions the
 * processor has assigned here, from one snapshot, and its holds. */
static size_t processor_assigned(void *opaque, int32_t *assigned, size_t max) {
  size_t total = 0, count = 0;
  tly_partition_status_t *status =
      tly_processor_partitions_copy(opaque, &total);
  if (!status)
    return SIZE_MAX;
  for (size_t i = 0; i < total; i++)
    if (status[i].assigned) {
      if (count < max)
        assigned[count] = status[i].partition;
      count++;
    }
  free(status);
  return count;
}

static int processor_hold(void *opaque, int32_t partition,
                          uint64_t *generation) {
  return tly_processor_hold(opaque, partition, generation);
}

static void processor_release(void *opaque, int32_t partition) {
  tly_processor_release(opaque, partition);
}

int cli_serve(const cli_serve_conf_t *conf) {
  char errstr[1024];
  int exit_code = 1;
  tly_store_t *store = NULL;
  tly_processor_t *processor = NULL;
  tly_stripe_emitter_t *emitter = NULL;
  tly_http_t *http = NULL;
  tly_members_t *members = NULL;
  tly_registry_t *registry = NULL;
  int32_t event_schema_id = 0, alert_schema_id = 0;
  char advertise[TLY_MEMBERS_URL_MAX], instance[TLY_MEMBERS_INSTANCE_MAX];
  tly_config_t *config =
      conf->config_path
          ? tly_config_load_file(conf->config_path, errstr, sizeof(errstr))
          : tly_config_default();
  if (!config) {
    fprintf(stderr, "tally: config %s: %s\n",
            conf->config_path ? conf->config_path : "(built-in)", errstr);
    return 2;
  }
  int auth_rc = setup_auth(conf, config);
  if (auth_rc) {
    tly_config_free(config);
    return auth_rc;
  }
  tly_cluster_secret_t secret;
  int has_secret = setup_cluster_secret(conf, &secret);
  if (has_secret < 0) {
    tly_config_free(config);
    return -has_secret;
  }

  /* Before anything reads or writes a record: the ids to frame with. */
  if (cli_registry_start(
          "run", &conf->registry,
          conf->usage_topic ? conf->usage_topic : TLY_DEFAULT_USAGE_TOPIC,
          conf->alerts_topic ? conf->alerts_topic : TLY_DEFAULT_ALERTS_TOPIC,
          &registry, &event_schema_id, &alert_schema_id) < 0) {
    exit_code = 2;
    goto out;
  }
  /* RocksDB's block cache and memtables within their parts of the memory
   * budget (tly_processor.h, tly_memory_part_t). */
  tly_store_memory_t rocksdb_memory =
      tly_memory_store_sizes(conf->memory_budget_bytes);
  store = tly_store_open_sized(conf->state_dir, 0, &rocksdb_memory, errstr,
                               sizeof(errstr));
  if (!store) {
    fprintf(stderr, "tally: state dir %s: %s\n", conf->state_dir, errstr);
    goto out;
  }
  tly_processor_conf_t pconf = {
      .brokers = conf->brokers,
      .group_id = conf->group_id,
      .usage_topic = conf->usage_topic,
      .dlq_topic = conf->dlq_topic,
      .alerts_topic = conf->alerts_topic,
      .changelog_topic = conf->changelog_topic,
      .config = config,
      .tick_interval_ms = conf->tick_interval_ms ? conf->tick_interval_ms : -1,
      .batch_max_events = conf->batch_max_events,
      .batch_max_ms = conf->batch_max_ms,
      .memory_budget_bytes = conf->memory_budget_bytes,
      .kafka_properties = conf->kafka_properties,
      .registry = registry,
      .event_schema_id = event_schema_id,
      .alert_schema_id = alert_schema_id,
      .group_instance_id = conf->instance_id,
      .fast_rejoin = conf->fast_rejoin,
  };
  processor = tly_processor_new(&pconf, store, errstr, sizeof(errstr));
  if (!processor) {
    fprintf(stderr, "tally: processor: %s\n", errstr);
    goto out;
  }
  if (tly_config_stripe_reports(config)) {
    tly_stripe_emitter_conf_t econf = {
        .config = config,
        .store = store,
        .gate = {processor, processor_assigned, processor_hold,
                 processor_release},
        .changelog_topic = tly_processor_changelog_topic(processor),
        .changelog_writer = tly_processor_changelog_writer(processor),
        .brokers = conf->brokers,
        .dlq_topic = conf->dlq_topic,
        .alerts_topic = conf->alerts_topic,
        .alert_schema_id = alert_schema_id,
        .kafka_properties = conf->kafka_properties};
    emitter = tly_stripe_emitter_start(&econf, errstr, sizeof(errstr));
    if (!emitter) {
      fprintf(stderr, "tally: %s\n", errstr);
      goto out;
    }
  }
  /* The map and its Kafka clients now, for the HTTP port; announcing once
   * the port is bound (the defaults name it). */
  tly_members_conf_t mconf = {.brokers = conf->brokers,
                              .local = {processor, processor_roles},
                              .heartbeat_ms = conf->members_heartbeat_ms,
                              .kafka_properties = conf->kafka_properties,
                              .secret = has_secret ? &secret : NULL};
  members = tly_members_new(&mconf, errstr, sizeof(errstr));
  tly_cluster_secret_clear(&secret); /* members keeps its copy */
  if (!members) {
    fprintf(stderr, "tally: %s\n", errstr);
    goto out;
  }
  tly_http_conf_t hconf = {.members = members,
                           .address = conf->http_address,
                           .port = conf->http_port,
                           .store = store,
                           .processor = processor,
                           .stripe_emitter = emitter,
                           .config = config,
                           .no_auth = conf->no_auth,
                           .brokers = conf->brokers,
                           .usage_topic = conf->usage_topic,
                           .alerts_topic = conf->alerts_topic,
                           .dlq_topic = conf->dlq_topic,
                           .event_schema_id = event_schema_id,
                           .alert_schema_id = alert_schema_id,
                           .kafka_properties = conf->kafka_properties};
  http = tly_http_start(&hconf, errstr, sizeof(errstr));
  if (!http) {
    fprintf(stderr, "tally: %s\n", errstr);
    goto out;
  }
  member_identity(conf, tly_http_port(http), advertise, sizeof(advertise),
                  instance, sizeof(instance));
  if (tly_members_start(members, instance, advertise, errstr, sizeof(errstr))) {
    fprintf(stderr, "tally: %s\n", errstr);
    goto out;
  }
  tly_standby_gate_t standby_gate = {members, members_standby_chosen};
  if (tly_processor_standby_start(processor, (size_t)conf->standby_replicas,
                                  &standby_gate, errstr, sizeof(errstr))) {
    fprintf(stderr, "tally: %s\n", errstr);
    goto out;
  }
  printf("tally: http   http://%s:%u\n", conf->http_address,
         (unsigned)tly_http_port(http));
  printf("tally: member %s at %s\n", instance, advertise);
  printf("tally: state  %s\n", conf->state_dir);
  fflush(stdout);
  if (conf->http_port_file) {
    char text[16];
    snprintf(text, sizeof(text), "%u\n", (unsigned)tly_http_port(http));
    if (cli_write_file_atomic(conf->http_port_file, text)) {
      fprintf(stderr, "tally: cannot write %s\n", conf->http_port_file);
      goto out;
    }
  }
  if (tly_processor_run(processor, &cli_stop, errstr, sizeof(errstr))) {
    tly_log(TLY_LOG_ERROR, "processor", "stopping: %s", errstr);
    fprintf(stderr, "tally: fatal: %s\n", errstr);
    goto out;
  }
  exit_code = 0;
out:
  tly_cluster_secret_clear(&secret);
  tly_http_stop(http);
  if (processor)
    tly_processor_standby_stop(processor); /* it asks members */
  tly_members_destroy(members); /* the tombstone: this instance left */
  tly_stripe_emitter_stop(emitter);
  tly_processor_destroy(processor);
  if (store)
    tly_store_close(store);
  tly_registry_destroy(registry); /* after the processor, which uses it */
  tly_config_free(config);
  return exit_code;
}
