/*
 * tly_request_usage.c - the usage answer (GET /v1/subjects/{s}/usage) twice:
 * as a jansson tree, and as the same bytes written straight into a buffer
 * (tly_json_text.h), which the port answers with (building and dumping the
 * tree cost more than the rest of the request). The two stay side by side
 * and share their head (tly_req_usage_head); a unit test
 * (tests/unit/http/test_request_text.c) holds the text to the tree's
 * json_dumps(JSON_COMPACT). Pure.
 */
#include "tly_json_text.h"
#include "tly_meters.h"
#include "tly_request.h"

#include <string.h>

/* ---- the tree --------------------------------------------------------- */

int64_t tly_req_percent_of(int64_t used, int64_t limit) {
  if (limit <= 0)
    return used > 0 || limit == 0 ? 100 : 0;
  return (int64_t)((__int128)used * 100 / limit);
}

/* Limit, mode, remaining, percent and exceeded of one feature. */
void tly_req_limit_fields(json_t *entry, const tly_plan_t *plan,
                          const char *feature, int64_t quantity) {
  const tly_feature_limit_t *limit =
      plan ? tly_plan_limit(plan, feature) : NULL;
  if (!limit || limit->limit == TLY_UNLIMITED) {
    json_object_set_new(entry, "limit", json_null());
    json_object_set_new(entry, "mode", json_string("unlimited"));
    json_object_set_new(entry, "remaining", json_null());
    json_object_set_new(entry, "percent", json_null());
    json_object_set_new(entry, "exceeded", json_false());
    return;
  }
  int64_t remaining = limit->limit - quantity;
  json_object_set_new(entry, "limit", json_integer(limit->limit));
  json_object_set_new(
      entry, "mode",
      json_string(limit->mode == TLY_LIMIT_HARD ? "hard" : "soft"));
  json_object_set_new(entry, "remaining",
                      json_integer(remaining > 0 ? remaining : 0));
  json_object_set_new(entry, "percent",
                      json_integer(tly_req_percent_of(quantity, limit->limit)));
  json_object_set_new(entry, "exceeded", json_boolean(remaining < 0));
}

json_t *tly_req_usage_entry(const tly_billing_row_t *row) {
  return json_pack(
      "{s:I,s:I,s:I,s:I,s:I}", "quantity", (json_int_t)row->quantity,
      "input_tokens", (json_int_t)row->input_tokens, "output_tokens",
      (json_int_t)row->output_tokens, "events", (json_int_t)row->event_count,
      "cost_micros", (json_int_t)row->cost_micros);
}

void tly_req_usage_head(const tly_config_t *config,
                        const tly_subject_state_t *state, int64_t now_ms,
                        tly_req_usage_head_t *head) {
  const tly_account_t *account = &state->account;
  head->plan = tly_config_plan(config, account->plan);
  head->ended = tly_req_effective_cycle(config, account, now_ms,
                                        &head->start_ms, &head->end_ms);
  head->cost_micros = head->ended ? 0 : account->cycle.cost_micros;
  head->credits_used = head->cost_micros / config->micros_per_credit;
}

