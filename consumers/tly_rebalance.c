/*
 * tly_rebalance.c - the processor's rebalance callback: what happens to
 * the partitions that move (see the comment at rebalance below), and the
 * rebalance metrics. Runs on the processor's thread, inside the consume
 * call (tly_processor.c), which is what lets a revoke commit the batch in
 * progress and drain the outbox before the partitions go. Never folds;
 * resuming an assigned partition is tly_restore.c's, the replay rule
 * tly_replay.c's, the outbox tly_outbox_publish.c's.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"
#include "tly_overlay.h"

#include <librdkafka/rdkafka.h>
#include <string.h>

/* Hands parts to librdkafka: the whole assignment under the eager
 * protocol (NULL: none), or the increment under the cooperative one. */
static void apply_assignment(tly_processor_t *p, rd_kafka_t *rk,
                             int incremental, int assign,
                             rd_kafka_topic_partition_list_t *parts) {
  if (!incremental) {
    rd_kafka_assign(rk, assign ? parts : NULL);
    return;
  }
  rd_kafka_error_t *error = assign ? rd_kafka_incremental_assign(rk, parts)
                                   : rd_kafka_incremental_unassign(rk, parts);
  if (error) {
    tly_proc_set_fatal(p, "incremental %s: %s", assign ? "assign" : "unassign",
                       rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
  }
}

/* Whether partition is in parts. */
static int in_parts(const rd_kafka_topic_partition_list_t *parts,
                    int32_t partition) {
  for (int i = 0; i < parts->cnt; i++)
    if (parts->elems[i].partition == partition)
      return 1;
  return 0;
}

/*
 * Under the eager protocol every callback carries the whole assignment
 * (revoke all, then assign all). Under the cooperative one (KIP-429,
 * partition.assignment.strategy=cooperative-sticky, tally's default) it
 * carries only the partitions that move: those that stay keep their
 * dedupe index, position and pause state, and keep folding once the
 * callback returns. The exactly-once steps are the same for a moving
 * partition either way: the open batch is committed (it may hold records
 * of every partition, so the whole batch), the outbox drained (all of it)
 * before a revoke returns, and an assigned partition resumes from its
 * stored offset with the replay rule.
 */
static void rebalance(tly_processor_t *p, rd_kafka_t *rk,
                      rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *parts, int incremental) {
  /* Whatever happens next, what was folded so far is committed first; the
   * cache goes, since partitions that come back may have moved meanwhile. */
  tly_proc_batch_commit(p);
  tly_proc_gate_reset(p, rk, parts, incremental);
  if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && !p->fatal) {
    /* A lost assignment (the session expired: another instance may own
     * these partitions already) or a fenced one sends nothing more. */
    int lost = err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS ||
               rd_kafka_assignment_lost(rk) || p->fence_until_ms;
    if (lost)
      tly_log(TLY_LOG_WARN, "processor",
              "revoke: the assignment was lost; outputs not yet sent are "
              "left to the next owner");
    else
      tly_proc_drain_outbox(p);
    /* What the Kafka client holds unacknowledged now cannot be called
     * back: counted, as the duplicates the next owner may see. */
    size_t in_flight = 0;
    for (size_t i = 0; i < p->outbox_count; i++)
      in_flight +=
          p->outbox[i].state == OUTBOX_INFLIGHT && !p->outbox[i].bundle;
    if (in_flight)
      atomic_fetch_add(&p->at_risk, in_flight);
    if (!p->fatal)
      tly_proc_abandon_revoked(p, parts);
    p->fence_until_ms = 0; /* the group has spoken */
    atomic_store(&p->fenced, 0);
  }
  atomic_fetch_add(&p->rebalances, 1);
  tly_overlay_reset(&p->overlay);
  tly_proc_contrib_submitted(p); /* as the overlay: RocksDB answers now */
  tly_proc_contrib_durable(p);
  p->last_entry = NULL;
  p->dirty_count = 0;
  /* The partitions leaving keep their spilled-id filters for their next
   * assignment here (after the commit above: they cover its offsets). */
  if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && !p->fatal)
    tly_proc_filters_save(p, parts, !incremental);
  pthread_mutex_lock(&p->lock);
  for (int32_t i = 0; i < p->partition_cap; i++) {
    if (incremental && !in_parts(parts, i))
      continue; /* stays: its index stays */
    tly_dedupe_free(p->partitions[i].dedupe);
    p->partitions[i].dedupe = NULL;
    p->partitions[i].dedupe_key = -1;
    p->partitions[i].spilled = 0;
    tly_dedupe_filter_free(p->partitions[i].filter);
    p->partitions[i].filter = NULL;
    p->partitions[i].filter_build = 0; /* a build under way is thrown away */
    p->partitions[i].dedupe_floor = INT64_MIN;
    p->partitions[i].floor_dirty = 0;
  }
  pthread_mutex_unlock(&p->lock);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    /* The previous run's outbox waits for an assignment that names
     * partitions: a cooperative member's first one is often empty (the
     * others release partitions first). */
    int64_t assign_started = tly_monotonic_ms();
    int resumed = p->fatal ? -1 : tly_proc_resume_offsets(p, parts);
    atomic_store(&p->assignment_ms,
                 (uint64_t)(tly_monotonic_ms() - assign_started));
    if (resumed || tly_proc_prepare_replay(p) ||
        (p->inherited_held && (parts->cnt || !incremental) &&
         tly_proc_resolve_inherited(p))) {
      if (!incremental)
        rd_kafka_assign(rk, NULL);
      return; /* fatal: the loop stops */
    }
    atomic_fetch_add(&p->partitions_assigned, (uint64_t)parts->cnt);
    tly_proc_dedupe_count(p);
    apply_assignment(p, rk, incremental, 1, parts);
    return;
  }
  atomic_fetch_add(&p->partitions_revoked, (uint64_t)parts->cnt);
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < parts->cnt; i++) {
    int32_t partition = parts->elems[i].partition;
    if (partition >= 0 && partition < p->partition_cap)
      p->partitions[partition].assigned = 0;
  }
  /* The Stripe emitter may be making intents durable on the changelog:
   * the next owner restores only after this returns, so it must find
   * them there. */
  for (int held = 1; held;) {
    held = 0;
    for (int i = 0; i < parts->cnt && !held; i++) {
      int32_t partition = parts->elems[i].partition;
      held = partition >= 0 && partition < p->partition_cap &&
             p->partitions[partition].holds > 0;
    }
    if (held)
      pthread_cond_wait(&p->hold_released, &p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
    tly_log(TLY_LOG_WARN, "processor", "rebalance error: %s",
            rd_kafka_err2str(err));
  apply_assignment(p, rk, incremental, 0, parts);
}

/* Marks the partitions of parts as moving (or no longer): under the
 * cooperative protocol only they stop being served during the callback. */
static void mark_moving(tly_processor_t *p,
                        const rd_kafka_topic_partition_list_t *parts,
                        int moving) {
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < parts->cnt; i++) {
    int32_t partition = parts->elems[i].partition;
    if (partition >= 0 && tly_proc_ensure_partitions(p, partition + 1) == 0)
      p->partitions[partition].moving = moving;
  }
  pthread_mutex_unlock(&p->lock);
  if (moving) /* a standby write in progress ends first (tly_standby.c) */
    tly_proc_standby_wait(p, parts);
}

