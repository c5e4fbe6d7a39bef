/*
 * test_analytics.c - dimensions and analytics across the cluster: two
 * `tally run` in one group on the embedded broker (8 partitions), sharing
 * the cluster secret. 24 subjects send AI events (3 models, 2 providers,
 * every AI event names one) and api_calls events grouped by
 * properties.region (some without a region). Asked of either instance:
 *  - /v1/analytics/top (by cost, all features, every subject; by quantity
 *    of one feature, limit 5) equals the reference computed from the
 *    events sent, exactly, ordered by the figure then subject, complete;
 *  - /v1/analytics/breakdown by model (ai_tokens), provider (every feature:
 *    api_calls in "none"), properties.region (api_calls) and plan equals
 *    the reference exactly, and its groups sum to its total;
 *  - the breakdown's total equals the sum of every subject's /usage
 *    figures; each subject's /usage?group_by=model groups sum to its
 *    features; /usage/daily?group_by as CSV has the group column;
 *  - both instances' answers are the same (each gathered the other's part);
 *  - an unknown group_by is a 400 naming the field; CSV answers;
 *  - a scan runs off the HTTP thread: with http.threads 1, /metrics shows
 *    tally_http_analytics_scans_running 1 and a pre-check is answered
 *    while a breakdown scans 40,000 more subjects (fails with the scan on
 *    the HTTP thread: checked).
 * Corrections (usage_corrected) are folded in: a third of the subjects
 * amend an AI event, a third retract one, a sixth amend an api_calls event
 * with a region. The reference moves the original's model, provider and
 * region by the difference, so the breakdowns above, each subject's
 * /usage?group_by=model groups (equal to the subject's figures per model)
 * and /usage/daily?group_by=model summed over days show the corrected
 * quantity under the original's model, and "none" of model stays absent
 * (a correction's difference used to land there).
 */
#include "harness.h"

#include "tally_producer.h"

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 8
#define SUBJECTS 24
#define EVENTS 6 /* per subject and feature */
#define HEARTBEAT_MS "300"

static const char *config_json =
    "{\"pricing\": {\"margin_bps\": 0, \"models\": {"
    "   \"m1\": {\"input_per_mtok\": 1000000, \"output_per_mtok\": 2000000},"
    "   \"m2\": {\"input_per_mtok\": 3000000, \"output_per_mtok\": 5000000},"
    "   \"m3\": {\"input_per_mtok\": 7000000, \"output_per_mtok\": 1000000}}},"
    " \"default_plans\": {\"user\": \"basic\"},"
    " \"http\": {\"threads\": 1},"
    " \"meters\": {\"api_calls\": {\"group_by\": [\"properties.region\"]}},"
    " \"plans\": {\"basic\": {\"credits\": -1,"
    "   \"prices\": {\"api_calls\": {\"model\": \"graduated\", \"tiers\": "
    "     [{\"up_to\": null, \"unit_micros\": 1000}]}}}}}";

typedef struct {
  long long quantity, cost, events;
} fig_t;

/* The reference: per subject (all features, and ai_tokens alone), per
 * model, provider and region. */
static fig_t subject_all[SUBJECTS], subject_ai[SUBJECTS];
static fig_t subject_model[SUBJECTS][3];
static int corrections_sent;
static fig_t by_model[3], by_provider[3], by_region[3]; /* [2]: none */
static fig_t total_all, total_ai, total_api;

static void add(fig_t *f, long long q, long long c) {
  f->quantity += q;
  f->cost += c;
  f->events++;
}

/* A correction: the quantity and cost move by the difference; events by
 * -1 for a retraction. */
static void move(fig_t *f, long long dq, long long dc, int retracted) {
  f->quantity += dq;
  f->cost += dc;
  f->events -= retracted;
}

/* What a subject's event e was, to correct it. */
typedef struct {
  int m, p, r;
  long long in, out, q;
} sent_t;

/* Subject s's correction (corrections_sent counts them): a third amend
 * their first AI event (same model), a third retract their second, a sixth
 * amend their first api_calls event. Sent after the subject's events, so
 * after the originals in its partition. */
