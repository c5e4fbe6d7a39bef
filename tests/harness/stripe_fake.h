/*
 * stripe_fake.h - a Stripe-shaped HTTP server for the tests (libmicrohttpd,
 * 127.0.0.1 only), and the harness helpers that run it as its own process
 * (tests/stripe_fake), so that a test can SIGKILL tally while the fake keeps
 * its ledger.
 *
 * What it does as Stripe documents it:
 *   - bearer auth with the one secret key it was started with: 401
 *     {"error": {"type": "invalid_request_error", ...}} otherwise;
 *   - application/x-www-form-urlencoded bodies with bracket keys
 *     ("payload[stripe_customer_id]"), query strings for GET; a missing
 *     required parameter is 400 code "parameter_missing" naming it in
 *     "param";
 *   - POST /v1/billing/meter_events: event_name, payload[stripe_customer_id]
 *     and payload[value] (an integer string) required; identifier (default:
 *     generated) unique within a rolling 24 hours (by the fake's clock): a
 *     repeat within them is 400 invalid_request_error "An event already
 *     exists with identifier X." with Stripe-Should-Retry: false (what
 *     Stripe answers), one after them counts again; timestamp (default now)
 *     at most 35 days old and 5 minutes ahead. An event_name without a
 *     meter is accepted (Stripe reports that asynchronously);
 *   - GET /v1/billing/meters (limit, starting_after, status): the meters
 *     registered through /_fake/meters, each active and summing;
 *   - GET /v1/billing/meters/{id}/event_summaries: customer, start_time and
 *     end_time (minute-aligned, end exclusive) required, value_grouping_window
 *     "hour" or "day" optional (one summary per hour or day, newest first;
 *     without: one over the range), limit and starting_after; each summary's
 *     aggregated_value (a float, as Stripe sends it) sums the customer's
 *     events of the meter's event_name with timestamps in its range. Stripe
 *     aggregates asynchronously; the fake at once. 404 resource_missing for
 *     an unknown meter;
 *   - POST /v1/billing_portal/sessions: customer required, return_url
 *     optional; answers {"id": "bps_...", "url": ...};
 *   - Idempotency-Key (POST): the first answer of an executed request is
 *     kept for 24 hours (by the fake's clock, then forgotten); the same key
 *     with the same parameters replays it with Idempotent-Replayed: true (a
 *     kept 5xx with Stripe-Should-Retry: false: a retry under that key
 *     will never get anything else), with other parameters it is 400
 *     idempotency_error; while the key's first request is still running
 *     (fault "processing_ms") it is 409 idempotency_error code
 *     idempotency_key_in_use, not kept. Requests refused by parameter
 *     validation are not kept (Stripe keeps results only once the endpoint
 *     ran).
 * Where it is stricter than Stripe, on purpose: an unknown customer is a
 * synchronous 400 resource_missing (Stripe reports it for meter events
 * later, asynchronously), so a client's 4xx path can be tested.
 *
 * Control routes (no auth), for tests:
 *   POST /_fake/customers {"id": "cus_1"}          register a customer
 *   POST /_fake/meters {"event_name": "api"}       register a meter (the
 *        meter object; the same one for an event_name registered before)
 *   POST /_fake/clock {"offset_s": S}              the fake's clock is the
 *        wall clock plus S seconds (identifier and idempotency windows,
 *        timestamps, created)
 *   POST /_fake/faults {"count": N, ...}           the next N API requests:
 *        "status": 429|500|..., "retry_after_s": S, "should_retry": true|false
 *            answer that status without running the endpoint; with
 *            "apply": true run it first (ledger updated) and keep the status
 *            as the Idempotency-Key's answer;
 *        "hang_ms": M  wait M ms, then drop the connection unanswered;
 *        "drop_after_apply": true  run the endpoint (ledger and idempotency
 *            record updated), then drop the connection unanswered;
 *        "processing_ms": M  run the endpoint, then answer only after M ms,
 *            the Idempotency-Key in progress meanwhile;
 *        "path": "/v1/..." only requests to that path count;
 *        "method": "POST" only requests of that method count;
 *        "customer": "cus_1" only requests for that customer count.
 *   DELETE /_fake/faults                           drop every fault left
 *   GET /_fake/ledger    {"meter_events": [{"customer", "event_name",
 *                         "value", "count"}] (sum per customer and
 *                         event_name), "identifiers": N, "portal_sessions": N,
 *                         "requests": N, "clock_offset_s": S}
 *   GET /_fake/requests  the last API requests: method, path, params,
 *                        stripe_version, idempotency_key, authorized, status
 */
#ifndef STRIPE_FAKE_H
#define STRIPE_FAKE_H

#include "harness.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- the server (in this process) ---------------------------------------- */

typedef struct sf_server sf_server_t;

