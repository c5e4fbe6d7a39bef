/*
 * tly_members.c - membership on a compacted topic (see tly_members.h): the
 * pure map of announcements, and the thread that announces this instance
 * and reads everyone's announcements into the map.
 *
 * The thread wakes every POLL_MS: it reads what arrived, takes this
 * instance's view from the processor and announces when the view changed
 * or a heartbeat is due. While the processor is rebalancing, every
 * assigned partition is announced as replaying: a partition that may be
 * on its way out is never claimed as served.
 */
#include "tly_members.h"

#include "tly_kafka_client.h"
#include "tly_log.h"
#include "tly_topics.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_MS 100
/* A clean shutdown waits this long for the tombstone's acknowledgement. */
#define TOMBSTONE_FLUSH_MS 3000
/* A larger value is no announcement of ours (bounded reads). */
#define VALUE_MAX (1024 * 1024)

/* ---- announcements ---------------------------------------------------- */

void tly_members_announcement_clear(tly_members_announcement_t *announcement) {
  if (!announcement)
    return;
  free(announcement->partitions);
  free(announcement->replaying);
  free(announcement->standby);
  memset(announcement, 0, sizeof(*announcement));
}

/* Copies a JSON string field into out (size bytes); 0 or -1. */
static int copy_string(json_t *object, const char *name, char *out, size_t size,
                       char *errstr, size_t errstr_size) {
  const char *text = json_string_value(json_object_get(object, name));
  if (!text || !*text || strlen(text) >= size) {
    snprintf(errstr, errstr_size, "%s: expected a string of 1 to %zu bytes",
             name, size - 1);
    return -1;
  }
  memcpy(out, text, strlen(text) + 1);
  return 0;
}

static int decode_partitions(json_t *object, const char *name, int32_t **out,
                             size_t *count, char *errstr, size_t errstr_size) {
  json_t *array = json_object_get(object, name);
  if (!array) { /* an older or smaller announcer: none */
    *count = 0;
    return 0;
  }
  size_t n = json_array_size(array);
  if (!json_is_array(array) || n > TLY_MEMBERS_PARTITIONS_MAX) {
    snprintf(errstr, errstr_size,
             "%s: expected an array of at most %d "
             "partitions",
             name, TLY_MEMBERS_PARTITIONS_MAX);
    return -1;
  }
  *out = n ? calloc(n, sizeof(**out)) : NULL;
  if (n && !*out) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *item = json_array_get(array, i);
    json_int_t value = json_integer_value(item);
    if (!json_is_integer(item) || value < 0 ||
        value >= TLY_MEMBERS_PARTITIONS_MAX) {
      snprintf(errstr, errstr_size, "%s[%zu]: expected a partition number",
               name, i);
      return -1;
    }
    (*out)[i] = (int32_t)value;
  }
  *count = n;
  return 0;
}

int tly_members_decode(const char *value, size_t value_len,
                       tly_members_announcement_t *out, char *errstr,
                       size_t errstr_size) {
  json_error_t error;
  memset(out, 0, sizeof(*out));
  if (value_len > VALUE_MAX) {
    snprintf(errstr, errstr_size, "announcement larger than %d bytes",
             VALUE_MAX);
    return -1;
  }
  json_t *root = json_loadb(value, value_len, 0, &error);
  if (!json_is_object(root)) {
    snprintf(errstr, errstr_size, "not a JSON object: %s",
             root ? "" : error.text);
    json_decref(root);
    return -1;
  }
  int rc = -1;
  json_t *at = json_object_get(root, "at"), *seq = json_object_get(root, "seq");
  if (copy_string(root, "instance", out->instance, sizeof(out->instance),
                  errstr, errstr_size) ||
      copy_string(root, "http", out->http, sizeof(out->http), errstr,
                  errstr_size))
    goto out;
  if (strncmp(out->http, "http://", 7) != 0 &&
      strncmp(out->http, "https://", 8) != 0) {
    snprintf(errstr, errstr_size, "http: expected an http:// or https:// URL");
    goto out;
  }
  if (!json_is_integer(at) || (seq && !json_is_integer(seq))) {
    snprintf(errstr, errstr_size, "at, seq: expected integers");
    goto out;
  }
  out->at_ms = json_integer_value(at);
  out->seq = seq ? json_integer_value(seq) : 0;
  if (decode_partitions(root, "partitions", &out->partitions,
                        &out->partition_count, errstr, errstr_size) ||
      decode_partitions(root, "replaying", &out->replaying,
                        &out->replaying_count, errstr, errstr_size) ||
      decode_partitions(root, "standby", &out->standby, &out->standby_count,
                        errstr, errstr_size))
    goto out;
  rc = 0;
out:
  json_decref(root);
  return rc;
}

