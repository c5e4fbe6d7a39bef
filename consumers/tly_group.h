/*
 * tly_group.h - the processor's membership in its Kafka consumer group:
 * who it is in the group (a dynamic member, or a static one with
 * group.instance.id, KIP-345), the group timeouts, and when it joins.
 *
 * Real Kafka: with --instance-id ID the consumer is a static member
 * (group.instance.id = ID). A restarted instance with the same id gets
 * its partitions back at once, without a rebalance, as long as it comes
 * back within session.timeout.ms; a static member does not leave the
 * group when it stops, so its partitions wait that long for it.
 *
 * The embedded broker (librdkafka 2.0.2's mock cluster, recognised by its
 * cluster id "mockCluster...") accepts group.instance.id but does not
 * implement static membership: a restarted member with the same id is
 * added beside the dead one, which stays until its session times out.
 * There (when the caller asks for it: tly_processor_conf_t.fast_rejoin)
 * the consumer uses short timeouts, no group.instance.id (a static member
 * would not leave the group on a clean stop), and, after a run that did
 * not leave the group, joins no earlier than TLY_GROUP_REJOIN_AFTER_MS
 * after the process started: the dead member has expired by the time the
 * mock elects a leader, so one rebalance round gives the partitions back
 * instead of two (measured: 4-5 s instead of 6-7 s; see README.md,
 * "Restarts" and "Restarts (build/bench_restart)").
 *
 * Owns the consumer's group properties, the instance id's rule and the
 * "did the last run leave the group" mark in the store's meta family.
 * Never folds, never reads or writes offsets (those live in RocksDB and
 * are tly_restore.c's), never subscribes (the loop does).
 */
#ifndef TLY_GROUP_H
#define TLY_GROUP_H

#include "tly_store.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* --instance-id: 1 to TLY_GROUP_INSTANCE_ID_MAX bytes of [A-Za-z0-9._-],
 * not "." or ".." (Kafka's rule for group.instance.id, which also allows
 * up to 249; tally's bound is the tally.members key's). */
#define TLY_GROUP_INSTANCE_ID_MAX 127
/* 0 when id is a valid instance id; -1 with the reason in errstr. */
int tly_group_instance_id_check(const char *id, char *errstr,
                                size_t errstr_size);

/* The embedded broker's group timeouts (unless -X sets them): a dead
 * member is gone within session + 1 s (the mock checks sessions once a
 * second). The session must stay above the mock's 3 s initial rebalance
 * delay, or the first member of an empty group times out while it waits
 * for its JoinGroup answer. */
#define TLY_GROUP_EMBEDDED_SESSION_MS 3000
#define TLY_GROUP_EMBEDDED_HEARTBEAT_MS 500
/* After a run that did not leave the group, on the embedded broker: join
 * no earlier than this after the process started (see the top). */
#define TLY_GROUP_REJOIN_AFTER_MS 2050

struct rd_kafka_s;

/* 1 when client is connected to librdkafka's mock cluster (the embedded
 * broker), 0 otherwise (also when the cluster id cannot be read within
 * timeout_ms). */
int tly_group_is_embedded(struct rd_kafka_s *client, int timeout_ms);

/* Milliseconds since this process started (from /proc; -1 when unknown). */
int64_t tly_group_process_age_ms(void);

/* The store's mark of the last run's membership. */
typedef enum {
  TLY_GROUP_MARK_NONE = 0, /* no mark: a new store, or an older version */
  TLY_GROUP_MARK_JOINED,   /* a run joined and did not leave (killed,
                              or a static member) */
  TLY_GROUP_MARK_LEFT      /* the last run left the group on its way out */
} tly_group_mark_t;
/* Reads the mark; -1 with errstr on a store error. */
int tly_group_mark_read(tly_store_t *store, tly_group_mark_t *mark,
                        char *errstr, size_t errstr_size);
/* Writes it (synced). 0, or -1 with errstr. */
int tly_group_mark_write(tly_store_t *store, tly_group_mark_t mark,
                         char *errstr, size_t errstr_size);

/* Sleeps until the monotonic clock reaches at_ms (tly_monotonic_ms), in
 * short steps, returning early once *stop is set. */
void tly_group_wait_until(int64_t at_ms, volatile sig_atomic_t *stop);

#endif
