/*
 * tly_http_subs.c - the routes that drive Stripe from tally:
 *   POST   /v1/subjects/{s}/customer      {"email", "name"}
 *   POST   /v1/subjects/{s}/subscription  {"plan"}
 *   PUT    /v1/subjects/{s}/subscription  {"plan", "proration_behavior"}
 *   DELETE /v1/subjects/{s}/subscription  ?at_period_end=true|false
 *   GET    /v1/subjects/{s}/invoices      ?limit=N
 *
 * Each reads the subject's committed state here (the link to its Stripe
 * customer, its plan and cycle, its closed cycles), checks the request,
 * then runs the Stripe calls of producers/tly_stripe_subs.h on a thread of
 * its own (tly_http_tasks.h) while the connection is suspended. Nothing
 * here changes tally's state: Stripe's webhooks do, through the log.
 * Without a Stripe secret key every route answers 503
 * stripe_not_configured; a subject without a Stripe customer 404
 * not_linked (the customer route excepted).
 */
#include "tly_billing.h"
#include "tly_http_internal.h"
#include "tly_http_tasks.h"
#include "tly_keys.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_state.h"
#include "tly_stripe_client.h"
#include "tly_stripe_subs.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS 86400000LL
#define INVOICES_DEFAULT 10
/* Stripe tasks in flight at once, at most: one more answers 503
 * stripe_unavailable. */
#define TLY_STRIPE_SUBS_TASKS_MAX 64

struct tly_http_subs {
  tly_stripe_client_t *client;
  tly_http_tasks_t *tasks;
  tly_stripe_subs_t subs;
};

int tly_http_subs_init(tly_http_t *http, char *errstr, size_t errstr_size) {
  const tly_stripe_config_t *stripe = &http->conf.config->stripe;
  if (!stripe->secret_key)
    return 0; /* the routes answer 503 */
  tly_http_subs_t *subs = calloc(1, sizeof(*subs));
  if (!subs) {
    snprintf(errstr, errstr_size, "stripe subscriptions: out of memory");
    return -1;
  }
  tly_stripe_client_conf_t conf = {.api_base = stripe->api_base,
                                   .secret_key = stripe->secret_key,
                                   .api_version = stripe->api_version,
                                   .timeout_ms = (long)stripe->timeout_ms};
  subs->client = tly_stripe_client_new(&conf, errstr, errstr_size);
  subs->tasks = tly_http_tasks_new(TLY_STRIPE_SUBS_TASKS_MAX);
  if (!subs->client || !subs->tasks) {
    if (subs->client && !subs->tasks)
      snprintf(errstr, errstr_size, "stripe subscriptions: out of memory");
    tly_stripe_client_destroy(subs->client);
    tly_http_tasks_destroy(subs->tasks);
    free(subs);
    return -1;
  }
  subs->subs =
      (tly_stripe_subs_t){subs->client, http->conf.config,
                          TLY_STRIPE_SUBS_ATTEMPTS, TLY_STRIPE_SUBS_BACKOFF_MS};
  http->subs = subs;
  return 0;
}

void tly_http_subs_close(tly_http_t *http) {
  if (http->subs)
    tly_http_tasks_close(http->subs->tasks);
}

void tly_http_subs_free(tly_http_t *http) {
  if (!http->subs)
    return;
  tly_http_tasks_destroy(http->subs->tasks);
  tly_stripe_client_destroy(http->subs->client);
  free(http->subs);
  http->subs = NULL;
}

int tly_http_is_subs_route(route_handler_t handler) {
  return handler == tly_http_handle_customer ||
         handler == tly_http_handle_subscribe ||
         handler == tly_http_handle_subscription_change ||
         handler == tly_http_handle_subscription_cancel ||
         handler == tly_http_handle_invoices;
}

long tly_http_subs_forward_timeout_ms(const tly_http_t *http) {
  tly_stripe_subs_t bound = {NULL, http->conf.config, TLY_STRIPE_SUBS_ATTEMPTS,
                             TLY_STRIPE_SUBS_BACKOFF_MS};
  return (long)tly_stripe_subs_time_bound_ms(&bound) + 2000;
}

void tly_http_subs_answer(request_t *req, response_t *out) {
  int status;
  json_t *answer = tly_http_task_answer(req->stripe_task, &status);
  if (!answer)
    tly_http_respond_error(out, 500, "internal", "out of memory");
  else
    tly_http_respond_json(out, status, answer);
  tly_http_task_free(req->stripe_task);
  req->stripe_task = NULL;
}