static void send_correction(tally_producer_t *producer, int s, int64_t at_ms,
                            const sent_t *sent) {
  static const char *const models[] = {"m1", "m2", "m3"};
  static const long long in_price[] = {1, 3, 7}, out_price[] = {2, 5, 1};
  static const char *const providers[] = {"openai", "anthropic"};
  char errstr[512], id[32], event_id[48], corrects[48];
  tly_event_t event = {0};
  snprintf(id, sizeof(id), "an-%02d", s);
  snprintf(event_id, sizeof(event_id), "an-%d-fix", s);
  event.event_id = event_id;
  event.occurred_at_ms = at_ms + 100;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = id;
  event.body_kind = TLY_BODY_USAGE_CORRECTED;
  event.body.usage.corrects = corrects;
  event.body.usage.unit = "";
  int e = s % 3 == 0 ? 0 : s % 3 == 1 ? 2 : 1;
  if (s % 3 == 2 && s % 6 != 5)
    return;
  const sent_t *was = &sent[e];
  snprintf(corrects, sizeof(corrects), "an-%d-%d", s, e);
  if (e == 1) { /* api_calls: 3 more calls, in the original's region */
    long long q = was->q + 3;
    event.body.usage.feature = "api_calls";
    event.body.usage.quantity = q;
    move(&subject_all[s], 3, 3000, 0);
    move(&by_region[was->r], 3, 3000, 0);
    move(&by_provider[2], 3, 3000, 0);
    move(&total_api, 3, 3000, 0);
    move(&total_all, 3, 3000, 0);
  } else {
    int retract = e == 2;
    long long in = retract ? 0 : was->in + 250, out = retract ? 0 : 7;
    long long dq = in + out - (was->in + was->out);
    long long dc = (in - was->in) * in_price[was->m] +
                   (out - was->out) * out_price[was->m];
    event.body.usage.feature = "ai_tokens";
    event.body.usage.quantity = in + out;
    if (!retract) {
      event.body.usage.has_ai = 1;
      event.body.usage.ai.model = (char *)models[was->m];
      event.body.usage.ai.provider = (char *)providers[was->p];
      event.body.usage.ai.input_tokens = in;
      event.body.usage.ai.output_tokens = out;
    }
    fig_t *figs[] = {&subject_all[s],
                     &subject_ai[s],
                     &by_model[was->m],
                     &subject_model[s][was->m],
                     &by_provider[was->p],
                     &total_ai,
                     &total_all};
    for (size_t i = 0; i < sizeof(figs) / sizeof(figs[0]); i++)
      move(figs[i], dq, dc, retract);
  }
  if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)))
    fail_msg("send correction: %s", errstr);
  corrections_sent++;
}

static void produce(const char *bootstrap, int64_t at_ms) {
  static const char *const models[] = {"m1", "m2", "m3"};
  static const long long in_price[] = {1, 3, 7}, out_price[] = {2, 5, 1};
  static const char *const providers[] = {"openai", "anthropic"};
  static const char *const regions[] = {"eu", "us"};
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[48];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  unsigned seed = 17;
  for (int s = 0; s < SUBJECTS; s++) {
    sent_t sent[EVENTS * 2] = {{0}};
    for (int e = 0; e < EVENTS * 2; e++) {
      tly_event_t event = {0};
      tly_property_t property = {"region", NULL};
      snprintf(id, sizeof(id), "an-%02d", s);
      snprintf(event_id, sizeof(event_id), "an-%d-%d", s, e);
      event.event_id = event_id;
      event.occurred_at_ms = at_ms + e;
      event.subject_kind = TLY_SUBJECT_USER;
      event.subject_id = id;
      event.body_kind = TLY_BODY_USAGE_RECORDED;
      if (e % 2 == 0) { /* ai_tokens */
        int m = rand_r(&seed) % 3, p = rand_r(&seed) % 2;
        long long in = 1 + rand_r(&seed) % 500, out = rand_r(&seed) % 300;
        long long cost = in * in_price[m] + out * out_price[m];
        event.body.usage.feature = "ai_tokens";
        event.body.usage.unit = "token";
        event.body.usage.quantity = in + out;
        event.body.usage.has_ai = 1;
        event.body.usage.ai.model = (char *)models[m];
        event.body.usage.ai.provider = (char *)providers[p];
        event.body.usage.ai.input_tokens = in;
        event.body.usage.ai.output_tokens = out;
        sent[e] = (sent_t){m, p, 0, in, out, in + out};
        add(&subject_all[s], in + out, cost);
        add(&subject_ai[s], in + out, cost);
        add(&subject_model[s][m], in + out, cost);
        add(&by_model[m], in + out, cost);
        add(&by_provider[p], in + out, cost);
        add(&total_ai, in + out, cost);
        add(&total_all, in + out, cost);
      } else { /* api_calls */
        int r = rand_r(&seed) % 3;
        long long q = 1 + rand_r(&seed) % 9;
        event.body.usage.feature = "api_calls";
        event.body.usage.unit = "call";
        event.body.usage.quantity = q;
        if (r < 2) {
          property.value = (char *)regions[r];
          event.body.usage.property_count = 1;
          event.body.usage.properties = &property;
        }
        sent[e] = (sent_t){0, 0, r, 0, 0, q};
        add(&subject_all[s], q, q * 1000);
        add(&by_region[r], q, q * 1000);
        add(&by_provider[2], q, q * 1000); /* no provider dimension */
        add(&total_api, q, q * 1000);
        add(&total_all, q, q * 1000);
      }
      if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)))
        fail_msg("send: %s", errstr);
    }
    send_correction(producer, s, at_ms + EVENTS * 2, sent);
  }
  assert_int_equal(tally_producer_flush(producer, 30000), 0);
  tally_producer_destroy(producer);
}

