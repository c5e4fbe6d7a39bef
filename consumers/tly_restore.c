/*
 * tly_restore.c - a partition's state when it is assigned here (called
 * from the rebalance callback, before the partition is fetched).
 *
 * Each assigned partition resumes from the offset RocksDB holds, after
 * checking that the log still holds everything from there on. It is first
 * restored from the state changelog (tly_changelog.h) when this store
 * holds nothing of it, when the changelog is shorter than the input's tail
 * to replay, or, with Stripe usage reporting, when another instance wrote
 * the changelog since this one did (its report cursors are the
 * changelog's). The partition's event-time watermark, its store horizons
 * and its dedupe index are then loaded from what is stored.
 *
 * It refuses rather than skips: a log that lost events the state needs, a
 * stored offset beyond the log end or a changelog that cannot be trusted
 * stops the processor (fatal). It never folds: replaying the input's tail
 * is the loop's work (tly_processor.c), checking its outputs is
 * tly_replay.c's.
 */
#include "tly_processor_internal.h"

#include "tly_changelog_restore.h"
#include "tly_keys.h"
#include "tly_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- assignment ------------------------------------------------------ */

typedef struct {
  tly_processor_t *p;
  int32_t partition;
  tly_dedupe_t *dedupe;
  int64_t horizon; /* blobs wholly older are expired: not loaded */
  size_t limit;    /* what the index may hold (tly_proc_dedupe_fit) */
  tly_dedupe_filter_t *filter; /* the saved filter taken, or NULL */
  int failed;      /* 1: corrupt or out of memory; 2: fatal already set */
  int floor_found; /* the floor record (tly_dedupe_floor.c) */
  int64_t floor_ms, floor_window_ms;
} dedupe_load_t;

static int load_dedupe_blob(void *opaque, const char *key, size_t key_len,
                            const char *value, size_t value_len) {
  dedupe_load_t *load = opaque;
  if (key_len != 12 || value_len < TLY_DEDUPE_BLOB_HEADER) {
    load->failed = 1;
    return 1;
  }
  int64_t offset = (int64_t)tly_get_be64((const unsigned char *)key + 4);
  int64_t newest = (int64_t)tly_get_be64((const unsigned char *)value);
  if (offset == TLY_DEDUPE_FLOOR_KEY) { /* not a blob: the floor */
    load->floor_found =
        tly_proc_dedupe_floor_parse(value, value_len, &load->floor_ms,
                                    &load->floor_window_ms) == 0;
    load->failed = !load->floor_found;
    return load->failed;
  }
  /* Spilled blobs (stubs) and expired ones are not loaded: memory holds
   * only what was not spilled, whatever the window holds. */
  if (newest >= load->horizon)
    load->failed = tly_dedupe_load(load->dedupe, offset, value, value_len) != 0;
  if (!load->failed &&
      tly_proc_dedupe_fit(load->p, load->partition, load->dedupe, load->limit,
                          load->filter))
    load->failed = 2;
  return load->failed;
}

/* The partition's event id index, rebuilt from its stored blobs not
 * spilled (nor expired); beyond what is left of the dedupe share, the
 * oldest are spilled as they load (into filter, when a saved one was
 * taken). NULL after setting the fatal reason. */
static tly_dedupe_t *load_dedupe(tly_processor_t *p, int32_t partition,
                                 int64_t watermark, tly_dedupe_filter_t *filter,
                                 dedupe_load_t *load_out) {
  char errstr[512] = "", prefix[4];
  tly_dedupe_t *dedupe = tly_dedupe_new();
  if (!dedupe) {
    tly_proc_set_fatal(p, "out of memory loading event ids");
    return NULL;
  }
  size_t others = 0;
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (i != partition && p->partitions[i].dedupe)
      others += tly_dedupe_bytes(p->partitions[i].dedupe);
  dedupe_load_t load = {.p = p,
                        .partition = partition,
                        .dedupe = dedupe,
                        .horizon =
                            watermark > INT64_MIN + p->billing.dedupe_window_ms
                                ? watermark - p->billing.dedupe_window_ms
                                : INT64_MIN,
                        /* at least a sixteenth of the share, whatever the
                         * others hold: the next commits spill theirs */
                        .limit = others < p->dedupe_share - p->dedupe_share / 16
                                     ? p->dedupe_share - others
                                     : p->dedupe_share / 16,
                        .filter = filter};
  tly_put_be32((unsigned char *)prefix, (uint32_t)partition);
  if (tly_store_scan_prefix(p->store, TLY_CF_DEDUPE, prefix, 4,
                            load_dedupe_blob, &load, errstr, sizeof(errstr)) ||
      load.failed) {
    if (load.failed != 2)
      tly_proc_set_fatal(
          p, "partition %d: loading event ids: %s", (int)partition,
          load.failed ? "a stored dedupe record is corrupt or memory ran out"
                      : errstr);
    tly_dedupe_free(dedupe);
    return NULL;
  }
  *load_out = load;
  return dedupe;
}

