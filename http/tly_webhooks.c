/*
 * tly_webhooks.c - alert webhooks (config "notifications.webhooks"): every
 * alert on the alerts topic, of the types an endpoint asks for, POSTed to
 * it and signed the Standard Webhooks way:
 *
 *   webhook-id: <alert_id>          (deterministic: receivers dedupe on it)
 *   webhook-timestamp: <unix seconds of this attempt>
 *   webhook-signature: v1,<base64 HMAC-SHA256(key, id "." timestamp "." body)>
 *   body: {"type": <alert type>, "timestamp": <alert time, RFC 3339>,
 *          "data": <the alert as GET .../alerts shows it>}
 *
 * (key: the secret after "whsec_", base64-decoded; a secret without that
 * prefix is used as it is).
 *
 * Each endpoint has its own Kafka consumer group on the alerts topic
 * ("tally.webhooks.<first 16 hex of SHA-256(url)>"), reading from the
 * earliest offset, offsets committed only once an alert was answered 2xx
 * (or dead-lettered): at least once, and a crashed or moved instance
 * resumes from what was acknowledged, as the Stripe emitter does. The
 * instances of a cluster share each group, so each alert is delivered by
 * one of them.
 *
 * A failed attempt (no answer within timeout_ms, or not 2xx) parks the
 * alert (tly_webhook_parked.h) with its own backoff: retried after
 * retry_initial_ms, doubling up to retry_max_ms, for give_up_s (24 h by
 * default) from the first attempt; then it goes to the dead-letter topic
 * (tally.error names the endpoint and the last answer). The alerts after
 * it go out meanwhile: one failing alert never holds the others back. The
 * committed offset of a partition is its oldest alert not yet delivered
 * or dead-lettered (with the parked alerts' first attempt times in the
 * commit's metadata), so a SIGKILL resumes from there. At most
 * TLY_WEBHOOK_PARKED_MAX alerts are parked per endpoint; when full, no
 * new record is taken until one finishes. The consumer's
 * max.poll.interval.ms is set above retry_max_ms + timeout_ms.
 */
#include "tly_webhooks.h"

#include "tly_alert.h"
#include "tly_kafka_client.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_sha256.h"
#include "tly_topic_names.h"
#include "tly_webhook_parked.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  tly_webhooks_t *owner;
  const tly_webhook_config_t *cfg;
  unsigned char key[512];
  size_t key_len;
  char group[64];
  rd_kafka_t *consumer;
  tly_alert_codec_t *codec;
  tly_webhook_parked_set_t parked; /* alerts waiting for a retry */
  pthread_t thread;
  int started;
} endpoint_t;

struct tly_webhooks {
  tly_webhooks_conf_t conf;
  const tly_notifications_config_t *n;
  endpoint_t endpoints[TLY_WEBHOOKS_MAX];
  size_t count;
  rd_kafka_t *producer; /* the dead-letter topic */
  atomic_int stop;
  atomic_uint_least64_t delivered, failed_attempts, dead_lettered;
};

static int64_t wall_s(void) { return tly_wall_ms() / 1000; }

/* Waits ms unless stopping; 1 when stopping. */
static int pause_ms(tly_webhooks_t *w, int64_t ms) {
  while (ms > 0 && !atomic_load(&w->stop)) {
    int64_t step = ms < 50 ? ms : 50;
    struct timespec ts = {0, (long)step * 1000000L};
    nanosleep(&ts, NULL);
    ms -= step;
  }
  return atomic_load(&w->stop);
}

