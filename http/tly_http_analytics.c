/*
 * tly_http_analytics.c - GET /v1/analytics/top and /v1/analytics/breakdown,
 * answered across the cluster.
 *
 * The instance asked (the gatherer) finds the owner of every partition of
 * the input topic: the partitions it serves itself it scans here; for the
 * others it asks each owner (from tally.members) for its part, with the
 * signed forwarding credential (tly_cluster_auth.h) and the partitions it
 * must answer for in ?partitions=. An owner answers only when it serves
 * every partition named; the gatherer merges the parts
 * (tly_request_groups.c). A partition without one caught-up owner, an
 * owner that does not answer or no longer serves a partition named: 503
 * partition_moving, never a partial answer. "complete": false only says
 * that an instance stopped at the scan bound (TLY_ANALYTICS_SCAN_MAX
 * subjects per instance and request).
 *
 * The owners are asked in parallel on the forwarder's threads while the
 * connection is suspended, and this instance's partitions are scanned on a
 * thread of their own meanwhile (tly_http_tasks.h: a scan may take a
 * second or more and never holds up an HTTP thread's other connections);
 * the last of them resumes the connection. Reads only.
 */
#include "tly_http_internal.h"

#include "tly_bytes.h"
#include "tly_cluster_auth.h"
#include "tly_keys.h"
#include "tly_log.h"
#include "tly_members.h"
#include "tly_request_groups.h"
#include "tly_state.h"
#include "tly_store.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Owners asked at most (one call each): past it, 503. */
#define GATHER_MAX 64

typedef struct {
  char http[TLY_MEMBERS_URL_MAX];
  char instance[TLY_MEMBERS_INSTANCE_MAX];
  char *target;
  tly_forward_call_t *call;
} gather_call_t;

struct tly_http_gather {
  tly_http_t *http;
  tly_analytics_query_t query;
  int forwarded; /* a gatherer asked: the answer is this part alone */
  /* This instance's part, scanned on a task over these partitions, or
   * NULL with the failure's answer in local_failure. */
  int32_t *partitions;
  size_t partition_count;
  tly_http_task_t *scan;
  json_t *local;
  response_t local_failure;
  gather_call_t calls[GATHER_MAX];
  size_t call_count;
  atomic_size_t pending;
  struct MHD_Connection *connection;
};

void tly_http_gather_free(tly_http_gather_t *gather) {
  if (!gather)
    return;
  for (size_t i = 0; i < gather->call_count; i++) {
    tly_forward_call_free(gather->calls[i].call);
    free(gather->calls[i].target);
  }
  tly_http_task_free(gather->scan);
  json_decref(gather->local);
  free(gather->local_failure.body);
  free(gather->partitions);
  free(gather);
}

/* ---- this instance's part ---------------------------------------------- */

typedef struct {
  tly_http_t *http;
  tly_analytics_acc_t *acc;
  int32_t partition;
  int64_t horizon_ms;
  size_t scanned;
  int complete;
  int failed;
  char error[256];
  /* the subject being read: its hours from keys, then the record's */
  tly_subject_bucket_t *buckets;
  size_t count, cap;
} local_scan_t;

static int keep_buckets(local_scan_t *scan, const tly_subject_bucket_t *items,
                        size_t count) {
  if (scan->count + count > scan->cap) {
    size_t cap = scan->cap ? scan->cap : 64;
    while (cap < scan->count + count)
      cap *= 2;
    tly_subject_bucket_t *grown = realloc(scan->buckets, cap * sizeof(*grown));
    if (!grown)
      return -1;
    scan->buckets = grown;
    scan->cap = cap;
  }
  memcpy(scan->buckets + scan->count, items, count * sizeof(*items));
  scan->count += count;
  return 0;
}

static int visit_hour(void *opaque, const unsigned char *suffix,
                      size_t suffix_len, const char *value, size_t value_len) {
  local_scan_t *scan = opaque;
  tly_subject_bucket_t *items = NULL;
  size_t count = 0;
  if (suffix_len != 4 ||
      tly_bucket_decode(value, value_len, (int32_t)tly_get_be32(suffix), &items,
                        &count) ||
      keep_buckets(scan, items, count))
    scan->failed = 1;
  free(items);
  return scan->failed;
}

static int has_hour(const local_scan_t *scan, size_t count, int32_t hour) {
  for (size_t i = 0; i < count; i++)
    if (scan->buckets[i].hour == hour)
      return 1;
  return 0;
}

/* One subject record of the partition: its hours (the keys read after the
 * record; an hour both in a key and in the record, moved by a commit in
 * between, counts once, from the key) into the accumulator. */
