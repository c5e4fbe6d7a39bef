/*
 * tly_members.h - who serves which input partition, so that the HTTP port of
 * any instance can answer for any subject (it forwards to the owner).
 *
 * Kafka is the only cluster machinery: each instance announces itself on a
 * small compacted topic (tally.members, one partition), keyed by instance
 * id, with a JSON value
 *   {"instance": ID, "http": "http://127.0.0.1:8080",
 *    "partitions": [serving...], "replaying": [assigned, still replaying],
 *    "standby": [holds a standby copy, caught up], "at": MS, "seq": N}
 * whenever its assignment or its caught-up set changes and on every
 * heartbeat, and a tombstone (null value) on a clean shutdown. Every
 * instance reads the topic from its beginning (no consumer group) into a
 * map, partition -> owner. A member whose last announcement is older than
 * the staleness timeout is dropped, so a SIGKILLed instance's claims
 * expire; two fresh members claiming one partition (a rebalance in flight)
 * make it "moving", never a guess.
 *
 * Any Kafka writer can write the topic, so every record (tombstones too)
 * is signed (tly_cluster_auth.h): Kafka headers tally.at (its time, ms) and
 * tally.mac (HMAC-SHA256 under the cluster secret over key, time and
 * value). A record without a valid MAC is ignored; so is a signed one whose
 * time is more than the staleness timeout old or TLY_MEMBERS_MAX_AHEAD_MS
 * ahead when read (a replay, or history read at startup), or older than
 * what that member announced last while it is fresh (a replay within the
 * window). Without a cluster secret nothing is announced or read: the
 * instance answers only for the partitions it serves.
 *
 * The map (tly_members_map_*) is pure: records and a clock in, answers out,
 * for the unit tests. tly_members_* runs it on a thread of its own with a
 * Kafka producer and reader, and takes this instance's own view from the
 * processor (assigned and committed up to its replay target = serving).
 */
#ifndef TLY_MEMBERS_H
#define TLY_MEMBERS_H

#include "tly_cluster_auth.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_MEMBERS_INSTANCE_MAX 128
#define TLY_MEMBERS_URL_MAX 256
/* An announcement lists at most this many partitions (both lists). */
#define TLY_MEMBERS_PARTITIONS_MAX 65536
/* --standby-replicas is 0..TLY_MEMBERS_STANDBY_MAX. */
#define TLY_MEMBERS_STANDBY_MAX 8
#define TLY_MEMBERS_DEFAULT_HEARTBEAT_MS 2000
/* A signed record dated further ahead of the reader's clock is ignored. */
#define TLY_MEMBERS_MAX_AHEAD_MS 10000

/* ---- the pure map ----------------------------------------------------- */

typedef struct {
  char instance[TLY_MEMBERS_INSTANCE_MAX];
  char http[TLY_MEMBERS_URL_MAX];
  int32_t *partitions; /* serving; malloc'd */
  size_t partition_count;
  int32_t *replaying; /* assigned, not caught up yet; malloc'd */
  size_t replaying_count;
  int32_t *standby; /* holds a standby copy, applied; malloc'd */
  size_t standby_count;
  int64_t at_ms; /* when the instance announced it (its clock) */
  int64_t seq;
} tly_members_announcement_t;

/* Decodes one value of the members topic. 0, or -1 with errstr (malformed
 * JSON, missing or oversized fields, a partition out of range, an http
 * address that is not http:// or https://). *out is overwritten; clear it
 * with tly_members_announcement_clear (also after a failure). */
int tly_members_decode(const char *value, size_t value_len,
                       tly_members_announcement_t *out, char *errstr,
                       size_t errstr_size);
/* The JSON value of an announcement, malloc'd (NULL on OOM). */
char *tly_members_encode(const tly_members_announcement_t *announcement);
void tly_members_announcement_clear(tly_members_announcement_t *announcement);

typedef enum {
  TLY_OWNER_UNKNOWN = 0, /* no fresh member claims the partition */
  TLY_OWNER_SERVING,     /* one member serves it (caught up) */
  TLY_OWNER_REPLAYING,   /* one member has it, still replaying */
  TLY_OWNER_CONFLICT     /* several claim it: moving */
} tly_owner_state_t;