static rd_kafka_conf_t *kafka_conf(const tly_webhooks_conf_t *conf,
                                   char *errstr, size_t errstr_size) {
  char err[512];
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  tly_kafka_conf_log(kconf);
  if (rd_kafka_conf_set(kconf, "bootstrap.servers", conf->brokers, err,
                        sizeof(err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "webhooks: %s", err);
    rd_kafka_conf_destroy(kconf);
    return NULL;
  }
  for (size_t i = 0; conf->kafka_properties && conf->kafka_properties[i]; i++) {
    const char *eq = strchr(conf->kafka_properties[i], '=');
    char name[256];
    if (!eq || (size_t)(eq - conf->kafka_properties[i]) >= sizeof(name))
      continue;
    snprintf(name, sizeof(name), "%.*s", (int)(eq - conf->kafka_properties[i]),
             conf->kafka_properties[i]);
    rd_kafka_conf_set(kconf, name, eq + 1, err, sizeof(err));
  }
  return kconf;
}

/* ---- one delivery ---------------------------------------------------- */

static size_t discard(char *ptr, size_t size, size_t n, void *opaque) {
  (void)ptr, (void)opaque;
  return size * n;
}

/* POSTs body to the endpoint, signed; the HTTP status (0: no answer, with
 * the reason in why). */
static long deliver(endpoint_t *e, const char *id, const char *body, char *why,
                    size_t why_size) {
  char timestamp[32], header[1024];
  unsigned char mac[TLY_SHA256_LEN];
  unsigned char signature[64];
  snprintf(timestamp, sizeof(timestamp), "%" PRId64, wall_s());
  tly_hmac_t *hmac = tly_hmac_sha256_begin(e->key, e->key_len);
  if (!hmac || tly_hmac_update(hmac, id, strlen(id)) ||
      tly_hmac_update(hmac, ".", 1) ||
      tly_hmac_update(hmac, timestamp, strlen(timestamp)) ||
      tly_hmac_update(hmac, ".", 1) ||
      tly_hmac_update(hmac, body, strlen(body)) || tly_hmac_end(hmac, mac)) {
    snprintf(why, why_size, "cannot sign");
    return 0;
  }
  EVP_EncodeBlock(signature, mac, sizeof(mac));
  CURL *curl = curl_easy_init();
  if (!curl) {
    snprintf(why, why_size, "libcurl: cannot start");
    return 0;
  }
  struct curl_slist *headers = NULL;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  snprintf(header, sizeof(header), "webhook-id: %s", id);
  headers = curl_slist_append(headers, header);
  snprintf(header, sizeof(header), "webhook-timestamp: %s", timestamp);
  headers = curl_slist_append(headers, header);
  snprintf(header, sizeof(header), "webhook-signature: v1,%s", signature);
  headers = curl_slist_append(headers, header);
  curl_easy_setopt(curl, CURLOPT_URL, e->cfg->url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)e->owner->n->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  long status = 0;
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK)
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  else
    snprintf(why, why_size, "%s", curl_easy_strerror(rc));
  if (rc == CURLE_OK)
    snprintf(why, why_size, "answered %ld", status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return status;
}

static void dead_letter(endpoint_t *e, const tly_webhook_parked_t *item) {
  tly_webhooks_t *w = e->owner;
  char reason[1024];
  snprintf(reason, sizeof(reason),
           "webhook %s: gave up after %" PRId64 " s: last attempt %s",
           e->cfg->url, w->n->give_up_s, item->why);
  char first[32];
  snprintf(first, sizeof(first), "%" PRId64, item->first_ms);
  rd_kafka_headers_t *headers = rd_kafka_headers_new(4);
  rd_kafka_header_add(headers, "tally.error", -1, reason, -1);
  /* When the give-up clock started (it survives restarts). */
  rd_kafka_header_add(headers, "tally.webhook.first_attempt_ms", -1, first, -1);
  rd_kafka_header_add(headers, "tally.source", -1, "webhooks", -1);
  rd_kafka_header_add(headers, "tally.output.id", -1, item->id, -1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      w->producer, RD_KAFKA_V_TOPIC(w->conf.dlq_topic),
      RD_KAFKA_V_KEY(item->key, item->key_len),
      RD_KAFKA_V_VALUE((void *)item->body, strlen(item->body)),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers),
      RD_KAFKA_V_END);
  if (err)
    rd_kafka_headers_destroy(headers);
  /* Acknowledged before the offset moves past it. */
  while (!err &&
         rd_kafka_flush(w->producer, 1000) == RD_KAFKA_RESP_ERR__TIMED_OUT &&
         !atomic_load(&w->stop))
    ;
  atomic_fetch_add(&w->dead_lettered, 1);
  tly_log(TLY_LOG_WARN, "webhooks", "%s: %s", item->id, reason);
}