static json_t *get_json(int port, const char *path, long *status) {
  char *body = NULL;
  if (th_http_get(port, path, status, &body))
    return NULL;
  json_t *json = json_loads(body ? body : "", 0, NULL);
  free(body);
  return json;
}

/* GET path until 200 (503 partition_moving while the members settle). */
static json_t *get_200(int port, const char *path) {
  int64_t deadline = th_now_ms() + 60000;
  for (;;) {
    long status = 0;
    json_t *json = get_json(port, path, &status);
    if (status == 200 && json)
      return json;
    const char *code = json_string_value(
        json_object_get(json_object_get(json, "error"), "code"));
    if (status != 503 || !code || strcmp(code, "partition_moving") != 0)
      fail_msg("%s: %ld %s", path, status, code ? code : "(no code)");
    json_decref(json);
    if (th_now_ms() > deadline)
      fail_msg("%s: still 503", path);
    th_sleep_ms(100);
  }
}

static int ready(int port) {
  long status = 0;
  char *body = NULL;
  int ok = th_http_get(port, "/readyz", &status, &body) == 0 && status == 200;
  free(body);
  return ok;
}

static long long member(const json_t *o, const char *key) {
  return json_integer_value(json_object_get(o, key));
}

static void expect_fig(const char *what, const json_t *o, const fig_t *want) {
  if (member(o, "quantity") != want->quantity ||
      member(o, "cost_micros") != want->cost ||
      member(o, "events") != want->events)
    fail_msg("%s: %lld/%lld/%lld, the reference says %lld/%lld/%lld", what,
             member(o, "quantity"), member(o, "cost_micros"),
             member(o, "events"), want->quantity, want->cost, want->events);
}

static const json_t *group_of(const json_t *answer, const char *value) {
  const json_t *groups = json_object_get(answer, "groups");
  for (size_t i = 0; i < json_array_size(groups); i++)
    if (!strcmp(json_string_value(
                    json_object_get(json_array_get(groups, i), "value")),
                value))
      return json_array_get(groups, i);
  return NULL;
}

/* The breakdown matches values[i] -> want[i] (n of them, no others), its
 * groups sum to its total, which is total. */
