/*
 * test_compose.c - compose/compose.yaml against the code, without a Docker
 * engine: the file parses (libyaml, merge keys followed as Compose does);
 * it has the Kafka service (KRaft), a topic-init service and at least two
 * `tally run` services in one consumer group, each with its own state
 * volume and its HTTP port published on 127.0.0.1 only, a cluster secret
 * (TALLY_CLUSTER_SECRET or --cluster-secret-file) and an --advertise URL
 * of its own the others can reach (so they forward): the service's own name
 * and the port its --http listens on, on every interface of the container;
 * no top-level `name:` (Debian's docker-compose 1.29 refuses it); the init
 * service creates every topic `tally topics` prints, with its cleanup
 * policy and other configs (retention.ms=-1 for the usage topic and the
 * dead letters), and "input"-sized topics with the usage topic's partition
 * count; every
 * --config and Dockerfile it references exists, the Dockerfile installs the
 * -dev packages of scripts/install-deps.sh, and the example config loads
 * with tly_config_load_file.
 *
 * The checker is one function over the file's text, so the second test
 * feeds it broken variants (a wrong policy, a missing topic, two groups,
 * ...) and requires each to fail with the right reason: the test can fail.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_config.h"
#include "tly_processor.h"

#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include <cmocka.h>

#define COMPOSE_DIR TALLY_SOURCE_DIR "/compose"
#define COMPOSE_FILE COMPOSE_DIR "/compose.yaml"
#define MAX_TOPICS 32
#define MAX_WORDS 256
#define MAX_TALLY_SERVICES 16

typedef struct {
  char name[128];
  int partitions; /* 0: "input", as many as the usage topic */
  char policy[16];
  /* Other configs, ",name=value,name=value," (commas around each, so
   * ",retention.ms=-1," finds one exactly); "," for none. */
  char configs[512];
} topic_t;

/* What the checker holds while it walks the parsed file. */
typedef struct {
  yaml_document_t doc;
  yaml_node_t *services;
  char *why;
  size_t why_size;
} compose_t;

typedef struct {
  char *items[MAX_WORDS];
  size_t count;
} words_t;

__attribute__((format(printf, 2, 3))) static int problem(compose_t *compose,
                                                         const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(compose->why, compose->why_size, fmt, args);
  va_end(args);
  return -1;
}

/* ------------------------------------------------------------------------ */
/* YAML lookups.                                                            */

static const char *scalar(const yaml_node_t *node) {
  return node && node->type == YAML_SCALAR_NODE
             ? (const char *)node->data.scalar.value
             : NULL;
}

/* The value of key in a mapping, following "<<" merge keys (a mapping or a
 * sequence of mappings) the way Compose does: the mapping's own keys win. */
static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *map,
                            const char *key) {
  yaml_node_t *merged = NULL;
  if (!map || map->type != YAML_MAPPING_NODE)
    return NULL;
  for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
       pair < map->data.mapping.pairs.top; pair++) {
    const char *name = scalar(yaml_document_get_node(doc, pair->key));
    yaml_node_t *value = yaml_document_get_node(doc, pair->value);
    if (name && !strcmp(name, key))
      return value;
    if (name && !strcmp(name, "<<"))
      merged = value;
  }
  if (merged && merged->type == YAML_SEQUENCE_NODE) {
    for (yaml_node_item_t *item = merged->data.sequence.items.start;
         item < merged->data.sequence.items.top; item++) {
      yaml_node_t *found =
          map_get(doc, yaml_document_get_node(doc, *item), key);
      if (found)
        return found;
    }
    return NULL;
  }
  return map_get(doc, merged, key);
}

static void words_free(words_t *words) {
  for (size_t i = 0; i < words->count; i++)
    free(words->items[i]);
  words->count = 0;
}

static void words_add(words_t *words, const char *text, size_t len) {
  if (words->count < MAX_WORDS)
    words->items[words->count++] = strndup(text, len);
}

static void words_split(words_t *words, const char *text) {
  while (*text) {
    while (isspace((unsigned char)*text))
      text++;
    size_t len = 0;
    while (text[len] && !isspace((unsigned char)text[len]))
      len++;
    if (len)
      words_add(words, text, len);
    text += len;
  }
}

/* A command or entrypoint: a list is taken word for word, a string is
 * split on white space (Compose splits it shell-like; tally's need no
 * quoting). */
static void words_of(yaml_document_t *doc, yaml_node_t *node, words_t *words) {
  if (scalar(node)) {
    words_split(words, scalar(node));
    return;
  }
  if (!node || node->type != YAML_SEQUENCE_NODE)
    return;
  for (yaml_node_item_t *item = node->data.sequence.items.start;
       item < node->data.sequence.items.top; item++) {
    const char *text = scalar(yaml_document_get_node(doc, *item));
    if (text)
      words_add(words, text, strlen(text));
  }
}

