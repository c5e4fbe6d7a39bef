/*
 * tly_hash.h - one fast 64-bit hash of short byte strings (event ids),
 * seeded, for in-memory tables only: the dedupe index's slots
 * (store/tly_dedupe.c) and the spilled-id filter's blocks
 * (store/tly_dedupe_filter.c) use it with different seeds, so an id's slot
 * in one and its block in the other are independent.
 *
 * Never persisted and never compared across builds: a hash may change with
 * any release. Not for anything an attacker could aim at for a proof
 * (that is SHA-256, tly_sha256.h); tables built on it confirm the whole
 * key, never take a match on the hash alone.
 */
#ifndef TLY_HASH_H
#define TLY_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TLY_HASH_SEED_DEDUPE 0x9E3779B97F4A7C15ULL
#define TLY_HASH_SEED_FILTER 0xcbf29ce484222325ULL

/* A word at a time (ids are 16 to 64 bytes, hashed for every event), then
 * a full avalanche. */
static inline uint64_t tly_hash_bytes(const void *data, size_t len,
                                      uint64_t seed) {
  const unsigned char *at = data;
  uint64_t hash = seed ^ ((uint64_t)len * 0xff51afd7ed558ccdULL);
  while (len >= 8) {
    uint64_t word;
    memcpy(&word, at, 8);
    hash = (hash ^ word) * 0xbf58476d1ce4e5b9ULL;
    hash ^= hash >> 31;
    at += 8;
    len -= 8;
  }
  if (len) {
    uint64_t word = 0;
    for (size_t i = 0; i < len; i++)
      word |= (uint64_t)at[i] << (8 * i);
    hash = (hash ^ word) * 0x94d049bb133111ebULL;
    hash ^= hash >> 29;
  }
  hash ^= hash >> 33;
  hash *= 0xff51afd7ed558ccdULL;
  hash ^= hash >> 33;
  hash *= 0xc4ceb9fe1a85ec53ULL;
  hash ^= hash >> 33;
  return hash;
}

#endif
