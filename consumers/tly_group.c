/*
 * tly_group.c - the processor's consumer group membership (tly_group.h).
 */
#include "tly_group.h"
#include "tly_processor_internal.h"

#include "tly_log.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int tly_group_instance_id_check(const char *id, char *errstr,
                                size_t errstr_size) {
  size_t len = id ? strnlen(id, TLY_GROUP_INSTANCE_ID_MAX + 1) : 0;
  if (!len) {
    snprintf(errstr, errstr_size, "must not be empty");
    return -1;
  }
  if (len > TLY_GROUP_INSTANCE_ID_MAX) {
    snprintf(errstr, errstr_size, "longer than %d bytes",
             TLY_GROUP_INSTANCE_ID_MAX);
    return -1;
  }
  if (!strcmp(id, ".") || !strcmp(id, "..")) {
    snprintf(errstr, errstr_size, "must not be \".\" or \"..\"");
    return -1;
  }
  for (size_t i = 0; i < len; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) {
      snprintf(errstr, errstr_size,
               "byte %zu is not one of A-Z a-z 0-9 . _ - (Kafka's rule for "
               "group.instance.id)",
               i + 1);
      return -1;
    }
  }
  return 0;
}

int tly_group_is_embedded(rd_kafka_t *client, int timeout_ms) {
  static const char prefix[] = "mockCluster";
  char *id = rd_kafka_clusterid(client, timeout_ms);
  int embedded = id && !strncmp(id, prefix, sizeof(prefix) - 1);
  if (id)
    rd_kafka_mem_free(client, id);
  return embedded;
}

/* Field 22 of /proc/self/stat (clock ticks after boot) against
 * CLOCK_BOOTTIME; the command name (field 2) may hold spaces and
 * parentheses, so the fields are counted from its last ')'. */
int64_t tly_group_process_age_ms(void) {
  char text[1024];
  FILE *file = fopen("/proc/self/stat", "r");
  if (!file)
    return -1;
  size_t len = fread(text, 1, sizeof(text) - 1, file);
  fclose(file);
  text[len] = '\0';
  const char *field = strrchr(text, ')');
  long ticks_per_s = sysconf(_SC_CLK_TCK);
  if (!field || ticks_per_s <= 0)
    return -1;
  /* After ')': field 3 (state) onwards; starttime is field 22. */
  for (int i = 3; i <= 22 && field; i++)
    field = strchr(field + 1, ' ');
  if (!field)
    return -1;
  unsigned long long start_ticks = strtoull(field + 1, NULL, 10);
  struct timespec boot;
  if (clock_gettime(CLOCK_BOOTTIME, &boot))
    return -1;
  int64_t now_ms = (int64_t)boot.tv_sec * 1000 + boot.tv_nsec / 1000000;
  int64_t start_ms =
      (int64_t)(start_ticks * 1000ULL / (unsigned long)ticks_per_s);
  return now_ms >= start_ms ? now_ms - start_ms : -1;
}

static const char MARK_KEY[] = "group.membership";

int tly_group_mark_read(tly_store_t *store, tly_group_mark_t *mark,
                        char *errstr, size_t errstr_size) {
  char *value = NULL;
  size_t len = 0;
  int found = tly_store_get(store, TLY_CF_META, MARK_KEY, sizeof(MARK_KEY) - 1,
                            &value, &len, errstr, errstr_size);
  if (found < 0)
    return -1;
  *mark = TLY_GROUP_MARK_NONE;
  if (found && len == 1 && value[0] == 'J')
    *mark = TLY_GROUP_MARK_JOINED;
  else if (found && len == 1 && value[0] == 'L')
    *mark = TLY_GROUP_MARK_LEFT;
  tly_store_free(value);
  return 0;
}

int tly_group_mark_write(tly_store_t *store, tly_group_mark_t mark,
                         char *errstr, size_t errstr_size) {
  tly_store_batch_t *batch = tly_store_batch_new();
  if (!batch) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  if (mark == TLY_GROUP_MARK_NONE)
    tly_store_batch_delete(batch, TLY_CF_META, MARK_KEY, sizeof(MARK_KEY) - 1);
  else
    tly_store_batch_put(batch, TLY_CF_META, MARK_KEY, sizeof(MARK_KEY) - 1,
                        mark == TLY_GROUP_MARK_JOINED ? "J" : "L", 1);
  int rc = tly_store_commit(store, batch, 1, errstr, errstr_size);
  tly_store_batch_destroy(batch);
  return rc;
}

