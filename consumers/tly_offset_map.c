/*
 * tly_offset_map.c - key -> highest changelog offset applied (see
 * tly_offset_map.h).
 */
#include "tly_offset_map.h"

#include <stdlib.h>
#include <string.h>

uint64_t tly_offset_map_hash(const unsigned char *key, size_t len) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a, then a final mix */
  for (size_t i = 0; i < len; i++)
    h = (h ^ key[i]) * 1099511628211ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h ? h : 1;
}

static int grow(tly_offset_map_t *map) {
  size_t cap = map->cap ? map->cap * 2 : 1024;
  uint64_t *hashes = calloc(cap, sizeof(*hashes));
  int64_t *offsets = calloc(cap, sizeof(*offsets));
  if (!hashes || !offsets) {
    free(hashes);
    free(offsets);
    return -1;
  }
  for (size_t i = 0; i < map->cap; i++) {
    if (!map->hashes[i])
      continue;
    size_t slot = map->hashes[i] & (cap - 1);
    while (hashes[slot])
      slot = (slot + 1) & (cap - 1);
    hashes[slot] = map->hashes[i];
    offsets[slot] = map->offsets[i];
  }
  free(map->hashes);
  free(map->offsets);
  map->hashes = hashes;
  map->offsets = offsets;
  map->cap = cap;
  return 0;
}

int tly_offset_map_admit(tly_offset_map_t *map, uint64_t hash, int64_t offset,
                         int strict) {
  if ((map->count + 1) * 2 > map->cap && grow(map))
    return -1;
  size_t slot = hash & (map->cap - 1);
  while (map->hashes[slot] && map->hashes[slot] != hash)
    slot = (slot + 1) & (map->cap - 1);
  if (map->hashes[slot]) {
    if (map->offsets[slot] > offset || (strict && map->offsets[slot] == offset))
      return 0;
    map->offsets[slot] = offset;
    return 1;
  }
  map->hashes[slot] = hash;
  map->offsets[slot] = offset;
  map->count++;
  return 1;
}

void tly_offset_map_clear(tly_offset_map_t *map) {
  if (map->hashes)
    memset(map->hashes, 0, map->cap * sizeof(*map->hashes));
  map->count = 0;
}

void tly_offset_map_free(tly_offset_map_t *map) {
  free(map->hashes);
  free(map->offsets);
  memset(map, 0, sizeof(*map));
}
