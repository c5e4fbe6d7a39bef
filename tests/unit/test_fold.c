/*
 * test_fold.c - the pure fold on table-driven cases, and the encodings of
 * its rows and keys.
 */
#include "tly_fold.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

typedef struct {
  const char *name;
  tly_usage_row_t before;
  int64_t quantity;
  int has_ai;
  int64_t input_tokens, output_tokens;
  int expect_rc;
  tly_usage_row_t after;
} fold_case_t;

static const fold_case_t fold_cases[] = {
    {"first api call", {0, 0, 0, 0}, 1, 0, 0, 0, 0, {1, 0, 0, 1}},
    {"adds to existing", {41, 0, 0, 7}, 1, 0, 0, 0, 0, {42, 0, 0, 8}},
    {"zero quantity still counts the event", {5, 0, 0, 1}, 0, 0, 0, 0, 0,
     {5, 0, 0, 2}},
    {"ai tokens", {0, 0, 0, 0}, 150, 1, 100, 50, 0, {150, 100, 50, 1}},
    {"ai tokens accumulate", {150, 100, 50, 1}, 30, 1, 10, 20, 0,
     {180, 110, 70, 2}},
    {"tokens ignored without ai detail", {0, 0, 0, 0}, 3, 0, 999, 999, 0,
     {3, 0, 0, 1}},
    {"quantity at the limit", {INT64_MAX - 1, 0, 0, 0}, 1, 0, 0, 0, 0,
     {INT64_MAX, 0, 0, 1}},
    {"quantity overflow is rejected", {INT64_MAX, 0, 0, 3}, 1, 0, 0, 0, -1,
     {INT64_MAX, 0, 0, 3}},
    {"token overflow is rejected whole", {1, INT64_MAX, 0, 1}, 1, 1, 1, 1, -1,
     {1, INT64_MAX, 0, 1}},
};

static void test_fold_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(fold_cases) / sizeof(fold_cases[0]); i++) {
    const fold_case_t *c = &fold_cases[i];
    tly_usage_row_t row = c->before;
    tly_usage_recorded_t usage = {0};
    char errstr[256] = "";
    usage.feature = "api_calls";
    usage.quantity = c->quantity;
    usage.has_ai = c->has_ai;
    usage.ai.input_tokens = c->input_tokens;
    usage.ai.output_tokens = c->output_tokens;
    int rc = tly_fold_usage(&row, &usage, errstr, sizeof(errstr));
    if (rc != c->expect_rc)
      fail_msg("case '%s': rc %d, expected %d", c->name, rc, c->expect_rc);
    if (memcmp(&row, &c->after, sizeof(row)) != 0)
      fail_msg("case '%s': row %lld/%lld/%lld/%lld", c->name,
               (long long)row.quantity, (long long)row.input_tokens,
               (long long)row.output_tokens, (long long)row.event_count);
    if (rc)
      assert_non_null(strstr(errstr, "overflow"));
  }
}

/* Folding the same events in the same order always gives the same row:
 * there is nothing else (clock, randomness) for the result to depend on. */
static void test_fold_is_deterministic(void **state) {
  (void)state;
  tly_usage_row_t a = {0}, b = {0};
  char errstr[64];
  for (int run = 0; run < 2; run++) {
    tly_usage_row_t *row = run ? &b : &a;
    for (int64_t i = 0; i < 1000; i++) {
      tly_usage_recorded_t usage = {.feature = "ai_tokens",
                                    .quantity = i * 3,
                                    .has_ai = 1,
                                    .ai = {.input_tokens = i, .output_tokens = 2 * i}};
      assert_int_equal(tly_fold_usage(row, &usage, errstr, sizeof(errstr)), 0);
    }
  }
  assert_memory_equal(&a, &b, sizeof(a));
  assert_int_equal(a.quantity, 3 * 999 * 1000 / 2);
  assert_int_equal(a.event_count, 1000);
}

static void test_row_encoding_round_trip(void **state) {
  (void)state;
  tly_usage_row_t row = {INT64_MAX, 0, 123456789012345LL, 42}, back;
  unsigned char bytes[TLY_USAGE_ROW_SIZE];
  tly_usage_row_encode(&row, bytes);
  assert_int_equal(bytes[0], TLY_USAGE_ROW_VERSION);
  assert_int_equal(tly_usage_row_decode(bytes, sizeof(bytes), &back), 0);
  assert_memory_equal(&row, &back, sizeof(row));
  assert_int_equal(tly_usage_row_decode(bytes, sizeof(bytes) - 1, &back), -1);
  bytes[0] = 99;
  assert_int_equal(tly_usage_row_decode(bytes, sizeof(bytes), &back), -1);
}

static void test_usage_key_layout(void **state) {
  (void)state;
  char key[64], prefix[64];
  size_t len = tly_usage_key(258, TLY_SUBJECT_USER, "alice", "api_calls", key,
                             sizeof(key));
  /* [0,0,1,2] "user:alice" 0 "api_calls" */
  assert_int_equal(len, 4 + 10 + 1 + 9);
  assert_memory_equal(key, "\x00\x00\x01\x02" "user:alice" "\x00" "api_calls", len);
  size_t prefix_len = tly_usage_key(258, TLY_SUBJECT_USER, "alice", NULL,
                                    prefix, sizeof(prefix));
  assert_int_equal(prefix_len, 4 + 10 + 1);
  assert_memory_equal(key, prefix, prefix_len);
  /* "alice" must not be a prefix of "alicex"'s rows. */
  size_t other = tly_usage_key(258, TLY_SUBJECT_USER, "alicex", "api_calls",
                               key, sizeof(key));
  assert_true(other > 0);
  assert_true(memcmp(key, prefix, prefix_len) != 0);
  /* Too small a buffer is refused, not overrun. */
  assert_int_equal(tly_usage_key(1, TLY_SUBJECT_USER, "alice", "api_calls",
                                 key, 12),
                   0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fold_table),
      cmocka_unit_test(test_fold_is_deterministic),
      cmocka_unit_test(test_row_encoding_round_trip),
      cmocka_unit_test(test_usage_key_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