json_t *tly_req_usage_json(const tly_config_t *config,
                           const tly_req_subject_t *subject,
                           const tly_subject_state_t *state, int64_t now_ms) {
  const tly_account_t *account = &state->account;
  tly_req_usage_head_t head;
  tly_req_usage_head(config, state, now_ms, &head);
  const tly_plan_t *plan = head.plan;
  int64_t start = head.start_ms, end = head.end_ms;
  int ended = head.ended;
  int64_t cost = head.cost_micros;
  json_t *features = json_object();

  if (!ended)
    for (size_t i = 0; i < state->row_count; i++)
      if (state->rows[i].cycle_start_ms == start)
        json_object_set_new(features, state->rows[i].feature,
                            tly_req_usage_entry(&state->rows[i].row));
  const char *feature;
  json_t *entry;
  json_object_foreach(features, feature, entry) {
    json_object_set_new(entry, "aggregation",
                        json_string(tly_aggregation_name(
                            tly_meter_aggregation(config, feature))));
    tly_req_limit_fields(
        entry, plan, feature,
        (int64_t)json_integer_value(json_object_get(entry, "quantity")));
  }

  int64_t credits_used = head.credits_used;
  json_t *credits = json_pack("{s:I}", "used", (json_int_t)credits_used);
  if (plan && plan->credits != TLY_UNLIMITED) {
    int64_t remaining = plan->credits - credits_used;
    json_object_set_new(credits, "limit", json_integer(plan->credits));
    json_object_set_new(credits, "remaining",
                        json_integer(remaining > 0 ? remaining : 0));
    json_object_set_new(
        credits, "percent",
        json_integer(tly_req_percent_of(credits_used, plan->credits)));
    json_object_set_new(credits, "exceeded", json_boolean(remaining < 0));
  } else {
    json_object_set_new(credits, "limit", json_null());
    json_object_set_new(credits, "remaining", json_null());
    json_object_set_new(credits, "percent", json_null());
    json_object_set_new(credits, "exceeded", json_false());
  }
  /* billing_linked: a Stripe customer is linked (the billing portal
   * answers for it). */
  return json_pack(
      "{s:s,s:i,s:s,s:{s:I,s:I},s:b,s:I,s:I,s:o,s:b,s:b,s:b,s:o}", "subject",
      subject->key, "partition", (int)state->partition, "plan", account->plan,
      "cycle", "start_ms", (json_int_t)start, "end_ms", (json_int_t)end,
      "cycle_ended", ended, "cost_micros", (json_int_t)cost,
      "base_price_micros", (json_int_t)(plan ? plan->base_price_micros : 0),
      "credits", credits, "payment_failed", account->payment_failed, "canceled",
      account->canceled, "billing_linked",
      account->stripe_customer_id[0] != '\0', "features", features);
}

/* ---- the text --------------------------------------------------------- */

/* Limit, mode, remaining, percent and exceeded of one feature, as
 * tly_req_limit_fields adds them. */
static void jt_limit_fields(tly_jt_t *jt, const tly_plan_t *plan,
                            const char *feature, int64_t quantity) {
  const tly_feature_limit_t *limit =
      plan ? tly_plan_limit(plan, feature) : NULL;
  if (!limit || limit->limit == TLY_UNLIMITED) {
    TLY_JT_LITERAL(jt, ",\"limit\":null,\"mode\":\"unlimited\",\"remaining\":"
                       "null,\"percent\":null,\"exceeded\":false");
    return;
  }
  int64_t remaining = limit->limit - quantity;
  TLY_JT_LITERAL(jt, ",\"limit\":");
  tly_jt_int(jt, limit->limit);
  TLY_JT_LITERAL(jt, ",\"mode\":");
  tly_jt_string(jt, limit->mode == TLY_LIMIT_HARD ? "hard" : "soft");
  TLY_JT_LITERAL(jt, ",\"remaining\":");
  tly_jt_int(jt, remaining > 0 ? remaining : 0);
  TLY_JT_LITERAL(jt, ",\"percent\":");
  tly_jt_int(jt, tly_req_percent_of(quantity, limit->limit));
  TLY_JT_LITERAL(jt, ",\"exceeded\":");
  tly_jt_bool(jt, remaining < 0);
}

/* The same members in the same order as tly_req_usage_json. A feature
 * appears once, where the tree has it (a second row of the same feature
 * and cycle would replace the first one's value in place). */