/* The value of "--name VALUE" or "--name=VALUE" in words, or NULL. */
static const char *option(const words_t *words, const char *name) {
  size_t len = strlen(name);
  for (size_t i = 0; i < words->count; i++) {
    const char *word = words->items[i];
    if (!strcmp(word, name) && i + 1 < words->count)
      return words->items[i + 1];
    if (!strncmp(word, name, len) && word[len] == '=')
      return word + len + 1;
  }
  return NULL;
}

/* A service's entrypoint followed by its command. */
static void service_argv(compose_t *compose, yaml_node_t *service,
                         words_t *words) {
  words_of(&compose->doc, map_get(&compose->doc, service, "entrypoint"), words);
  words_of(&compose->doc, map_get(&compose->doc, service, "command"), words);
}

static int is_tally_run(const words_t *words) {
  if (words->count < 2 || strcmp(words->items[1], "run"))
    return 0;
  const char *slash = strrchr(words->items[0], '/');
  return !strcmp(slash ? slash + 1 : words->items[0], "tally");
}

static yaml_node_t *service(compose_t *compose, const char *name) {
  return map_get(&compose->doc, compose->services, name);
}

/* Whether a service waits for another to reach condition. Only the long
 * form of depends_on has conditions (the list form waits for a start). */
static int depends_on(compose_t *compose, yaml_node_t *svc, const char *name,
                      const char *condition) {
  yaml_node_t *deps = map_get(&compose->doc, svc, "depends_on");
  yaml_node_t *dep = map_get(&compose->doc, deps, name);
  const char *got = scalar(map_get(&compose->doc, dep, "condition"));
  return got && !strcmp(got, condition);
}

/* An environment variable of a service (mapping or "NAME=value" list). */
static const char *env_get(compose_t *compose, yaml_node_t *svc,
                           const char *name) {
  yaml_node_t *env = map_get(&compose->doc, svc, "environment");
  size_t len = strlen(name);
  if (!env || env->type != YAML_SEQUENCE_NODE)
    return scalar(map_get(&compose->doc, env, name));
  for (yaml_node_item_t *item = env->data.sequence.items.start;
       item < env->data.sequence.items.top; item++) {
    const char *text = scalar(yaml_document_get_node(&compose->doc, *item));
    if (text && !strncmp(text, name, len) && text[len] == '=')
      return text + len + 1;
  }
  return NULL;
}

/* Every published port of a service is bound to 127.0.0.1 (short form
 * "127.0.0.1:HOST:CONTAINER", or host_ip in the long form). */
static int ports_on_loopback(compose_t *compose, yaml_node_t *svc) {
  yaml_node_t *ports = map_get(&compose->doc, svc, "ports");
  if (!ports || ports->type != YAML_SEQUENCE_NODE)
    return 1;
  for (yaml_node_item_t *item = ports->data.sequence.items.start;
       item < ports->data.sequence.items.top; item++) {
    yaml_node_t *port = yaml_document_get_node(&compose->doc, *item);
    const char *text = scalar(port);
    const char *host_ip = scalar(map_get(&compose->doc, port, "host_ip"));
    if (text ? strncmp(text, "127.0.0.1:", 10)
             : (!host_ip || strcmp(host_ip, "127.0.0.1")))
      return 0;
  }
  return 1;
}

/* The source of the volume a service mounts at target ("SRC:TARGET[:MODE]"
 * or the long form), copied into source; 0, or -1 when nothing is mounted
 * there. */
static int mount_source(compose_t *compose, yaml_node_t *svc,
                        const char *target, char *source, size_t size) {
  yaml_node_t *volumes = map_get(&compose->doc, svc, "volumes");
  if (!volumes || volumes->type != YAML_SEQUENCE_NODE)
    return -1;
  for (yaml_node_item_t *item = volumes->data.sequence.items.start;
       item < volumes->data.sequence.items.top; item++) {
    yaml_node_t *volume = yaml_document_get_node(&compose->doc, *item);
    const char *text = scalar(volume);
    if (text) {
      const char *colon = strchr(text, ':');
      size_t target_len = strlen(target);
      if (colon && !strncmp(colon + 1, target, target_len) &&
          (colon[1 + target_len] == '\0' || colon[1 + target_len] == ':')) {
        snprintf(source, size, "%.*s", (int)(colon - text), text);
        return 0;
      }
      continue;
    }
    const char *long_target = scalar(map_get(&compose->doc, volume, "target"));
    const char *long_source = scalar(map_get(&compose->doc, volume, "source"));
    if (long_target && long_source && !strcmp(long_target, target)) {
      snprintf(source, size, "%s", long_source);
      return 0;
    }
  }
  return -1;
}

/* A host path in the file, relative to the compose directory. */
static void host_path(const char *compose_dir, const char *path, char *out,
                      size_t size) {
  if (path[0] == '/')
    snprintf(out, size, "%s", path);
  else
    snprintf(out, size, "%s/%s", compose_dir, path);
}

