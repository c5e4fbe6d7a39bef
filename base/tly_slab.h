/*
 * tly_slab.h - memory the kernel may back with transparent huge pages
 * (2 MiB, MADV_HUGEPAGE), for the processor's large, randomly read state:
 * the overlay's subjects and the hash tables of the overlay and the
 * dedupe index.
 *
 * Why: on a virtual machine every first touch of a 4 KiB page is a fault
 * that exits to the host, and every TLB miss walks two page tables. The
 * first batch after a start fills the state of every subject it meets: in
 * bench_fold (100,000 subjects) the fold thread took about 220,000 faults
 * in that batch, a quarter of its time. From 2 MiB pages it takes one per
 * 512, and a warm fold misses the TLB far less (README, "Huge pages").
 * glibc gives huge pages only with GLIBC_TUNABLES=glibc.malloc.hugetlb=1,
 * and not to the heaps of threads other than the main one.
 *
 * Two parts:
 *   - tly_huge_alloc / _realloc / _free: one block (a table, a buffer).
 *     Below TLY_HUGE_MIN it is plain malloc; at or above, an anonymous
 *     mapping of whole 2 MiB pages, zeroed (fresh from the kernel). The
 *     caller passes the size it asked for back when it frees or grows.
 *   - tly_slab_t: many small objects of sizes up to TLY_SLAB_MAX, carved
 *     from 2 MiB chunks, one size class per chunk, each class with its own
 *     free list (kept outside the objects). Freed objects are reused;
 *     tly_slab_purge gives the pages no object uses back to the system
 *     (the processor calls it when idle, beside malloc_trim). The slab
 *     locks itself: one thread allocates, another may purge. Past 8
 *     chunks a helper thread ("tly-prefault") keeps an eighth of them, at
 *     most 16, mapped and faulted in ahead, so the allocating thread does
 *     not pay for the kernel zeroing a fresh page; a purge gives them back.
 *
 * Under AddressSanitizer both use malloc, so overflows and use after free
 * are still caught in overlay objects.
 */
#ifndef TLY_SLAB_H
#define TLY_SLAB_H

#include <stddef.h>

#define TLY_HUGE_PAGE ((size_t)2 << 20)
#define TLY_HUGE_MIN TLY_HUGE_PAGE /* smaller blocks come from malloc */
#define TLY_SLAB_MAX 4096          /* larger objects come from calloc */

/* A zeroed block of bytes, or NULL. */
void *tly_huge_alloc(size_t bytes);
/* Grows or shrinks block (of old_bytes) to bytes, keeping its contents up
 * to the smaller size; NULL leaves block as it was. block may be NULL. */
void *tly_huge_realloc(void *block, size_t old_bytes, size_t bytes);
void tly_huge_free(void *block, size_t bytes);

typedef struct tly_slab tly_slab_t;

tly_slab_t *tly_slab_new(void);
/* A zeroed object of bytes (> 0), or NULL. A NULL slab (one that could
 * not be made) allocates with calloc, and frees with free. */
void *tly_slab_alloc(tly_slab_t *slab, size_t bytes);
/* Frees an object of tly_slab_alloc, with the size it was asked for. */
void tly_slab_free(tly_slab_t *slab, void *object, size_t bytes);
/* Gives back every 4 KiB page that only free objects cover; the bytes it
 * gave back. */
size_t tly_slab_purge(tly_slab_t *slab);
/* The bytes of the slab's chunks, whether touched or not, those faulted
 * in ahead included. */
size_t tly_slab_mapped(tly_slab_t *slab);
void tly_slab_destroy(tly_slab_t *slab);

#endif
