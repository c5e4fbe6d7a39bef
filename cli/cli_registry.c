/*
 * cli_registry.c - the --schema-registry flags that `tally run` and
 * `tally emit` share, and tally's schemas registered at startup.
 *
 * The password never comes from argv (ps shows argv): it is read from
 * --schema-registry-password-file, else from $TALLY_SCHEMA_REGISTRY_PASSWORD;
 * a URL carrying "user:password@" is refused for the same reason. The user
 * comes from --schema-registry-user or $TALLY_SCHEMA_REGISTRY_USER.
 *
 * Registration (TopicNameStrategy: "<topic>-value") is what a Confluent
 * serializer does with auto.register.schemas: the registry answers the id
 * it holds the schema under, the same id every time for the same schema.
 * A registry that cannot be reached is tried 5 times over about 8 s (a
 * registry starting beside tally); then, and on any definitive refusal
 * (the subject's compatibility rule refuses the schema, bad credentials),
 * startup stops with the registry's answer.
 */
#include "cli.h"

#include "tly_alert.h"
#include "tly_codec.h"
#include "tly_log.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PASSWORD_MAX 1024
#define REGISTER_ATTEMPTS 5

const char cli_registry_usage[] =
    "  --schema-registry URL   a Confluent Schema Registry: tally's schemas "
    "are\n"
    "                          registered under <topic>-value and records "
    "are\n"
    "                          framed and read by the registry's ids\n"
    "  --schema-registry-user USER  basic auth user (or "
    "$TALLY_SCHEMA_REGISTRY_USER);\n"
    "                          the password from "
    "--schema-registry-password-file\n"
    "                          FILE or $TALLY_SCHEMA_REGISTRY_PASSWORD, never "
    "argv\n"
    "  --schema-registry-ca FILE  PEM bundle that verifies an https "
    "registry\n";

int cli_registry_option(cli_registry_opts_t *opts, int opt, const char *arg) {
  switch (opt) {
  case CLI_OPT_REGISTRY_URL:
    opts->url = arg;
    return 1;
  case CLI_OPT_REGISTRY_USER:
    opts->user = arg;
    return 1;
  case CLI_OPT_REGISTRY_PASSWORD_FILE:
    opts->password_file = arg;
    return 1;
  case CLI_OPT_REGISTRY_CA:
    opts->ca_file = arg;
    return 1;
  default:
    return 0;
  }
}

/* The password from the file (its first line) or the environment into
 * out; 0, 1 (none), or -1 after a message. */
static int read_password(const char *command, const cli_registry_opts_t *opts,
                         char *out, size_t size) {
  if (opts->password_file) {
    FILE *file = fopen(opts->password_file, "r");
    if (!file) {
      fprintf(stderr,
              "tally %s: --schema-registry-password-file %s: cannot "
              "read it\n",
              command, opts->password_file);
      return -1;
    }
    size_t len = fread(out, 1, size - 1, file);
    int more = fgetc(file) != EOF;
    fclose(file);
    out[len] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    if (more || !*out) {
      fprintf(stderr, "tally %s: --schema-registry-password-file %s: %s\n",
              command, opts->password_file,
              more ? "longer than 1023 bytes" : "empty");
      return -1;
    }
    return 0;
  }
  const char *env = getenv("TALLY_SCHEMA_REGISTRY_PASSWORD");
  if (!env || !*env)
    return 1;
  if (strlen(env) >= size) {
    fprintf(stderr,
            "tally %s: $TALLY_SCHEMA_REGISTRY_PASSWORD: longer than "
            "1023 bytes\n",
            command);
    return -1;
  }
  snprintf(out, size, "%s", env);
  return 0;
}

/* Registers schema_json (as compact JSON: the text the HTTP port's
 * registry API serves too) under "<topic>-value": *id, or -1 after a
 * message. */