/* ------------------------------------------------------------------------ */
/* The checks.                                                              */

/* Kafka, named by the processors' --brokers: a KRaft node. */
static int check_kafka(compose_t *compose, const char *brokers,
                       char *kafka_name, size_t size) {
  const char *colon = strchr(brokers, ':');
  snprintf(kafka_name, size, "%.*s",
           (int)(colon ? (size_t)(colon - brokers) : strlen(brokers)), brokers);
  yaml_node_t *kafka = service(compose, kafka_name);
  if (!kafka)
    return problem(compose, "no service '%s' (the processors' --brokers %s)",
                   kafka_name, brokers);
  const char *image = scalar(map_get(&compose->doc, kafka, "image"));
  if (!image || !strstr(image, "kafka"))
    return problem(compose, "service '%s': image is not a Kafka image",
                   kafka_name);
  /* apache/kafka reads KAFKA_*, bitnami/kafka KAFKA_CFG_*. */
  const char *roles = env_get(compose, kafka, "KAFKA_PROCESS_ROLES");
  if (!roles)
    roles = env_get(compose, kafka, "KAFKA_CFG_PROCESS_ROLES");
  if (!roles || !strstr(roles, "controller") || !strstr(roles, "broker"))
    return problem(compose,
                   "service '%s': not a single KRaft node (process roles "
                   "broker,controller in its environment)",
                   kafka_name);
  return 0;
}

/* A processor's --config: a repository file mounted at that path, which
 * tally's config loader accepts. */
static int check_config(compose_t *compose, const char *compose_dir,
                        const char *name, yaml_node_t *svc,
                        const char *config) {
  char source[512], path[1024], errstr[512];
  if (mount_source(compose, svc, config, source, sizeof(source)))
    return problem(compose,
                   "%s: --config %s: no file of the repository is "
                   "mounted there",
                   name, config);
  host_path(compose_dir, source, path, sizeof(path));
  if (access(path, R_OK))
    return problem(compose, "%s: --config %s: %s does not exist", name, config,
                   source);
  tly_config_t *loaded = tly_config_load_file(path, errstr, sizeof(errstr));
  if (!loaded)
    return problem(compose, "%s: --config %s: %s does not load: %s", name,
                   config, source, errstr);
  tly_config_free(loaded);
  return 0;
}

/* The `tally run` services: at least two, one --group, --brokers given,
 * each with its own state volume, its config present and loadable, its
 * ports on 127.0.0.1 only, started after the topics exist. */
/* A processor's --advertise reaches it from the other containers: http://
 * and the service's own name (what Compose's network resolves to this
 * container), and the port its --http listens on, which must be every
 * interface of the container (not its loopback). */
static int check_advertise(compose_t *compose, const char *name,
                           const char *advertise, const char *http) {
  const char *host = advertise;
  char listen_port[16] = "8080"; /* tally run's default --http */
  if (strncmp(host, "http://", 7))
    return problem(compose, "%s: --advertise %s is not an http:// URL", name,
                   advertise);
  host += 7;
  size_t host_len = strcspn(host, ":/");
  const char *port = host[host_len] == ':' ? host + host_len + 1 : "80";
  size_t port_len = strcspn(port, "/");
  if (http) {
    const char *colon = strrchr(http, ':');
    size_t address_len = colon ? (size_t)(colon - http) : 0;
    snprintf(listen_port, sizeof(listen_port), "%s", colon ? colon + 1 : http);
    if (address_len && strncmp(http, "0.0.0.0", address_len))
      return problem(compose,
                     "%s: --http %s listens on one address only; the other "
                     "containers reach it on 0.0.0.0:PORT",
                     name, http);
  } else {
    return problem(compose,
                   "%s: no --http: the default 127.0.0.1:8080 is the "
                   "container's own loopback, which the others cannot reach",
                   name);
  }
  if (host_len != strlen(name) || strncmp(host, name, host_len))
    return problem(compose,
                   "%s: --advertise %s names host '%.*s', not the service "
                   "name '%s' the other containers resolve",
                   name, advertise, (int)host_len, host, name);
  if (port_len != strlen(listen_port) || strncmp(port, listen_port, port_len))
    return problem(compose,
                   "%s: --advertise %s names port %.*s, but --http listens on "
                   "%s",
                   name, advertise, (int)port_len, port, listen_port);
  return 0;
}