static json_t *partitions_json(const int32_t *partitions, size_t count) {
  json_t *array = json_array();
  for (size_t i = 0; array && i < count; i++)
    json_array_append_new(array, json_integer(partitions[i]));
  return array;
}

char *tly_members_encode(const tly_members_announcement_t *announcement) {
  json_t *root = json_pack(
      "{s:s,s:s,s:o,s:o,s:o,s:I,s:I}", "instance", announcement->instance,
      "http", announcement->http, "partitions",
      partitions_json(announcement->partitions, announcement->partition_count),
      "replaying",
      partitions_json(announcement->replaying, announcement->replaying_count),
      "standby",
      partitions_json(announcement->standby, announcement->standby_count), "at",
      (json_int_t)announcement->at_ms, "seq", (json_int_t)announcement->seq);
  char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  return text;
}

/* ---- the map ---------------------------------------------------------- */

typedef struct {
  tly_members_announcement_t announcement;
  int64_t fresh_ms; /* min(at, received): when it was last known alive */
  int left;         /* its tombstone: kept (no claims) against replays */
} member_t;

struct tly_members_map {
  int64_t stale_ms;
  tly_cluster_secret_t secret;
  int has_secret;
  member_t *members;
  size_t count, cap;
};

const char *tly_members_verdict_name(tly_members_verdict_t verdict) {
  static const char *const names[TLY_MEMBERS_VERDICTS] = {
      "applied", "bad_mac", "malformed", "stale", "replayed"};
  return verdict < TLY_MEMBERS_VERDICTS ? names[verdict] : "unknown";
}

tly_members_map_t *tly_members_map_new(int64_t stale_ms,
                                       const tly_cluster_secret_t *secret) {
  tly_members_map_t *map = calloc(1, sizeof(*map));
  if (!map)
    return NULL;
  map->stale_ms =
      stale_ms > 0 ? stale_ms : 3 * TLY_MEMBERS_DEFAULT_HEARTBEAT_MS;
  if (secret) {
    map->secret = *secret;
    map->has_secret = 1;
  }
  return map;
}

void tly_members_map_free(tly_members_map_t *map) {
  if (!map)
    return;
  for (size_t i = 0; i < map->count; i++)
    tly_members_announcement_clear(&map->members[i].announcement);
  free(map->members);
  tly_cluster_secret_clear(&map->secret);
  free(map);
}

static member_t *map_find(const tly_members_map_t *map, const char *instance) {
  for (size_t i = 0; i < map->count; i++)
    if (strcmp(map->members[i].announcement.instance, instance) == 0)
      return &map->members[i];
  return NULL;
}

static int is_fresh(const tly_members_map_t *map, const member_t *member,
                    int64_t now_ms) {
  return now_ms - member->fresh_ms <= map->stale_ms;
}

/* Drops members that left and are stale: no replay of theirs can be fresh
 * any more. */
static void prune_departed(tly_members_map_t *map, int64_t now_ms) {
  for (size_t i = 0; i < map->count;) {
    member_t *member = &map->members[i];
    if (member->left && !is_fresh(map, member, now_ms)) {
      tly_members_announcement_clear(&member->announcement);
      *member = map->members[--map->count];
    } else {
      i++;
    }
  }
}

static member_t *map_add(tly_members_map_t *map, const char *instance) {
  if (map->count == map->cap) {
    size_t cap = map->cap ? map->cap * 2 : 8;
    member_t *grown = realloc(map->members, cap * sizeof(*grown));
    if (!grown)
      return NULL;
    map->members = grown;
    map->cap = cap;
  }
  member_t *member = &map->members[map->count++];
  memset(member, 0, sizeof(*member));
  snprintf(member->announcement.instance, sizeof(member->announcement.instance),
           "%s", instance);
  return member;
}

/* The record's time from its tally.at header. 0, or -1. */
static int signature_at(const tly_members_signature_t *signature,
                        int64_t *at_ms) {
  char text[24];
  if (!signature || !signature->at || signature->at_len == 0 ||
      signature->at_len >= sizeof(text))
    return -1;
  memcpy(text, signature->at, signature->at_len);
  text[signature->at_len] = '\0';
  size_t start = text[0] == '-' ? 1 : 0;
  if (!text[start] ||
      strspn(text + start, "0123456789") != strlen(text) - start)
    return -1;
  *at_ms = strtoll(text, NULL, 10);
  return 0;
}

