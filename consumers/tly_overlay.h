/*
 * tly_overlay.h - the in-memory overlay of the rows one batch touches.
 *
 * The processor folds a batch into this overlay and then writes each dirty
 * row once (RocksDB writes are the first wall: one put per dirty key per
 * batch, not per event). An open-addressing hash table keyed by the RocksDB
 * key bytes; it owns copies of its keys.
 */
#ifndef TLY_OVERLAY_H
#define TLY_OVERLAY_H

#include "tly_fold.h"

#include <stddef.h>

typedef struct {
  char *key;
  size_t key_len;
  tly_usage_row_t row;
  int dirty;
} tly_overlay_entry_t;

typedef struct {
  tly_overlay_entry_t *slots;
  size_t capacity; /* power of two */
  size_t count;
} tly_overlay_t;

void tly_overlay_init(tly_overlay_t *overlay);
/* Frees every key and the table. */
void tly_overlay_free(tly_overlay_t *overlay);
/* Drops every entry, keeping the table's memory for the next batch. */
void tly_overlay_reset(tly_overlay_t *overlay);

/* The entry for key, or NULL. */
tly_overlay_entry_t *tly_overlay_find(tly_overlay_t *overlay, const char *key,
                                      size_t key_len);
/* Inserts a zeroed, clean entry for a key not yet present; NULL on OOM. */
tly_overlay_entry_t *tly_overlay_insert(tly_overlay_t *overlay,
                                        const char *key, size_t key_len);

#endif