static int check_processors(compose_t *compose, const char *compose_dir,
                            const char *init_name, char *brokers,
                            size_t brokers_size) {
  char group[128] = "", states[MAX_TALLY_SERVICES][512];
  char advertised[MAX_TALLY_SERVICES][256], owners[MAX_TALLY_SERVICES][128];
  size_t count = 0;
  brokers[0] = '\0';
  for (yaml_node_pair_t *pair = compose->services->data.mapping.pairs.start;
       pair < compose->services->data.mapping.pairs.top; pair++) {
    const char *name = scalar(yaml_document_get_node(&compose->doc, pair->key));
    yaml_node_t *svc = yaml_document_get_node(&compose->doc, pair->value);
    words_t argv = {0};
    int rc = 0;
    service_argv(compose, svc, &argv);
    if (!is_tally_run(&argv)) {
      words_free(&argv);
      continue;
    }
    const char *this_group = option(&argv, "--group");
    const char *this_brokers = option(&argv, "--brokers");
    const char *state_dir = option(&argv, "--state-dir");
    const char *config = option(&argv, "--config");
    const char *advertise = option(&argv, "--advertise");
    const char *secret = env_get(compose, svc, "TALLY_CLUSTER_SECRET");
    int has_secret =
        (secret && *secret) || option(&argv, "--cluster-secret-file");
    if (!this_group)
      this_group = TLY_DEFAULT_GROUP_ID;
    if (count == MAX_TALLY_SERVICES)
      rc = problem(compose, "more than %d tally services", MAX_TALLY_SERVICES);
    else if (count && strcmp(group, this_group))
      rc = problem(compose,
                   "%s: --group %s, another tally service has %s: "
                   "the instances must share one group",
                   name, this_group, group);
    else if (!this_brokers || (count && strcmp(brokers, this_brokers)))
      rc = problem(compose,
                   "%s: no --brokers, or other brokers than the "
                   "other tally services",
                   name);
    else if (!state_dir || mount_source(compose, svc, state_dir, states[count],
                                        sizeof(states[count])))
      rc = problem(compose,
                   "%s: --state-dir must be a mounted volume, or the "
                   "state dies with the container",
                   name);
    else if (!depends_on(compose, svc, init_name,
                         "service_completed_successfully"))
      rc = problem(compose,
                   "%s: must depend on '%s' with condition "
                   "service_completed_successfully (the topics must exist "
                   "first)",
                   name, init_name);
    else if (!ports_on_loopback(compose, svc))
      rc = problem(compose, "%s: ports must be published on 127.0.0.1 only",
                   name);
    else if (!has_secret)
      rc = problem(compose,
                   "%s: no cluster secret (environment TALLY_CLUSTER_SECRET "
                   "or --cluster-secret-file): the instances cannot forward "
                   "to each other",
                   name);
    else if (!advertise)
      rc = problem(compose,
                   "%s: no --advertise: the default is 127.0.0.1, which the "
                   "other instances cannot reach",
                   name);
    else if (strstr(advertise, "://127.") || strstr(advertise, "://localhost"))
      rc = problem(compose,
                   "%s: --advertise %s is this container's own loopback, "
                   "which the other instances cannot reach",
                   name, advertise);
    for (size_t i = 0; !rc && i < count; i++)
      if (!strcmp(advertised[i], advertise))
        rc = problem(compose, "%s: --advertise %s is %s's too", name, advertise,
                     owners[i]);
    if (!rc)
      rc = check_advertise(compose, name, advertise, option(&argv, "--http"));
    for (size_t i = 0; !rc && i < count; i++)
      if (!strcmp(states[i], states[count]))
        rc = problem(compose,
                     "%s: state volume %s is another tally "
                     "service's too: each instance needs its own",
                     name, states[count]);
    if (!rc && config)
      rc = check_config(compose, compose_dir, name, svc, config);
    if (!rc) {
      snprintf(group, sizeof(group), "%s", this_group);
      snprintf(brokers, brokers_size, "%s", this_brokers);
      snprintf(advertised[count], sizeof(advertised[count]), "%s", advertise);
      snprintf(owners[count], sizeof(owners[count]), "%s", name);
      count++;
    }
    words_free(&argv);
    if (rc)
      return -1;
  }
  if (count < 2)
    return problem(compose,
                   "%zu service(s) run `tally run`; expected two in one "
                   "consumer group",
                   count);
  return 0;
}

/* The topics the init service creates: each line of its script with
 * --topic, its --partitions and --config cleanup.policy=. */