/* One attempt of a parked (or new) alert: 1 when it is finished (delivered,
 * or past give_up_s and dead-lettered), 0 when it waits for its next
 * attempt (next_ms and wait_ms moved on). */
static int attempt(endpoint_t *e, tly_webhook_parked_t *item) {
  tly_webhooks_t *w = e->owner;
  long status = deliver(e, item->id, item->body, item->why, sizeof(item->why));
  if (status >= 200 && status < 300) {
    atomic_fetch_add(&w->delivered, 1);
    return 1;
  }
  atomic_fetch_add(&w->failed_attempts, 1);
  int64_t now = tly_wall_ms();
  if (now - item->first_ms >= w->n->give_up_s * 1000) {
    dead_letter(e, item);
    return 1;
  }
  item->next_ms = now + item->wait_ms;
  item->wait_ms = item->wait_ms * 2 > w->n->retry_max_ms ? w->n->retry_max_ms
                                                         : item->wait_ms * 2;
  return 0;
}

/* One new alert record: skipped (not an alert, or of a type the endpoint
 * does not want), delivered, or parked for its retries. 0, or -1 when it
 * could not be taken (out of memory: read again later). */
static int take(endpoint_t *e, const rd_kafka_message_t *msg) {
  tly_alert_t alert = {0};
  char errstr[256];
  if (tly_alert_decode(e->codec, msg->payload, msg->len, &alert, errstr,
                       sizeof(errstr))) {
    tly_log(TLY_LOG_WARN, "webhooks",
            "partition %d offset %" PRId64 ": not an alert (%s): skipped",
            (int)msg->partition, msg->offset, errstr);
    return tly_webhook_taken(&e->parked, msg->partition, msg->offset);
  }
  if (e->cfg->types && !(e->cfg->types & (1u << alert.type))) {
    tly_alert_clear(&alert);
    return tly_webhook_taken(&e->parked, msg->partition, msg->offset);
  }
  char when[40];
  time_t secs = (time_t)(alert.occurred_at_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
  json_t *payload =
      json_pack("{s:s,s:s,s:o}", "type", tly_alert_type_name(alert.type),
                "timestamp", when, "data", tly_req_alert_json(&alert));
  tly_webhook_parked_t item = {.partition = msg->partition,
                               .offset = msg->offset};
  item.body = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
  json_decref(payload);
  item.id = alert.alert_id ? strdup(alert.alert_id) : NULL;
  tly_alert_clear(&alert);
  item.key_len = msg->key ? msg->key_len : 0;
  item.key = item.key_len ? malloc(item.key_len) : NULL;
  if (item.key)
    memcpy(item.key, msg->key, item.key_len);
  if (!item.body || !item.id || (item.key_len && !item.key) ||
      tly_webhook_taken(&e->parked, msg->partition, msg->offset)) {
    free(item.body);
    free(item.id);
    free(item.key);
    return -1;
  }
  /* Retried since before a crash: its give-up clock goes on. */
  int64_t first = tly_webhook_hint(&e->parked, msg->partition, msg->offset);
  item.first_ms = first >= 0 ? first : tly_wall_ms();
  item.wait_ms = e->owner->n->retry_initial_ms;
  if (attempt(e, &item) || tly_webhook_park(&e->parked, &item)) {
    /* Finished (the caller never parks into a full set). */
    free(item.body);
    free(item.id);
    free(item.key);
  }
  return 0;
}

static void destroy_error(rd_kafka_error_t *error) {
  if (error)
    rd_kafka_error_destroy(error);
}

/* Commits each partition's progress that moved (offset or parked set):
 * never past an alert not yet finished. */
static void commit_progress(endpoint_t *e) {
  tly_webhooks_t *w = e->owner;
  rd_kafka_topic_partition_list_t *list = NULL;
  for (size_t i = 0; i < e->parked.part_count; i++) {
    tly_webhook_progress_t *p = &e->parked.parts[i];
    int64_t offset = tly_webhook_commit_offset(&e->parked, p->partition);
    if (offset < 0)
      continue;
    char metadata[TLY_WEBHOOK_METADATA_MAX];
    size_t len = tly_webhook_metadata(&e->parked, p->partition, metadata,
                                      sizeof(metadata));
    uint64_t digest = tly_webhook_digest(metadata, len);
    if (offset == p->committed && digest == p->committed_digest)
      continue;
    if (!list)
      list = rd_kafka_topic_partition_list_new(4);
    rd_kafka_topic_partition_t *part = rd_kafka_topic_partition_list_add(
        list, w->conf.alerts_topic, p->partition);
    part->offset = offset;
    part->metadata = malloc(len);
    if (part->metadata) {
      memcpy(part->metadata, metadata, len);
      part->metadata_size = len;
    }
  }
  if (!list)
    return;
  rd_kafka_resp_err_t err = rd_kafka_commit(e->consumer, list, 0 /* sync */);
  for (int i = 0; i < list->cnt; i++) {
    rd_kafka_topic_partition_t *part = &list->elems[i];
    tly_webhook_progress_t *p =
        tly_webhook_progress(&e->parked, part->partition);
    if (!err && !part->err && p) {
      p->committed = part->offset;
      p->committed_digest =
          tly_webhook_digest(part->metadata, part->metadata_size);
    }
  }
  if (err)
    tly_log(TLY_LOG_WARN, "webhooks", "%s: commit: %s (retried)", e->cfg->url,
            rd_kafka_err2str(err));
  rd_kafka_topic_partition_list_destroy(list);
}

/* Partitions given or taken away. Given: the parked alerts' first attempt
 * times come back from the committed metadata. Taken: their progress is
 * committed and forgotten (whoever gets them resumes from there). */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  endpoint_t *e = opaque;
  int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    rd_kafka_topic_partition_list_t *committed =
        rd_kafka_topic_partition_list_copy(parts);
    if (rd_kafka_committed(rk, committed, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR)
      for (int i = 0; i < committed->cnt; i++) {
        rd_kafka_topic_partition_t *part = &committed->elems[i];
        tly_webhook_drop_partition(&e->parked, part->partition);
        tly_webhook_load_hints(&e->parked, part->partition, part->metadata,
                               part->metadata_size);
      }
    rd_kafka_topic_partition_list_destroy(committed);
    if (cooperative)
      destroy_error(rd_kafka_incremental_assign(rk, parts));
    else
      rd_kafka_assign(rk, parts);
    return;
  }
  if (!rd_kafka_assignment_lost(rk))
    commit_progress(e);
  for (int i = 0; i < parts->cnt; i++)
    tly_webhook_drop_partition(&e->parked, parts->elems[i].partition);
  if (cooperative)
    rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, parts));
  else
    rd_kafka_assign(rk, NULL);
}

