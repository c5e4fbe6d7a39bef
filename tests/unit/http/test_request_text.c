/*
 * test_request_text.c - the JSON text the hot path writes without jansson
 * (tly_json_text.h, tly_req_quota_answer_text, tly_jt_dump) against
 * jansson's own compact dump of the same values: byte for byte, for strings
 * needing every kind of escape, integers at their bounds, nested objects,
 * random trees of objects, arrays and scalars, and the quota and usage
 * answers over every plan, feature, limit state and kind of subject of the
 * default config.
 */
#include "tly_config.h"
#include "tly_json_text.h"
#include "tly_request.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Strings jansson accepts: plain, every control character, quote,
 * backslash, slash, DEL, 2-, 3- and 4-byte UTF-8. */
static const char *const strings[] = {
    "",
    "plain",
    "user:alice",
    "a\"b",
    "back\\slash",
    "a/b",
    "\x01\x02\x03\x04\x05\x06\x07\b\t\n\x0b\f\r\x0e\x0f",
    "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f",
    "del\x7f",
    "caf\xc3\xa9",
    "\xe2\x82\xac 100",
    "\xf0\x9f\x98\x80 grin",
    "\xe2\x80\xa8 line separator",
    "mixed \"\xc3\xa9\"\n\\/\x1f end",
};

static void expect_same(json_t *tree, char *text) {
  char *reference = json_dumps(tree, JSON_COMPACT);
  assert_non_null(reference);
  assert_non_null(text);
  assert_string_equal(text, reference);
  free(reference);
  free(text);
  json_decref(tree);
}

static void test_strings_as_jansson(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
    tly_jt_t jt;
    tly_jt_init(&jt, 4); /* small: the buffer grows */
    tly_jt_object_begin(&jt);
    tly_jt_key(&jt, strings[i]);
    tly_jt_string(&jt, strings[i]);
    tly_jt_key(&jt, "after");
    tly_jt_string(&jt, strings[i]);
    tly_jt_object_end(&jt);
    json_t *tree = json_object();
    json_object_set_new(tree, strings[i], json_string(strings[i]));
    json_object_set_new(tree, "after", json_string(strings[i]));
    expect_same(tree, tly_jt_finish(&jt));
  }
}

static void test_values_and_nesting_as_jansson(void **state) {
  (void)state;
  static const int64_t numbers[] = {
      0, 1, -1, 9, 10, -10, 123456789, INT64_MAX, INT64_MIN, -INT64_MAX};
  tly_jt_t jt;
  tly_jt_init(&jt, 0);
  json_t *tree = json_object();
  tly_jt_object_begin(&jt);
  for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
    char key[16];
    snprintf(key, sizeof(key), "n%zu", i);
    tly_jt_key(&jt, key);
    tly_jt_int(&jt, numbers[i]);
    json_object_set_new(tree, key, json_integer(numbers[i]));
  }
  tly_jt_key(&jt, "yes");
  tly_jt_bool(&jt, 1);
  tly_jt_key(&jt, "no");
  tly_jt_bool(&jt, 0);
  tly_jt_key(&jt, "none");
  tly_jt_null(&jt);
  tly_jt_key(&jt, "empty");
  tly_jt_object_begin(&jt);
  tly_jt_object_end(&jt);
  tly_jt_key(&jt, "deep");
  tly_jt_object_begin(&jt);
  tly_jt_key(&jt, "a");
  tly_jt_object_begin(&jt);
  tly_jt_key(&jt, "b");
  tly_jt_int(&jt, 2);
  tly_jt_object_end(&jt);
  tly_jt_key(&jt, "c");
  tly_jt_string(&jt, "d");
  tly_jt_object_end(&jt);
  tly_jt_object_end(&jt);
  json_object_set_new(tree, "yes", json_true());
  json_object_set_new(tree, "no", json_false());
  json_object_set_new(tree, "none", json_null());
  json_object_set_new(tree, "empty", json_object());
  json_object_set_new(tree, "deep",
                      json_pack("{s:{s:i},s:s}", "a", "b", 2, "c", "d"));
  expect_same(tree, tly_jt_finish(&jt));
}

/* What jansson refuses (not UTF-8) and what is not one object fails the
 * text, so the caller falls back to jansson. */