void tly_group_wait_until(int64_t at_ms, volatile sig_atomic_t *stop) {
  for (;;) {
    int64_t left = at_ms - tly_monotonic_ms();
    if (left <= 0 || *stop)
      return;
    if (left > 50)
      left = 50;
    struct timespec pause = {0, left * 1000000L};
    nanosleep(&pause, NULL);
  }
}

/* ---- the processor's consumer ----------------------------------------- */

/* An integer property of conf as librdkafka holds it (fallback when it
 * cannot be read). */
static int conf_int(const rd_kafka_conf_t *conf, const char *name,
                    int fallback) {
  char value[32];
  size_t size = sizeof(value);
  if (rd_kafka_conf_get(conf, name, value, &size) != RD_KAFKA_CONF_OK)
    return fallback;
  int parsed = atoi(value);
  return parsed > 0 ? parsed : fallback;
}

rd_kafka_t *tly_proc_group_consumer_new(
    tly_processor_t *p,
    void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t,
                         rd_kafka_topic_partition_list_t *, void *),
    char *errstr, size_t errstr_size) {
  const tly_processor_conf_t *conf = &p->conf;
  char kafka_err[512], session[48], heartbeat[48];
  /* Which cluster: asked through the producer (already connecting), only
   * when it changes something. */
  p->embedded = (conf->fast_rejoin || conf->group_instance_id) &&
                tly_group_is_embedded(p->producer, 5000);
  int fast = p->embedded && conf->fast_rejoin;
  snprintf(session, sizeof(session), "session.timeout.ms=%d",
           fast ? TLY_GROUP_EMBEDDED_SESSION_MS : 10000);
  snprintf(heartbeat, sizeof(heartbeat), "heartbeat.interval.ms=%d",
           fast ? TLY_GROUP_EMBEDDED_HEARTBEAT_MS : 1000);
  /* Offsets live in RocksDB only: no auto-commit, no offset store, and an
   * out-of-range offset is an error to stop on, never a silent reset. */
  const char *consumer_defaults[] = {
      "enable.auto.commit=false", "enable.auto.offset.store=false",
      "auto.offset.reset=error", "enable.partition.eof=false", session,
      heartbeat,
      /* How long a broker may hold a fetch that finds nothing. Kafka
       * answers as soon as a record comes; the embedded broker (`tally
       * dev`, `tally broker`) holds it the whole time, so this is latency
       * there (it was 50 ms), and idle fetches per second everywhere. */
      "fetch.wait.max.ms=10", "max.partition.fetch.bytes=10485760",
      /* Prefetch deep enough that the fetcher never pauses while a batch
       * commits: at the default, the fold waited on fetches for a third
       * of its time. */
      "queued.min.messages=1000000", "statistics.interval.ms=0",
      /* KIP-429: a rebalance revokes only the partitions that move; the
       * others keep folding and answering (tly_processor.c, rebalance).
       * -X partition.assignment.strategy=range,roundrobin brings back the
       * eager protocol. The embedded broker supports it: the assignor
       * runs in the group leader's client (probed on librdkafka 2.0.2). */
      "partition.assignment.strategy=cooperative-sticky", NULL};
  rd_kafka_conf_t *kconf =
      tly_proc_kafka_conf(conf, 1, consumer_defaults, errstr, errstr_size);
  if (!kconf)
    return NULL;
  if (rd_kafka_conf_set(kconf, "group.id",
                        conf->group_id ? conf->group_id : TLY_DEFAULT_GROUP_ID,
                        kafka_err, sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "group id: %s", kafka_err);
    rd_kafka_conf_destroy(kconf);
    return NULL;
  }
  if (conf->group_instance_id && !p->embedded) {
    if (tly_group_instance_id_check(conf->group_instance_id, kafka_err,
                                    sizeof(kafka_err))) {
      snprintf(errstr, errstr_size, "instance id: %s", kafka_err);
      rd_kafka_conf_destroy(kconf);
      return NULL;
    }
    if (rd_kafka_conf_set(kconf, "group.instance.id", conf->group_instance_id,
                          kafka_err, sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
      snprintf(errstr, errstr_size, "group.instance.id: %s", kafka_err);
      rd_kafka_conf_destroy(kconf);
      return NULL;
    }
  }
  /* -X group.instance.id=... counts too. */
  char instance[TLY_GROUP_INSTANCE_ID_MAX + 2];
  size_t instance_size = sizeof(instance);
  p->static_member = rd_kafka_conf_get(kconf, "group.instance.id", instance,
                                       &instance_size) == RD_KAFKA_CONF_OK &&
                     instance[0];
  rd_kafka_conf_set_opaque(kconf, p);
  rd_kafka_conf_set_rebalance_cb(kconf, rebalance_cb);
  p->session_timeout_ms = conf_int(kconf, "session.timeout.ms", 45000);
  p->heartbeat_ms = conf_int(kconf, "heartbeat.interval.ms", 3000);
  rd_kafka_t *consumer =
      rd_kafka_new(RD_KAFKA_CONSUMER, kconf, kafka_err, sizeof(kafka_err));
  if (!consumer) {
    snprintf(errstr, errstr_size, "creating Kafka consumer: %s", kafka_err);
    rd_kafka_conf_destroy(kconf);
    return NULL;
  }
  if (conf->group_instance_id && p->embedded)
    tly_log(TLY_LOG_INFO, "processor",
            "embedded broker: it does not implement static group membership; "
            "instance id %s joins as a dynamic member",
            conf->group_instance_id);
  /* After a run that did not leave the group, on the embedded broker: its
   * member stays until its session times out (checked once a second). A
   * join at least 2 s after that run died (it died before this process
   * started) is still waiting when the member goes, so the mock elects a
   * leader once, among the live members only. */
  tly_group_mark_t mark = TLY_GROUP_MARK_NONE;
  if (tly_group_mark_read(p->store, &mark, errstr, errstr_size)) {
    rd_kafka_destroy(consumer);
    return NULL;
  }
  if (fast && mark == TLY_GROUP_MARK_JOINED) {
    int64_t age = tly_group_process_age_ms();
    int64_t wait = TLY_GROUP_REJOIN_AFTER_MS - (age < 0 ? 0 : age);
    if (wait > 0)
      p->join_at_ms = tly_monotonic_ms() + wait;
  }
  return consumer;
}

int tly_proc_group_join(tly_processor_t *p, volatile sig_atomic_t *stop,
                        char *errstr, size_t errstr_size) {
  /* Marked before the member exists: a run killed from here on is one
   * that did not leave. */
  if (tly_group_mark_write(p->store, TLY_GROUP_MARK_JOINED, errstr,
                           errstr_size))
    return -1;
  if (p->join_at_ms) {
    tly_log(TLY_LOG_INFO, "processor",
            "embedded broker: the previous run did not leave the group; "
            "joining in %lld ms, once its member has expired",
            (long long)(p->join_at_ms - tly_monotonic_ms()));
    tly_group_wait_until(p->join_at_ms, stop);
  }
  tly_log(TLY_LOG_INFO, "processor",
          "joining group %s as a %s member%s (session.timeout.ms %d, "
          "heartbeat.interval.ms %d), %lld ms after the process started",
          p->conf.group_id ? p->conf.group_id : TLY_DEFAULT_GROUP_ID,
          p->static_member ? "static" : "dynamic",
          p->embedded ? " of the embedded broker" : "", p->session_timeout_ms,
          p->heartbeat_ms, (long long)tly_group_process_age_ms());
  return 0;
}

void tly_proc_group_leave(tly_processor_t *p) {
  char errstr[512];
  rd_kafka_resp_err_t err = rd_kafka_consumer_close(p->consumer);
  /* A dynamic member's close left the group (LeaveGroup); a static
   * member's does not (KIP-345): the next run treats it as one that
   * stayed. */
  if (err || p->static_member)
    return;
  if (tly_group_mark_write(p->store, TLY_GROUP_MARK_LEFT, errstr,
                           sizeof(errstr)))
    tly_log(TLY_LOG_WARN, "processor", "recording the group leave: %s", errstr);
}