/* Retries the parked alerts that are due; 1 when stopping. */
static int retry_due(endpoint_t *e) {
  tly_webhooks_t *w = e->owner;
  for (size_t i = 0; i < e->parked.count && !atomic_load(&w->stop);) {
    tly_webhook_parked_t *item = &e->parked.items[i];
    if (item->next_ms > tly_wall_ms()) {
      i++;
      continue;
    }
    if (attempt(e, item))
      tly_webhook_unpark(&e->parked, i);
    else
      i++;
    commit_progress(e);
  }
  return atomic_load(&w->stop);
}

static void *endpoint_main(void *arg) {
  endpoint_t *e = arg;
  tly_webhooks_t *w = e->owner;
  while (!atomic_load(&w->stop)) {
    if (retry_due(e))
      break;
    int64_t due = tly_webhook_next_due(&e->parked) - tly_wall_ms();
    int wait = due < 0 ? 0 : due > 100 ? 100 : (int)due;
    if (e->parked.count >= TLY_WEBHOOK_PARKED_MAX) {
      /* Full: no new record until a parked one finishes. */
      pause_ms(w, wait);
      continue;
    }
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(e->consumer, wait);
    if (!msg)
      continue;
    if (msg->err) {
      if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        tly_log(TLY_LOG_WARN, "webhooks", "%s: %s", e->cfg->url,
                rd_kafka_message_errstr(msg));
    } else if (take(e, msg)) {
      /* Out of memory: read it again after a pause. */
      rd_kafka_topic_partition_list_t *at =
          rd_kafka_topic_partition_list_new(1);
      rd_kafka_topic_partition_list_add(at, w->conf.alerts_topic,
                                        msg->partition)
          ->offset = msg->offset;
      destroy_error(rd_kafka_seek_partitions(e->consumer, at, 1000));
      rd_kafka_topic_partition_list_destroy(at);
      pause_ms(w, 1000);
    }
    rd_kafka_message_destroy(msg);
    commit_progress(e);
  }
  /* What finished is committed; the parked alerts are not (delivered
   * again by whoever resumes). */
  commit_progress(e);
  return NULL;
}