static int init_topics(compose_t *compose, yaml_node_t *init, topic_t *topics,
                       size_t *count) {
  words_t argv = {0};
  size_t script_len = 0;
  service_argv(compose, init, &argv);
  for (size_t i = 0; i < argv.count; i++)
    script_len += strlen(argv.items[i]) + 1;
  char *script = calloc(1, script_len + 1);
  for (size_t i = 0; i < argv.count; i++) {
    strcat(script, argv.items[i]);
    strcat(script, "\n");
  }
  words_free(&argv);
  /* Shell line continuations join lines. */
  for (char *slash = strstr(script, "\\\n"); slash;
       slash = strstr(slash, "\\\n"))
    slash[0] = slash[1] = ' ';
  int rc = 0;
  *count = 0;
  char *save = NULL;
  for (char *line = strtok_r(script, "\n", &save); line && !rc;
       line = strtok_r(NULL, "\n", &save)) {
    words_t words = {0};
    if (line[strspn(line, " \t")] == '#')
      continue; /* a commented-out topic is not created */
    words_split(&words, line);
    const char *name = option(&words, "--topic");
    const char *partitions = option(&words, "--partitions");
    const char *policy = NULL;
    char configs[512] = ",";
    for (size_t i = 0; i + 1 < words.count; i++)
      if (!strcmp(words.items[i], "--config") &&
          !strncmp(words.items[i + 1], "cleanup.policy=", 15))
        policy = words.items[i + 1] + 15;
      else if (!strcmp(words.items[i], "--config") &&
               strlen(configs) + strlen(words.items[i + 1]) + 2 <
                   sizeof(configs)) {
        strcat(configs, words.items[i + 1]);
        strcat(configs, ",");
      }
    if (name && *count == MAX_TOPICS) {
      rc = problem(compose, "more than %d topics", MAX_TOPICS);
    } else if (name) {
      topic_t *topic = &topics[(*count)++];
      snprintf(topic->name, sizeof(topic->name), "%s", name);
      snprintf(topic->policy, sizeof(topic->policy), "%s",
               policy ? policy : "");
      snprintf(topic->configs, sizeof(topic->configs), "%s", configs);
      topic->partitions = partitions ? atoi(partitions) : 0;
      if (topic->partitions < 1 || !policy)
        rc = problem(compose,
                     "topic %s is created without --partitions N "
                     "or --config cleanup.policy=",
                     name);
    }
    words_free(&words);
  }
  free(script);
  return rc;
}

static const topic_t *find_topic(const topic_t *topics, size_t count,
                                 const char *name) {
  for (size_t i = 0; i < count; i++)
    if (!strcmp(topics[i].name, name))
      return &topics[i];
  return NULL;
}

/* The topic-init service: the one that runs kafka-topics. Its name goes
 * to name; NULL when there is none. */
static yaml_node_t *find_init(compose_t *compose, char *name, size_t size) {
  yaml_node_t *init = NULL;
  for (yaml_node_pair_t *pair = compose->services->data.mapping.pairs.start;
       !init && pair < compose->services->data.mapping.pairs.top; pair++) {
    yaml_node_t *svc = yaml_document_get_node(&compose->doc, pair->value);
    words_t argv = {0};
    service_argv(compose, svc, &argv);
    for (size_t i = 0; i < argv.count && !init; i++)
      if (strstr(argv.items[i], "kafka-topics")) {
        init = svc;
        snprintf(name, size, "%s",
                 scalar(yaml_document_get_node(&compose->doc, pair->key)));
      }
    words_free(&argv);
  }
  return init;
}

/* The topic-init service starts once Kafka is healthy and creates what
 * `tally topics` expects. */
static int check_topics(compose_t *compose, yaml_node_t *init,
                        const char *init_name, const char *kafka_name,
                        const topic_t *expected, size_t expected_count) {
  topic_t created[MAX_TOPICS];
  size_t created_count = 0;
  if (!depends_on(compose, init, kafka_name, "service_healthy"))
    return problem(compose,
                   "%s: must depend on '%s' with condition "
                   "service_healthy",
                   init_name, kafka_name);
  if (init_topics(compose, init, created, &created_count))
    return -1;
  const topic_t *usage =
      find_topic(created, created_count, TALLY_DEFAULT_USAGE_TOPIC);
  if (!usage)
    return problem(compose, "%s: does not create the usage topic %s", init_name,
                   TALLY_DEFAULT_USAGE_TOPIC);
  for (size_t i = 0; i < expected_count; i++) {
    const topic_t *want = &expected[i];
    const topic_t *got = find_topic(created, created_count, want->name);
    int partitions = want->partitions ? want->partitions : usage->partitions;
    if (!got)
      return problem(compose, "%s: does not create topic %s", init_name,
                     want->name);
    if (strcmp(got->policy, want->policy))
      return problem(compose,
                     "%s: topic %s has cleanup.policy=%s, `tally "
                     "topics` says %s",
                     init_name, want->name, got->policy, want->policy);
    if (got->partitions != partitions)
      return problem(compose, "%s: topic %s has %d partitions, expected %d%s",
                     init_name, want->name, got->partitions, partitions,
                     want->partitions ? "" : " (as many as the usage topic)");
    /* Each of want's configs, exactly (",name=value,"), among got's. */
    char config[256];
    for (const char *at = want->configs + 1; *at; at += strcspn(at, ",") + 1) {
      snprintf(config, sizeof(config), ",%.*s,", (int)strcspn(at, ","), at);
      if (!strstr(got->configs, config))
        return problem(compose,
                       "%s: topic %s is created without --config %.*s "
                       "(`tally topics` lists it)",
                       init_name, want->name, (int)strlen(config) - 2,
                       config + 1);
    }
  }
  return 0;
}

