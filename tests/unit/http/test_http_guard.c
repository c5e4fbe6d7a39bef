/*
 * test_http_guard.c - the HTTP port's connection guard as a policy, with
 * fake sockets and a fake clock (tly_http_conn.h): the per-client cap, the
 * connection cap and whom each closes, the header, body and answer
 * deadlines, keep-alive restarting the header deadline, suspended requests
 * never cut; and the config keys that set them.
 */
#include "tly_config.h"
#include "tly_http_conn.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAX_FDS 256

typedef struct {
  int closed[MAX_FDS]; /* reason + 1, 0: open */
  int count;
} closes_t;

static void record_close(void *opaque, int fd,
                         tly_conn_closed_reason_t reason) {
  closes_t *closes = opaque;
  assert_true(fd >= 0 && fd < MAX_FDS);
  assert_int_equal(closes->closed[fd], 0); /* never twice */
  closes->closed[fd] = (int)reason + 1;
  closes->count++;
}

static const unsigned char client_a[4] = {10, 0, 0, 1};
static const unsigned char client_b[4] = {10, 0, 0, 2};
static const unsigned char client_c[4] = {10, 0, 0, 3};

static int closed_for(const closes_t *closes, int fd,
                      tly_conn_closed_reason_t reason) {
  return closes->closed[fd] == (int)reason + 1;
}

static void test_client_cap_closes_the_clients_oldest_idle(void **state) {
  (void)state;
  closes_t closes = {0};
  tly_conn_limits_t limits = {.max_connections = 100,
                              .max_per_client = 3,
                              .header_timeout_ms = 10000,
                              .request_timeout_ms = 30000};
  tly_conn_table_t *table = tly_conn_table_new(&limits, record_close, &closes);
  tly_conn_t *conn[MAX_FDS] = {0};
  conn[1] = tly_conn_open(table, 1, client_a, 4, 0);
  conn[2] = tly_conn_open(table, 2, client_b, 4, 1); /* another client */
  conn[3] = tly_conn_open(table, 3, client_a, 4, 2);
  conn[4] = tly_conn_open(table, 4, client_a, 4, 3);
  assert_int_equal(closes.count, 0);
  /* A's fourth: A's oldest idle one goes, not B's (older still). */
  conn[5] = tly_conn_open(table, 5, client_a, 4, 4);
  assert_int_equal(closes.count, 1);
  assert_true(closed_for(&closes, 1, TLY_CONN_CLOSED_CLIENT_LIMIT));
  /* An idle one goes before one sending its body: 3 sends, 4 is idle. */
  tly_conn_phase(table, conn[3], TLY_CONN_BODY, 5);
  conn[6] = tly_conn_open(table, 6, client_a, 4, 6);
  assert_true(closed_for(&closes, 4, TLY_CONN_CLOSED_CLIENT_LIMIT));
  /* None of A's idle: its body still arriving goes (A is over its own
   * cap; B is never touched). */
  tly_conn_phase(table, conn[5], TLY_CONN_WAITING, 7);
  tly_conn_phase(table, conn[6], TLY_CONN_ANSWERING, 7);
  conn[7] = tly_conn_open(table, 7, client_a, 4, 8);
  assert_true(closed_for(&closes, 3, TLY_CONN_CLOSED_CLIENT_LIMIT));
  /* All of A's suspended or answered: the newcomer itself is closed. */
  tly_conn_phase(table, conn[7], TLY_CONN_WAITING, 9);
  conn[8] = tly_conn_open(table, 8, client_a, 4, 10);
  assert_true(closed_for(&closes, 8, TLY_CONN_CLOSED_CLIENT_LIMIT));
  assert_int_equal(closes.count, 4);
  assert_int_equal(closes.closed[2], 0);
  tly_conn_stats_t stats;
  tly_conn_stats(table, &stats);
  assert_int_equal(stats.open, 4); /* 2, 5, 6, 7 */
  assert_int_equal(stats.closed[TLY_CONN_CLOSED_CLIENT_LIMIT], 4);
  /* libmicrohttpd reports them closed; nothing counts twice. */
  for (int fd = 1; fd <= 8; fd++)
    tly_conn_closed(table, conn[fd]);
  tly_conn_stats(table, &stats);
  assert_int_equal(stats.open, 0);
  tly_conn_table_free(table);
}