/* ---- start and stop ---------------------------------------------------- */

static int start_endpoint(tly_webhooks_t *w, endpoint_t *e, char *errstr,
                          size_t errstr_size) {
  char err[512], hex[TLY_SHA256_HEX_LEN + 1], max_poll[32];
  const char *secret = e->cfg->secret;
  if (strncmp(secret, "whsec_", 6) == 0) {
    size_t len = strlen(secret + 6);
    int n = len % 4 == 0 && len / 4 * 3 <= sizeof(e->key)
                ? EVP_DecodeBlock(e->key, (const unsigned char *)secret + 6,
                                  (int)len)
                : -1;
    if (n < 0) {
      snprintf(errstr, errstr_size,
               "webhooks: %s: the secret after whsec_ is not base64",
               e->cfg->secret_env);
      return -1;
    }
    /* EVP_DecodeBlock counts the padding's zero bytes too. */
    while (len && secret[6 + len - 1] == '=')
      len--, n--;
    e->key_len = (size_t)n;
  } else {
    e->key_len = strlen(secret);
    memcpy(e->key, secret, e->key_len);
  }
  tly_sha256_hex(e->cfg->url, strlen(e->cfg->url), hex);
  snprintf(e->group, sizeof(e->group), "tally.webhooks.%.16s", hex);
  e->codec = tly_alert_codec_new(errstr, errstr_size);
  rd_kafka_conf_t *kconf = kafka_conf(&w->conf, errstr, errstr_size);
  if (!e->codec || !kconf)
    return -1;
  snprintf(max_poll, sizeof(max_poll), "%" PRId64,
           w->n->retry_max_ms + w->n->timeout_ms + 60000 > 300000
               ? w->n->retry_max_ms + w->n->timeout_ms + 60000
               : 300000);
  if (rd_kafka_conf_set(kconf, "group.id", e->group, err, sizeof(err)) ||
      rd_kafka_conf_set(kconf, "enable.auto.commit", "false", err,
                        sizeof(err)) ||
      rd_kafka_conf_set(kconf, "auto.offset.reset", "earliest", err,
                        sizeof(err)) ||
      rd_kafka_conf_set(kconf, "max.poll.interval.ms", max_poll, err,
                        sizeof(err))) {
    snprintf(errstr, errstr_size, "webhooks: %s", err);
    rd_kafka_conf_destroy(kconf);
    return -1;
  }
  rd_kafka_conf_set_rebalance_cb(kconf, on_rebalance);
  rd_kafka_conf_set_opaque(kconf, e);
  e->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, err, sizeof(err));
  if (!e->consumer) {
    snprintf(errstr, errstr_size, "webhooks: %s", err);
    return -1;
  }
  rd_kafka_poll_set_consumer(e->consumer);
  rd_kafka_topic_partition_list_t *topics =
      rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, w->conf.alerts_topic,
                                    RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t rc = rd_kafka_subscribe(e->consumer, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (rc) {
    snprintf(errstr, errstr_size, "webhooks: subscribe: %s",
             rd_kafka_err2str(rc));
    return -1;
  }
  e->started = pthread_create(&e->thread, NULL, endpoint_main, e) == 0;
  if (!e->started) {
    snprintf(errstr, errstr_size, "webhooks: cannot start a thread");
    return -1;
  }
  tly_log(TLY_LOG_INFO, "webhooks", "delivering alerts to %s (group %s)",
          e->cfg->url, e->group);
  return 0;
}