/* ---- a job: what the thread runs ----------------------------------------- */

typedef enum {
  JOB_CUSTOMER,
  JOB_SUBSCRIBE,
  JOB_CHANGE,
  JOB_CANCEL,
  JOB_INVOICES
} job_kind_t;

typedef struct {
  job_kind_t kind;
  tly_stripe_subs_t subs;
  char subject[TLY_REQ_SUBJECT_MAX + 16];
  char customer[TLY_STRIPE_ID_MAX];
  char plan[TLY_CONFIG_NAME_MAX];
  char proration_behavior[32]; /* "": the config's */
  char *email, *name;          /* customer: NULL when not given */
  int at_period_end;
  int64_t limit, now_s;
  tly_cycle_t *cycles; /* invoices: the subject's closed cycles */
  size_t cycle_count;
  json_t *tally_prorate; /* change: tally's own figure */
} job_t;

static void job_free(void *opaque) {
  job_t *job = opaque;
  if (!job)
    return;
  free(job->email);
  free(job->name);
  free(job->cycles);
  json_decref(job->tally_prorate);
  free(job);
}

static json_t *job_run(void *opaque, int *status) {
  job_t *job = opaque;
  switch (job->kind) {
  case JOB_CUSTOMER:
    return tly_stripe_subs_customer(&job->subs, job->subject, job->email,
                                    job->name, status);
  case JOB_SUBSCRIBE:
    return tly_stripe_subs_subscribe(&job->subs, job->subject, job->customer,
                                     job->plan, status);
  case JOB_CHANGE: {
    json_t *answer = tly_stripe_subs_change(
        &job->subs, job->subject, job->customer, job->plan,
        job->proration_behavior[0] ? job->proration_behavior : NULL, job->now_s,
        status);
    /* Both figures side by side: tally's next to Stripe's preview. */
    if (*status == 200 && json_object_get(answer, "stripe_preview"))
      json_object_set(answer, "tally_prorate", job->tally_prorate);
    return answer;
  }
  case JOB_CANCEL:
    return tly_stripe_subs_cancel(&job->subs, job->subject, job->customer,
                                  job->at_period_end, status);
  case JOB_INVOICES:
    return tly_stripe_subs_invoices(&job->subs, job->subject, job->customer,
                                    job->limit, job->cycles, job->cycle_count,
                                    status);
  }
  *status = 500;
  return NULL;
}

static void job_done(void *connection) { MHD_resume_connection(connection); }

/* Suspends the connection and starts job (taken). */
static void job_start(tly_http_t *http, request_t *req,
                      struct MHD_Connection *connection, job_t *job,
                      response_t *out) {
  MHD_suspend_connection(connection);
  if (tly_http_tasks_start(http->subs->tasks, job_run, job, job_free, job_done,
                           connection, &req->stripe_task)) {
    MHD_resume_connection(connection);
    tly_http_respond_error(out, 503, "stripe_unavailable",
                           "no Stripe call can be started now; retry");
    return;
  }
  req->phase = PHASE_WAIT;
  out->suspended = 1;
}

/* ---- the common start of every route ------------------------------------- */

/* Stripe configured, the subject parsed and its state read. 1 found, 0
 * unknown subject, -1 answered (out). */
static int subs_subject(tly_http_t *http, request_t *req,
                        tly_req_subject_t *subject, tly_subject_state_t *state,
                        response_t *out) {
  tly_req_error_t err;
  if (!http->subs) {
    tly_http_respond_error(out, 503, "stripe_not_configured",
                           "Stripe is not configured (stripe.secret_key_env)");
    return -1;
  }
  if (tly_req_parse_subject(req->subject, subject, &err)) {
    tly_http_respond_req_error(out, &err);
    return -1;
  }
  return tly_http_find_subject(http, req, subject, state, out);
}

/* The linked customer, or 0 with the 404 in out. */
static int linked(int found, const tly_req_subject_t *subject,
                  const tly_subject_state_t *state, response_t *out) {
  if (found > 0 && state->account.stripe_customer_id[0])
    return 1;
  char message[sizeof(subject->key) + 128];
  snprintf(message, sizeof(message),
           "subject %s is not linked to a Stripe customer (POST "
           ".../customer, then the customer.created webhook links it)",
           subject->key);
  tly_http_respond_error(out, 404, "not_linked", message);
  return 0;
}