static int visit_subject(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  local_scan_t *scan = opaque;
  char subject_key[TLY_REQ_SUBJECT_MAX + 16], errstr[256];
  tly_req_subject_t subject;
  tly_req_error_t err;
  if (scan->scanned >= TLY_ANALYTICS_SCAN_MAX) {
    scan->complete = 0;
    return 1;
  }
  scan->scanned++;
  if (key_len <= 4 || key_len - 4 >= sizeof(subject_key))
    return 0; /* not a subject key */
  memcpy(subject_key, key + 4, key_len - 4);
  subject_key[key_len - 4] = '\0';
  if (tly_req_parse_subject(subject_key, &subject, &err))
    return 0;
  tly_subject_record_t record;
  if (tly_subject_record_decode(value, value_len, &record)) {
    snprintf(scan->error, sizeof(scan->error),
             "a stored subject record of partition %d is corrupt",
             (int)scan->partition);
    scan->failed = 1;
    return 1;
  }
  scan->count = 0;
  if (tly_state_history(scan->http->conf.store, scan->partition, subject.kind,
                        subject.id, TLY_HISTORY_HOUR, scan->horizon_ms,
                        visit_hour, scan, errstr, sizeof(errstr)) ||
      scan->failed) {
    snprintf(scan->error, sizeof(scan->error), "%s",
             scan->failed ? "out of memory or corrupt usage buckets" : errstr);
    scan->failed = 1;
  }
  size_t from_keys = scan->count;
  for (size_t i = 0; i < record.bucket_count && !scan->failed; i++)
    if (!has_hour(scan, from_keys, record.buckets[i].hour) &&
        keep_buckets(scan, &record.buckets[i], 1))
      scan->failed = 1;
  if (!scan->failed &&
      tly_analytics_acc_subject(scan->acc, subject.key, record.account.plan,
                                scan->buckets, scan->count)) {
    snprintf(scan->error, sizeof(scan->error), "out of memory");
    scan->failed = 1;
  }
  tly_subject_record_clear(&record);
  return scan->failed;
}

static int served_here(tly_http_t *http, int32_t partition) {
  return tly_processor_partition_role(http->conf.processor, partition) ==
         TLY_PARTITION_SERVING;
}

/* This instance's part for partitions (each served here): the part, or
 * NULL with out answered (503 when one is not served here, 500). */
static json_t *local_part(tly_http_t *http, const tly_analytics_query_t *query,
                          const int32_t *partitions, size_t count,
                          response_t *out) {
  local_scan_t scan = {.http = http, .complete = 1};
  char errstr[256];
  scan.acc = tly_analytics_acc_new(query);
  if (!scan.acc) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return NULL;
  }
  json_t *part = NULL;
  for (size_t i = 0; i < count && !scan.failed && scan.complete; i++) {
    unsigned char prefix[4];
    if (!served_here(http, partitions[i]))
      goto moving;
    scan.partition = partitions[i];
    scan.horizon_ms = tly_http_history_horizon(http, partitions[i]);
    tly_put_be32(prefix, (uint32_t)partitions[i]);
    if (tly_store_scan_prefix(http->conf.store, TLY_CF_ACCOUNTS, prefix, 4,
                              visit_subject, &scan, errstr, sizeof(errstr)) &&
        !scan.failed) {
      snprintf(scan.error, sizeof(scan.error), "%s", errstr);
      scan.failed = 1;
    }
  }
  if (scan.failed) {
    tly_http_respond_error(out, 500, "store_error", scan.error);
    goto done;
  }
  /* A rebalance during the scan: what was read may be stale. */
  for (size_t i = 0; i < count; i++)
    if (!served_here(http, partitions[i]))
      goto moving;
  part = tly_analytics_acc_json(scan.acc, scan.complete);
  if (!part)
    tly_http_respond_error(out, 500, "internal", "out of memory");
  goto done;
moving:
  tly_http_respond_moving(out, -1, NULL,
                          "a partition of the answer is not served here now");
done:
  free(scan.buckets);
  tly_analytics_acc_free(scan.acc);
  return part;
}

/* ?partitions=a,b,c (a forwarded request's): 0, or -1. */
static int parse_partitions(const char *text, int32_t count, int32_t *out,
                            size_t *n) {
  *n = 0;
  if (!text || !*text)
    return 0;
  while (*text) {
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || value < 0 || value >= count || *n >= (size_t)count)
      return -1;
    out[(*n)++] = (int32_t)value;
    text = *end == ',' ? end + 1 : end;
    if (*end && *end != ',')
      return -1;
  }
  return 0;
}

/* ---- the gatherer ------------------------------------------------------ */