static void test_failures(void **state) {
  (void)state;
  static const char *const bad[] = {"\xff", "a\xc3", "\xc0\xaf", "\xed\xa0\x80",
                                    "\xf4\x90\x80\x80"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_null(json_string(bad[i]));
    tly_jt_t jt;
    tly_jt_init(&jt, 0);
    tly_jt_object_begin(&jt);
    tly_jt_key(&jt, "s");
    tly_jt_string(&jt, bad[i]);
    tly_jt_object_end(&jt);
    assert_null(tly_jt_finish(&jt));
  }
  tly_jt_t open;
  tly_jt_init(&open, 0);
  tly_jt_object_begin(&open);
  assert_null(tly_jt_finish(&open)); /* unbalanced */
  tly_jt_t deep;
  tly_jt_init(&deep, 0);
  tly_jt_object_begin(&deep);
  for (int i = 0; i < TLY_JT_DEPTH_MAX; i++) {
    tly_jt_key(&deep, "x");
    tly_jt_object_begin(&deep);
  }
  for (int i = 0; i <= TLY_JT_DEPTH_MAX; i++)
    tly_jt_object_end(&deep);
  assert_null(tly_jt_finish(&deep)); /* too deep */
}

/* A random tree of depth at most depth: objects, arrays, strings (from
 * strings[], or random bytes made valid), integers, booleans, nulls. */
static json_t *random_tree(unsigned *seed, int depth) {
  int kind = depth > 0 ? rand_r(seed) % 8 : 2 + rand_r(seed) % 6;
  switch (kind) {
  case 0: {
    json_t *object = json_object();
    int n = rand_r(seed) % 5;
    for (int i = 0; i < n; i++) {
      const char *key = strings[(size_t)rand_r(seed) %
                                (sizeof(strings) / sizeof(strings[0]))];
      json_object_set_new(object, key, random_tree(seed, depth - 1));
    }
    return object;
  }
  case 1: {
    json_t *array = json_array();
    int n = rand_r(seed) % 5;
    for (int i = 0; i < n; i++)
      json_array_append_new(array, random_tree(seed, depth - 1));
    return array;
  }
  case 2:
    return json_string(
        strings[(size_t)rand_r(seed) % (sizeof(strings) / sizeof(strings[0]))]);
  case 3: {
    /* Any bytes below 0x80, NUL included (json_stringn). */
    char bytes[8];
    size_t n = (size_t)rand_r(seed) % sizeof(bytes);
    for (size_t i = 0; i < n; i++)
      bytes[i] = (char)(rand_r(seed) % 0x80);
    return json_stringn(bytes, n);
  }
  case 4: {
    /* Every bit pattern, the bounds included. */
    uint64_t bits = ((uint64_t)rand_r(seed) << 33) ^
                    ((uint64_t)rand_r(seed) << 2) ^ (uint64_t)rand_r(seed);
    return json_integer((json_int_t)bits);
  }
  case 5:
    return json_true();
  case 6:
    return json_false();
  default:
    return json_null();
  }
}

/* Any jansson tree of those types dumps to jansson's own text. */
static void test_dump_as_jansson(void **state) {
  (void)state;
  unsigned seed = 15;
  for (int i = 0; i < 2000; i++) {
    json_t *tree = rand_r(&seed) % 2 ? json_object() : json_array();
    for (int n = rand_r(&seed) % 6; n > 0; n--) {
      if (json_is_object(tree))
        json_object_set_new(tree, strings[(size_t)n], random_tree(&seed, 4));
      else
        json_array_append_new(tree, random_tree(&seed, 4));
    }
    expect_same(tree, tly_jt_dump(tree));
  }
  /* What it leaves to jansson: reals, scalars at the top (json_dumps
   * refuses those without JSON_ENCODE_ANY), too deep. */
  json_t *real = json_pack("{s:f}", "x", 1.5);
  assert_null(tly_jt_dump(real));
  json_decref(real);
  json_t *scalar = json_integer(1);
  assert_null(tly_jt_dump(scalar));
  assert_null(json_dumps(scalar, JSON_COMPACT));
  json_decref(scalar);
  json_t *deep = json_array();
  json_t *inner = deep;
  for (int i = 0; i <= TLY_JT_DEPTH_MAX + 1; i++) {
    json_t *next = json_array();
    json_array_append_new(inner, next);
    inner = next;
  }
  assert_null(tly_jt_dump(deep));
  json_decref(deep);
}