static void test_connection_cap_closes_the_heaviest_clients_idle(void **state) {
  (void)state;
  closes_t closes = {0};
  tly_conn_limits_t limits = {.max_connections = 6,
                              .max_per_client = 0,
                              .header_timeout_ms = 10000,
                              .request_timeout_ms = 30000};
  tly_conn_table_t *table = tly_conn_table_new(&limits, record_close, &closes);
  tly_conn_t *conn[MAX_FDS] = {0};
  conn[1] = tly_conn_open(table, 1, client_b, 4, 0); /* B: the oldest */
  conn[2] = tly_conn_open(table, 2, client_a, 4, 1);
  conn[3] = tly_conn_open(table, 3, client_a, 4, 2);
  conn[4] = tly_conn_open(table, 4, client_a, 4, 3);
  conn[5] = tly_conn_open(table, 5, client_a, 4, 4);
  conn[6] = tly_conn_open(table, 6, client_b, 4, 5);
  assert_int_equal(closes.count, 0);
  /* C's first connection, past the cap: A holds the most, its oldest idle
   * one goes (B's is older, but B holds less). */
  conn[7] = tly_conn_open(table, 7, client_c, 4, 6);
  assert_int_equal(closes.count, 1);
  assert_true(closed_for(&closes, 2, TLY_CONN_CLOSED_CONNECTION_LIMIT));
  /* A's remaining ones send bodies: an idle one goes first, so B's (the
   * heaviest client with an idle one). */
  for (int fd = 3; fd <= 5; fd++)
    tly_conn_phase(table, conn[fd], TLY_CONN_BODY, 7);
  conn[8] = tly_conn_open(table, 8, client_c, 4, 8);
  assert_true(closed_for(&closes, 1, TLY_CONN_CLOSED_CONNECTION_LIMIT));
  /* B's last one busy too: C holds the most (7, 8, 9), its idle 8 goes. */
  tly_conn_phase(table, conn[6], TLY_CONN_WAITING, 9);
  tly_conn_phase(table, conn[7], TLY_CONN_ANSWERING, 9);
  conn[9] = tly_conn_open(table, 9, client_c, 4, 10);
  assert_true(closed_for(&closes, 8, TLY_CONN_CLOSED_CONNECTION_LIMIT));
  /* Nobody idle but the newcomer: the oldest body of the heaviest client
   * (A: 3, 4, 5) goes. */
  tly_conn_phase(table, conn[9], TLY_CONN_WAITING, 11);
  conn[10] = tly_conn_open(table, 10, client_b, 4, 12);
  assert_true(closed_for(&closes, 3, TLY_CONN_CLOSED_CONNECTION_LIMIT));
  /* Nothing idle, no body: the newcomer itself is closed. */
  tly_conn_phase(table, conn[4], TLY_CONN_WAITING, 13);
  tly_conn_phase(table, conn[5], TLY_CONN_ANSWERING, 13);
  tly_conn_phase(table, conn[10], TLY_CONN_WAITING, 13);
  conn[11] = tly_conn_open(table, 11, client_b, 4, 14);
  assert_true(closed_for(&closes, 11, TLY_CONN_CLOSED_CONNECTION_LIMIT));
  assert_int_equal(closes.count, 5);
  for (int fd = 1; fd <= 11; fd++)
    tly_conn_closed(table, conn[fd]);
  tly_conn_table_free(table);
}

static void test_deadlines(void **state) {
  (void)state;
  closes_t closes = {0};
  tly_conn_limits_t limits = {.max_connections = 100,
                              .max_per_client = 0,
                              .header_timeout_ms = 1000,
                              .request_timeout_ms = 5000};
  tly_conn_table_t *table = tly_conn_table_new(&limits, record_close, &closes);
  tly_conn_t *idle = tly_conn_open(table, 1, client_a, 4, 0);
  tly_conn_t *body = tly_conn_open(table, 2, client_a, 4, 0);
  tly_conn_t *waiting = tly_conn_open(table, 3, client_a, 4, 0);
  tly_conn_t *answering = tly_conn_open(table, 4, client_a, 4, 0);
  tly_conn_t *keepalive = tly_conn_open(table, 5, client_a, 4, 0);
  tly_conn_phase(table, body, TLY_CONN_BODY, 500);
  tly_conn_phase(table, waiting, TLY_CONN_BODY, 500);
  tly_conn_phase(table, waiting, TLY_CONN_WAITING, 600);
  tly_conn_phase(table, answering, TLY_CONN_ANSWERING, 700);
  tly_conn_phase(table, keepalive, TLY_CONN_ANSWERING, 100);
  tly_conn_phase(table, keepalive, TLY_CONN_AWAITING, 800); /* next request */
  assert_int_equal(tly_conn_expire(table, 999), 0);
  /* Headers 1 s after accept: only the idle one. */
  assert_int_equal(tly_conn_expire(table, 1000), 1);
  assert_true(closed_for(&closes, 1, TLY_CONN_CLOSED_HEADER_DEADLINE));
  assert_true(tly_conn_is_closed(table, idle));
  /* Keep-alive: 1 s from the end of its previous answer. */
  assert_int_equal(tly_conn_expire(table, 1799), 0);
  assert_int_equal(tly_conn_expire(table, 1800), 1);
  assert_true(closed_for(&closes, 5, TLY_CONN_CLOSED_HEADER_DEADLINE));
  /* The body: 5 s from accept, however recently a byte came. */
  assert_int_equal(tly_conn_expire(table, 4999), 0);
  assert_int_equal(tly_conn_expire(table, 5000), 1);
  assert_true(closed_for(&closes, 2, TLY_CONN_CLOSED_BODY_DEADLINE));
  /* The answer: 5 s from being queued. */
  assert_int_equal(tly_conn_expire(table, 5699), 0);
  assert_int_equal(tly_conn_expire(table, 5700), 1);
  assert_true(closed_for(&closes, 4, TLY_CONN_CLOSED_ANSWER_DEADLINE));
  /* Suspended (waiting for Kafka): never the guard's to cut. */
  assert_int_equal(tly_conn_expire(table, 1000000), 0);
  assert_false(tly_conn_is_closed(table, waiting));
  /* Once answered and idle again, its header deadline runs. */
  tly_conn_phase(table, waiting, TLY_CONN_ANSWERING, 1000000);
  tly_conn_phase(table, waiting, TLY_CONN_AWAITING, 1000001);
  assert_int_equal(tly_conn_expire(table, 1001001), 1);
  assert_true(closed_for(&closes, 3, TLY_CONN_CLOSED_HEADER_DEADLINE));
  tly_conn_stats_t stats;
  tly_conn_stats(table, &stats);
  assert_int_equal(stats.open, 0);
  assert_int_equal(stats.closed[TLY_CONN_CLOSED_HEADER_DEADLINE], 3);
  assert_int_equal(stats.closed[TLY_CONN_CLOSED_BODY_DEADLINE], 1);
  assert_int_equal(stats.closed[TLY_CONN_CLOSED_ANSWER_DEADLINE], 1);
  tly_conn_closed(table, idle);
  tly_conn_closed(table, body);
  tly_conn_closed(table, waiting);
  tly_conn_closed(table, answering);
  tly_conn_closed(table, keepalive);
  tly_conn_table_free(table);
}

