/*
 * tly_bytes.c - big-endian integers, zero filling and a growing text
 * buffer (tly_bytes.h).
 */
#include "tly_bytes.h"

#include <stdlib.h>
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

int tly_text_append(char **body, size_t *len, size_t *cap, const void *data,
                    size_t n, size_t max) {
  if (n > max || *len > max - n)
    return 1;
  if (*len + n + 1 > *cap) {
    size_t grown_cap = *cap ? *cap : 4096;
    while (grown_cap < *len + n + 1)
      grown_cap *= 2;
    char *grown = realloc(*body, grown_cap);
    if (!grown)
      return -1;
    *body = grown;
    *cap = grown_cap;
  }
  memcpy(*body + *len, data, n);
  *len += n;
  (*body)[*len] = '\0';
  return 0;
}