tly_members_verdict_t
tly_members_map_apply(tly_members_map_t *map, const char *key, size_t key_len,
                      const char *value, size_t value_len,
                      const tly_members_signature_t *signature,
                      int64_t received_ms, char *errstr, size_t errstr_size) {
  char instance[TLY_MEMBERS_INSTANCE_MAX];
  int64_t at_ms = 0;
  if (!key || key_len == 0 || key_len >= sizeof(instance) ||
      memchr(key, '\0', key_len)) {
    snprintf(errstr, errstr_size,
             "key: expected an instance id of 1 to %zu "
             "bytes",
             sizeof(instance) - 1);
    return TLY_MEMBERS_MALFORMED;
  }
  memcpy(instance, key, key_len);
  instance[key_len] = '\0';
  /* The MAC before anything else is believed (or even parsed). */
  if (!map->has_secret) {
    snprintf(errstr, errstr_size, "no cluster secret to check it with");
    return TLY_MEMBERS_BAD_MAC;
  }
  if (signature_at(signature, &at_ms) ||
      !tly_cluster_members_verify(&map->secret, key, key_len, at_ms, value,
                                  value_len, signature->mac,
                                  signature->mac_len)) {
    snprintf(errstr, errstr_size,
             "record of '%s' without a valid %s (forged, or signed with "
             "another cluster secret)",
             instance, TLY_MEMBERS_MAC_HEADER);
    return TLY_MEMBERS_BAD_MAC;
  }
  if (received_ms - at_ms > map->stale_ms ||
      at_ms - received_ms > TLY_MEMBERS_MAX_AHEAD_MS) {
    snprintf(errstr, errstr_size,
             "record of '%s' dated %lld ms from now (the window is -%lld to "
             "+%d ms)",
             instance, (long long)(at_ms - received_ms),
             (long long)map->stale_ms, TLY_MEMBERS_MAX_AHEAD_MS);
    return TLY_MEMBERS_STALE;
  }
  prune_departed(map, received_ms);
  member_t *member = map_find(map, instance);
  if (member && is_fresh(map, member, received_ms) &&
      at_ms < member->announcement.at_ms) {
    snprintf(errstr, errstr_size,
             "record of '%s' older than its last one (%lld ms)", instance,
             (long long)(member->announcement.at_ms - at_ms));
    return TLY_MEMBERS_REPLAYED;
  }
  tly_members_announcement_t announcement;
  if (!value) { /* tombstone: the member left */
    memset(&announcement, 0, sizeof(announcement));
    snprintf(announcement.instance, sizeof(announcement.instance), "%s",
             instance);
  } else if (tly_members_decode(value, value_len, &announcement, errstr,
                                errstr_size)) {
    tly_members_announcement_clear(&announcement);
    return TLY_MEMBERS_MALFORMED;
  } else if (strcmp(announcement.instance, instance) != 0 ||
             announcement.at_ms != at_ms) {
    snprintf(errstr, errstr_size,
             "instance '%s' at %lld announced under key '%s' at %lld",
             announcement.instance, (long long)announcement.at_ms, instance,
             (long long)at_ms);
    tly_members_announcement_clear(&announcement);
    return TLY_MEMBERS_MALFORMED;
  }
  announcement.at_ms = at_ms;
  if (!member && !(member = map_add(map, instance))) {
    snprintf(errstr, errstr_size, "out of memory");
    tly_members_announcement_clear(&announcement);
    return TLY_MEMBERS_MALFORMED;
  }
  tly_members_announcement_clear(&member->announcement);
  member->announcement = announcement;
  member->left = value == NULL;
  member->fresh_ms = at_ms < received_ms ? at_ms : received_ms;
  return TLY_MEMBERS_APPLIED;
}

static int contains(const int32_t *partitions, size_t count,
                    int32_t partition) {
  for (size_t i = 0; i < count; i++)
    if (partitions[i] == partition)
      return 1;
  return 0;
}

tly_owner_state_t tly_members_map_owner(const tly_members_map_t *map,
                                        int32_t partition, int64_t now_ms,
                                        tly_members_owner_t *out) {
  const member_t *claimant = NULL;
  size_t claims = 0;
  int serving = 0;
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < map->count; i++) {
    const member_t *member = &map->members[i];
    const tly_members_announcement_t *a = &member->announcement;
    if (member->left || !is_fresh(map, member, now_ms))
      continue;
    int serves = contains(a->partitions, a->partition_count, partition);
    int replays = contains(a->replaying, a->replaying_count, partition);
    if (!serves && !replays)
      continue;
    claims++;
    claimant = member;
    serving = serves;
  }
  if (claims > 1) {
    out->state = TLY_OWNER_CONFLICT;
  } else if (claims == 1) {
    out->state = serving ? TLY_OWNER_SERVING : TLY_OWNER_REPLAYING;
    snprintf(out->instance, sizeof(out->instance), "%s",
             claimant->announcement.instance);
    snprintf(out->http, sizeof(out->http), "%s", claimant->announcement.http);
  }
  return out->state;
}

