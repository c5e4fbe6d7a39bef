/*
 * tly_kafka_client.c - librdkafka's log through tally's (tly_kafka_client.h).
 */
#include "tly_kafka_client.h"

#include <librdkafka/rdkafka.h>
#include <stdatomic.h>

static atomic_int kafka_min_level = TLY_LOG_INFO;

void tly_kafka_log_set_level(tly_log_level_t level) {
  atomic_store(&kafka_min_level, (int)level);
}

/* librdkafka's levels are syslog's: 0 EMERG .. 7 DEBUG. */
static tly_log_level_t level_of(int syslog_level) {
  if (syslog_level <= 2)
    return TLY_LOG_ERROR;
  if (syslog_level <= 4)
    return TLY_LOG_WARN;
  if (syslog_level <= 6)
    return TLY_LOG_INFO;
  return TLY_LOG_DEBUG;
}

void tly_kafka_log_line(tly_log_level_t level, const rd_kafka_t *rk,
                        const char *facility, const char *text) {
  if ((int)level < atomic_load(&kafka_min_level))
    return;
  tly_log(level, "kafka", "%s %s: %s", rk ? rd_kafka_name(rk) : "-",
          facility ? facility : "-", text ? text : "");
}

/* May run on any of librdkafka's threads; tly_log writes one line at once. */
static void log_cb(const rd_kafka_t *rk, int level, const char *facility,
                   const char *text) {
  tly_kafka_log_line(level_of(level), rk, facility, text);
}

void tly_kafka_conf_log(rd_kafka_conf_t *conf) {
  rd_kafka_conf_set_log_cb(conf, log_cb);
}