/* Connections left in the table at the end are freed with it (ASan). */
static void test_free_with_connections(void **state) {
  (void)state;
  closes_t closes = {0};
  tly_conn_limits_t limits = {.max_connections = 4,
                              .max_per_client = 2,
                              .header_timeout_ms = 1000,
                              .request_timeout_ms = 1000};
  tly_conn_table_t *table = tly_conn_table_new(&limits, record_close, &closes);
  for (int fd = 0; fd < 10; fd++) {
    unsigned char client[16] = {(unsigned char)(fd % 3)};
    assert_non_null(tly_conn_open(table, fd, client, 16, fd));
  }
  tly_conn_table_free(table);
}

static void test_config_keys(void **state) {
  (void)state;
  char errstr[512];
  tly_config_t *config = tly_config_default();
  assert_int_equal(config->http.max_connections, 1024);
  assert_int_equal(config->http.max_connections_per_ip, 256);
  assert_int_equal(config->http.header_timeout_ms, 10000);
  assert_int_equal(config->http.request_timeout_ms, 30000);
  tly_config_free(config);
  static const char good[] =
      "{\"http\": {\"request_timeout_ms\": 4000, \"max_connections_per_ip\": "
      "0, \"max_connections\": 64, \"header_timeout_ms\": 2000}}";
  config = tly_config_load_text(good, strlen(good), errstr, sizeof(errstr));
  assert_non_null(config);
  assert_int_equal(config->http.max_connections, 64);
  assert_int_equal(config->http.max_connections_per_ip, 0);
  assert_int_equal(config->http.header_timeout_ms, 2000);
  assert_int_equal(config->http.request_timeout_ms, 4000);
  tly_config_free(config);
  static const struct {
    const char *json, *message;
  } bad[] = {
      {"{\"http\": {\"max_connections\": 0}}", "http.max_connections: "},
      {"{\"http\": {\"max_connections\": -1}}", "http.max_connections: "},
      {"{\"http\": {\"max_connections\": \"many\"}}", "http.max_connections: "},
      {"{\"http\": {\"max_connections_per_ip\": -1}}",
       "http.max_connections_per_ip: "},
      {"{\"http\": {\"max_connections_per_ip\": 100, \"max_connections\": "
       "50}}",
       "http.max_connections_per_ip: must be at most http.max_connections"},
      {"{\"http\": {\"header_timeout_ms\": 0}}", "http.header_timeout_ms: "},
      {"{\"http\": {\"header_timeout_ms\": 10.5}}", "http.header_timeout_ms: "},
      {"{\"http\": {\"request_timeout_ms\": 99999999999}}",
       "http.request_timeout_ms: "},
      {"{\"http\": {\"request_timeout_ms\": 5000}}",
       "http.request_timeout_ms: must be at least http.header_timeout_ms"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    config = tly_config_load_text(bad[i].json, strlen(bad[i].json), errstr,
                                  sizeof(errstr));
    if (config || strncmp(errstr, bad[i].message, strlen(bad[i].message)))
      fail_msg("%s: got '%s', expected '%s...'", bad[i].json,
               config ? "(loaded)" : errstr, bad[i].message);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_client_cap_closes_the_clients_oldest_idle),
      cmocka_unit_test(test_connection_cap_closes_the_heaviest_clients_idle),
      cmocka_unit_test(test_deadlines),
      cmocka_unit_test(test_free_with_connections),
      cmocka_unit_test(test_config_keys),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