typedef struct {
  tly_owner_state_t state;
  char instance[TLY_MEMBERS_INSTANCE_MAX]; /* "" unless one member */
  char http[TLY_MEMBERS_URL_MAX];          /* "" unless one member */
} tly_members_owner_t;

typedef struct tly_members_map tly_members_map_t;

/* stale_ms: a member is dropped once its last announcement is older.
 * secret: what records must be signed with (copied; NULL: every record is
 * ignored as TLY_MEMBERS_BAD_MAC). */
tly_members_map_t *tly_members_map_new(int64_t stale_ms,
                                       const tly_cluster_secret_t *secret);
void tly_members_map_free(tly_members_map_t *map);

/*
 * Applies one record of the members topic, in log order: key = instance id,
 * value NULL = tombstone (the member left), signature = its headers.
 * received_ms is the local clock when it was read: a member's freshness is
 * the older of its own "at" and received_ms, so a clock ahead of ours does
 * not keep a member alive. TLY_MEMBERS_APPLIED, or why the record was
 * ignored (with errstr; never the secret).
 */
typedef enum {
  TLY_MEMBERS_APPLIED = 0,
  TLY_MEMBERS_BAD_MAC,   /* unsigned, or not under our secret: forged */
  TLY_MEMBERS_MALFORMED, /* signed, but not a valid announcement */
  TLY_MEMBERS_STALE,     /* signed, dated outside the window */
  TLY_MEMBERS_REPLAYED,  /* signed, older than the member's last one */
  TLY_MEMBERS_VERDICTS
} tly_members_verdict_t;

/* The metric label of a verdict ("applied", "bad_mac", ...). */
const char *tly_members_verdict_name(tly_members_verdict_t verdict);

typedef struct {
  const char *at; /* TLY_MEMBERS_AT_HEADER's value; NULL: none */
  size_t at_len;
  const char *mac; /* TLY_MEMBERS_MAC_HEADER's value; NULL: none */
  size_t mac_len;
} tly_members_signature_t;

tly_members_verdict_t
tly_members_map_apply(tly_members_map_t *map, const char *key, size_t key_len,
                      const char *value, size_t value_len,
                      const tly_members_signature_t *signature,
                      int64_t received_ms, char *errstr, size_t errstr_size);

/* Who has partition as of now_ms (see tly_owner_state_t). */
tly_owner_state_t tly_members_map_owner(const tly_members_map_t *map,
                                        int32_t partition, int64_t now_ms,
                                        tly_members_owner_t *out);

/*
 * Standby replicas: which fresh members should hold a standby copy of
 * partition (--standby-replicas n). The fresh members that do not claim
 * the partition (serving or replaying it) are ranked by a rendezvous hash
 * of (instance id, partition), highest first, and the first n are chosen:
 * every instance computes the same answer from the same map, a member that
 * joins or leaves moves only the partitions it ranks first for, and when
 * the owner moves to a standby holder the old owner (often next in rank)
 * takes its place. Writes up to n instance ids (pointers into the map,
 * valid until it changes) to out; returns how many.
 */
size_t tly_members_map_standbys(const tly_members_map_t *map, int32_t partition,
                                size_t n, int64_t now_ms, const char **out);
/* A fresh member other than `self` that announces an applied standby copy
 * of partition (the first in rank order): 1 with out set (state
 * TLY_OWNER_UNKNOWN, instance and http), else 0. */
int tly_members_map_standby_holder(const tly_members_map_t *map,
                                   int32_t partition, const char *self,
                                   int64_t now_ms, tly_members_owner_t *out);

/*
 * For reads only, when several members claim partition (CONFLICT): the one
 * that serves it and announced within the last heartbeat and a half
 * (stale_ms / 2) while every other claimant has been silent longer (it
 * missed a heartbeat: killed, or frozen, its claim not yet expired). That
 * member was given the partition by the group and is caught up, so its
 * answer is fresh; a claimant that stays silent that long cannot be
 * serving what the other announces (a live owner announces a revocation at
 * once). 1 with out set (state TLY_OWNER_SERVING), else 0. Never used for
 * decisions only the owner may make (reservations).
 */
int tly_members_map_successor(const tly_members_map_t *map, int32_t partition,
                              int64_t now_ms, tly_members_owner_t *out);