tly_webhooks_t *tly_webhooks_start(const tly_webhooks_conf_t *conf,
                                   char *errstr, size_t errstr_size) {
  const tly_notifications_config_t *n = &conf->config->notifications;
  if (!n->webhook_count || !conf->brokers)
    return NULL;
  tly_webhooks_t *w = calloc(1, sizeof(*w));
  if (!w) {
    snprintf(errstr, errstr_size, "webhooks: out of memory");
    return NULL;
  }
  w->conf = *conf;
  if (!w->conf.alerts_topic)
    w->conf.alerts_topic = TLY_DEFAULT_ALERTS_TOPIC;
  if (!w->conf.dlq_topic)
    w->conf.dlq_topic = TLY_DEFAULT_DLQ_TOPIC;
  w->n = n;
  char err[512];
  rd_kafka_conf_t *pconf = kafka_conf(conf, errstr, errstr_size);
  if (!pconf ||
      rd_kafka_conf_set(pconf, "enable.idempotence", "true", err,
                        sizeof(err)) != RD_KAFKA_CONF_OK ||
      !(w->producer =
            rd_kafka_new(RD_KAFKA_PRODUCER, pconf, err, sizeof(err)))) {
    if (pconf && !w->producer)
      snprintf(errstr, errstr_size, "webhooks: %s", err);
    tly_webhooks_stop(w);
    return NULL;
  }
  for (size_t i = 0; i < n->webhook_count; i++) {
    endpoint_t *e = &w->endpoints[w->count++];
    e->owner = w;
    e->cfg = &n->webhooks[i];
    if (start_endpoint(w, e, errstr, errstr_size)) {
      tly_webhooks_stop(w);
      return NULL;
    }
  }
  return w;
}

void tly_webhooks_stop(tly_webhooks_t *w) {
  if (!w)
    return;
  atomic_store(&w->stop, 1);
  for (size_t i = 0; i < w->count; i++) {
    endpoint_t *e = &w->endpoints[i];
    if (e->started)
      pthread_join(e->thread, NULL);
    if (e->consumer) {
      rd_kafka_consumer_close(e->consumer);
      rd_kafka_destroy(e->consumer);
    }
    tly_alert_codec_destroy(e->codec);
    tly_webhook_parked_clear(&e->parked);
  }
  if (w->producer) {
    rd_kafka_flush(w->producer, 5000);
    rd_kafka_destroy(w->producer);
  }
  OPENSSL_cleanse(w->endpoints, sizeof(w->endpoints));
  free(w);
}

size_t tly_webhooks_metrics(tly_webhooks_t *w, char *out, size_t size) {
  if (!w)
    return 0;
  return (size_t)snprintf(
      out, size,
      "# HELP tally_webhook_deliveries_total Alert webhook deliveries by "
      "result (delivered: answered 2xx; failed: an attempt that was not; "
      "dead_lettered: given up, sent to the dead-letter topic).\n"
      "# TYPE tally_webhook_deliveries_total counter\n"
      "tally_webhook_deliveries_total{result=\"delivered\"} %llu\n"
      "tally_webhook_deliveries_total{result=\"failed\"} %llu\n"
      "tally_webhook_deliveries_total{result=\"dead_lettered\"} %llu\n",
      (unsigned long long)atomic_load(&w->delivered),
      (unsigned long long)atomic_load(&w->failed_attempts),
      (unsigned long long)atomic_load(&w->dead_lettered));
}