static job_t *job_new(tly_http_t *http, job_kind_t kind,
                      const tly_req_subject_t *subject,
                      const tly_subject_state_t *state, response_t *out) {
  job_t *job = calloc(1, sizeof(*job));
  if (!job) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return NULL;
  }
  job->kind = kind;
  job->subs = http->subs->subs;
  snprintf(job->subject, sizeof(job->subject), "%s", subject->key);
  if (state)
    snprintf(job->customer, sizeof(job->customer), "%s",
             state->account.stripe_customer_id);
  return job;
}

/* The body as an object with only the allowed keys ({} when empty); NULL
 * with the 400 in out. */
static json_t *body_object(const request_t *req, const char *const *allowed,
                           response_t *out) {
  tly_req_error_t err = {0};
  if (!req->body || req->body_len == 0)
    return json_object();
  json_error_t error;
  json_t *root = json_loadb(req->body, req->body_len, 0, &error);
  if (!root) {
    tly_req_fail(&err, 400, "bad_json", "", "request body: %s", error.text);
    tly_http_respond_req_error(out, &err);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    tly_req_fail(&err, 400, "bad_request", "",
                 "request body: must be an object");
    tly_http_respond_req_error(out, &err);
    return NULL;
  }
  const char *key;
  json_t *value;
  json_object_foreach(root, key, value) {
    size_t i = 0;
    while (allowed[i] && strcmp(allowed[i], key) != 0)
      i++;
    if (!allowed[i]) {
      tly_req_fail(&err, 400, "bad_request", key, "field '%.64s': unknown",
                   key);
      tly_http_respond_req_error(out, &err);
      json_decref(root);
      return NULL;
    }
  }
  return root;
}

/* An optional string field of 1..max bytes: 0 (absent: *text NULL), or -1
 * with the 400 in out. */
static int string_field(json_t *root, const char *key, size_t max,
                        const char **text, response_t *out) {
  tly_req_error_t err;
  json_t *value = json_object_get(root, key);
  *text = NULL;
  if (!value)
    return 0;
  const char *string = json_string_value(value);
  size_t len = string ? strlen(string) : 0;
  if (!string || len == 0 || len > max || memchr(string, '\0', len)) {
    tly_req_fail(&err, 400, "bad_request", key,
                 "field '%s': must be a string of 1 to %zu bytes", key, max);
    tly_http_respond_req_error(out, &err);
    return -1;
  }
  *text = string;
  return 0;
}

/* "plan": required, a plan with Stripe prices. */
static const char *plan_field(const tly_config_t *config, json_t *root,
                              response_t *out) {
  const char *plan;
  if (string_field(root, "plan", TLY_CONFIG_NAME_MAX - 1, &plan, out))
    return NULL;
  if (!plan) {
    tly_http_respond_json(
        out, 400,
        json_pack("{s:o}", "error",
                  tly_http_error_json("bad_request", "field 'plan': required",
                                      "plan")));
    return NULL;
  }
  if (!tly_config_stripe_plan_prices(config, plan)) {
    char message[160];
    snprintf(message, sizeof(message),
             "plan '%.64s' has no Stripe prices (stripe.plans)", plan);
    tly_http_respond_json(
        out, 400,
        json_pack("{s:o}", "error",
                  tly_http_error_json("unknown_plan", message, "plan")));
    return NULL;
  }
  return plan;
}

/* ---- the routes ---------------------------------------------------------- */

void tly_http_handle_customer(tly_http_t *http, request_t *req,
                              struct MHD_Connection *connection,
                              response_t *out) {
  static const char *const allowed[] = {"email", "name", NULL};
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  const char *email, *name;
  json_t *root = NULL;
  int found = subs_subject(http, req, &subject, &state, out);
  if (found < 0 || !(root = body_object(req, allowed, out)) ||
      string_field(root, "email", TLY_STRIPE_SUBS_EMAIL_MAX, &email, out) ||
      string_field(root, "name", TLY_STRIPE_SUBS_NAME_MAX, &name, out))
    goto done;
  if (found > 0 && state.account.stripe_customer_id[0]) {
    /* Linked already: nothing to ask Stripe. */
    tly_http_respond_json(out, 200,
                          json_pack("{s:s,s:{s:s},s:b,s:b,s:b}", "subject",
                                    subject.key, "customer", "id",
                                    state.account.stripe_customer_id, "linked",
                                    1, "created", 0, "pending", 0));
    goto done;
  }
  job_t *job = job_new(http, JOB_CUSTOMER, &subject, NULL, out);
  if (!job)
    goto done;
  if ((email && !(job->email = strdup(email))) ||
      (name && !(job->name = strdup(name)))) {
    job_free(job);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    goto done;
  }
  job_start(http, req, connection, job, out);
done:
  json_decref(root);
  tly_state_subject_clear(&state);
}