/* The quota answer: text and jansson agree for every plan of the default
 * config, each feature it limits or prices plus an unlisted one, used
 * amounts below, at and past the limit, spent credits, quantities 0, 1 and
 * huge, known and unknown subjects, a running and an ended cycle. */
/* The answers' cases: subjects needing escapes (and a control
 * character), usage and cost at and past the default plans' limits. */
static const char *const subjects[] = {"user:alice", "org:a\"b\\c/d",
                                       "user:caf\xc3\xa9\x01"};
static const int64_t used[] = {0, 999, 1000, 100001, INT64_MAX / 2};
static const int64_t cost[] = {0, 2500000, INT64_MAX / 4};

/* The cycle the answers' accounts are in. */
static const int64_t start = 1793491200000LL, end = 1796083200000LL;

/* An account on plan in that cycle, with cost_micros spent. */
static void account_in(tly_account_t *account, const char *plan,
                       int64_t cost_micros) {
  account->exists = 1;
  snprintf(account->plan, sizeof(account->plan), "%s", plan);
  account->cycle.start_ms = start;
  account->cycle.end_ms = end;
  account->cycle.cost_micros = cost_micros;
}

static tly_req_subject_t subject_of(const char *key) {
  tly_req_subject_t subject = {.kind = TLY_SUBJECT_USER};
  snprintf(subject.key, sizeof(subject.key), "%s", key);
  return subject;
}

static void test_quota_answer_as_jansson(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  assert_non_null(config);
  static const int64_t quantity[] = {0, 1, 2, INT64_MAX};
  size_t compared = 0, soft = 0, blocked = 0;
  for (size_t p = 0; p < config->plan_count; p++) {
    const tly_plan_t *plan = &config->plans[p];
    size_t features = plan->limit_count + plan->price_count + 1;
    for (size_t f = 0; f < features; f++) {
      const char *feature = f < plan->limit_count ? plan->limits[f].feature
                            : f < plan->limit_count + plan->price_count
                                ? plan->prices[f - plan->limit_count].feature
                                : "unlisted_feature";
      for (size_t s = 0; s < sizeof(subjects) / sizeof(subjects[0]); s++)
        for (size_t u = 0; u < sizeof(used) / sizeof(used[0]); u++)
          for (size_t c = 0; c < sizeof(cost) / sizeof(cost[0]); c++)
            for (size_t q = 0; q < sizeof(quantity) / sizeof(quantity[0]); q++)
              for (int known = 0; known < 2; known++)
                for (int ended = 0; ended < 2; ended++) {
                  tly_req_subject_t subject = subject_of(subjects[s]);
                  tly_req_quota_query_t query = {.quantity = quantity[q]};
                  snprintf(query.feature, sizeof(query.feature), "%s", feature);
                  tly_state_row_t row = {.cycle_start_ms = start};
                  snprintf(row.feature, sizeof(row.feature), "%s", feature);
                  row.row.quantity = used[u];
                  tly_subject_state_t st = {.row_count = 1, .rows = &row};
                  account_in(&st.account, plan->name, cost[c]);
                  tly_req_quota_answer_t answer;
                  tly_req_error_t err;
                  assert_int_equal(
                      tly_req_quota_answer(
                          config, &subject, known ? &st : NULL, &query,
                          ended ? end + 1000 : start + 1000, &answer, &err),
                      0);
                  soft += answer.warning != NULL;
                  blocked += !answer.quota.allowed;
                  expect_same(tly_req_quota_answer_json(&answer),
                              tly_req_quota_answer_text(&answer));
                  compared++;
                }
    }
  }
  /* The cases reached every kind of answer. */
  assert_true(compared > 1000);
  assert_true(soft > 0);
  assert_true(blocked > 0);
  /* A subject that is not UTF-8: no text (jansson refuses it too). */
  tly_req_subject_t subject = subject_of("user:\xff");
  tly_req_quota_query_t query = {.quantity = 1};
  snprintf(query.feature, sizeof(query.feature), "api_calls");
  tly_req_quota_answer_t answer;
  tly_req_error_t err;
  assert_int_equal(tly_req_quota_answer(config, &subject, NULL, &query, start,
                                        &answer, &err),
                   0);
  assert_null(tly_req_quota_answer_text(&answer));
  tly_config_free(config);
}