static size_t watermark_key(int32_t partition, char *out) {
  memcpy(out, META_WATERMARK, sizeof(META_WATERMARK) - 1);
  tly_put_be32((unsigned char *)out + sizeof(META_WATERMARK) - 1,
               (uint32_t)partition);
  return sizeof(META_WATERMARK) - 1 + 4;
}

/* A consumer that reads the changelog by assignment (no group
 * membership); NULL after setting the fatal reason. */
static rd_kafka_t *changelog_reader(tly_processor_t *p, int32_t partition) {
  char errstr[512];
  const char *defaults[] = {
      "group.id=tally-restore", "enable.auto.commit=false",
      "enable.partition.eof=true", "max.partition.fetch.bytes=10485760",
      "queued.min.messages=1000000",
      /* at the end, an empty fetch must not hold the next one back */
      "fetch.wait.max.ms=10", NULL};
  rd_kafka_t *reader = tly_proc_reader_new(p, defaults, errstr, sizeof(errstr));
  if (!reader)
    tly_proc_set_fatal(p, "reading changelog partition %d: %s", (int)partition,
                       errstr);
  return reader;
}

static void changelog_reader_close(rd_kafka_t *reader) {
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
}

/* What an assigned partition's resume decides from: the stored offset,
 * the input's bounds, the changelog's bounds (end -1: not asked, or no
 * changelog) and, when the decision needs it, the changelog's last record
 * (has_last). */
typedef struct {
  int32_t partition;
  int found;
  int64_t stored, low, high;
  int64_t changelog_low, changelog_end;
  int want_last, has_last;
  tly_changelog_last_t last;
} resume_plan_t;

/* The bounds of topic's partition (retried); 0, or -1 fatal set. */
static int log_bounds(tly_processor_t *p, const char *topic, int32_t partition,
                      int64_t *low, int64_t *high) {
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
  for (int attempt = 0; attempt < 10 && err; attempt++)
    err = rd_kafka_query_watermark_offsets(p->consumer, topic, partition, low,
                                           high, 5000);
  if (err)
    tly_proc_set_fatal(p, "partition %d of %s: cannot read its bounds: %s",
                       (int)partition, topic, rd_kafka_err2str(err));
  return err ? -1 : 0;
}

/* Fills plan for partition (of the usage topic): what is stored, the
 * bounds, and whether changelog_wanted will need the changelog's last
 * record: with Stripe reporting (who wrote it), or when the input's tail
 * is longer than the changelog (is the store current?). 0, -1 fatal set. */
static int plan_resume(tly_processor_t *p, const char *topic, int32_t partition,
                       resume_plan_t *plan) {
  char errstr[512];
  *plan = (resume_plan_t){
      .partition = partition, .changelog_low = -1, .changelog_end = -1};
  plan->found = tly_store_get_offset(p->store, partition, &plan->stored, errstr,
                                     sizeof(errstr));
  if (plan->found < 0) {
    tly_proc_set_fatal(p, "reading stored offset: %s", errstr);
    return -1;
  }
  if (!plan->found)
    plan->stored = -1;
  if (log_bounds(p, topic, partition, &plan->low, &plan->high))
    return -1;
  int current = plan->found && plan->stored >= plan->high;
  if (!p->changelog_topic || (current && !p->reports))
    return 0;
  if (log_bounds(p, p->changelog_topic, partition, &plan->changelog_low,
                 &plan->changelog_end))
    return -1;
  int64_t length = plan->changelog_end - plan->changelog_low;
  plan->want_last =
      length > 0 &&
      (p->reports || (plan->found && !current && plan->changelog_low == 0 &&
                      plan->high - plan->stored > length));
  return 0;
}