/* The packages tests/CMake need that scripts/install-deps.sh installs: its
 * lib*-dev packages, less clang's runtime (only the fuzzers use it). */
static int check_dockerfile_packages(compose_t *compose, const char *path,
                                     const char *install_deps) {
  char *dockerfile = th_read_file(path);
  char *script = th_read_file(install_deps);
  const char *list = script ? strstr(script, "packages=(") : NULL;
  const char *end = list ? strchr(list, ')') : NULL;
  words_t packages = {0};
  int rc = 0;
  if (!dockerfile || !list || !end) {
    rc = problem(compose, "cannot read %s, or %s has no packages=( ... )", path,
                 install_deps);
    goto done;
  }
  char *text = strndup(list + 10, (size_t)(end - list - 10));
  words_split(&packages, text);
  free(text);
  for (size_t i = 0; i < packages.count && !rc; i++) {
    const char *package = packages.items[i];
    size_t len = strlen(package);
    if (strncmp(package, "lib", 3) || len < 5 ||
        strcmp(package + len - 4, "-dev") || !strncmp(package, "libclang", 8))
      continue;
    int found = 0;
    for (const char *at = strstr(dockerfile, package); at && !found;
         at = strstr(at + 1, package))
      found = (at == dockerfile || isspace((unsigned char)at[-1])) &&
              (isspace((unsigned char)at[len]) || at[len] == '\\' ||
               at[len] == '\0');
    if (!found)
      rc = problem(compose,
                   "%s does not install %s (scripts/install-deps.sh "
                   "does): the image would not build",
                   path, package);
  }
done:
  words_free(&packages);
  free(dockerfile);
  free(script);
  return rc;
}

/* Every processor's build: the Dockerfile exists and installs what builds
 * tally. */
static int check_builds(compose_t *compose, const char *compose_dir,
                        const char *repo_dir) {
  char context[1024], path[2048], install_deps[1024];
  snprintf(install_deps, sizeof(install_deps), "%s/scripts/install-deps.sh",
           repo_dir);
  for (yaml_node_pair_t *pair = compose->services->data.mapping.pairs.start;
       pair < compose->services->data.mapping.pairs.top; pair++) {
    const char *name = scalar(yaml_document_get_node(&compose->doc, pair->key));
    yaml_node_t *svc = yaml_document_get_node(&compose->doc, pair->value);
    yaml_node_t *build = map_get(&compose->doc, svc, "build");
    if (!build)
      continue;
    const char *context_dir = scalar(build);
    const char *dockerfile = NULL;
    if (!context_dir) {
      context_dir = scalar(map_get(&compose->doc, build, "context"));
      dockerfile = scalar(map_get(&compose->doc, build, "dockerfile"));
    }
    host_path(compose_dir, context_dir ? context_dir : ".", context,
              sizeof(context));
    host_path(context, dockerfile ? dockerfile : "Dockerfile", path,
              sizeof(path));
    if (access(path, R_OK))
      return problem(compose, "%s: Dockerfile %s does not exist", name, path);
    if (check_dockerfile_packages(compose, path, install_deps))
      return -1;
  }
  return 0;
}

/*
 * The whole check of a compose file's text. compose_dir resolves the
 * file's relative paths, repo_dir finds scripts/install-deps.sh, expected
 * is what `tally topics` printed. 0, or -1 with the reason in why.
 */
