/*
 * tly_ticks.c - time-driven work. Once per tick interval the processor
 * writes a tick record into every partition it owns, through the input
 * topic, so ticks are folded in log order with the events; folding a tick
 * closes every cycle of the partition that has ended by the tick's time,
 * found through the cycle-end index.
 *
 * Tick ids come from (partition, slot): a tick written twice is
 * deduplicated by the fold like any event. It never closes a cycle
 * itself: tly_billing_tick does, through the fold's view.
 */
#include "tly_processor_internal.h"

#include "tly_keys.h"
#include "tly_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- ticks ----------------------------------------------------------- */

typedef struct {
  int64_t tick_ms;
  char **subjects;
  size_t count, cap;
} due_scan_t;

static int collect_due(void *opaque, const char *key, size_t key_len,
                       const char *value, size_t value_len) {
  due_scan_t *scan = opaque;
  (void)value, (void)value_len;
  if (key_len <= 12)
    return 0;
  if ((int64_t)tly_get_be64((const unsigned char *)key + 4) > scan->tick_ms)
    return 1; /* keys are in cycle-end order: the rest are not due */
  if (array_room(&scan->subjects, &scan->cap, scan->count + 1,
                 sizeof(*scan->subjects)))
    return 1;
  scan->subjects[scan->count] = strndup(key + 12, key_len - 12);
  if (scan->subjects[scan->count])
    scan->count++;
  return 0;
}

/* A tick at tick_ms closes every cycle of the partition that has ended. The
 * batch was committed just before the tick was folded, so the index in
 * RocksDB is current. */
void tly_proc_fold_tick(tly_processor_t *p, int32_t partition,
                        int64_t tick_ms) {
  char errstr[256], prefix[4];
  due_scan_t scan = {tick_ms, NULL, 0, 0};
  tly_put_be32((unsigned char *)prefix, (uint32_t)partition);
  if (tly_store_scan_prefix(p->store, TLY_CF_CYCLE_ENDS, prefix, 4, collect_due,
                            &scan, errstr, sizeof(errstr)))
    tly_proc_set_fatal(p, "scanning cycle ends: %s", errstr);
  for (size_t i = 0; i < scan.count && !p->fatal; i++) {
    char *colon = strchr(scan.subjects[i], ':');
    tly_subject_kind_t kind;
    if (!colon)
      continue;
    *colon = '\0';
    if (tly_subject_kind_parse(scan.subjects[i], &kind))
      continue;
    if (tly_billing_tick(&p->billing, &p->view, kind, colon + 1, tick_ms,
                         &p->alerts) == TLY_FOLD_FAILED &&
        !p->fatal)
      tly_proc_set_fatal(p, "out of memory closing cycles");
  }
  for (size_t i = 0; i < scan.count; i++)
    free(scan.subjects[i]);
  free(scan.subjects);
}

/* Writes this slot's tick into every partition this processor owns. Ids
 * come from (partition, slot), so ticks written twice (a restart, two
 * instances) are deduplicated by the fold. */
void tly_proc_write_ticks(tly_processor_t *p) {
  int64_t interval = p->conf.tick_interval_ms;
  if (interval <= 0)
    return;
  int64_t now = tly_wall_ms();
  int64_t slot = now - now % interval;
  if (slot <= p->last_tick_slot)
    return;
  p->last_tick_slot = slot;
  for (int32_t i = 0; i < p->partition_cap; i++) {
    char event_id[64], errstr[256];
    const void *value;
    size_t value_len;
    if (!p->partitions[i].assigned)
      continue;
    tly_event_t tick = {0};
    snprintf(event_id, sizeof(event_id), "tick:%d:%lld", (int)i,
             (long long)slot);
    tick.event_id = event_id;
    tick.occurred_at_ms = slot;
    tick.subject_kind = TLY_SUBJECT_SYSTEM;
    tick.subject_id = "tick";
    tick.body_kind = TLY_BODY_TICK;
    tick.body.tick.partition = i;
    if (tly_codec_encode(p->codec, &tick, &value, &value_len, errstr,
                         sizeof(errstr))) {
      tly_log(TLY_LOG_WARN, "ticks", "encoding tick: %s", errstr);
      return;
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->producer, RD_KAFKA_V_TOPIC(p->usage_topic), RD_KAFKA_V_PARTITION(i),
        RD_KAFKA_V_KEY("system:tick", 11),
        RD_KAFKA_V_VALUE((void *)value, value_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(TICK_OPAQUE), RD_KAFKA_V_END);
    if (err)
      tly_log(TLY_LOG_WARN, "ticks", "producing tick: %s",
              rd_kafka_err2str(err));
  }
}