/* Reads the changelog's last record of every planned partition that
 * wants it, all at once. 0, -1 fatal set. */
static int read_last_records(tly_processor_t *p, resume_plan_t *plans,
                             size_t count) {
  char errstr[512];
  size_t wanted = 0;
  for (size_t i = 0; i < count; i++)
    wanted += plans[i].want_last;
  if (!wanted)
    return 0;
  int32_t *partitions = calloc(wanted, sizeof(*partitions));
  int64_t *highs = calloc(wanted, sizeof(*highs));
  tly_changelog_last_t *last = calloc(wanted, sizeof(*last));
  int rc = -1;
  if (!partitions || !highs || !last) {
    tly_proc_set_fatal(p, "out of memory reading the changelog");
    goto out;
  }
  for (size_t i = 0, n = 0; i < count; i++)
    if (plans[i].want_last) {
      partitions[n] = plans[i].partition;
      highs[n++] = plans[i].changelog_end;
    }
  rd_kafka_t *reader = changelog_reader(p, partitions[0]);
  if (!reader)
    goto out;
  rc = tly_changelog_last_records(reader, p->changelog_topic, partitions, highs,
                                  wanted, last, errstr, sizeof(errstr));
  changelog_reader_close(reader);
  if (rc) {
    tly_proc_set_fatal(p, "changelog: %s", errstr);
    goto out;
  }
  for (size_t i = 0, n = 0; i < count; i++)
    if (plans[i].want_last) {
      plans[i].last = last[n++];
      plans[i].has_last = 1;
    }
out:
  free(partitions);
  free(highs);
  free(last);
  return rc;
}

/*
 * Whether to restore the planned partition from the changelog rather than
 * replay the input from what this store holds; why says which rule
 * decided, for the log. Restored: when the store holds nothing of it;
 * when the changelog holds newer state than the store (its last record
 * reflects a later offset: another instance owned the partition since)
 * and reading the changelog is shorter than replaying the input from the
 * store's offset to that record's; never when the store is current (it
 * holds offset >= what the changelog's last record reflects, e.g. after a
 * restart of this instance on its own state dir: restoring would only
 * bring back older state and replay more). A changelog that no longer
 * starts at 0 (records expired: the embedded broker keeps ~5 MiB per
 * partition) would miss state, so it is not used. With Stripe usage
 * reporting, also whenever another instance wrote the partition's
 * changelog since this one did: the report marks and cursors are the
 * changelog's, and reporting from stale cursors would reuse identifiers
 * Stripe already has. 1 restore, 0 not, -1 fatal set.
 */
static int changelog_wanted(tly_processor_t *p, const resume_plan_t *plan,
                            const char **why) {
  int32_t partition = plan->partition;
  int found = plan->found;
  int64_t stored = plan->stored, high = plan->high;
  int64_t low = plan->changelog_low, end = plan->changelog_end;
  const tly_changelog_last_t *last = &plan->last;
  *why = "";
  if (end <= low) /* no changelog, not asked, or empty */
    return 0;
  if (p->reports) {
    int ours = plan->has_last && last->named &&
               strcmp(last->writer, p->writer_id) == 0;
    if (ours && found)
      return 0; /* what we wrote, we stored first: the store holds it all */
    if (!ours && low > 0) {
      tly_proc_set_fatal(
          p,
          "changelog partition %d starts at %lld, not 0 (records "
          "expired), and another instance wrote it since: its Stripe "
          "report cursors cannot be restored, and reporting from "
          "older ones could lose usage",
          (int)partition, (long long)low);
      return -1;
    }
    if (!ours) {
      tly_log(TLY_LOG_INFO, "processor",
              "partition %d: another instance wrote its changelog since "
              "this one did: restoring it (Stripe report cursors)",
              (int)partition);
      *why = "another instance wrote its changelog since (Stripe report "
             "cursors)";
      return 1;
    }
  }
  if (found && stored >= high)
    return 0;
  if (low > 0) {
    tly_log(TLY_LOG_WARN, "processor",
            "changelog partition %d starts at %lld, not 0 (records expired): "
            "replaying the input instead",
            (int)partition, (long long)low);
    return 0;
  }
  if (!found) {
    *why = "no local state";
    return 1;
  }
  if (high - stored <= end - low)
    return 0; /* the input's tail is the shorter read */
  if (plan->has_last && last->offset >= 0 && last->offset <= stored) {
    tly_log(TLY_LOG_INFO, "processor",
            "partition %d: local state (offset %lld) holds all the changelog "
            "does (its last record reflects offset %lld): replaying the "
            "input's %lld records from there, no restore",
            (int)partition, (long long)stored, (long long)last->offset,
            (long long)(high - stored));
    return 0;
  }
  if (plan->has_last && last->offset > stored) {
    *why = "the changelog holds newer state than this store (another "
           "instance owned the partition since)";
    return last->offset - stored > end - low;
  }
  *why = "the changelog's last record names no offset and is shorter than "
         "the input's tail";
  return 1;
}