/* The usage answer over every plan of the default config, rows of every
 * listed feature and an unlisted one (two cycles, a feature twice in one
 * cycle), costs at and past the credits, ended and current cycles, and
 * the flags: the text against the tree's dump. */
static void test_usage_answer_as_jansson(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  assert_non_null(config);
  size_t compared = 0, with_features = 0;
  tly_state_row_t rows[64];
  for (size_t p = 0; p < config->plan_count; p++) {
    const tly_plan_t *plan = &config->plans[p];
    for (size_t u = 0; u < sizeof(used) / sizeof(used[0]); u++) {
      size_t n = 0;
      for (size_t f = 0; f < plan->limit_count + plan->price_count + 1 &&
                         n + 2 < sizeof(rows) / sizeof(rows[0]);
           f++) {
        const char *feature = f < plan->limit_count ? plan->limits[f].feature
                              : f < plan->limit_count + plan->price_count
                                  ? plan->prices[f - plan->limit_count].feature
                                  : "unlisted_\xc3\xa9\"feature";
        rows[n] = (tly_state_row_t){.cycle_start_ms = start};
        snprintf(rows[n].feature, sizeof(rows[n].feature), "%s", feature);
        rows[n].row.quantity = used[u] + (int64_t)f;
        rows[n].row.input_tokens = (int64_t)f * 7;
        rows[n].row.output_tokens = (int64_t)f * 3;
        rows[n].row.event_count = (int64_t)f + 1;
        rows[n].row.cost_micros = (int64_t)f * 1000;
        n++;
        rows[n] = rows[n - 1]; /* the same feature, the previous cycle */
        rows[n].cycle_start_ms = start - 86400000LL;
        n++;
      }
      if (n) { /* the first feature again in the same cycle */
        rows[n] = rows[0];
        rows[n].row.quantity += 5;
        n++;
      }
      for (size_t s = 0; s < sizeof(subjects) / sizeof(subjects[0]); s++)
        for (size_t c = 0; c < sizeof(cost) / sizeof(cost[0]); c++)
          for (int flags = 0; flags < 8; flags++)
            for (int ended = 0; ended < 2; ended++) {
              tly_req_subject_t subject = subject_of(subjects[s]);
              tly_subject_state_t st = {
                  .partition = (int32_t)s * 7, .row_count = n, .rows = rows};
              account_in(&st.account, plan->name, cost[c]);
              st.account.payment_failed = flags & 1;
              st.account.canceled = (flags & 2) != 0;
              if (flags & 4)
                snprintf(st.account.stripe_customer_id,
                         sizeof(st.account.stripe_customer_id), "cus_1");
              int64_t now = ended ? end + 1000 : start + 1000;
              json_t *tree = tly_req_usage_json(config, &subject, &st, now);
              with_features +=
                  json_object_size(json_object_get(tree, "features")) > 0;
              expect_same(tree, tly_req_usage_text(config, &subject, &st, now));
              compared++;
            }
    }
  }
  assert_true(compared > 500);
  assert_true(with_features > 0);
  /* A plan the config does not know: no limits, no credits. */
  tly_req_subject_t subject = subject_of("user:x");
  tly_state_row_t row = {.cycle_start_ms = start};
  snprintf(row.feature, sizeof(row.feature), "api_calls");
  row.row.quantity = 3;
  tly_subject_state_t st = {.row_count = 1, .rows = &row};
  account_in(&st.account, "gone", 0);
  expect_same(tly_req_usage_json(config, &subject, &st, start + 1),
              tly_req_usage_text(config, &subject, &st, start + 1));
  /* A subject that is not UTF-8: no text; the caller builds the tree. */
  subject = subject_of("user:\xff");
  assert_null(tly_req_usage_text(config, &subject, &st, start + 1));
  tly_config_free(config);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strings_as_jansson),
      cmocka_unit_test(test_values_and_nesting_as_jansson),
      cmocka_unit_test(test_failures),
      cmocka_unit_test(test_dump_as_jansson),
      cmocka_unit_test(test_quota_answer_as_jansson),
      cmocka_unit_test(test_usage_answer_as_jansson),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