static int register_one(const char *command, tly_registry_t *registry,
                        const char *topic, const char *schema_text,
                        int32_t *id) {
  char subject[512], errstr[1024];
  snprintf(subject, sizeof(subject), "%s-value", topic);
  json_t *parsed = json_loads(schema_text, 0, NULL);
  char *schema_json = parsed ? json_dumps(parsed, JSON_COMPACT) : NULL;
  json_decref(parsed);
  if (!schema_json) {
    fprintf(stderr, "tally %s: out of memory\n", command);
    return -1;
  }
  int rc = -1;
  for (int attempt = 1;; attempt++) {
    switch (tly_registry_register(registry, subject, schema_json, id, errstr,
                                  sizeof(errstr))) {
    case TLY_REGISTRY_OK:
      tly_log(TLY_LOG_INFO, "registry", "%s: schema id %" PRId32 " at %s",
              subject, *id, tly_registry_url(registry));
      rc = 0;
      goto done;
    case TLY_REGISTRY_UNAVAILABLE:
      if (attempt < REGISTER_ATTEMPTS) {
        long wait_ms = 500 + 1000L * (attempt - 1); /* 0.5 s, 1.5, 2.5, 3.5 */
        struct timespec pause = {wait_ms / 1000, (wait_ms % 1000) * 1000000L};
        tly_log(TLY_LOG_WARN, "registry", "registering %s: %s; retrying",
                subject, errstr);
        nanosleep(&pause, NULL);
        continue;
      }
      break;
    default:
      break;
    }
    fprintf(stderr, "tally %s: --schema-registry: registering %s: %s\n",
            command, subject, errstr);
    goto done;
  }
done:
  free(schema_json);
  return rc;
}

int cli_registry_start(const char *command, const cli_registry_opts_t *opts,
                       const char *usage_topic, const char *alerts_topic,
                       tly_registry_t **registry, int32_t *event_id,
                       int32_t *alert_id) {
  char password[PASSWORD_MAX], errstr[512];
  *registry = NULL;
  if (!opts->url) {
    if (opts->user || opts->password_file || opts->ca_file) {
      fprintf(stderr,
              "tally %s: --schema-registry-user, -password-file and "
              "-ca need --schema-registry URL\n",
              command);
      return -1;
    }
    return 0;
  }
  const char *authority = strstr(opts->url, "://");
  authority = authority ? authority + 3 : opts->url;
  if (memchr(authority, '@', strcspn(authority, "/"))) {
    fprintf(stderr,
            "tally %s: --schema-registry: credentials in the URL are "
            "visible in ps; use --schema-registry-user and "
            "--schema-registry-password-file (or "
            "$TALLY_SCHEMA_REGISTRY_PASSWORD)\n",
            command);
    return -1;
  }
  const char *user =
      opts->user ? opts->user : getenv("TALLY_SCHEMA_REGISTRY_USER");
  if (user && !*user)
    user = NULL;
  int has_password = read_password(command, opts, password, sizeof(password));
  if (has_password < 0)
    return -1;
  if (has_password == 0 && !user) {
    fprintf(stderr,
            "tally %s: a schema registry password needs "
            "--schema-registry-user (or $TALLY_SCHEMA_REGISTRY_USER)\n",
            command);
    return -1;
  }
  if (user && has_password) {
    fprintf(stderr,
            "tally %s: --schema-registry-user needs a password: "
            "--schema-registry-password-file FILE or "
            "$TALLY_SCHEMA_REGISTRY_PASSWORD\n",
            command);
    return -1;
  }
  tly_registry_conf_t conf = {.url = opts->url,
                              .user = user,
                              .password = user ? password : NULL,
                              .ca_file = opts->ca_file};
  *registry = tly_registry_new(&conf, errstr, sizeof(errstr));
  memset(password, 0, sizeof(password));
  if (!*registry) {
    fprintf(stderr, "tally %s: --schema-registry: %s\n", command, errstr);
    return -1;
  }
  if ((usage_topic && register_one(command, *registry, usage_topic,
                                   tly_event_schema_json, event_id)) ||
      (alerts_topic && register_one(command, *registry, alerts_topic,
                                    tly_alert_schema_json, alert_id))) {
    tly_registry_destroy(*registry);
    *registry = NULL;
    return -1;
  }
  return 1;
}
