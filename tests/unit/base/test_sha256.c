/*
 * test_sha256.c - base/tly_sha256: SHA-256 against the FIPS 180-2 test
 * vectors (every API key check depends on it), from several threads at
 * once, and hex both ways.
 */
#include "tly_sha256.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_known_answers(void **state) {
  (void)state;
  char hex[TLY_SHA256_HEX_LEN + 1];
  tly_sha256_hex("", 0, hex);
  assert_string_equal(
      hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  tly_sha256_hex("abc", 3, hex);
  assert_string_equal(
      hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  static const char two_blocks[] =
      "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  tly_sha256_hex(two_blocks, strlen(two_blocks), hex);
  assert_string_equal(
      hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  /* A million 'a's. */
  char *million = malloc(1000000);
  assert_non_null(million);
  memset(million, 'a', 1000000);
  unsigned char digest[TLY_SHA256_LEN], parsed[TLY_SHA256_LEN];
  tly_sha256(million, 1000000, digest);
  assert_int_equal(
      tly_sha256_hex_parse(
          "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
          parsed),
      0);
  assert_memory_equal(digest, parsed, TLY_SHA256_LEN);
  free(million);
}

static void *hash_abc(void *arg) {
  int *wrong = arg;
  unsigned char digest[TLY_SHA256_LEN], expected[TLY_SHA256_LEN];
  tly_sha256_hex_parse(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      expected);
  for (int i = 0; i < 20000; i++) {
    tly_sha256("abc", 3, digest);
    if (memcmp(digest, expected, TLY_SHA256_LEN) != 0)
      (*wrong)++;
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  pthread_t threads[4];
  int wrong[4] = {0};
  for (int t = 0; t < 4; t++)
    assert_int_equal(pthread_create(&threads[t], NULL, hash_abc, &wrong[t]), 0);
  for (int t = 0; t < 4; t++) {
    pthread_join(threads[t], NULL);
    assert_int_equal(wrong[t], 0);
  }
}

static void test_hex(void **state) {
  (void)state;
  unsigned char bytes[TLY_SHA256_LEN];
  char hex[TLY_SHA256_HEX_LEN + 1];
  assert_int_equal(
      tly_sha256_hex_parse(
          "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
          bytes),
      0);
  tly_hex_encode(bytes, TLY_SHA256_LEN, hex);
  assert_string_equal(
      hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assert_int_equal(tly_sha256_hex_parse("ba78", bytes), -1);
  assert_int_equal(
      tly_sha256_hex_parse(
          "zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
          bytes),
      -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_known_answers),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_hex),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