/* Rendezvous score of (instance, partition): FNV-1a, then a final mix. */
static uint64_t standby_score(const char *instance, int32_t partition) {
  uint64_t h = 1469598103934665603ULL;
  for (const char *c = instance; *c; c++)
    h = (h ^ (unsigned char)*c) * 1099511628211ULL;
  for (int i = 0; i < 4; i++)
    h = (h ^ (((uint32_t)partition >> (8 * i)) & 0xff)) * 1099511628211ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

/* Whether a ranks before b (score, then id, for a total order). */
static int standby_before(const member_t *a, uint64_t score_a,
                          const member_t *b, uint64_t score_b) {
  if (score_a != score_b)
    return score_a > score_b;
  return strcmp(a->announcement.instance, b->announcement.instance) < 0;
}

/* The fresh members not claiming partition, in rank order: up to max of
 * them into ranked. Returns how many. */
static size_t standby_rank(const tly_members_map_t *map, int32_t partition,
                           int64_t now_ms, const member_t **ranked,
                           uint64_t *scores, size_t max) {
  size_t count = 0;
  for (size_t i = 0; i < map->count; i++) {
    const member_t *member = &map->members[i];
    const tly_members_announcement_t *a = &member->announcement;
    if (member->left || !is_fresh(map, member, now_ms) ||
        contains(a->partitions, a->partition_count, partition) ||
        contains(a->replaying, a->replaying_count, partition))
      continue;
    uint64_t score = standby_score(a->instance, partition);
    size_t at = count < max ? count : max;
    while (at > 0 &&
           standby_before(member, score, ranked[at - 1], scores[at - 1])) {
      if (at < max) {
        ranked[at] = ranked[at - 1];
        scores[at] = scores[at - 1];
      }
      at--;
    }
    if (at < max) {
      ranked[at] = member;
      scores[at] = score;
      if (count < max)
        count++;
    }
  }
  return count;
}

size_t tly_members_map_standbys(const tly_members_map_t *map, int32_t partition,
                                size_t n, int64_t now_ms, const char **out) {
  const member_t *ranked[TLY_MEMBERS_STANDBY_MAX];
  uint64_t scores[TLY_MEMBERS_STANDBY_MAX];
  if (n > TLY_MEMBERS_STANDBY_MAX)
    n = TLY_MEMBERS_STANDBY_MAX;
  size_t count = standby_rank(map, partition, now_ms, ranked, scores, n);
  for (size_t i = 0; i < count; i++)
    out[i] = ranked[i]->announcement.instance;
  return count;
}

int tly_members_map_standby_holder(const tly_members_map_t *map,
                                   int32_t partition, const char *self,
                                   int64_t now_ms, tly_members_owner_t *out) {
  const member_t *best = NULL;
  uint64_t best_score = 0;
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < map->count; i++) {
    const member_t *member = &map->members[i];
    const tly_members_announcement_t *a = &member->announcement;
    if (member->left || !is_fresh(map, member, now_ms) ||
        (self && strcmp(a->instance, self) == 0) ||
        !contains(a->standby, a->standby_count, partition))
      continue;
    uint64_t score = standby_score(a->instance, partition);
    if (!best || standby_before(member, score, best, best_score)) {
      best = member;
      best_score = score;
    }
  }
  if (!best)
    return 0;
  snprintf(out->instance, sizeof(out->instance), "%s",
           best->announcement.instance);
  snprintf(out->http, sizeof(out->http), "%s", best->announcement.http);
  return 1;
}

int tly_members_map_successor(const tly_members_map_t *map, int32_t partition,
                              int64_t now_ms, tly_members_owner_t *out) {
  const member_t *recent = NULL;
  int64_t quiet_ms = map->stale_ms / 2;
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < map->count; i++) {
    const member_t *member = &map->members[i];
    const tly_members_announcement_t *a = &member->announcement;
    if (member->left || !is_fresh(map, member, now_ms))
      continue;
    int serves = contains(a->partitions, a->partition_count, partition);
    if (!serves && !contains(a->replaying, a->replaying_count, partition))
      continue;
    if (now_ms - member->fresh_ms > quiet_ms)
      continue; /* silent a heartbeat and more */
    if (!serves || recent)
      return 0; /* a recent claimant that replays, or two recent ones */
    recent = member;
  }
  if (!recent)
    return 0;
  out->state = TLY_OWNER_SERVING;
  snprintf(out->instance, sizeof(out->instance), "%s",
           recent->announcement.instance);
  snprintf(out->http, sizeof(out->http), "%s", recent->announcement.http);
  return 1;
}

