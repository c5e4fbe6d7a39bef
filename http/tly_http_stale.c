/*
 * tly_http_stale.c - reads during a move: a per-subject read of a
 * partition this instance does not serve now (it is moving, replaying on
 * its owner, or its owner cannot be reached) answered from the copy of
 * the partition's state this instance's store holds, when that copy is
 * within the caller's staleness bound (KIP-535's idea: serve from a
 * non-owner's copy and say how stale it is).
 *
 * The copy is whatever this store holds of the partition with a stored
 * offset: the state this instance committed when it last owned it (a
 * revoke commits everything folded first), or what a restore and a
 * partial replay reached on the new owner. Its offset is read before and
 * after the state (a commit that changes the partition's state moves its
 * offset in the same atomic write), so the answer holds exactly the
 * records below as_of.offset. The answer carries
 *   "as_of": {"partition", "offset", "lag_records", "age_ms"}
 * and the header X-Tally-Stale: 1. age_ms is the age of the first record
 * the copy misses (tly_processor_copy_staleness): the true staleness.
 *
 * The bound: ?max_staleness_ms=N, 0..TLY_STALE_MAX_MS; the default is
 * per route (tly_http_stale_default_ms). A copy older than the bound, or
 * none, leaves the 503 partition_moving as before. Never forwards, never
 * reads a partition other than the subject's home.
 */
#include "tly_http_internal.h"

#include "tly_log.h"
#include "tly_request.h"
#include "tly_request_subject.h"
#include "tly_state.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t tly_http_stale_default_ms(route_handler_t handler) {
  if (handler == tly_http_handle_quota || handler == tly_http_handle_usage ||
      handler == tly_http_handle_daily || handler == tly_http_handle_alerts)
    return TLY_STALE_DEFAULT_MS;
  return 0; /* /cycles (what invoices are made from), and any other */
}

int tly_http_stale_route(route_handler_t handler) {
  return handler == tly_http_handle_quota || handler == tly_http_handle_usage ||
         handler == tly_http_handle_daily ||
         handler == tly_http_handle_alerts || handler == tly_http_handle_cycles;
}

int tly_http_stale_bound(route_handler_t handler, const char *text,
                         int64_t *bound_ms, tly_req_error_t *err) {
  *bound_ms = tly_http_stale_default_ms(handler);
  if (!text)
    return 0;
  char *end = NULL;
  long long value = strtoll(text, &end, 10);
  if (!*text || *end || value < 0 || value > TLY_STALE_MAX_MS ||
      strspn(text, "0123456789") != strlen(text) || strlen(text) > 8) {
    return tly_req_fail(err, 400, "invalid_parameter", "max_staleness_ms",
                        "max_staleness_ms must be an integer from 0 to %d",
                        TLY_STALE_MAX_MS);
  }
  *bound_ms = value;
  return 0;
}

/* Inserts ,"as_of":{...} before the closing brace of the JSON object in
 * out->body. 0, or -1 when out of memory (out is left as it was). */
static int add_as_of(response_t *out, const tly_http_stale_t *stale) {
  char as_of[192];
  int len = snprintf(as_of, sizeof(as_of),
                     ",\"as_of\":{\"partition\":%d,\"offset\":%lld,"
                     "\"lag_records\":%lld,\"age_ms\":%lld}}",
                     (int)stale->partition, (long long)stale->offset,
                     (long long)stale->lag_records, (long long)stale->age_ms);
  size_t body_len = out->body ? strlen(out->body) : 0;
  while (body_len &&
         (out->body[body_len - 1] == '\n' || out->body[body_len - 1] == ' '))
    body_len--;
  if (!body_len || out->body[body_len - 1] != '}')
    return -1;
  char *grown = malloc(body_len + (size_t)len + 1);
  if (!grown)
    return -1;
  memcpy(grown, out->body, body_len - 1);
  memcpy(grown + body_len - 1, as_of, (size_t)len + 1);
  free(out->body);
  out->body = grown;
  return 0;
}

static void pause_ms(long ms) {
  struct timespec pause = {0, ms * 1000000L};
  nanosleep(&pause, NULL);
}

int tly_http_try_stale(tly_http_t *http, request_t *req,
                       struct MHD_Connection *connection, response_t *out) {
  const route_t *route = &tly_http_route_table[req->route];
  tly_req_error_t err;
  int64_t bound_ms;
  if (!tly_http_stale_route(route->handler) || req->partition < 0)
    return 0;
  if (tly_http_stale_bound(route->handler,
                           MHD_lookup_connection_value(connection,
                                                       MHD_GET_ARGUMENT_KIND,
                                                       "max_staleness_ms"),
                           &bound_ms, &err)) {
    tly_http_respond_req_error(out, &err);
    return 1;
  }
  char errstr[512];
  /* A commit between the two offset reads: read again (a few times). */
  for (int attempt = 0; attempt < 3; attempt++) {
    int64_t before = -1, after = -1;
    uint64_t epoch = tly_processor_restore_epoch(http->conf.processor);
    if (epoch & 1) {
      pause_ms(20);
      continue; /* a restore is rewriting some partition */
    }
    int found = tly_store_get_offset(http->conf.store, req->partition, &before,
                                     errstr, sizeof(errstr));
    if (found <= 0)
      break; /* no copy here */
    tly_http_stale_t stale = {
        .active = 1, .partition = req->partition, .offset = before};
    if (tly_processor_copy_staleness(http->conf.processor, req->partition,
                                     before, &stale.lag_records,
                                     &stale.age_ms) ||
        stale.age_ms > bound_ms)
      break;
    response_t answer = {0};
    req->stale = stale;
    route->handler(http, req, connection, &answer);
    req->stale.active = 0;
    found = tly_store_get_offset(http->conf.store, req->partition, &after,
                                 errstr, sizeof(errstr));
    if (found <= 0 || after != before || answer.suspended ||
        tly_processor_restore_epoch(http->conf.processor) != epoch) {
      free(answer.body);
      continue;
    }
    /* Errors (a 404 for a subject the copy does not hold, a 400) go out
     * as they are, marked too: the copy said so. */
    if (answer.status == 200 && add_as_of(&answer, &stale)) {
      free(answer.body);
      break;
    }
    answer.stale = 1;
    *out = answer;
    req->served_by =
        http->conf.members ? tly_members_advertise(http->conf.members) : NULL;
    atomic_fetch_add(&http->moving_reads_stale, 1);
    return 1;
  }
  return 0;
}