static void expect_breakdown(const json_t *answer, const char *const *values,
                             const fig_t *want, size_t n, const fig_t *total) {
  fig_t sum = {0};
  const json_t *groups = json_object_get(answer, "groups");
  size_t nonzero = 0;
  for (size_t i = 0; i < n; i++) {
    if (!want[i].events) {
      assert_null(group_of(answer, values[i]));
      continue;
    }
    nonzero++;
    const json_t *g = group_of(answer, values[i]);
    if (!g)
      fail_msg("no group %s", values[i]);
    expect_fig(values[i], g, &want[i]);
  }
  assert_int_equal(json_array_size(groups), nonzero);
  for (size_t i = 0; i < json_array_size(groups); i++) {
    const json_t *g = json_array_get(groups, i);
    sum.quantity += member(g, "quantity");
    sum.cost += member(g, "cost_micros");
    sum.events += member(g, "events");
  }
  expect_fig("the groups' sum", json_object_get(answer, "total"), &sum);
  expect_fig("total", json_object_get(answer, "total"), total);
  assert_true(json_is_true(json_object_get(answer, "complete")));
}

static void check_top(const json_t *top, int by_cost, const fig_t *figs,
                      size_t limit) {
  const json_t *list = json_object_get(top, "subjects");
  assert_int_equal(json_array_size(list), limit);
  assert_true(json_is_true(json_object_get(top, "complete")));
  for (size_t i = 0; i < json_array_size(list); i++) {
    const json_t *item = json_array_get(list, i);
    const char *subject = json_string_value(json_object_get(item, "subject"));
    int s = -1;
    assert_int_equal(sscanf(subject, "user:an-%d", &s), 1);
    expect_fig(subject, item, &figs[s]);
    /* Ordered by the figure descending, then subject ascending; and no
     * subject left out ranks above the last one answered. */
    if (i) {
      const json_t *prev = json_array_get(list, i - 1);
      long long a = member(prev, by_cost ? "cost_micros" : "quantity"),
                b = member(item, by_cost ? "cost_micros" : "quantity");
      assert_true(
          a > b ||
          (a == b && strcmp(json_string_value(json_object_get(prev, "subject")),
                            subject) < 0));
    }
  }
  long long last = member(json_array_get(list, limit - 1),
                          by_cost ? "cost_micros" : "quantity");
  size_t above = 0;
  for (int s = 0; s < SUBJECTS; s++)
    above += (by_cost ? figs[s].cost : figs[s].quantity) > last;
  assert_true(above < limit);
}

/* SCAN_SUBJECTS more subjects, one api_calls event each: enough that a
 * scan of an instance's partitions takes a while. */
#define SCAN_SUBJECTS 40000
static void produce_scan_subjects(const char *bootstrap, int64_t at_ms) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[48];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int s = 0; s < SCAN_SUBJECTS; s++) {
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "scan-%05d", s);
    snprintf(event_id, sizeof(event_id), "scan-%d", s);
    event.event_id = event_id;
    event.occurred_at_ms = at_ms;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    event.body.usage.feature = "api_calls";
    event.body.usage.unit = "call";
    event.body.usage.quantity = 1;
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)))
      fail_msg("send: %s", errstr);
  }
  assert_int_equal(tally_producer_flush(producer, 30000), 0);
  tally_producer_destroy(producer);
}

typedef struct {
  int port;
  const char *path;
  long status;
  atomic_int done;
} scan_call_t;

static void *scan_call_main(void *opaque) {
  scan_call_t *call = opaque;
  char *body = NULL;
  if (th_http_get(call->port, call->path, &call->status, &body))
    call->status = 0;
  free(body);
  atomic_store(&call->done, 1);
  return NULL;
}

/* tally_http_analytics_scans_running from /metrics; -1 without it. */
static long scans_running(int port) {
  long status = 0, value = -1;
  char *body = NULL;
  if (th_http_get(port, "/metrics", &status, &body) == 0 && status == 200) {
    const char *at = strstr(body, "\ntally_http_analytics_scans_running ");
    if (at)
      value = atol(at + strlen("\ntally_http_analytics_scans_running "));
  }
  free(body);
  return value;
}