char *tly_req_usage_text(const tly_config_t *config,
                         const tly_req_subject_t *subject,
                         const tly_subject_state_t *state, int64_t now_ms) {
  const tly_account_t *account = &state->account;
  tly_req_usage_head_t head;
  tly_req_usage_head(config, state, now_ms, &head);
  tly_jt_t jt;
  tly_jt_init(&jt, 1024);
  TLY_JT_LITERAL(&jt, "{\"subject\":");
  tly_jt_string(&jt, subject->key);
  TLY_JT_LITERAL(&jt, ",\"partition\":");
  tly_jt_int(&jt, (int)state->partition);
  TLY_JT_LITERAL(&jt, ",\"plan\":");
  tly_jt_string(&jt, account->plan);
  TLY_JT_LITERAL(&jt, ",\"cycle\":{\"start_ms\":");
  tly_jt_int(&jt, head.start_ms);
  TLY_JT_LITERAL(&jt, ",\"end_ms\":");
  tly_jt_int(&jt, head.end_ms);
  TLY_JT_LITERAL(&jt, "},\"cycle_ended\":");
  tly_jt_bool(&jt, head.ended);
  TLY_JT_LITERAL(&jt, ",\"cost_micros\":");
  tly_jt_int(&jt, head.cost_micros);
  TLY_JT_LITERAL(&jt, ",\"base_price_micros\":");
  tly_jt_int(&jt, head.plan ? head.plan->base_price_micros : 0);
  TLY_JT_LITERAL(&jt, ",\"credits\":{\"used\":");
  tly_jt_int(&jt, head.credits_used);
  if (head.plan && head.plan->credits != TLY_UNLIMITED) {
    int64_t remaining = head.plan->credits - head.credits_used;
    TLY_JT_LITERAL(&jt, ",\"limit\":");
    tly_jt_int(&jt, head.plan->credits);
    TLY_JT_LITERAL(&jt, ",\"remaining\":");
    tly_jt_int(&jt, remaining > 0 ? remaining : 0);
    TLY_JT_LITERAL(&jt, ",\"percent\":");
    tly_jt_int(&jt, tly_req_percent_of(head.credits_used, head.plan->credits));
    TLY_JT_LITERAL(&jt, ",\"exceeded\":");
    tly_jt_bool(&jt, remaining < 0);
  } else {
    TLY_JT_LITERAL(&jt, ",\"limit\":null,\"remaining\":null,\"percent\":"
                        "null,\"exceeded\":false");
  }
  TLY_JT_LITERAL(&jt, "},\"payment_failed\":");
  tly_jt_bool(&jt, account->payment_failed);
  TLY_JT_LITERAL(&jt, ",\"canceled\":");
  tly_jt_bool(&jt, account->canceled);
  TLY_JT_LITERAL(&jt, ",\"billing_linked\":");
  tly_jt_bool(&jt, account->stripe_customer_id[0] != '\0');
  TLY_JT_LITERAL(&jt, ",\"features\":{");
  int first = 1;
  for (size_t i = 0; !head.ended && i < state->row_count; i++) {
    const tly_state_row_t *row = &state->rows[i];
    if (row->cycle_start_ms != head.start_ms)
      continue;
    /* The tree keeps a feature where it first came, with the last row's
     * value (json_object_set_new replaces in place). */
    int seen = 0;
    for (size_t k = 0; k < i && !seen; k++)
      seen = state->rows[k].cycle_start_ms == head.start_ms &&
             strcmp(state->rows[k].feature, row->feature) == 0;
    if (seen)
      continue;
    for (size_t k = i + 1; k < state->row_count; k++)
      if (state->rows[k].cycle_start_ms == head.start_ms &&
          strcmp(state->rows[k].feature, row->feature) == 0)
        row = &state->rows[k];
    if (!first)
      TLY_JT_LITERAL(&jt, ",");
    first = 0;
    tly_jt_string(&jt, row->feature);
    TLY_JT_LITERAL(&jt, ":{\"quantity\":");
    tly_jt_int(&jt, row->row.quantity);
    TLY_JT_LITERAL(&jt, ",\"input_tokens\":");
    tly_jt_int(&jt, row->row.input_tokens);
    TLY_JT_LITERAL(&jt, ",\"output_tokens\":");
    tly_jt_int(&jt, row->row.output_tokens);
    TLY_JT_LITERAL(&jt, ",\"events\":");
    tly_jt_int(&jt, row->row.event_count);
    TLY_JT_LITERAL(&jt, ",\"cost_micros\":");
    tly_jt_int(&jt, row->row.cost_micros);
    TLY_JT_LITERAL(&jt, ",\"aggregation\":");
    tly_jt_string(
        &jt, tly_aggregation_name(tly_meter_aggregation(config, row->feature)));
    jt_limit_fields(&jt, head.plan, row->feature, row->row.quantity);
    TLY_JT_LITERAL(&jt, "}");
  }
  TLY_JT_LITERAL(&jt, "}}");
  return tly_jt_finish(&jt);
}
