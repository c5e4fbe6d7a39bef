/*
 * cmd_dev.c - `tally dev`: everything in one process on a fresh state dir:
 * the embedded broker, the processor, the HTTP port and, with --demo, a
 * producer thread emitting a realistic mix of usage for a few hundred
 * subjects (API calls, AI tokens of several models, storage), so the HTTP
 * port has something to show at once. The fresh state dir it makes
 * (/tmp/tally-dev-XXXXXX) is removed when it exits, unless --keep; a dir
 * given with --state-dir is never removed.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include "cli.h"

#include "tally_producer.h"
#include "tly_auth.h"
#include "tly_log.h"
#include "tly_processor.h"

#include <ftw.h>
#include <getopt.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  const char *brokers;
  int subjects;
  int rate; /* events per second */
} demo_conf_t;

typedef struct {
  const char *provider, *model;
} demo_model_t;

static const demo_model_t demo_models[] = {
    {"openai", "gpt-4o"},
    {"openai", "gpt-4o-mini"},
    {"anthropic", "claude-sonnet"},
    {"google", "gemini-flash"},
};

/* Subject i of the demo: mostly users, some API keys (stored only as the
 * SHA-256 of the key, as tally always does), some anonymous visitors. */
static void demo_subject(int i, tly_event_t *event, char *id, size_t id_size) {
  if (i % 10 == 7) {
    char raw_key[64];
    unsigned char digest[SHA256_DIGEST_LENGTH];
    snprintf(raw_key, sizeof(raw_key), "sk_demo_%04d", i);
    SHA256((const unsigned char *)raw_key, strlen(raw_key), digest);
    for (size_t b = 0; b < sizeof(digest) && 2 * b + 2 < id_size; b++)
      snprintf(id + 2 * b, 3, "%02x", digest[b]);
    event->subject_kind = TLY_SUBJECT_API_KEY;
  } else if (i % 10 == 9) {
    snprintf(id, id_size, "fp-%08x", (unsigned)(i * 2654435761u));
    event->subject_kind = TLY_SUBJECT_ANONYMOUS;
  } else {
    snprintf(id, id_size, "user-%04d", i);
    event->subject_kind = TLY_SUBJECT_USER;
  }
  event->subject_id = id;
}

static void *demo_main(void *arg) {
  const demo_conf_t *conf = arg;
  tally_producer_conf_t pconf = {.brokers = conf->brokers};
  char errstr[512], id[80], event_id[64];
  unsigned seed = (unsigned)time(NULL);
  unsigned long long counter = 0;
  tally_producer_t *producer =
      tally_producer_new(&pconf, errstr, sizeof(errstr));

  if (!producer) {
    tly_log(TLY_LOG_ERROR, "demo", "%s", errstr);
    return NULL;
  }
  int64_t started = tly_monotonic_ms();
  while (!cli_stop) {
    tly_event_t event = {0};
    /* A skewed pick: a few heavy subjects, a long tail of light ones. */
    int r = rand_r(&seed) % conf->subjects;
    int subject = (rand_r(&seed) % 4 == 0) ? r % 10 : r;
    int kind = rand_r(&seed) % 10;

    demo_subject(subject, &event, id, sizeof(id));
    snprintf(event_id, sizeof(event_id), "demo-%u-%llu", seed, counter);
    event.event_id = event_id;
    event.occurred_at_ms = tly_wall_ms();
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    tly_usage_recorded_t *usage = &event.body.usage;
    if (kind < 6) {
      usage->feature = "api_calls";
      usage->unit = "call";
      usage->quantity = 1;
    } else if (kind < 9) {
      const demo_model_t *model =
          &demo_models[rand_r(&seed) %
                       (sizeof(demo_models) / sizeof(demo_models[0]))];
      usage->feature = "ai_tokens";
      usage->unit = "token";
      usage->has_ai = 1;
      usage->ai.provider = (char *)model->provider;
      usage->ai.model = (char *)model->model;
      usage->ai.input_tokens = 50 + rand_r(&seed) % 4000;
      usage->ai.output_tokens = 20 + rand_r(&seed) % 1000;
      usage->quantity = usage->ai.input_tokens + usage->ai.output_tokens;
    } else {
      usage->feature = "storage_bytes";
      usage->unit = "byte";
      usage->quantity = 1024 * (1 + rand_r(&seed) % 4096);
    }
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)))
      tly_log(TLY_LOG_WARN, "demo", "send: %s", errstr);
    counter++;
    /* Pace to the configured rate. */
    int64_t due = started + (int64_t)(counter * 1000ULL / (unsigned)conf->rate);
    int64_t wait = due - tly_monotonic_ms();
    if (wait > 0) {
      tally_producer_poll(producer, (int)(wait > 100 ? 100 : wait));
    } else {
      tally_producer_poll(producer, 0);
    }
  }
  tally_producer_destroy(producer);
  return NULL;
}