void tly_http_handle_subscribe(tly_http_t *http, request_t *req,
                               struct MHD_Connection *connection,
                               response_t *out) {
  static const char *const allowed[] = {"plan", NULL};
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  json_t *root = NULL;
  const char *plan;
  int found = subs_subject(http, req, &subject, &state, out);
  if (found < 0 || !(root = body_object(req, allowed, out)) ||
      !(plan = plan_field(http->conf.config, root, out)) ||
      !linked(found, &subject, &state, out))
    goto done;
  job_t *job = job_new(http, JOB_SUBSCRIBE, &subject, &state, out);
  if (!job)
    goto done;
  snprintf(job->plan, sizeof(job->plan), "%s", plan);
  job_start(http, req, connection, job, out);
done:
  json_decref(root);
  tly_state_subject_clear(&state);
}

/* tally's own POST /v1/prorate for the change, as of now in the subject's
 * current cycle (day-granular, as that route is). */
static json_t *tally_prorate(const tly_config_t *config,
                             const tly_subject_state_t *state,
                             const char *to_plan, int64_t now_ms) {
  char body[512], change[16], start[16], end[16];
  tly_req_error_t err;
  int32_t change_day = (int32_t)(now_ms / DAY_MS);
  int32_t start_day = (int32_t)(state->account.cycle.start_ms / DAY_MS);
  int32_t end_day =
      (int32_t)((state->account.cycle.end_ms + DAY_MS - 1) / DAY_MS);
  if (start_day > change_day)
    start_day = change_day;
  if (end_day <= change_day)
    end_day = change_day + 1;
  tly_req_format_day(change_day, change);
  tly_req_format_day(start_day, start);
  tly_req_format_day(end_day, end);
  snprintf(body, sizeof(body),
           "{\"from_plan\": \"%s\", \"to_plan\": \"%s\", \"change_date\": "
           "\"%s\", \"cycle_start\": \"%s\", \"cycle_end\": \"%s\"}",
           state->account.plan, to_plan, change, start, end);
  json_t *answer = tly_req_prorate(config, body, strlen(body), &err);
  return answer
             ? answer
             : json_pack("{s:o}", "error",
                         tly_http_error_json(err.code, err.message, err.field));
}

void tly_http_handle_subscription_change(tly_http_t *http, request_t *req,
                                         struct MHD_Connection *connection,
                                         response_t *out) {
  static const char *const allowed[] = {"plan", "proration_behavior", NULL};
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  json_t *root = NULL;
  const char *plan, *proration;
  int found = subs_subject(http, req, &subject, &state, out);
  if (found < 0 || !(root = body_object(req, allowed, out)) ||
      !(plan = plan_field(http->conf.config, root, out)) ||
      string_field(root, "proration_behavior", 31, &proration, out))
    goto done;
  if (proration && strcmp(proration, "create_prorations") != 0 &&
      strcmp(proration, "always_invoice") != 0 &&
      strcmp(proration, "none") != 0) {
    tly_http_respond_json(
        out, 400,
        json_pack("{s:o}", "error",
                  tly_http_error_json("bad_request",
                                      "field 'proration_behavior': must be "
                                      "create_prorations, always_invoice or "
                                      "none",
                                      "proration_behavior")));
    goto done;
  }
  if (!linked(found, &subject, &state, out))
    goto done;
  job_t *job = job_new(http, JOB_CHANGE, &subject, &state, out);
  if (!job)
    goto done;
  int64_t now_ms = tly_wall_ms();
  snprintf(job->plan, sizeof(job->plan), "%s", plan);
  snprintf(job->proration_behavior, sizeof(job->proration_behavior), "%s",
           proration ? proration : "");
  job->now_s = now_ms / 1000;
  job->tally_prorate = tally_prorate(http->conf.config, &state, plan, now_ms);
  job_start(http, req, connection, job, out);
done:
  json_decref(root);
  tly_state_subject_clear(&state);
}

