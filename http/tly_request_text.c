/*
 * tly_request_text.c - the hot answers of tly_request.h written as JSON
 * text straight into a buffer (tly_json_text.h): the same bytes as
 * json_dumps(JSON_COMPACT) of their jansson twins in tly_request.c, which
 * a unit test (tests/unit/http/test_request_text.c) holds them to. Pure.
 */
#include "tly_json_text.h"
#include "tly_meters.h"
#include "tly_request.h"

#include <string.h>

static void jt_int_or_null(tly_jt_t *jt, int64_t value) {
  if (value == TLY_UNLIMITED)
    tly_jt_null(jt);
  else
    tly_jt_int(jt, value);
}

/* The same members in the same order as tly_req_quota_answer_json, the
 * keys and punctuation as literals. */
char *tly_req_quota_answer_text(const tly_req_quota_answer_t *answer) {
  const tly_req_quota_t *quota = &answer->quota;
  tly_jt_t jt;
  tly_jt_init(&jt, 512);
  TLY_JT_LITERAL(&jt, "{\"subject\":");
  tly_jt_string(&jt, answer->subject);
  TLY_JT_LITERAL(&jt, ",\"feature\":");
  tly_jt_string(&jt, answer->feature);
  TLY_JT_LITERAL(&jt, ",\"quantity\":");
  tly_jt_int(&jt, answer->quantity);
  TLY_JT_LITERAL(&jt, ",\"allowed\":");
  tly_jt_bool(&jt, quota->allowed);
  TLY_JT_LITERAL(&jt, ",\"reason\":");
  tly_jt_string(&jt, quota->reason);
  TLY_JT_LITERAL(&jt, ",\"warning\":");
  if (answer->warning)
    tly_jt_string(&jt, answer->warning);
  else
    tly_jt_null(&jt);
  TLY_JT_LITERAL(&jt, ",\"plan\":");
  tly_jt_string(&jt, answer->plan);
  TLY_JT_LITERAL(&jt, ",\"mode\":");
  tly_jt_string(&jt, quota->mode);
  TLY_JT_LITERAL(&jt, ",\"limit\":");
  jt_int_or_null(&jt, quota->limit);
  TLY_JT_LITERAL(&jt, ",\"used\":");
  tly_jt_int(&jt, quota->used);
  TLY_JT_LITERAL(&jt, ",\"held\":");
  tly_jt_int(&jt, answer->held);
  TLY_JT_LITERAL(&jt, ",\"remaining\":");
  jt_int_or_null(&jt, quota->remaining);
  TLY_JT_LITERAL(&jt, ",\"credits\":{\"used\":");
  tly_jt_int(&jt, quota->credits_used);
  TLY_JT_LITERAL(&jt, ",\"held\":");
  tly_jt_int(&jt, answer->credits_held);
  TLY_JT_LITERAL(&jt, ",\"limit\":");
  jt_int_or_null(&jt, quota->credits_limit);
  TLY_JT_LITERAL(&jt, ",\"remaining\":");
  if (quota->credits_remaining < 0)
    tly_jt_null(&jt);
  else
    tly_jt_int(&jt, quota->credits_remaining);
  TLY_JT_LITERAL(&jt, "},\"cycle\":{\"start_ms\":");
  tly_jt_int(&jt, answer->cycle_start_ms);
  TLY_JT_LITERAL(&jt, ",\"end_ms\":");
  tly_jt_int(&jt, answer->cycle_end_ms);
  TLY_JT_LITERAL(&jt, "},\"cycle_ended\":");
  tly_jt_bool(&jt, answer->cycle_ended);
  TLY_JT_LITERAL(&jt, ",\"known_subject\":");
  tly_jt_bool(&jt, answer->known_subject);
  TLY_JT_LITERAL(&jt, "}");
  return tly_jt_finish(&jt);
}

/* Limit, mode, remaining, percent and exceeded of one feature, as
 * tly_request.c's add_limit_fields adds them. */
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
