/*
 * tly_offset_map.h - key -> highest changelog offset applied, for the two
 * readers that replay the state changelog into a store: the restore at
 * assignment (tly_changelog_restore.c) and the standby copies
 * (tly_standby.c). A record is applied only if no newer record of its key
 * was, so records read out of order never overwrite newer state.
 *
 * Open addressing over 64-bit hashes of the key bytes (0 marks an empty
 * slot; a collision would need about 2^32 keys to be likely), kept at most
 * half full. Owns only its two arrays; no I/O, no locks (one reader owns a
 * map).
 */
#ifndef TLY_OFFSET_MAP_H
#define TLY_OFFSET_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t *hashes; /* 0: empty slot */
  int64_t *offsets;
  size_t cap, count;
} tly_offset_map_t;

/* The map's hash of a key (never 0). */
uint64_t tly_offset_map_hash(const unsigned char *key, size_t len);

/* 1 when offset may be applied for the key (and records it), 0 when a
 * newer record of the key was applied already (strict: or one of the same
 * offset), -1 out of memory. */
int tly_offset_map_admit(tly_offset_map_t *map, uint64_t hash, int64_t offset,
                         int strict);

/* Forgets every key; keeps the arrays. */
void tly_offset_map_clear(tly_offset_map_t *map);

/* Frees the arrays; the map is empty and usable again. */
void tly_offset_map_free(tly_offset_map_t *map);

#endif