/* A fresh random API key for this run: printed once so the demo can be
 * queried with curl; only its digest is handed to the HTTP port. 0 or -1. */
static int dev_api_key(char *key, size_t key_size,
                       char digest_hex[TLY_SHA256_HEX_LEN + 1]) {
  unsigned char random[24];
  if (key_size < 8 + 2 * sizeof(random) + 1 ||
      RAND_bytes(random, sizeof(random)) != 1)
    return -1;
  memcpy(key, "tly_dev_", 8);
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(key + 8 + 2 * i, 3, "%02x", random[i]);
  tly_sha256_hex(key, strlen(key), digest_hex);
  return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* rm -rf of the state dir dev made itself (never a symlink's target). */
static void remove_state_dir(const char *dir) {
  if (nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS))
    fprintf(stderr, "tally dev: could not remove %s entirely\n", dir);
  else
    printf("tally: removed %s (--keep keeps it)\n", dir);
}

int cmd_dev(int argc, char **argv) {
  static const struct option options[] = {
      {"demo", no_argument, NULL, 'D'},
      {"state-dir", required_argument, NULL, 's'},
      {"http", required_argument, NULL, 'H'},
      {"partitions", required_argument, NULL, 'p'},
      {"demo-rate", required_argument, NULL, 'r'},
      {"demo-subjects", required_argument, NULL, 'n'},
      {"config", required_argument, NULL, 'c'},
      {"advertise", required_argument, NULL, 'A'},
      {"cluster-secret-file", required_argument, NULL, 'S'},
      {"keep", no_argument, NULL, 'k'},
      {"memory-budget", required_argument, NULL, 'B'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  char address[64] = "127.0.0.1", state_dir[4096] = "";
  cli_serve_conf_t conf = {.http_address = address,
                           .http_port = 8080,
                           .tick_interval_ms = 60000,
                           .cluster_secret_random = 1,
                           .standby_replicas = 1};
  cli_broker_conf_t bconf = {.partitions = 16};
  demo_conf_t demo = {.subjects = 300, .rate = 200};
  int opt, with_demo = 0, keep = 0, made_state_dir = 0;
  int64_t number;
  char errstr[512], api_key[64], api_key_sha256[TLY_SHA256_HEX_LEN + 1];
  pthread_t demo_thread;

  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
    case 'D':
      with_demo = 1;
      break;
    case 's':
      snprintf(state_dir, sizeof(state_dir), "%s", optarg);
      break;
    case 'H':
      if (cli_parse_listen(optarg, address, sizeof(address), &conf.http_port)) {
        fprintf(stderr, "tally dev: --http %s: expected ADDR:PORT\n", optarg);
        return 2;
      }
      break;
    case 'p':
      if (cli_parse_int("dev", "partitions", optarg, 1, 10000, NULL, &number))
        return 2;
      bconf.partitions = (int)number;
      break;
    case 'r':
      if (cli_parse_int("dev", "demo-rate", optarg, 1, 1000000, NULL, &number))
        return 2;
      demo.rate = (int)number;
      break;
    case 'n':
      if (cli_parse_int("dev", "demo-subjects", optarg, 1, 1000000, NULL,
                        &number))
        return 2;
      demo.subjects = (int)number;
      break;
    case 'c':
      conf.config_path = optarg;
      break;
    case 'A':
      conf.advertise = optarg;
      break;
    case 'S':
      conf.cluster_secret_file = optarg;
      break;
    case 'k':
      keep = 1;
      break;
    case 'B': /* as tally run's (the embedded broker is outside it) */
      if (cli_parse_int("dev", "memory-budget", optarg, TLY_MEMORY_BUDGET_MIN,
                        TLY_MEMORY_BUDGET_MAX, "(bytes)",
                        &conf.memory_budget_bytes))
        return 2;
      break;
    case 'h':
      printf("usage: tally dev [--demo] [--state-dir DIR] [--http ADDR:PORT] "
             "[--partitions N] [--demo-rate EVENTS_PER_S] [--demo-subjects N] "
             "[--config FILE] [--advertise URL] [--cluster-secret-file F] "
             "[--keep] [--memory-budget BYTES]\n"
             "  without --state-dir, a fresh /tmp/tally-dev-XXXXXX is used and "
             "removed on\n"
             "  exit (--keep keeps it)\n"
             "  the cluster secret (--cluster-secret-file or "
             "$TALLY_CLUSTER_SECRET) is\n"
             "  only needed for `tally run` instances joining this one; "
             "without it a\n"
             "  random one is used for this run\n"
             "  --memory-budget BYTES bounds what the processor keeps in "
             "memory, as for\n"
             "  tally run (default 1 GiB; the embedded broker is not in it)\n");
      return 0;
    default:
      return 2;
    }
  }
  if (demo.rate < 1 || demo.subjects < 1 || bconf.partitions < 1) {
    fprintf(stderr, "tally dev: --demo-rate, --demo-subjects and --partitions "
                    "must be positive\n");
    return 2;
  }
  if (!*state_dir) {
    snprintf(state_dir, sizeof(state_dir), "/tmp/tally-dev-XXXXXX");
    if (!mkdtemp(state_dir)) {
      perror("tally dev: mkdtemp");
      return 1;
    }
    made_state_dir = !keep;
  }
  int rc = 1;
  cli_broker_t *broker = NULL;
  if (dev_api_key(api_key, sizeof(api_key), api_key_sha256) ||
      cli_serve_add_api_key(&conf, api_key_sha256)) {
    fprintf(stderr, "tally dev: cannot generate an API key\n");
    goto out;
  }
  cli_install_signals();
  broker = cli_broker_start(&bconf, errstr, sizeof(errstr));
  if (!broker) {
    fprintf(stderr, "tally dev: %s\n", errstr);
    goto out;
  }
  printf("tally: kafka  %s   (embedded broker; topics tally.usage x%d, "
         "tally.usage.dlq, tally.alerts, tally.members)\n",
         cli_broker_bootstrap(broker), bconf.partitions);
  conf.brokers = cli_broker_bootstrap(broker);
  conf.state_dir = state_dir;
  demo.brokers = conf.brokers;
  printf("tally: api key %s   (this run only; send it as "
         "'Authorization: Bearer <key>')\n",
         api_key);
  if (with_demo) {
    if (pthread_create(&demo_thread, NULL, demo_main, &demo)) {
      fprintf(stderr, "tally dev: cannot start the demo producer\n");
      goto out;
    }
    printf("tally: demo   %d events/s over %d subjects, e.g.\n"
           "              curl -H 'Authorization: Bearer %s' "
           "http://%s:%u/v1/subjects/user:user-0001/usage\n",
           demo.rate, demo.subjects, api_key, address,
           (unsigned)conf.http_port);
  }
  printf("tally: Ctrl-C to stop\n");
  fflush(stdout);
  rc = cli_serve(&conf);
  cli_stop = 1;
  if (with_demo)
    pthread_join(demo_thread, NULL);
out:
  cli_broker_stop(broker);
  if (made_state_dir)
    remove_state_dir(state_dir);
  return rc;
}
