/*
 * tly_bytes.h - big-endian integers in byte strings (state keys, values,
 * the changelog and outbox formats) and writing zeroes into fresh memory.
 * Pure helpers, no I/O; every layer may use them. Only tly_text_append
 * allocates.
 */
#ifndef TLY_BYTES_H
#define TLY_BYTES_H

#include <stddef.h>
#include <stdint.h>

/* Big-endian helpers for keys and values. */
void tly_put_be32(unsigned char *out, uint32_t value);
void tly_put_be64(unsigned char *out, uint64_t value);
/* Zeroes len bytes by writing them. The compiler turns malloc + memset(0)
 * into calloc, whose fresh pages map the shared zero page on a first read
 * and fault again (copy, TLB flush on every CPU) on the first write; big
 * hash tables that are probed before written want their pages written
 * once, up front. */
void tly_zero_fill(void *out, size_t len);
uint32_t tly_get_be32(const unsigned char *in);
uint64_t tly_get_be64(const unsigned char *in);

/* Appends n bytes of data to the NUL-terminated text *body of *len bytes
 * (*cap allocated; all three 0/NULL at first), growing it by doubling.
 * 0; 1 when *len + n would pass max (nothing appended: an answer too large
 * to keep); -1 out of memory. The one place that grows a buffer: the
 * HTTP clients' body callbacks use it. */
int tly_text_append(char **body, size_t *len, size_t *cap, const void *data,
                    size_t n, size_t max);

#endif
