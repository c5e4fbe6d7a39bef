/*
 * tly_request_text.c - the hot answers of tly_request.h written as JSON
 * text straight into a buffer (tly_json_text.h): the same bytes as
 * json_dumps(JSON_COMPACT) of their jansson twins in tly_request.c, which
 * a unit test (tests/unit/http/test_request_text.c) holds them to. Pure.
 */
#include "tly_json_text.h"
#include "tly_request.h"

static void jt_int_or_null(tly_jt_t *jt, int64_t value) {
  if (value == TLY_UNLIMITED)
    tly_jt_null(jt);
  else
    tly_jt_int(jt, value);
}

/* The same members in the same order as tly_req_quota_answer_json. */
char *tly_req_quota_answer_text(const tly_req_quota_answer_t *answer) {
  const tly_req_quota_t *quota = &answer->quota;
  tly_jt_t jt;
  tly_jt_init(&jt, 512);
  tly_jt_object_begin(&jt);
  tly_jt_key(&jt, "subject");
  tly_jt_string(&jt, answer->subject);
  tly_jt_key(&jt, "feature");
  tly_jt_string(&jt, answer->feature);
  tly_jt_key(&jt, "quantity");
  tly_jt_int(&jt, answer->quantity);
  tly_jt_key(&jt, "allowed");
  tly_jt_bool(&jt, quota->allowed);
  tly_jt_key(&jt, "reason");
  tly_jt_string(&jt, quota->reason);
  tly_jt_key(&jt, "warning");
  if (answer->warning)
    tly_jt_string(&jt, answer->warning);
  else
    tly_jt_null(&jt);
  tly_jt_key(&jt, "plan");
  tly_jt_string(&jt, answer->plan);
  tly_jt_key(&jt, "mode");
  tly_jt_string(&jt, quota->mode);
  tly_jt_key(&jt, "limit");
  jt_int_or_null(&jt, quota->limit);
  tly_jt_key(&jt, "used");
  tly_jt_int(&jt, quota->used);
  tly_jt_key(&jt, "remaining");
  jt_int_or_null(&jt, quota->remaining);
  tly_jt_key(&jt, "credits");
  tly_jt_object_begin(&jt);
  tly_jt_key(&jt, "used");
  tly_jt_int(&jt, quota->credits_used);
  tly_jt_key(&jt, "limit");
  jt_int_or_null(&jt, quota->credits_limit);
  tly_jt_key(&jt, "remaining");
  if (quota->credits_remaining < 0)
    tly_jt_null(&jt);
  else
    tly_jt_int(&jt, quota->credits_remaining);
  tly_jt_object_end(&jt);
  tly_jt_key(&jt, "cycle");
  tly_jt_object_begin(&jt);
  tly_jt_key(&jt, "start_ms");
  tly_jt_int(&jt, answer->cycle_start_ms);
  tly_jt_key(&jt, "end_ms");
  tly_jt_int(&jt, answer->cycle_end_ms);
  tly_jt_object_end(&jt);
  tly_jt_key(&jt, "cycle_ended");
  tly_jt_bool(&jt, answer->cycle_ended);
  tly_jt_key(&jt, "known_subject");
  tly_jt_bool(&jt, answer->known_subject);
  tly_jt_object_end(&jt);
  return tly_jt_finish(&jt);
}
