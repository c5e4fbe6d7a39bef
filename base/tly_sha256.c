/*
 * tly_sha256.c - SHA-256 digests to and from hex (tly_sha256.h).
 */
#include "tly_sha256.h"

#include <openssl/sha.h>
#include <string.h>

static int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int tly_sha256_hex_parse(const char *hex, unsigned char out[TLY_SHA256_LEN]) {
  if (!hex || strlen(hex) != TLY_SHA256_HEX_LEN)
    return -1;
  for (size_t i = 0; i < TLY_SHA256_LEN; i++) {
    int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
    if (high < 0 || low < 0)
      return -1;
    out[i] = (unsigned char)(high << 4 | low);
  }
  return 0;
}

void tly_sha256_hex(const void *data, size_t len,
                    char out[TLY_SHA256_HEX_LEN + 1]) {
  static const char digits[] = "0123456789abcdef";
  unsigned char digest[TLY_SHA256_LEN];
  SHA256(data, len, digest);
  for (size_t i = 0; i < TLY_SHA256_LEN; i++) {
    out[2 * i] = digits[digest[i] >> 4];
    out[2 * i + 1] = digits[digest[i] & 15];
  }
  out[TLY_SHA256_HEX_LEN] = '\0';
}