/*
 * Restores partition from changelog records 0..end-1 (tly_changelog.h),
 * then stores the offset and watermark the restored state reflects in one
 * synced commit. *found and *stored become what the store now holds.
 * 0, or -1 after setting the fatal reason.
 */
static int restore_partition(tly_processor_t *p, int32_t partition, int64_t end,
                             const char *why, int *found, int64_t *stored) {
  char errstr[512], wm_key[16];
  unsigned char wm_value[8];
  tly_changelog_restore_t result;
  rd_kafka_t *reader = changelog_reader(p, partition);
  if (!reader)
    return -1;
  atomic_store(&p->restoring, partition);
  /* Odd while the partition's state is rewritten (not in one atomic
   * write): a read from a copy (tly_processor_restore_epoch) retries. */
  atomic_fetch_add(&p->restore_epoch, 1);
  int rc =
      tly_changelog_restore(p->store, reader, p->changelog_topic, partition, 0,
                            end, &result, errstr, sizeof(errstr));
  atomic_store(&p->restoring, -1);
  changelog_reader_close(reader);
  if (rc < 0) {
    tly_proc_set_fatal(p, "restoring partition %d from %s: %s", (int)partition,
                       p->changelog_topic, errstr);
    return -1;
  }
  tly_store_batch_t *batch = tly_store_batch_new();
  if (!batch) {
    tly_proc_set_fatal(p, "out of memory restoring partition %d",
                       (int)partition);
    return -1;
  }
  size_t wm_len = watermark_key(partition, wm_key);
  if (rc == 1) {
    tly_store_batch_set_offset(batch, partition, result.next_offset);
    tly_put_be64(wm_value, (uint64_t)result.watermark_ms);
    tly_store_batch_put(batch, TLY_CF_META, wm_key, wm_len, wm_value, 8);
  } else {
    tly_store_batch_delete(batch, TLY_CF_META, wm_key, wm_len);
  }
  int failed = tly_store_commit(p->store, batch, 1, errstr, sizeof(errstr));
  tly_store_batch_destroy(batch);
  atomic_fetch_add(&p->restore_epoch, 1);
  if (failed) {
    tly_proc_set_fatal(p, "storing restored partition %d: %s", (int)partition,
                       errstr);
    return -1;
  }
  *found = rc == 1;
  *stored = rc == 1 ? result.next_offset : -1;
  atomic_fetch_add(&p->restores, 1);
  atomic_fetch_add(&p->restored_records, result.records);
  atomic_fetch_add(&p->restore_ms, (uint64_t)result.elapsed_ms);
  tly_log(TLY_LOG_INFO, "processor",
          "partition %d: restored from %s (%s) in %lld ms: %llu records "
          "read, %llu written, %llu subjects, state as of offset %lld",
          (int)partition, p->changelog_topic, why, (long long)result.elapsed_ms,
          (unsigned long long)result.records,
          (unsigned long long)result.applied,
          (unsigned long long)result.accounts, (long long)result.next_offset);
  return 0;
}

/*
 * Sets each partition's start offset from RocksDB, after checking that the
 * log still holds everything from there on. Returns -1 (fatal set) when it
 * does not: skipping would silently lose or miscount usage.
 */