void tly_http_handle_subscription_cancel(tly_http_t *http, request_t *req,
                                         struct MHD_Connection *connection,
                                         response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  int found = subs_subject(http, req, &subject, &state, out);
  if (found < 0)
    goto done;
  const char *when = MHD_lookup_connection_value(
      connection, MHD_GET_ARGUMENT_KIND, "at_period_end");
  int at_period_end = 1;
  if (when && strcmp(when, "false") == 0)
    at_period_end = 0;
  else if (when && strcmp(when, "true") != 0) {
    tly_http_respond_json(
        out, 400,
        json_pack("{s:o}", "error",
                  tly_http_error_json("bad_request",
                                      "query parameter 'at_period_end': must "
                                      "be true or false",
                                      "at_period_end")));
    goto done;
  }
  if (!linked(found, &subject, &state, out))
    goto done;
  job_t *job = job_new(http, JOB_CANCEL, &subject, &state, out);
  if (!job)
    goto done;
  job->at_period_end = at_period_end;
  job_start(http, req, connection, job, out);
done:
  tly_state_subject_clear(&state);
}

/* ---- invoices: the closed cycles to compare with ---------------------------
 */

typedef struct {
  tly_cycle_t *cycles;
  size_t count, cap;
  int failed;
} cycle_list_t;

static int add_cycle(cycle_list_t *list, const tly_cycle_t *cycle) {
  for (size_t i = 0; i < list->count; i++)
    if (list->cycles[i].start_ms == cycle->start_ms)
      return 0; /* the record's live copy wins */
  if (list->count == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 8;
    tly_cycle_t *grown = realloc(list->cycles, cap * sizeof(*grown));
    if (!grown)
      return -1;
    list->cycles = grown;
    list->cap = cap;
  }
  list->cycles[list->count++] = *cycle;
  return 0;
}

static int visit_archived(void *opaque, const unsigned char *suffix,
                          size_t suffix_len, const char *value,
                          size_t value_len) {
  cycle_list_t *list = opaque;
  tly_cycle_t cycle;
  tly_subject_row_t *rows = NULL;
  size_t count = 0;
  (void)suffix, (void)suffix_len;
  if (tly_cycle_archive_decode(value, value_len, &cycle, &rows, &count) ||
      add_cycle(list, &cycle))
    list->failed = 1;
  free(rows);
  return list->failed;
}

void tly_http_handle_invoices(tly_http_t *http, request_t *req,
                              struct MHD_Connection *connection,
                              response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  cycle_list_t list = {0};
  char errstr[256];
  int64_t limit = INVOICES_DEFAULT;
  int found = subs_subject(http, req, &subject, &state, out);
  if (found < 0)
    goto done;
  const char *text =
      MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "limit");
  if (text) {
    char *end;
    long long value = strtoll(text, &end, 10);
    if (!*text || *end || value < 1 || value > TLY_STRIPE_SUBS_INVOICES_MAX) {
      tly_req_fail(&err, 400, "bad_request", "limit",
                   "query parameter 'limit': must be an integer from 1 to %d",
                   TLY_STRIPE_SUBS_INVOICES_MAX);
      tly_http_respond_req_error(out, &err);
      goto done;
    }
    limit = value;
  }
  if (!linked(found, &subject, &state, out))
    goto done;
  for (size_t i = 0; i < state.account.history_count && !list.failed; i++)
    list.failed = add_cycle(&list, &state.account.history[i]) != 0;
  if (!list.failed &&
      tly_state_history(http->conf.store, state.partition, subject.kind,
                        subject.id, TLY_HISTORY_CYCLE, INT64_MIN,
                        visit_archived, &list, errstr, sizeof(errstr)) &&
      !list.failed) {
    tly_http_respond_error(out, 500, "store_error", errstr);
    goto done;
  }
  if (list.failed) {
    tly_http_respond_error(out, 500, "internal",
                           "out of memory or a corrupt archived cycle");
    goto done;
  }
  job_t *job = job_new(http, JOB_INVOICES, &subject, &state, out);
  if (!job)
    goto done;
  job->limit = limit;
  job->cycles = list.cycles;
  job->cycle_count = list.count;
  list.cycles = NULL;
  job_start(http, req, connection, job, out);
done:
  free(list.cycles);
  tly_state_subject_clear(&state);
}