size_t tly_members_map_count(const tly_members_map_t *map, int64_t now_ms) {
  size_t fresh = 0;
  for (size_t i = 0; i < map->count; i++)
    fresh += !map->members[i].left && is_fresh(map, &map->members[i], now_ms);
  return fresh;
}

/* ---- the thread ------------------------------------------------------- */

struct tly_members {
  tly_members_conf_t conf;
  char *topic;
  char instance[TLY_MEMBERS_INSTANCE_MAX];
  char advertise[TLY_MEMBERS_URL_MAX];
  int64_t heartbeat_ms;
  rd_kafka_t *producer, *reader;
  pthread_mutex_t lock; /* the map */
  tly_members_map_t *map;
  pthread_t thread;
  int started;
  atomic_int stopping;
  /* The last announcement (thread only). */
  tly_members_announcement_t last;
  int64_t last_at_mono;
  int64_t seq;
  tly_cluster_secret_t secret;
  int has_secret;
  /* Records read, by verdict; the last log line about ignored ones. */
  atomic_uint_least64_t verdicts[TLY_MEMBERS_VERDICTS];
  int64_t ignored_logged_mono;
  uint64_t ignored_unlogged;
};

static rd_kafka_conf_t *kafka_conf(const tly_members_conf_t *conf,
                                   const char *const *defaults, char *errstr,
                                   size_t errstr_size) {
  char kafka_err[512];
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  tly_kafka_conf_log(kconf);
  if (rd_kafka_conf_set(kconf, "bootstrap.servers", conf->brokers, kafka_err,
                        sizeof(kafka_err)) != RD_KAFKA_CONF_OK)
    goto fail;
  for (int pass = 0; pass < 2; pass++) {
    const char *const *list = pass ? conf->kafka_properties : defaults;
    for (size_t i = 0; list && list[i]; i++) {
      const char *eq = strchr(list[i], '=');
      char name[256];
      if (!eq || (size_t)(eq - list[i]) >= sizeof(name))
        continue;
      snprintf(name, sizeof(name), "%.*s", (int)(eq - list[i]), list[i]);
      /* The reader's and the producer's own settings stay theirs. */
      if (pass && (strcmp(name, "group.id") == 0 ||
                   strcmp(name, "enable.auto.commit") == 0))
        continue;
      if (rd_kafka_conf_set(kconf, name, eq + 1, kafka_err,
                            sizeof(kafka_err)) != RD_KAFKA_CONF_OK &&
          !pass)
        goto fail;
    }
  }
  return kconf;
fail:
  snprintf(errstr, errstr_size, "members: %s", kafka_err);
  rd_kafka_conf_destroy(kconf);
  return NULL;
}

tly_members_t *tly_members_new(const tly_members_conf_t *conf, char *errstr,
                               size_t errstr_size) {
  char kafka_err[512];
  if (!conf->brokers || !conf->local.roles) {
    snprintf(errstr, errstr_size,
             "members: brokers and this instance's view are required");
    return NULL;
  }
  tly_members_t *members = calloc(1, sizeof(*members));
  if (!members) {
    snprintf(errstr, errstr_size, "members: out of memory");
    return NULL;
  }
  members->conf = *conf;
  members->conf.secret = NULL; /* copied below, never kept by reference */
  if (conf->secret) {
    members->secret = *conf->secret;
    members->has_secret = 1;
  }
  pthread_mutex_init(&members->lock, NULL);
  members->heartbeat_ms = conf->heartbeat_ms > 0
                              ? conf->heartbeat_ms
                              : TLY_MEMBERS_DEFAULT_HEARTBEAT_MS;
  members->topic =
      strdup(conf->topic ? conf->topic : TLY_DEFAULT_MEMBERS_TOPIC);
  members->map = tly_members_map_new(
      conf->stale_ms > 0 ? conf->stale_ms : 3 * members->heartbeat_ms,
      members->has_secret ? &members->secret : NULL);
  if (!members->topic || !members->map) {
    snprintf(errstr, errstr_size, "members: out of memory");
    goto fail;
  }
  if (!members->has_secret)
    return members; /* membership off: no Kafka clients */
  static const char *const producer_defaults[] = {
      "enable.idempotence=true", "linger.ms=0", "log_level=3",
      TLY_KAFKA_PARTITIONER_PROPERTY, NULL};
  static const char *const reader_defaults[] = {
      "group.id=tally-members-reader", "enable.auto.commit=false",
      "enable.partition.eof=false", "log_level=3", NULL};
  rd_kafka_conf_t *kconf =
      kafka_conf(conf, producer_defaults, errstr, errstr_size);
  if (!kconf)
    goto fail;
  members->producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kafka_err, sizeof(kafka_err));
  if (!members->producer) {
    snprintf(errstr, errstr_size, "members: producer: %s", kafka_err);
    goto fail;
  }
  kconf = kafka_conf(conf, reader_defaults, errstr, errstr_size);
  if (!kconf)
    goto fail;
  members->reader =
      rd_kafka_new(RD_KAFKA_CONSUMER, kconf, kafka_err, sizeof(kafka_err));
  if (!members->reader) {
    snprintf(errstr, errstr_size, "members: reader: %s", kafka_err);
    goto fail;
  }
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, members->topic, 0)->offset =
      RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_resp_err_t err = rd_kafka_assign(members->reader, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  if (err) {
    snprintf(errstr, errstr_size, "members: reading %s: %s", members->topic,
             rd_kafka_err2str(err));
    goto fail;
  }
  return members;
fail:
  tly_members_destroy(members);
  return NULL;
}