static int check_compose(const char *text, const char *compose_dir,
                         const char *repo_dir, const topic_t *expected,
                         size_t expected_count, char *why, size_t why_size) {
  compose_t compose = {.why = why, .why_size = why_size};
  yaml_parser_t parser;
  char brokers[256], kafka_name[128], init_name[128] = "";
  int rc = -1;
  why[0] = '\0';
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_string(&parser, (const unsigned char *)text,
                               strlen(text));
  if (!yaml_parser_load(&parser, &compose.doc)) {
    problem(&compose, "compose.yaml does not parse: line %zu column %zu: %s",
            parser.problem_mark.line + 1, parser.problem_mark.column + 1,
            parser.problem ? parser.problem : "?");
    yaml_parser_delete(&parser);
    return -1;
  }
  yaml_parser_delete(&parser);
  yaml_node_t *root = yaml_document_get_root_node(&compose.doc);
  compose.services = map_get(&compose.doc, root, "services");
  if (map_get(&compose.doc, root, "name")) {
    problem(&compose, "compose.yaml: a top-level name: (Debian's "
                      "docker-compose 1.29 refuses it; set "
                      "COMPOSE_PROJECT_NAME in compose/.env instead)");
    goto done;
  }
  if (!compose.services || compose.services->type != YAML_MAPPING_NODE) {
    problem(&compose, "compose.yaml: no services mapping");
    goto done;
  }
  /* Found first, since the processors must depend on it. */
  yaml_node_t *init = find_init(&compose, init_name, sizeof(init_name));
  if (!init) {
    problem(&compose, "no topic-init service (none runs kafka-topics)");
    goto done;
  }
  if (check_processors(&compose, compose_dir, init_name, brokers,
                       sizeof(brokers)) ||
      check_kafka(&compose, brokers, kafka_name, sizeof(kafka_name)) ||
      check_topics(&compose, init, init_name, kafka_name, expected,
                   expected_count) ||
      check_builds(&compose, compose_dir, repo_dir))
    goto done;
  rc = 0;
done:
  yaml_document_delete(&compose.doc);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* `tally topics`, and the tests.                                           */

static size_t tally_topics(topic_t *topics) {
  char *dir = th_mkdtemp("compose");
  char out[600];
  size_t count = 0;
  assert_non_null(dir);
  snprintf(out, sizeof(out), "%s/topics", dir);
  char *argv[] = {(char *)th_tally_bin(), "topics", NULL};
  assert_int_equal(th_wait_exit(th_spawn(argv, NULL, out, NULL), 10000), 0);
  char *text = th_read_file(out);
  assert_non_null(text);
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    char partitions[16], configs[500];
    topic_t *topic = &topics[count];
    assert_true(count < MAX_TOPICS);
    assert_int_equal(sscanf(line, "%127s %15s %15s %499s", topic->name,
                            partitions, topic->policy, configs),
                     4);
    if (strcmp(configs, "-"))
      snprintf(topic->configs, sizeof(topic->configs), ",%s,", configs);
    else
      snprintf(topic->configs, sizeof(topic->configs), ",");
    topic->partitions = strcmp(partitions, "input") ? atoi(partitions) : 0;
    assert_true(!strcmp(partitions, "input") || topic->partitions > 0);
    assert_true(!strcmp(topic->policy, "delete") ||
                !strcmp(topic->policy, "compact"));
    count++;
  }
  free(text);
  th_rmrf(dir);
  free(dir);
  /* The code's own defaults are among them. */
  assert_non_null(find_topic(topics, count, TALLY_DEFAULT_USAGE_TOPIC));
  assert_non_null(find_topic(topics, count, TLY_DEFAULT_DLQ_TOPIC));
  assert_non_null(find_topic(topics, count, TLY_DEFAULT_ALERTS_TOPIC));
  /* Unprocessed billable events never expire (issue 16), nor the input. */
  const char *keep_for_good[] = {TLY_DEFAULT_DLQ_TOPIC,
                                 TALLY_DEFAULT_USAGE_TOPIC};
  for (size_t i = 0; i < 2; i++) {
    const topic_t *topic = find_topic(topics, count, keep_for_good[i]);
    assert_non_null(topic);
    if (!strstr(topic->configs, ",retention.ms=-1,"))
      fail_msg("`tally topics`: %s without retention.ms=-1", topic->name);
  }
  return count;
}

/* What both tests start from: the topics `tally topics` prints (into
 * topics, their number into *count) and compose.yaml's text (malloc'd). */
static char *load_inputs(topic_t *topics, size_t *count) {
  char *text = th_read_file(COMPOSE_FILE);
  *count = tally_topics(topics);
  assert_non_null(text);
  return text;
}

static void test_compose_matches_the_code(void **state) {
  (void)state;
  topic_t topics[MAX_TOPICS];
  size_t count;
  char why[1024], *text = load_inputs(topics, &count);
  if (check_compose(text, COMPOSE_DIR, TALLY_SOURCE_DIR, topics, count, why,
                    sizeof(why)))
    fail_msg("%s: %s", COMPOSE_FILE, why);
  printf("# compose.yaml: %zu topics as `tally topics` lists them\n", count);
  free(text);
}

/* A copy of text with every from replaced by to; the caller frees it. */
static char *replace_all(const char *text, const char *from, const char *to) {
  size_t from_len = strlen(from), to_len = strlen(to), count = 0;
  for (const char *at = strstr(text, from); at;
       at = strstr(at + from_len, from))
    count++;
  char *out = malloc(strlen(text) + count * to_len + 1), *write = out;
  for (const char *at; (at = strstr(text, from)); text = at + from_len) {
    memcpy(write, text, (size_t)(at - text));
    write += at - text;
    memcpy(write, to, to_len);
    write += to_len;
  }
  strcpy(write, text);
  return out;
}

typedef struct {
  const char *from, *to; /* every from becomes to */
  const char *reason;    /* expected in the checker's answer */
} breakage_t;