static void gather_done(void *opaque) {
  tly_http_gather_t *gather = opaque;
  if (atomic_fetch_sub(&gather->pending, 1) == 1)
    MHD_resume_connection(gather->connection);
}

/* The scan task (on a thread of its own): this instance's part, or NULL
 * with the failure's answer in local_failure. */
static json_t *scan_run(void *arg, int *status) {
  tly_http_gather_t *gather = arg;
  gather->local = local_part(gather->http, &gather->query, gather->partitions,
                             gather->partition_count, &gather->local_failure);
  *status = gather->local ? 200 : gather->local_failure.status;
  return NULL;
}

static void respond_answer(tly_http_t *http, struct MHD_Connection *connection,
                           const tly_analytics_query_t *query,
                           json_t *const *parts, size_t count,
                           response_t *out) {
  tly_req_error_t err;
  (void)http;
  json_t *answer = tly_analytics_merge(query, parts, count, &err);
  if (!answer) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  tly_http_respond_table(out, connection, answer, tly_req_analytics_csv);
}

void tly_http_analytics_answer(tly_http_t *http, request_t *req,
                               struct MHD_Connection *connection,
                               response_t *out) {
  tly_http_gather_t *gather = req->gather;
  json_t *parts[GATHER_MAX + 1];
  size_t count = 0;
  if (!gather->local) { /* the scan's failure is the answer */
    *out = gather->local_failure;
    gather->local_failure.body = NULL;
    goto done;
  }
  if (gather->forwarded) { /* a gatherer's: this part alone */
    tly_http_respond_json(out, 200, gather->local);
    gather->local = NULL;
    goto done;
  }
  parts[count++] = gather->local;
  for (size_t i = 0; i < gather->call_count; i++) {
    tly_forward_result_t result = {.status = 0, .error = "not sent"};
    if (gather->calls[i].call)
      tly_forward_result(gather->calls[i].call, &result);
    json_t *part = result.status == 200 && result.body
                       ? json_loadb(result.body, result.body_len, 0, NULL)
                       : NULL;
    if (!part) {
      char message[512];
      snprintf(
          message, sizeof(message),
          "the owner %s did not answer for its partitions (status %ld%s%s)",
          gather->calls[i].http, result.status,
          result.error && *result.error ? ": " : "",
          result.error ? result.error : "");
      for (size_t j = 1; j < count; j++)
        json_decref(parts[j]);
      tly_http_respond_moving(out, -1, gather->calls[i].http, message);
      goto done;
    }
    parts[count++] = part;
  }
  respond_answer(http, connection, &gather->query, parts, count, out);
  for (size_t j = 1; j < count; j++)
    json_decref(parts[j]);
done:
  tly_http_gather_free(gather);
  req->gather = NULL;
}