const char *tly_members_advertise(const tly_members_t *members) {
  return members->advertise;
}

const char *tly_members_instance(const tly_members_t *members) {
  return members->instance;
}

const tly_cluster_secret_t *tly_members_secret(const tly_members_t *members) {
  return members && members->has_secret ? &members->secret : NULL;
}

uint64_t tly_members_count(tly_members_t *members,
                           tly_members_verdict_t verdict) {
  return verdict < TLY_MEMBERS_VERDICTS
             ? (uint64_t)atomic_load(&members->verdicts[verdict])
             : 0;
}

tly_owner_state_t tly_members_owner(tly_members_t *members, int32_t partition,
                                    tly_members_owner_t *out) {
  pthread_mutex_lock(&members->lock);
  tly_owner_state_t state =
      tly_members_map_owner(members->map, partition, tly_wall_ms(), out);
  pthread_mutex_unlock(&members->lock);
  return state;
}

int tly_members_standby_chosen(tly_members_t *members, int32_t partition,
                               size_t n) {
  const char *chosen[TLY_MEMBERS_STANDBY_MAX];
  int found = 0;
  if (!members || !members->started || !n)
    return 0;
  pthread_mutex_lock(&members->lock);
  size_t count = tly_members_map_standbys(members->map, partition, n,
                                          tly_wall_ms(), chosen);
  for (size_t i = 0; i < count && !found; i++)
    found = strcmp(chosen[i], members->instance) == 0;
  pthread_mutex_unlock(&members->lock);
  return found;
}

int tly_members_successor(tly_members_t *members, int32_t partition,
                          tly_members_owner_t *out) {
  memset(out, 0, sizeof(*out));
  if (!members || !members->started)
    return 0;
  pthread_mutex_lock(&members->lock);
  int found =
      tly_members_map_successor(members->map, partition, tly_wall_ms(), out);
  pthread_mutex_unlock(&members->lock);
  return found;
}

int tly_members_standby_holder(tly_members_t *members, int32_t partition,
                               tly_members_owner_t *out) {
  memset(out, 0, sizeof(*out));
  if (!members || !members->started)
    return 0;
  pthread_mutex_lock(&members->lock);
  int found = tly_members_map_standby_holder(
      members->map, partition, members->instance, tly_wall_ms(), out);
  pthread_mutex_unlock(&members->lock);
  return found;
}

/* Ignored records are logged at most once per this long (a forger can
 * write many). */
#define IGNORED_LOG_INTERVAL_MS 10000

/* Applies one record of the members topic to the map; counts and logs
 * (rate-limited) one that is ignored. */
