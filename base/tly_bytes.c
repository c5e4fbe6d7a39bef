/*
 * tly_bytes.c - big-endian integers and zero filling (tly_bytes.h).
 */
#include "tly_bytes.h"

#include <string.h>

void tly_put_be32(unsigned char *out, uint32_t value) {
  out[0] = (unsigned char)(value >> 24);
  out[1] = (unsigned char)(value >> 16);
  out[2] = (unsigned char)(value >> 8);
  out[3] = (unsigned char)value;
}

/* Through a volatile pointer, so the call stays a memset. */
static void *(*volatile zero_fill)(void *, int, size_t) = memset;

void tly_zero_fill(void *out, size_t len) { zero_fill(out, 0, len); }

void tly_put_be64(unsigned char *out, uint64_t value) {
  tly_put_be32(out, (uint32_t)(value >> 32));
  tly_put_be32(out + 4, (uint32_t)value);
}

uint32_t tly_get_be32(const unsigned char *in) {
  return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 |
         (uint32_t)in[3];
}

uint64_t tly_get_be64(const unsigned char *in) {
  return (uint64_t)tly_get_be32(in) << 32 | tly_get_be32(in + 4);
}