/* Fresh members as of now_ms (for tests and logs). */
size_t tly_members_map_count(const tly_members_map_t *map, int64_t now_ms);

/* ---- the membership thread -------------------------------------------- */

/* Where this instance stands on one partition, as it announces it. */
typedef enum {
  TLY_MEMBERS_NOT_HERE = 0,  /* not assigned to this instance */
  TLY_MEMBERS_REPLAYING = 1, /* assigned, but not caught up with the log
                                end seen at assignment, or a rebalance is
                                under way: announced as replaying */
  TLY_MEMBERS_SERVING = 2,   /* assigned and caught up: announced served */
  TLY_MEMBERS_STANDBY = 3    /* not assigned; a standby copy is applied
                                here (announced in "standby") */
} tly_members_role_t;

/* This instance's own view, read at every announcement. The processor
 * (consumers/) has it and cli/ wires it in: cluster/ never includes
 * consumers/. roles returns a malloc'd array (free() it) of *count
 * tly_members_role_t values, one per partition of the input topic, or NULL
 * when out of memory. */
typedef struct {
  void *opaque;
  unsigned char *(*roles)(void *opaque, size_t *count);
} tly_members_local_t;

typedef struct {
  const char *brokers;       /* required */
  const char *topic;         /* default TLY_DEFAULT_MEMBERS_TOPIC */
  tly_members_local_t local; /* required: this instance's own view */
  int64_t heartbeat_ms;      /* default TLY_MEMBERS_DEFAULT_HEARTBEAT_MS */
  int64_t stale_ms;          /* default 3 heartbeats */
  /* librdkafka properties "name=value" (TLS, SASL), NULL-terminated. */
  const char *const *kafka_properties;
  /* The cluster secret (copied). NULL: membership is off (no Kafka
   * clients, nothing announced or read, every partition's owner unknown). */
  const tly_cluster_secret_t *secret;
} tly_members_conf_t;

typedef struct tly_members tly_members_t;

/* Creates the map and the Kafka clients; nothing is announced or read
 * until tly_members_start. NULL with errstr on failure. */
tly_members_t *tly_members_new(const tly_members_conf_t *conf, char *errstr,
                               size_t errstr_size);
/* Starts the thread, announcing this instance as instance_id (at most
 * TLY_MEMBERS_INSTANCE_MAX-1 bytes, unique in the group) at advertise (the
 * HTTP port's URL as other instances reach it, e.g.
 * "http://127.0.0.1:8080"). 0 or -1 with errstr. */
int tly_members_start(tly_members_t *members, const char *instance_id,
                      const char *advertise, char *errstr, size_t errstr_size);
/* The advertised URL and the instance id ("" before start). */
const char *tly_members_advertise(const tly_members_t *members);
const char *tly_members_instance(const tly_members_t *members);
/* The cluster secret, or NULL when there is none (nothing is forwarded,
 * forwarded requests are refused). NULL members: NULL. */
const tly_cluster_secret_t *tly_members_secret(const tly_members_t *members);
/* Records of the members topic read so far with this verdict (for
 * /metrics: the ignored ones by reason, and the applied ones). */
uint64_t tly_members_count(tly_members_t *members,
                           tly_members_verdict_t verdict);
/* The owner of partition as this instance knows it; thread-safe. */
tly_owner_state_t tly_members_owner(tly_members_t *members, int32_t partition,
                                    tly_members_owner_t *out);
/* Whether this instance is among the n chosen to hold a standby copy of
 * partition now (tly_members_map_standbys); thread-safe. 0 before start
 * or without a secret. */
int tly_members_standby_chosen(tly_members_t *members, int32_t partition,
                               size_t n);
/* tly_members_map_successor, thread-safe. */
int tly_members_successor(tly_members_t *members, int32_t partition,
                          tly_members_owner_t *out);
/* Another fresh member announcing an applied standby copy of partition
 * (tly_members_map_standby_holder); thread-safe. 1 with out set, else 0. */
int tly_members_standby_holder(tly_members_t *members, int32_t partition,
                               tly_members_owner_t *out);
/* Stops the thread, announces the tombstone (flushed, bounded) and frees.
 * NULL is fine. */
void tly_members_destroy(tly_members_t *members);

#endif