static void apply_record(tly_members_t *members,
                         const rd_kafka_message_t *msg) {
  char errstr[512];
  tly_members_signature_t signature = {0};
  rd_kafka_headers_t *headers = NULL;
  if (rd_kafka_message_headers(msg, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const void *at = NULL, *mac = NULL;
    size_t at_len = 0, mac_len = 0;
    if (rd_kafka_header_get_last(headers, TLY_MEMBERS_AT_HEADER, &at,
                                 &at_len) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      signature.at = at;
      signature.at_len = at_len;
    }
    if (rd_kafka_header_get_last(headers, TLY_MEMBERS_MAC_HEADER, &mac,
                                 &mac_len) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      signature.mac = mac;
      signature.mac_len = mac_len;
    }
  }
  pthread_mutex_lock(&members->lock);
  tly_members_verdict_t verdict =
      tly_members_map_apply(members->map, msg->key, msg->key_len, msg->payload,
                            msg->payload ? msg->len : 0, &signature,
                            tly_wall_ms(), errstr, sizeof(errstr));
  pthread_mutex_unlock(&members->lock);
  atomic_fetch_add(&members->verdicts[verdict < TLY_MEMBERS_VERDICTS
                                          ? verdict
                                          : TLY_MEMBERS_MALFORMED],
                   1);
  if (verdict == TLY_MEMBERS_APPLIED)
    return;
  int64_t now = tly_monotonic_ms();
  if (members->ignored_logged_mono &&
      now - members->ignored_logged_mono < IGNORED_LOG_INTERVAL_MS) {
    members->ignored_unlogged++;
    return;
  }
  /* Stale records are routine at startup (the topic's history). */
  tly_log(verdict == TLY_MEMBERS_STALE ? TLY_LOG_INFO : TLY_LOG_WARN, "members",
          "ignoring the record at offset %lld of %s (%s): %s; %llu more "
          "ignored since the last such line",
          (long long)msg->offset, members->topic,
          tly_members_verdict_name(verdict), errstr,
          (unsigned long long)members->ignored_unlogged);
  members->ignored_logged_mono = now;
  members->ignored_unlogged = 0;
}

/* Reads what arrived on the members topic into the map. */
static void read_announcements(tly_members_t *members) {
  for (int i = 0; i < 1000; i++) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(members->reader, 0);
    if (!msg)
      return;
    if (msg->err) {
      if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        tly_log(TLY_LOG_WARN, "members", "reading %s: %s", members->topic,
                rd_kafka_message_errstr(msg));
    } else {
      apply_record(members, msg);
    }
    rd_kafka_message_destroy(msg);
  }
}

static int append(int32_t **list, size_t *count, int32_t partition) {
  int32_t *grown = realloc(*list, (*count + 1) * sizeof(**list));
  if (!grown)
    return -1;
  grown[(*count)++] = partition;
  *list = grown;
  return 0;
}

/* This instance's view now. 0 or -1 (OOM). */
static int own_view(tly_members_t *members, tly_members_announcement_t *out) {
  size_t count = 0;
  memset(out, 0, sizeof(*out));
  unsigned char *roles =
      members->conf.local.roles(members->conf.local.opaque, &count);
  if (!roles)
    return -1;
  int rc = 0;
  for (size_t i = 0; i < count && !rc; i++) {
    if (roles[i] == TLY_MEMBERS_SERVING)
      rc = append(&out->partitions, &out->partition_count, (int32_t)i);
    else if (roles[i] == TLY_MEMBERS_REPLAYING)
      rc = append(&out->replaying, &out->replaying_count, (int32_t)i);
    else if (roles[i] == TLY_MEMBERS_STANDBY)
      rc = append(&out->standby, &out->standby_count, (int32_t)i);
  }
  free(roles);
  snprintf(out->instance, sizeof(out->instance), "%s", members->instance);
  snprintf(out->http, sizeof(out->http), "%s", members->advertise);
  return rc;
}

static int same_view(const tly_members_announcement_t *a,
                     const tly_members_announcement_t *b) {
  return a->partition_count == b->partition_count &&
         a->replaying_count == b->replaying_count &&
         a->standby_count == b->standby_count &&
         (!a->standby_count ||
          memcmp(a->standby, b->standby, a->standby_count * sizeof(int32_t)) ==
              0) &&
         (!a->partition_count ||
          memcmp(a->partitions, b->partitions,
                 a->partition_count * sizeof(int32_t)) == 0) &&
         (!a->replaying_count ||
          memcmp(a->replaying, b->replaying,
                 a->replaying_count * sizeof(int32_t)) == 0);
}

/* value NULL: the tombstone. Signed (tally.at, tally.mac) at at_ms. */
static void produce(tly_members_t *members, const char *value, int64_t at_ms) {
  char at[24], mac[TLY_CLUSTER_MAC_HEX_LEN + 1];
  size_t key_len = strlen(members->instance);
  size_t value_len = value ? strlen(value) : 0;
  snprintf(at, sizeof(at), "%lld", (long long)at_ms);
  tly_cluster_members_mac(&members->secret, members->instance, key_len, at_ms,
                          value, value_len, mac);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      members->producer, RD_KAFKA_V_TOPIC(members->topic),
      RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_KEY(members->instance, key_len),
      RD_KAFKA_V_VALUE((void *)value, value_len),
      RD_KAFKA_V_HEADER(TLY_MEMBERS_AT_HEADER, at, (ssize_t)strlen(at)),
      RD_KAFKA_V_HEADER(TLY_MEMBERS_MAC_HEADER, mac, (ssize_t)strlen(mac)),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (err)
    tly_log(TLY_LOG_WARN, "members", "announcing on %s: %s", members->topic,
            rd_kafka_err2str(err));
}