void tly_proc_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t *parts,
                           void *opaque) {
  tly_processor_t *p = opaque;
  int incremental = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
  int64_t started = tly_monotonic_ms();

  /* Until the callback returns, readiness is withheld: tly_proc_resume_offsets
   * sets partitions up one by one, and a partition already caught up must not
   * make the instance look ready while the others are not yet assigned.
   * Under the eager protocol no partition is served meanwhile; under the
   * cooperative one only those moving. */
  atomic_store(&p->rebalance_eager, !incremental);
  mark_moving(p, parts, 1);
  atomic_store(&p->rebalancing, 1);
  tly_log(TLY_LOG_INFO, "processor",
          "%s %d partitions%s (%lld ms after the process started)",
          err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? "assigned" : "revoking",
          parts->cnt, incremental ? " (incremental)" : "",
          (long long)tly_group_process_age_ms());
  rebalance(p, rk, err, parts, incremental);
  mark_moving(p, parts, 0);
  atomic_store(&p->rebalancing, 0);
  int64_t took = tly_monotonic_ms() - started;
  atomic_fetch_add(&p->rebalance_ms, (uint64_t)(took > 0 ? took : 0));
  atomic_fetch_add(&p->rebalance_callbacks, 1);
  /* Under the cooperative protocol the group may rebalance again while
   * this callback runs (a member joined meanwhile), and a member that
   * rejoins late is expelled: the embedded broker gives it the session
   * timeout, measured in test_scale_out after a 1.75 s restore. Its
   * partitions go to others at once, with no revocation here first: what
   * this instance published after the new owner read the output topics
   * would be published twice. So after a long callback outputs are held
   * and partitions not served (the stall fence, tly_outbox_publish.c)
   * until the group has had time to say the assignment was lost. */
  if (incremental && !p->fatal && took > 2 * (int64_t)p->heartbeat_ms &&
      !p->fence_until_ms) {
    int64_t hold = 3 * (int64_t)p->heartbeat_ms;
    p->fence_until_ms = tly_monotonic_ms() + (hold < 3000 ? 3000 : hold);
    atomic_store(&p->fenced, 1);
    atomic_fetch_add(&p->fences, 1);
    tly_log(TLY_LOG_INFO, "processor",
            "the rebalance callback took %lld ms: outputs held until the "
            "group confirms the assignment",
            (long long)took);
  }
  /* A long restore or drain is no stall: the loop was here, serving the
   * group. */
  atomic_store(&p->alive_ms, tly_monotonic_ms());
}