/* Listens on 127.0.0.1:port (0: any free port). NULL with errstr. */
sf_server_t *sf_start(const char *secret_key, uint16_t port, char *errstr,
                      size_t errstr_size);
uint16_t sf_port(const sf_server_t *server);
void sf_stop(sf_server_t *server);

/* ---- the separate process (tests/stripe_fake), for integration tests ----- */

typedef struct {
  pid_t pid;
  int port;
  char dir[512];
  char secret_key[64];
} th_stripe_fake_t;

/* Spawns $STRIPE_FAKE_BIN with a fresh secret key ("sk_test_fake_...");
 * 0 or -1. */
int th_stripe_fake_start(th_stripe_fake_t *fake);
void th_stripe_fake_stop(th_stripe_fake_t *fake);
/* A Stripe test's teardown: stops `tally run` (0 only after a clean exit:
 * under the sanitizers a leak makes its exit code non-zero), the broker
 * and the fake, removes dir and frees it. 0 or -1. */
int th_stripe_teardown(pid_t run_pid, th_broker_t *broker,
                       th_stripe_fake_t *fake, char *dir);

/* A control request (method, "/_fake/..." path, JSON body or NULL): the
 * status, and the answer (malloc'd) when response is not NULL. 0 or -1. */
int th_stripe_fake_control(const th_stripe_fake_t *fake, const char *method,
                           const char *path, const char *json_body,
                           long *status, char **response);
/* POST /_fake/faults with json (see above); 0 or -1. */
int th_stripe_fake_fault(const th_stripe_fake_t *fake, const char *json);
/* POST /_fake/customers; 0 or -1. */
int th_stripe_fake_add_customer(const th_stripe_fake_t *fake, const char *id);
/* POST /_fake/meters: the meter's id (into id, id_size) or -1. */
int th_stripe_fake_add_meter(const th_stripe_fake_t *fake,
                             const char *event_name, char *id, size_t id_size);
/* POST /_fake/clock; 0 or -1. */
int th_stripe_fake_set_clock(const th_stripe_fake_t *fake, int64_t offset_s);
/* DELETE /_fake/faults; 0 or -1. */
int th_stripe_fake_clear_faults(const th_stripe_fake_t *fake);
/* The API requests the fake logged (the last 200; a jansson array, the
 * caller's to json_decref), or NULL. */
struct json_t *th_stripe_fake_requests(const th_stripe_fake_t *fake);
/* The last API request the fake saw, as /_fake/requests lists it (a jansson
 * object, the caller's to json_decref); NULL when there is none. */
struct json_t;
struct json_t *th_stripe_fake_last_request(const th_stripe_fake_t *fake);
/* GET /_fake/ledger (see above; the caller's to json_decref), or NULL. */
struct json_t *th_stripe_fake_ledger(const th_stripe_fake_t *fake);
/* The ledger's sum of accepted values for (customer, event_name); -1 when
 * the fake does not answer. */
long long th_stripe_fake_sum(const th_stripe_fake_t *fake, const char *customer,
                             const char *event_name);
/* The number of meter events accepted for (customer, event_name); -1 when
 * the fake does not answer. */
long long th_stripe_fake_count(const th_stripe_fake_t *fake,
                               const char *customer, const char *event_name);

/* ---- the usage reporting tests ------------------------------------------ */

/* "TALLY_TEST_STRIPE_KEY=<the fake's key>", for th_run_env (static; the
 * environment keeps pointing at it). */
const char *th_stripe_fake_key_env(const th_stripe_fake_t *fake);

/* Writes dir/config.json for `tally run` reporting to the fake: users on
 * pay_per_use (no limits), meters api_calls -> "api_requests" and
 * storage_bytes -> "storage", hourly windows, and the given request rate,
 * request time limit and retry cap. Returns the path (malloc'd) or NULL. */
char *th_stripe_report_config(const char *dir, const th_stripe_fake_t *fake,
                              int max_requests_per_s, int timeout_ms,
                              int retry_max_s);

/* The folded quantity of feature for user:user_id over the UTC days from
 * from_ms to to_ms, from the usage history (GET .../usage/daily, the hourly
 * buckets reporting sums too); -1 when tally does not answer 200. */
long long th_folded_quantity(int port, const char *user_id, const char *feature,
                             int64_t from_ms, int64_t to_ms);

/* Events through the client library (keyed by subject, like every
 * producer): usage of feature by user:user_id at at_ms, or the link of
 * user:user_id to a Stripe customer. 0 or -1. */
struct tally_producer;
int th_send_usage(struct tally_producer *producer, const char *event_id,
                  int64_t at_ms, const char *user_id, const char *feature,
                  int64_t quantity);
int th_send_link(struct tally_producer *producer, const char *event_id,
                 int64_t at_ms, const char *user_id, const char *customer);

#endif