static void announce_if_due(tly_members_t *members) {
  tly_members_announcement_t view;
  if (own_view(members, &view)) {
    tly_members_announcement_clear(&view);
    return;
  }
  int64_t now = tly_monotonic_ms();
  if (members->seq > 0 && same_view(&view, &members->last) &&
      now - members->last_at_mono < members->heartbeat_ms) {
    tly_members_announcement_clear(&view);
    return;
  }
  view.at_ms = tly_wall_ms();
  view.seq = ++members->seq;
  char *value = tly_members_encode(&view);
  if (value) {
    if (!same_view(&view, &members->last))
      tly_log(TLY_LOG_INFO, "members",
              "announcing %s: %zu partition(s) served, %zu replaying, %zu "
              "standby",
              members->advertise, view.partition_count, view.replaying_count,
              view.standby_count);
    produce(members, value, view.at_ms);
    free(value);
    tly_members_announcement_clear(&members->last);
    members->last = view;
    members->last_at_mono = now;
  } else {
    tly_members_announcement_clear(&view);
  }
}

static void *members_main(void *arg) {
  tly_members_t *members = arg;
  while (!atomic_load(&members->stopping)) {
    read_announcements(members);
    announce_if_due(members);
    rd_kafka_poll(members->producer, 0);
    /* Waits for records (or the next round) on the reader's queue. */
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(members->reader, POLL_MS);
    if (msg) {
      if (!msg->err)
        apply_record(members, msg);
      rd_kafka_message_destroy(msg);
    }
  }
  return NULL;
}

int tly_members_start(tly_members_t *members, const char *instance_id,
                      const char *advertise, char *errstr, size_t errstr_size) {
  if (!instance_id || !*instance_id ||
      strlen(instance_id) >= sizeof(members->instance)) {
    snprintf(errstr, errstr_size,
             "members: expected an instance id of 1 to %zu bytes",
             sizeof(members->instance) - 1);
    return -1;
  }
  snprintf(members->instance, sizeof(members->instance), "%s", instance_id);
  if (!advertise || strlen(advertise) >= sizeof(members->advertise) ||
      (strncmp(advertise, "http://", 7) != 0 &&
       strncmp(advertise, "https://", 8) != 0)) {
    snprintf(errstr, errstr_size,
             "members: advertise: expected an http:// or https:// URL of at "
             "most %zu bytes",
             sizeof(members->advertise) - 1);
    return -1;
  }
  snprintf(members->advertise, sizeof(members->advertise), "%s", advertise);
  /* No trailing slash: paths are appended to it. */
  size_t len = strlen(members->advertise);
  while (len > 0 && members->advertise[len - 1] == '/')
    members->advertise[--len] = '\0';
  if (!members->has_secret) {
    tly_log(TLY_LOG_WARN, "members",
            "no cluster secret (%s or --cluster-secret-file): this instance "
            "neither announces itself nor forwards; it answers only for the "
            "partitions it serves",
            TLY_CLUSTER_SECRET_ENV);
    return 0;
  }
  if (pthread_create(&members->thread, NULL, members_main, members)) {
    snprintf(errstr, errstr_size, "members: cannot start the thread");
    return -1;
  }
  members->started = 1;
  return 0;
}

void tly_members_destroy(tly_members_t *members) {
  if (!members)
    return;
  atomic_store(&members->stopping, 1);
  if (members->started) {
    pthread_join(members->thread, NULL);
    produce(members, NULL, tly_wall_ms());
    if (rd_kafka_flush(members->producer, TOMBSTONE_FLUSH_MS))
      tly_log(TLY_LOG_WARN, "members",
              "the tombstone of %s was not acknowledged in time",
              members->instance);
  }
  if (members->reader) {
    rd_kafka_consumer_close(members->reader);
    rd_kafka_destroy(members->reader);
  }
  if (members->producer)
    rd_kafka_destroy(members->producer);
  tly_members_announcement_clear(&members->last);
  tly_members_map_free(members->map);
  tly_cluster_secret_clear(&members->secret);
  pthread_mutex_destroy(&members->lock);
  free(members->topic);
  free(members);
}