static int resume_partitions(tly_processor_t *p,
                             rd_kafka_topic_partition_list_t *parts,
                             resume_plan_t *plans);

int tly_proc_resume_offsets(tly_processor_t *p,
                            rd_kafka_topic_partition_list_t *parts) {
  /* First what every partition's decision needs (the changelog's last
   * records read in one go), then each partition. */
  resume_plan_t *plans =
      calloc(parts->cnt ? (size_t)parts->cnt : 1, sizeof(*plans));
  if (!plans) {
    tly_proc_set_fatal(p, "out of memory resuming partitions");
    return -1;
  }
  int rc = 0;
  for (int i = 0; i < parts->cnt && !rc; i++)
    rc = plan_resume(p, parts->elems[i].topic, parts->elems[i].partition,
                     &plans[i]);
  if (!rc)
    rc = read_last_records(p, plans, (size_t)parts->cnt);
  if (!rc)
    rc = resume_partitions(p, parts, plans);
  free(plans);
  return rc;
}

static int resume_partitions(tly_processor_t *p,
                             rd_kafka_topic_partition_list_t *parts,
                             resume_plan_t *plans) {
  char errstr[512];
  for (int i = 0; i < parts->cnt; i++) {
    rd_kafka_topic_partition_t *part = &parts->elems[i];
    int found = plans[i].found;
    int64_t stored = plans[i].stored, low = plans[i].low, high = plans[i].high;
    /* No state here, or stale state: restore from the changelog when that
     * is shorter than replaying the input (then only the tail is
     * replayed). A store with no offset for the partition may still hold
     * the remains of an interrupted restore: wipe them. */
    const char *why;
    int restore = changelog_wanted(p, &plans[i], &why);
    if (restore < 0 || (restore && restore_partition(p, part->partition,
                                                     plans[i].changelog_end,
                                                     why, &found, &stored)))
      return -1;
    /* A standby copy kept no indexes (tly_standby.c). */
    if (tly_proc_standby_promoted(p, part->partition, restore || !found))
      return -1;
    if (!found && tly_changelog_wipe_partition(p->store, part->partition,
                                               errstr, sizeof(errstr))) {
      tly_proc_set_fatal(p, "partition %d: wiping state: %s",
                         (int)part->partition, errstr);
      return -1;
    }
    if (found && stored < low) {
      tly_proc_set_fatal(
          p,
          "partition %d: stored offset %lld is below the log start "
          "%lld; events %lld..%lld are gone and tally refuses to skip "
          "them",
          (int)part->partition, (long long)stored, (long long)low,
          (long long)stored, (long long)low - 1);
      return -1;
    }
    if (found && stored > high) {
      tly_proc_set_fatal(
          p,
          "partition %d: stored offset %lld is beyond the log end "
          "%lld: the topic was recreated or this is another cluster",
          (int)part->partition, (long long)stored, (long long)high);
      return -1;
    }
    if (!found && low > 0) {
      tly_proc_set_fatal(
          p,
          "partition %d: no stored state and the log starts at %lld, "
          "not 0; events before it are gone, refusing to fold a "
          "partial history",
          (int)part->partition, (long long)low);
      return -1;
    }
    part->offset = found ? stored : RD_KAFKA_OFFSET_BEGINNING;
    /* The partition's event-time watermark, for dedupe. */
    char wm_key[16], *wm_value = NULL;
    size_t wm_len = 0;
    int64_t watermark = INT64_MIN;
    size_t wm_key_len = watermark_key(part->partition, wm_key);
    int wm_found = tly_store_get(p->store, TLY_CF_META, wm_key, wm_key_len,
                                 &wm_value, &wm_len, errstr, sizeof(errstr));
    if (wm_found < 0) {
      tly_proc_set_fatal(p, "reading the watermark: %s", errstr);
      return -1;
    }
    if (wm_found && wm_len == 8)
      watermark = (int64_t)tly_get_be64((unsigned char *)wm_value);
    tly_store_free(wm_value);
    if (watermark > INT64_MIN + p->billing.dedupe_window_ms)
      tly_store_set_horizon(p->store, TLY_CF_DEDUPE, part->partition,
                            watermark - p->billing.dedupe_window_ms);
    tly_store_set_horizon(p->store, TLY_CF_USAGE, part->partition, watermark);
    /* The filter of every spilled id: the one saved at this partition's
     * last revoke here, if it covers the stored offset (the load's own
     * spills go into it); otherwise built off this thread once the load,
     * which may have spilled, is committed (tly_filter_build.c), misses
     * reading the store until then. */
    tly_dedupe_filter_t *saved =
        found && !restore ? tly_proc_filter_load(p, part->partition, stored)
                          : NULL;
    /* A partition that never spilled here has no spilled ids to build a
     * filter of: the load's own spills (a smaller budget than the last
     * run's) go into a fresh one, which then holds every spilled id of
     * the partition, and no build is needed. */
    int before = saved ? 1 : tly_proc_dedupe_any_spilled(p, part->partition);
    if (before < 0) {
      tly_dedupe_filter_free(saved);
      return -1;
    }
    tly_dedupe_filter_t *fresh = before ? NULL : tly_dedupe_filter_new();
    dedupe_load_t loaded;
    tly_dedupe_t *dedupe = load_dedupe(p, part->partition, watermark,
                                       saved ? saved : fresh, &loaded);
    if (!dedupe) {
      tly_dedupe_filter_free(saved);
      tly_dedupe_filter_free(fresh);
      return -1;
    }
    int spilled =
        before ? before : tly_proc_dedupe_any_spilled(p, part->partition);
    if (spilled < 0) {
      tly_dedupe_free(dedupe);
      tly_dedupe_filter_free(fresh);
      return -1;
    }
    /* The saved filter, the fresh one if the load spilled into it (both
     * hold every spilled id), or an empty one that the build fills (every
     * spilled id of an earlier run). */
    int built = saved || fresh;
    tly_dedupe_filter_t *filter = saved      ? saved
                                  : !spilled ? NULL
                                  : fresh    ? fresh
                                             : tly_dedupe_filter_new();
    if (filter != fresh)
      tly_dedupe_filter_free(fresh);
    pthread_mutex_lock(&p->lock);
    if (tly_proc_ensure_partitions(p, part->partition + 1) == 0) {
      partition_state_t *state = &p->partitions[part->partition];
      tly_dedupe_free(state->dedupe);
      state->dedupe = dedupe;
      state->dedupe_key = -1;
      state->spilled = spilled;
      tly_dedupe_filter_free(state->filter);
      state->filter = filter;
      filter = NULL;
      state->filter_build = spilled && !built ? ++p->filter_tickets : 0;
      state->dedupe_floor = tly_proc_dedupe_floor_at_assignment(
          p, loaded.floor_found, loaded.floor_ms, loaded.floor_window_ms,
          watermark, &state->floor_dirty);
      dedupe = NULL;
      p->partitions[part->partition].assigned = 1;
      p->partitions[part->partition].generation++;
      p->partitions[part->partition].committed = found ? stored : -1;
      p->partitions[part->partition].batch_next = -1;
      p->partitions[part->partition].position = found ? stored : -1;
      p->partitions[part->partition].watermark = watermark;
      p->partitions[part->partition].watermark_dirty = 0;
      p->partitions[part->partition].replay_target = high;
      p->partitions[part->partition].seeking = 0;
    }
    pthread_mutex_unlock(&p->lock);
    tly_dedupe_free(dedupe);
    tly_dedupe_filter_free(filter);
    if (part->partition + 1 > atomic_load(&p->partition_count))
      atomic_store(&p->partition_count, part->partition + 1);
    tly_log(TLY_LOG_INFO, "processor",
            "partition %d: resuming at %s%lld (log %lld..%lld)",
            (int)part->partition, found ? "" : "beginning ",
            (long long)(found ? stored : low), (long long)low, (long long)high);
  }
  /* The filters' builds once every partition is set up, so that their
   * scans do not compete with the assignment's own loading (each partition
   * of this assignment with a ticket got it above: a revoke clears it). */
  for (int i = 0; i < parts->cnt; i++) {
    int32_t partition = parts->elems[i].partition;
    if (partition >= 0 && partition < p->partition_cap &&
        p->partitions[partition].filter_build &&
        tly_proc_filter_queue(p, partition,
                              p->partitions[partition].filter_build))
      return -1;
  }
  return 0;
}
