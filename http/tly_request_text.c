/*
 * tly_request_text.c - the quota answer written as JSON text straight into
 * a buffer (tly_json_text.h): the same bytes as json_dumps(JSON_COMPACT) of
 * its jansson twin in tly_request.c, which a unit test
 * (tests/unit/http/test_request_text.c) holds it to. The usage answer's
 * text sits beside its tree in tly_request_usage.c. Pure.
 */
#include "tly_json_text.h"
#include "tly_request.h"

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
