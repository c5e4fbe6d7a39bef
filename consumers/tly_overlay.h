/*
 * tly_overlay.h - the in-memory overlay of the state one batch touches.
 *
 * The processor folds a batch into this overlay and then writes each dirty
 * record once (RocksDB writes are the first wall: one put per dirty key per
 * batch, not per event). Keys are (column family, RocksDB key bytes). Each
 * entry lives at a stable address until the next reset, so the fold may
 * hold a pointer to an account while it asks for a row.
 */
#ifndef TLY_OVERLAY_H
#define TLY_OVERLAY_H

#include "tly_billing.h"
#include "tly_store.h"

#include <stddef.h>

typedef struct {
  tly_cf_t cf;
  char *key;
  size_t key_len;
  int stored; /* the key existed in RocksDB when loaded */
  int dirty;  /* write it at commit */
  int64_t stored_cycle_end; /* accounts: the indexed cycle end, if stored */
  /* Last member: entries other than accounts are allocated without the
   * account's room (see tly_overlay_insert). */
  union {
    tly_billing_row_t row;
    tly_account_t account;
    int64_t seen_at_ms; /* dedupe: occurred_at of the folded event */
  } value;
} tly_overlay_entry_t;

typedef struct {
  tly_overlay_entry_t **slots;
  size_t capacity; /* power of two */
  size_t count;
} tly_overlay_t;

void tly_overlay_init(tly_overlay_t *overlay);
/* Frees every entry and the table. */
void tly_overlay_free(tly_overlay_t *overlay);
/* Drops every entry, keeping the table's memory for the next batch. */
void tly_overlay_reset(tly_overlay_t *overlay);

/* Keeps the entries for which keep() returns non-zero (it may update them)
 * and frees the others; kept entries keep their addresses. */
void tly_overlay_keep(tly_overlay_t *overlay,
                      int (*keep)(tly_overlay_entry_t *entry));

/* The entry for (cf, key), or NULL. */
tly_overlay_entry_t *tly_overlay_find(tly_overlay_t *overlay, tly_cf_t cf,
                                      const char *key, size_t key_len);
/* Inserts a zeroed, clean entry for a key not yet present; NULL on OOM. */
tly_overlay_entry_t *tly_overlay_insert(tly_overlay_t *overlay, tly_cf_t cf,
                                        const char *key, size_t key_len);

#endif
