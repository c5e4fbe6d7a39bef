/*
 * tly_malloc.h - glibc's malloc with transparent huge pages for the large
 * blocks of a long-running process (the processor, the embedded broker).
 *
 * Why: on a virtual machine every first touch of a 4 KiB page is a fault
 * that exits to the host. RocksDB's memtable arena (a fresh memtable every
 * few batches), librdkafka's fetch buffers and a batch's write buffer are
 * blocks of megabytes that malloc maps fresh; with glibc's tunable
 * glibc.malloc.hugetlb=1 malloc advises the kernel to back them (and its
 * main heap) with 2 MiB pages, one fault where there were 512. The
 * processor's own state already has huge pages (tly_slab.h); this is for
 * the libraries' memory. In bench_fold the writer thread's CPU per event
 * fell by about a quarter (README, "Huge pages for malloc").
 *
 * glibc reads its tunables from the environment once, as the program
 * starts, so the setting cannot be made from inside. tly_malloc_hugepages
 * therefore executes the program again (the same binary, arguments and
 * process id) with glibc.malloc.hugetlb=1 added to GLIBC_TUNABLES. It does
 * nothing (and returns) when:
 *   - TALLY_MALLOC_HUGEPAGES=0 is set (the operator's opt-out);
 *   - GLIBC_TUNABLES already names glibc.malloc.hugetlb (the operator's
 *     choice, or this is the second run);
 *   - transparent huge pages are off in the kernel (`never`);
 *   - the program runs under valgrind (its LD_PRELOAD), which would not
 *     follow the exec, or was built with AddressSanitizer (its own
 *     allocator ignores glibc's tunables);
 *   - the exec fails (the environment is put back as it was).
 * Call it first thing in main, before any thread or file is opened.
 */
#ifndef TLY_MALLOC_H
#define TLY_MALLOC_H

#include <stddef.h>

/* The GLIBC_TUNABLES value to run with, given the current one (NULL when
 * unset): current with ":glibc.malloc.hugetlb=1" added, or the setting
 * alone. 1 and the value in out, or 0 when current already names
 * glibc.malloc.hugetlb or out (of out_size) is too small. */
int tly_malloc_tunables(const char *current, char *out, size_t out_size);

/* 1 when this process's malloc runs with huge pages (glibc.malloc.hugetlb
 * 1 or 2 in GLIBC_TUNABLES, a glibc allocator), else 0: /metrics'
 * tally_malloc_hugepages. */
int tly_malloc_hugepages_on(void);

/* Re-executes the program with huge pages for malloc, as above; returns
 * only when it does not. */
void tly_malloc_hugepages(char **argv);

/* glibc's malloc gives each new thread that allocates an arena of its
 * own, up to 8 per core: a processor's fold, writer, librdkafka and
 * RocksDB threads end up in ~16, and each keeps what its threads freed
 * (glibc returns a heap's pages only from its top, or at malloc_trim).
 * bench_fold's dedupe-scale run at 20 M ids peaked at 1,320 MiB with four
 * against 1,341 without; its fold rate was not lower (README, "What the
 * budget still does not cover"). TLY_MALLOC_ARENAS caps them (M_ARENA_MAX),
 * unless the operator chose (MALLOC_ARENA_MAX, or glibc.malloc.arena_max in
 * GLIBC_TUNABLES). Call it in main before any thread starts. Returns the
 * cap set, or 0 when none was (another allocator, AddressSanitizer, the
 * operator's own). */
#define TLY_MALLOC_ARENAS 4
int tly_malloc_arenas(void);

/* What tly_malloc_arenas set (0: nothing): /metrics' tally_malloc_arena_max. */
int tly_malloc_arena_cap(void);

#endif