static const breakage_t breakages[] = {
    {"services:", "services: [", "does not parse"},
    {"--topic tally.changelog --partitions 12 --config cleanup.policy=compact",
     "--topic tally.changelog --partitions 12 --config cleanup.policy=delete",
     "tally.changelog has cleanup.policy=delete"},
    {"--topic tally.changelog --partitions 12",
     "--topic tally.changelog "
     "--partitions 6",
     "tally.changelog has 6 partitions, expected 12"},
    {"create --topic tally.members", "# create --topic tally.members",
     "does not create topic tally.members"},
    {"--topic tally.alerts --partitions 4",
     "--topic tally.alerts --partitions 2",
     "tally.alerts has 2 partitions, expected 4"},
    {"/opt/kafka/bin/kafka-topics.sh", "/opt/kafka/bin/kafka-configs.sh",
     "no topic-init service"},
    {"  tally-2:\n    <<: *tally\n",
     "  tally-2:\n    <<: *tally\n    entrypoint: [tally, run, --brokers, "
     "kafka:9092, --group, other, --state-dir, /var/lib/tally]\n",
     "--group other"},
    {"  tally-2:\n    <<: *tally\n",
     "  tally-2:\n    <<: *tally\n    entrypoint: [tally, --help]\n",
     "1 service(s) run `tally run`"},
    {"    TALLY_CLUSTER_SECRET: ", "    TALLY_CLUSTER_SECRETS: ",
     "tally-1: no cluster secret"},
    {"\"http://tally-2:8080\"", "\"http://tally-1:8080\"",
     "tally-2: --advertise http://tally-1:8080 is tally-1's too"},
    {"\"http://tally-2:8080\"", "\"http://127.0.0.1:8080\"",
     "tally-2: --advertise http://127.0.0.1:8080 is this container's own"},
    {"--advertise, \"http://tally-2:8080\", ", "", "tally-2: no --advertise"},
    {"tally-2-state:/var/lib/tally", "tally-1-state:/var/lib/tally",
     "each instance needs its own"},
    {"\"127.0.0.1:8082:8080\"", "\"8082:8080\"", "127.0.0.1 only"},
    {"./tally.json:", "./missing.json:", "missing.json does not exist"},
    {"./tally.json:", "./Dockerfile:", "Dockerfile does not load"},
    {"dockerfile: compose/Dockerfile", "dockerfile: compose/Dockerfile.nope",
     "does not exist"},
    {"dockerfile: compose/Dockerfile", "dockerfile: scripts/test.sh",
     "does not install librdkafka-dev"},
    {"KAFKA_PROCESS_ROLES: broker,controller", "KAFKA_PROCESS_ROLES: broker",
     "not a single KRaft node"},
    {"service_completed_successfully", "service_started",
     "must depend on 'topics' with condition service_completed_successfully"},
    {"  depends_on:\n    topics:\n      condition: "
     "service_completed_successfully\n",
     "", "must depend on 'topics'"},
    {"condition: service_healthy", "condition: service_started",
     "topics: must depend on 'kafka' with condition service_healthy"},
    {"--partitions 1 --config cleanup.policy=delete --config retention.ms=-1",
     "--partitions 1 --config cleanup.policy=delete",
     "topic tally.usage.dlq is created without --config retention.ms=-1"},
    {"--config retention.ms=-1 --config message.timestamp.type=LogAppendTime",
     "--config retention.ms=604800000 --config "
     "message.timestamp.type=LogAppendTime",
     "topic tally.usage is created without --config retention.ms=-1"},
    {"x-tally: &tally\n", "name: tally\nx-tally: &tally\n",
     "a top-level name:"},
    {"\"http://tally-2:8080\"", "\"http://tally-two:8080\"",
     "tally-2: --advertise http://tally-two:8080 names host 'tally-two', not "
     "the service name 'tally-2'"},
    {"\"http://tally-2:8080\"", "\"http://tally-2:9090\"",
     "tally-2: --advertise http://tally-2:9090 names port 9090, but --http "
     "listens on 8080"},
    {"    - 0.0.0.0:8080\n", "    - 127.0.0.1:8080\n",
     "tally-1: --http 127.0.0.1:8080 listens on one address only"},
};

static void test_broken_compose_files_fail(void **state) {
  (void)state;
  topic_t topics[MAX_TOPICS];
  size_t count;
  char why[1024], *text = load_inputs(topics, &count);
  for (size_t i = 0; i < sizeof(breakages) / sizeof(breakages[0]); i++) {
    const breakage_t *breakage = &breakages[i];
    /* A breakage that no longer applies would pass for the wrong reason. */
    if (!strstr(text, breakage->from))
      fail_msg("breakage %zu: compose.yaml no longer has '%s'", i,
               breakage->from);
    char *broken = replace_all(text, breakage->from, breakage->to);
    int rc = check_compose(broken, COMPOSE_DIR, TALLY_SOURCE_DIR, topics, count,
                           why, sizeof(why));
    free(broken);
    if (!rc || !strstr(why, breakage->reason))
      fail_msg("breakage %zu: expected a failure with '%s', got %s '%s'", i,
               breakage->reason, rc ? "a failure" : "success", why);
    printf("# broken %zu: %s\n", i, why);
  }
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_compose_matches_the_code),
      cmocka_unit_test(test_broken_compose_files_fail),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
