/*
 * stripe_fake_internal.h - what the Stripe-shaped test server's files share
 * (stripe_fake.c: the server, auth, faults, idempotency, meter events and
 * the portal; stripe_fake_billing.c: customers, prices, subscriptions,
 * invoices and the events a webhook would carry). Private to them.
 */
#ifndef STRIPE_FAKE_INTERNAL_H
#define STRIPE_FAKE_INTERNAL_H

#include "stripe_fake.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
  char *key, *value;
} param_t;

typedef struct {
  size_t count;
  param_t *items;
} params_t;

typedef struct {
  char *customer, *event_name;
  long long sum, count;
} ledger_row_t;

typedef struct {
  char *key, *fingerprint, *body;
  int status, should_retry;
  int64_t created_s;            /* by the fake's clock */
  int64_t in_progress_until_ms; /* real time: its request still runs */
} idempotent_t;

typedef struct {
  char *id;
  int64_t seen_s; /* by the fake's clock */
} identifier_t;

/* An accepted meter event, for the summaries. */
typedef struct {
  char *customer, *event_name;
  long long value;
  int64_t timestamp;
} event_t;

typedef struct {
  char *id, *event_name;
  int64_t created_s;
} meter_t;

typedef struct {
  int remaining;
  int status;         /* 0: not a status fault */
  long retry_after_s; /* -1: no header */
  int should_retry;   /* -1: no header */
  long hang_ms;       /* > 0: hang, then drop */
  int drop_after_apply;
  int apply;          /* with status: run the endpoint first, keep the
                         status as the key's answer */
  long processing_ms; /* > 0: run, then hold the key in progress */
  char path[128];     /* "" any */
  char method[8];     /* "" any */
  char customer[128]; /* "" any */
} fault_t;

/* Growable arrays of the state, each under the server's lock. */
#define GROW(array, count, cap)                                                \
  ((count) < (cap) ||                                                          \
           ((cap) = (cap) ? (cap)*2 : 16,                                      \
            (array) = realloc((array), (cap) * sizeof(*(array)))) != NULL      \
       ? 1                                                                     \
       : (abort(), 0))

struct sf_server {
  struct MHD_Daemon *daemon;
  uint16_t port;
  char *secret_key;
  atomic_int stopping;
  pthread_mutex_t lock;
  char **customers;
  size_t customer_count, customer_cap;
  identifier_t *identifiers;
  size_t identifier_count, identifier_cap;
  event_t *events;
  size_t event_count, event_cap;
  meter_t *meters;
  size_t meter_count, meter_cap;
  int64_t clock_offset_s; /* the fake's clock: the wall clock plus this */
  ledger_row_t *ledger;
  size_t ledger_count, ledger_cap;
  idempotent_t *idempotent;
  size_t idempotent_count, idempotent_cap;
  fault_t *faults;
  size_t fault_count, fault_cap;
  json_t *log; /* array, the last LOG_MAX requests */
  long long requests, portal_sessions, next_id;
  struct sf_billing *billing; /* stripe_fake_billing.c */
};

typedef struct {
  char *body;
  size_t len;
  int too_large;
} request_t;

typedef struct {
  int status;
  char *body; /* malloc'd JSON */
  int should_retry;
  long retry_after_s;
  int replayed;
  int drop; /* close the connection without an answer */
} answer_t;

/* ---- stripe_fake.c's helpers (under the server's lock) ------------------ */

int64_t sf_now_s(const sf_server_t *server); /* the fake's clock */
void sf_answer_json(answer_t *answer, int status, json_t *json);
/* Stripe's error shape; code and param may be NULL. */
void sf_answer_error(answer_t *answer, int status, const char *type,
                     const char *code, const char *param, const char *message);
/* The last value of key, or NULL. */
const char *sf_param(const params_t *params, const char *key);
/* 1 when a required parameter is missing (answer filled). */
int sf_require(const params_t *params, const char *const *names,
               answer_t *answer);
int sf_known(char **list, size_t count, const char *id);
int sf_parse_integer(const char *text, long long *out);
void sf_unknown_customer(answer_t *answer, const char *param_name,
                         const char *customer);
/* limit (1..100, default 10); 0 with answer filled when bad. */
long sf_list_limit(const params_t *params, answer_t *answer);
/* A Stripe list of items (taken) from the one after starting_after. */
void sf_answer_list(answer_t *answer, const char *url, json_t *items,
                    const params_t *params, long limit);

/* ---- stripe_fake_billing.c ------------------------------------------------
 */

/* An API endpoint: 1 when its answer may be kept for an Idempotency-Key. */
typedef int (*sf_endpoint_fn)(sf_server_t *server, const char *path,
                              const params_t *params, answer_t *answer);
/* The POST or DELETE endpoint of (method, path), or NULL. */
sf_endpoint_fn sf_billing_endpoint(const char *method, const char *path);
/* The GET API of customers, subscriptions, invoices: 1 when path is one
 * of it (answer filled). */
int sf_billing_get(sf_server_t *server, const char *path,
                   const params_t *params, answer_t *answer);
/* Its control routes: 1 when (method, path) is one (answer filled). */
int sf_billing_control(sf_server_t *server, const char *method,
                       const char *path, json_t *body, answer_t *answer);
void sf_billing_free(sf_server_t *server);

#endif
