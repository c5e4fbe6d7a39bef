/*
 * test_bytes.c - base/tly_bytes: big-endian round trips and the growing
 * text buffer the HTTP clients collect answers in (its bound is what
 * keeps a hostile server's answer from growing without end).
 */
#include "tly_bytes.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_big_endian(void **state) {
  (void)state;
  unsigned char out[8];
  tly_put_be32(out, 0x01020304u);
  assert_memory_equal(out, "\x01\x02\x03\x04", 4);
  assert_int_equal(tly_get_be32(out), 0x01020304u);
  tly_put_be64(out, 0x0102030405060708ull);
  assert_memory_equal(out, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
  assert_true(tly_get_be64(out) == 0x0102030405060708ull);
}

static void test_text_append_grows_and_terminates(void **state) {
  (void)state;
  char *body = NULL;
  size_t len = 0, cap = 0;
  char chunk[1000];
  memset(chunk, 'x', sizeof(chunk));
  for (int i = 0; i < 10; i++)
    assert_int_equal(
        tly_text_append(&body, &len, &cap, chunk, sizeof(chunk), 100000), 0);
  assert_int_equal(len, 10000);
  assert_true(cap > len);
  assert_int_equal(strlen(body), 10000);
  assert_int_equal(tly_text_append(&body, &len, &cap, "", 0, 100000), 0);
  assert_int_equal(len, 10000);
  free(body);
}

static void test_text_append_stops_at_the_bound(void **state) {
  (void)state;
  char *body = NULL;
  size_t len = 0, cap = 0;
  assert_int_equal(tly_text_append(&body, &len, &cap, "abcdef", 6, 10), 0);
  /* 6 + 5 > 10: refused whole, nothing appended. */
  assert_int_equal(tly_text_append(&body, &len, &cap, "ghijk", 5, 10), 1);
  assert_int_equal(len, 6);
  assert_string_equal(body, "abcdef");
  /* Exactly up to the bound is fine. */
  assert_int_equal(tly_text_append(&body, &len, &cap, "ghij", 4, 10), 0);
  assert_string_equal(body, "abcdefghij");
  /* A length that would wrap size_t is refused, not wrapped. */
  assert_int_equal(tly_text_append(&body, &len, &cap, "x", SIZE_MAX, 10), 1);
  assert_int_equal(len, 10);
  free(body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_big_endian),
      cmocka_unit_test(test_text_append_grows_and_terminates),
      cmocka_unit_test(test_text_append_stops_at_the_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