static void test_analytics_across_instances(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b;
  char *dir = th_mkdtemp("analytics");
  char state_a[600], state_b[600], config_path[600], path[256];
  snprintf(state_a, sizeof(state_a), "%s/a", dir);
  snprintf(state_b, sizeof(state_b), "%s/b", dir);
  snprintf(config_path, sizeof(config_path), "%s/tally.json", dir);
  FILE *file = fopen(config_path, "w");
  assert_non_null(file);
  fputs(config_json, file);
  fclose(file);
  const char *extra_a[] = {
      "--config",   config_path,     "--members-heartbeat-ms",
      HEARTBEAT_MS, "--instance-id", "an-a",
      NULL};
  const char *extra_b[] = {
      "--config",   config_path,     "--members-heartbeat-ms",
      HEARTBEAT_MS, "--instance-id", "an-b",
      NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  int64_t at_ms = (int64_t)time(NULL) * 1000 - 120000; /* wall clock */
  produce(broker.bootstrap, at_ms);
  assert_int_equal(corrections_sent, SUBJECTS / 3 * 2 + SUBJECTS / 6);
  assert_int_equal(th_run_start(&a, broker.bootstrap, state_a, extra_a), 0);
  assert_int_equal(th_run_start(&b, broker.bootstrap, state_b, extra_b), 0);
  /* Both ready: the group split the partitions and both caught up (the
   * answers below wait out 503 partition_moving while members settle). */
  int64_t deadline = th_now_ms() + 60000;
  while (!(ready(a.port) && ready(b.port)) && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(ready(a.port) && ready(b.port));
  /* The day of the events (and the next, should they straddle midnight). */
  char from[16], to[16], range[64];
  time_t t = (time_t)(at_ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(from, sizeof(from), "%Y-%m-%d", &tm);
  t += 86400;
  gmtime_r(&t, &tm);
  strftime(to, sizeof(to), "%Y-%m-%d", &tm);
  snprintf(range, sizeof(range), "from=%s&to=%s", from, to);

  int ports[2] = {a.port, b.port};
  char *bodies[2][6] = {{0}};
  for (int i = 0; i < 2; i++) {
    int port = ports[i];
    /* Top by cost, every feature, every subject. */
    snprintf(path, sizeof(path), "/v1/analytics/top?by=cost&limit=1000&%s",
             range);
    json_t *top = get_200(port, path);
    assert_true(json_is_null(json_object_get(top, "feature")));
    assert_string_equal(json_string_value(json_object_get(top, "by")), "cost");
    check_top(top, 1, subject_all, SUBJECTS);
    bodies[i][0] = json_dumps(top, JSON_COMPACT);
    json_decref(top);
    /* Without from/to: the current cycle of the config's anchor. */
    top = get_200(port, "/v1/analytics/top?limit=1000");
    check_top(top, 1, subject_all, SUBJECTS);
    json_decref(top);
    /* Top 5 by quantity of ai_tokens. */
    snprintf(path, sizeof(path),
             "/v1/analytics/top?feature=ai_tokens&by=quantity&limit=5&%s",
             range);
    top = get_200(port, path);
    check_top(top, 0, subject_ai, 5);
    bodies[i][1] = json_dumps(top, JSON_COMPACT);
    json_decref(top);

    static const char *const models[] = {"m1", "m2", "m3"};
    static const char *const providers[] = {"openai", "anthropic", "none"};
    static const char *const regions[] = {"eu", "us", "none"};
    snprintf(path, sizeof(path),
             "/v1/analytics/breakdown?feature=ai_tokens&group_by=model&%s",
             range);
    json_t *answer = get_200(port, path);
    expect_breakdown(answer, models, by_model, 3, &total_ai);
    bodies[i][2] = json_dumps(answer, JSON_COMPACT);
    json_decref(answer);
    snprintf(path, sizeof(path), "/v1/analytics/breakdown?group_by=provider&%s",
             range);
    answer = get_200(port, path);
    expect_breakdown(answer, providers, by_provider, 3, &total_all);
    bodies[i][3] = json_dumps(answer, JSON_COMPACT);
    json_decref(answer);
    snprintf(path, sizeof(path),
             "/v1/analytics/breakdown?feature=api_calls&group_by="
             "properties.region&%s",
             range);
    answer = get_200(port, path);
    expect_breakdown(answer, regions, by_region, 3, &total_api);
    bodies[i][4] = json_dumps(answer, JSON_COMPACT);
    json_decref(answer);
    snprintf(path, sizeof(path), "/v1/analytics/breakdown?group_by=plan&%s",
             range);
    answer = get_200(port, path);
    static const char *const plans[] = {"basic"};
    expect_breakdown(answer, plans, &total_all, 1, &total_all);
    bodies[i][5] = json_dumps(answer, JSON_COMPACT);
    json_decref(answer);
  }
  for (int k = 0; k < 6; k++) /* one answer, whoever was asked */
    assert_string_equal(bodies[0][k], bodies[1][k]);
  for (int i = 0; i < 2; i++)
    for (int k = 0; k < 6; k++)
      free(bodies[i][k]);

  /* The breakdown's total is the sum of every subject's /usage; each
   * subject's groups by model sum to its ai_tokens figures. */
  fig_t usage_sum = {0};
  for (int s = 0; s < SUBJECTS; s++) {
    snprintf(path, sizeof(path),
             "/v1/subjects/user:an-%02d/usage?group_by=model", s);
    json_t *usage = get_200(ports[s % 2], path);
    const json_t *ai =
        json_object_get(json_object_get(usage, "features"), "ai_tokens");
    fig_t groups = {0};
    const json_t *list = json_object_get(ai, "groups");
    if (json_array_size(list) < 1) {
      char *text = json_dumps(usage, JSON_COMPACT), plain[128];
      snprintf(plain, sizeof(plain), "/v1/subjects/user:an-%02d/usage", s);
      json_t *p = get_200(ports[s % 2], plain);
      char *text2 = json_dumps(p, JSON_COMPACT);
      fail_msg("%s: no groups: %s\nplain: %s", path, text, text2);
    }
    for (size_t g = 0; g < json_array_size(list); g++) {
      groups.quantity += member(json_array_get(list, g), "quantity");
      groups.cost += member(json_array_get(list, g), "cost_micros");
      groups.events += member(json_array_get(list, g), "events");
    }
    expect_fig("a subject's groups", ai, &groups);
    expect_fig("a subject's ai_tokens", ai, &subject_ai[s]);
    /* Each model's group is the subject's figures of that model, the
     * corrections included; nothing in "none". */
    static const char *const model_names[] = {"m1", "m2", "m3"};
    size_t nonzero = 0;
    for (int m = 0; m < 3; m++) {
      const json_t *g = group_of(ai, model_names[m]);
      if (!subject_model[s][m].events && !subject_model[s][m].quantity) {
        if (g) /* a retracted event's group: all zero */
          expect_fig(model_names[m], g, &subject_model[s][m]);
        nonzero += g != NULL;
        continue;
      }
      if (!g)
        fail_msg("user:an-%02d: no group %s", s, model_names[m]);
      expect_fig(model_names[m], g, &subject_model[s][m]);
      nonzero++;
    }
    assert_null(group_of(ai, "none"));
    assert_int_equal(json_array_size(list), nonzero);
    /* /usage/daily?group_by=model: the days' groups sum to the same. */
    snprintf(path, sizeof(path),
             "/v1/subjects/user:an-%02d/usage/daily?group_by=model&%s", s,
             range);
    json_t *daily = get_200(ports[s % 2], path);
    fig_t daily_model[3] = {{0}};
    const json_t *days = json_object_get(daily, "days");
    for (size_t d = 0; d < json_array_size(days); d++) {
      const json_t *day_ai = json_object_get(
          json_object_get(json_array_get(days, d), "features"), "ai_tokens");
      assert_null(group_of(day_ai, "none"));
      for (int m = 0; m < 3; m++) {
        const json_t *g = group_of(day_ai, model_names[m]);
        if (g) {
          daily_model[m].quantity += member(g, "quantity");
          daily_model[m].cost += member(g, "cost_micros");
          daily_model[m].events += member(g, "events");
        }
      }
    }
    for (int m = 0; m < 3; m++)
      if (memcmp(&daily_model[m], &subject_model[s][m], sizeof(fig_t)))
        fail_msg("user:an-%02d: model %s summed over days %lld/%lld/%lld, the "
                 "reference says %lld/%lld/%lld",
                 s, model_names[m], daily_model[m].quantity,
                 daily_model[m].cost, daily_model[m].events,
                 subject_model[s][m].quantity, subject_model[s][m].cost,
                 subject_model[s][m].events);
    json_decref(daily);
    usage_sum.quantity += member(ai, "quantity");
    usage_sum.cost += member(ai, "cost_micros");
    usage_sum.events += member(ai, "events");
    json_decref(usage);
  }
  /* ... equal to the breakdown's total (asked of a). */
  snprintf(path, sizeof(path),
           "/v1/analytics/breakdown?feature=ai_tokens&group_by=model&%s",
           range);
  json_t *answer = get_200(a.port, path);
  expect_fig("the sum of every subject's /usage",
             json_object_get(answer, "total"), &usage_sum);
  json_decref(answer);

  /* CSV: the analytics answers and the daily answer's group column. */
  char *body = NULL;
  long status = 0;
  const char *accept[] = {"Accept: text/csv", NULL};
  snprintf(path, sizeof(path),
           "/v1/analytics/breakdown?feature=ai_tokens&group_by=model&%s",
           range);
  assert_int_equal(th_http_request(b.port, "GET", path, TH_AUTH_DEFAULT, NULL,
                                   0, accept, &status, &body),
                   0);
  assert_int_equal(status, 200);
  assert_int_equal(
      strncmp(body, "value,quantity,cost_micros,events\r\nm1,", 38), 0);
  free(body);
  snprintf(path, sizeof(path),
           "/v1/subjects/user:an-00/usage/daily?group_by=provider&%s", range);
  assert_int_equal(th_http_request(a.port, "GET", path, TH_AUTH_DEFAULT, NULL,
                                   0, accept, &status, &body),
                   0);
  assert_int_equal(status, 200);
  assert_int_equal(strncmp(body, "date,feature,group,quantity,", 28), 0);
  assert_non_null(strstr(body, ",api_calls,none,"));
  free(body);
  /* An unknown dimension: 400 naming the field. */
  snprintf(path, sizeof(path), "/v1/analytics/breakdown?group_by=color");
  answer = get_json(a.port, path, &status);
  assert_int_equal(status, 400);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(answer, "error"), "field")),
                      "group_by");
  json_decref(answer);
  /* ?partitions= is the gatherer's to send, never a client's. */
  answer = get_json(a.port, "/v1/analytics/top?partitions=0", &status);
  assert_int_equal(status, 400);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(answer, "error"), "field")),
                      "partitions");
  json_decref(answer);
  answer = get_json(b.port, "/v1/subjects/user:an-01/usage?group_by=region",
                    &status);
  assert_int_equal(status, 400);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(answer, "error"), "field")),
                      "group_by");
  json_decref(answer);

  /* A scan never holds up the port: with one HTTP thread (http.threads 1)
   * the port answers /metrics, showing the scan running, and a pre-check
   * while an analytics request scans SCAN_SUBJECTS more subjects. A scan
   * on the HTTP thread would hold both until it ended (the gauge reads 0
   * then). Tried up to 20 times: each try's scan must last longer than
   * one /metrics answer. */
  produce_scan_subjects(broker.bootstrap, at_ms);
  snprintf(path, sizeof(path),
           "/v1/analytics/breakdown?feature=api_calls&"
           "group_by=plan&%s",
           range);
  deadline = th_now_ms() + 60000;
  for (;;) { /* every scan subject folded on both instances */
    answer = get_200(a.port, path);
    long long events = member(json_object_get(answer, "total"), "events");
    json_decref(answer);
    if (events >= total_api.events + SCAN_SUBJECTS)
      break;
    if (th_now_ms() > deadline)
      fail_msg("scan subjects not folded: %lld events", events);
    th_sleep_ms(200);
  }
  int seen = 0;
  for (int attempt = 0; attempt < 20 && !seen; attempt++) {
    scan_call_t call = {.port = a.port, .path = path};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, scan_call_main, &call), 0);
    while (!atomic_load(&call.done) && !seen) {
      if (scans_running(a.port) != 1)
        continue;
      seen = 1; /* /metrics answered while the scan ran */
      answer = get_json(a.port,
                        "/v1/subjects/user:scan-00001/quota?feature=api_calls",
                        &status);
      json_decref(answer);
      assert_int_equal(status, 200);
    }
    pthread_join(thread, NULL);
    assert_int_equal(call.status, 200);
  }
  if (!seen)
    fail_msg("the port never answered while an analytics scan ran");
  assert_int_equal(scans_running(a.port), 0);

  th_stop(a.pid);
  th_stop(b.pid);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_analytics_across_instances),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