static void handle(tly_http_t *http, request_t *req,
                   struct MHD_Connection *connection, response_t *out,
                   tly_analytics_kind_t kind) {
  tly_analytics_query_t query;
  tly_req_error_t err;
#define ARG(name)                                                              \
  MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, name)
  if (tly_req_parse_analytics(
          http->conf.config, kind, ARG("feature"), ARG("by"), ARG("group_by"),
          ARG("from"), ARG("to"), ARG("limit"), tly_wall_ms(), &query, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  int32_t partition_count = tly_processor_partition_count(http->conf.processor);
  if (partition_count < 1) {
    tly_http_respond_moving(out, -1, NULL, "partitions are not known yet");
    return;
  }
  int32_t *mine = malloc((size_t)partition_count * sizeof(*mine));
  int32_t *owner_of = malloc((size_t)partition_count * sizeof(*owner_of));
  tly_http_gather_t *gather = calloc(1, sizeof(*gather));
  tly_members_t *members = http->conf.members;
  size_t mine_count = 0;
  if (!mine || !owner_of || !gather) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    goto done;
  }
  gather->query = query;
  if (req->forwarded) { /* a gatherer asks for these partitions' part */
    if (parse_partitions(ARG("partitions"), partition_count, mine,
                         &mine_count)) {
      tly_http_respond_error(out, 400, "bad_request",
                             "query parameter 'partitions': a list of "
                             "partition numbers");
      goto done;
    }
    gather->forwarded = 1;
    goto start;
  }
  if (ARG("partitions")) { /* a gatherer's parameter, not a client's */
    tly_http_respond_json(
        out, 400,
        json_pack("{s:o}", "error",
                  tly_http_error_json("bad_request",
                                      "query parameter 'partitions': only "
                                      "between instances",
                                      "partitions")));
    goto done;
  }
#undef ARG
  /* Who answers for each partition: here, or its one caught-up owner. */
  const char *self = members ? tly_members_advertise(members) : "";
  for (int32_t p = 0; p < partition_count; p++) {
    owner_of[p] = -1;
    if (served_here(http, p)) {
      mine[mine_count++] = p;
      continue;
    }
    tly_members_owner_t owner = {0};
    if (members)
      tly_members_owner(members, p, &owner);
    if (owner.state != TLY_OWNER_SERVING || !owner.http[0] ||
        strcmp(owner.http, self) == 0 || !tly_members_secret(members) ||
        !http->forward) {
      char message[160];
      snprintf(message, sizeof(message),
               "partition %d has no caught-up owner that can be asked now",
               (int)p);
      tly_http_respond_moving(out, p, owner.http, message);
      goto done;
    }
    size_t c = 0;
    while (c < gather->call_count && strcmp(gather->calls[c].http, owner.http))
      c++;
    if (c == gather->call_count) {
      if (c == GATHER_MAX) {
        tly_http_respond_moving(out, p, NULL, "too many owners to ask");
        goto done;
      }
      snprintf(gather->calls[c].http, sizeof(gather->calls[c].http), "%s",
               owner.http);
      snprintf(gather->calls[c].instance, sizeof(gather->calls[c].instance),
               "%s", owner.instance);
      gather->call_count++;
    }
    owner_of[p] = (int32_t)c;
  }
  /* Each owner's target: this one with the partitions it answers for. */
  for (size_t c = 0; c < gather->call_count; c++) {
    size_t cap = strlen(req->target) + 16 + (size_t)partition_count * 11;
    char *target = malloc(cap);
    if (!target) {
      tly_http_respond_error(out, 500, "internal", "out of memory");
      goto done;
    }
    size_t len = (size_t)snprintf(target, cap, "%s%spartitions=", req->target,
                                  strchr(req->target, '?') ? "&" : "?");
    const char *comma = "";
    for (int32_t p = 0; p < partition_count; p++)
      if (owner_of[p] == (int32_t)c) {
        len += (size_t)snprintf(target + len, cap - len, "%s%d", comma, (int)p);
        comma = ",";
      }
    gather->calls[c].target = target;
  }
start:
  /* Suspended until the scan of this instance's partitions and every
   * owner's answer are in: the last of them resumes the connection. */
  gather->http = http;
  gather->partitions = mine;
  gather->partition_count = mine_count;
  mine = NULL; /* the gather's now */
  gather->connection = connection;
  atomic_store(&gather->pending, gather->call_count + 1);
  MHD_suspend_connection(connection);
  if (tly_http_tasks_start(http->scans, scan_run, gather, NULL, gather_done,
                           gather, &gather->scan)) {
    MHD_resume_connection(connection);
    tly_http_respond_error(out, 503, "analytics_busy",
                           "as many analytics queries as this instance runs "
                           "at once are running; retry");
    out->retry_after_s = 1;
    goto done;
  }
  req->gather = gather;
  for (size_t c = 0; c < gather->call_count; c++) {
    char credential[TLY_FORWARD_CREDENTIAL_MAX];
    tly_forward_scope_t scope = {.method = "GET",
                                 .target = gather->calls[c].target,
                                 .owner_instance = gather->calls[c].instance};
    tly_forward_request_t request = {.base_url = gather->calls[c].http,
                                     .target = gather->calls[c].target,
                                     .method = "GET",
                                     .credential = credential};
    if (tly_cluster_forward_credential(tly_members_secret(members), &scope,
                                       tly_wall_ms() +
                                           TLY_FORWARD_CREDENTIAL_TTL_MS,
                                       credential, sizeof(credential)) ||
        tly_forward_request(http->forward, &request, gather_done, gather,
                            &gather->calls[c].call))
      gather_done(gather); /* counted as answered: no call, no part (503) */
  }
  req->phase = PHASE_WAIT;
  out->suspended = 1;
  gather = NULL; /* the request's now */
done:
  tly_http_gather_free(gather);
  free(mine);
  free(owner_of);
}

void tly_http_handle_analytics_top(tly_http_t *http, request_t *req,
                                   struct MHD_Connection *connection,
                                   response_t *out) {
  handle(http, req, connection, out, TLY_ANALYTICS_TOP);
}

void tly_http_handle_analytics_breakdown(tly_http_t *http, request_t *req,
                                         struct MHD_Connection *connection,
                                         response_t *out) {
  handle(http, req, connection, out, TLY_ANALYTICS_BREAKDOWN);
}

int tly_http_is_gather_route(route_handler_t handler) {
  return handler == tly_http_handle_analytics_top ||
         handler == tly_http_handle_analytics_breakdown;
}
