/*
 * tly_slab.c - huge-page blocks and the slab of small objects
 * (tly_slab.h).
 */
#define _GNU_SOURCE /* mremap */
#include "tly_slab.h"

#include "tly_bytes.h"
#include "tly_sanitize.h"
#include "tly_thread.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Under AddressSanitizer, plain malloc (the sanitizer checks objects). */
#define SLAB_USES_MALLOC TLY_ADDRESS_SANITIZER

#define SMALL_PAGE ((uintptr_t)4096)

/* ---- blocks ------------------------------------------------------------ */

static int is_huge(size_t bytes) {
  return !SLAB_USES_MALLOC && bytes >= TLY_HUGE_MIN;
}

static size_t huge_length(size_t bytes) {
  return (bytes + TLY_HUGE_PAGE - 1) & ~(TLY_HUGE_PAGE - 1);
}

/* length bytes (a multiple of 2 MiB) mapped with prot and flags at a
 * 2 MiB boundary, so that each 2 MiB may be one huge page: a mapping one
 * page longer, its ends cut off. NULL on failure. */
static unsigned char *map_aligned(size_t length, int prot, int flags) {
  if (length > SIZE_MAX - TLY_HUGE_PAGE)
    return NULL;
  unsigned char *mapped = mmap(NULL, length + TLY_HUGE_PAGE, prot,
                               MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  if (mapped == MAP_FAILED)
    return NULL;
  uintptr_t at =
      ((uintptr_t)mapped + TLY_HUGE_PAGE - 1) & ~(uintptr_t)(TLY_HUGE_PAGE - 1);
  size_t head = (size_t)(at - (uintptr_t)mapped);
  if (head)
    munmap(mapped, head);
  munmap((unsigned char *)at + length, TLY_HUGE_PAGE - head);
  return (unsigned char *)at;
}

static void advise_huge(void *at, size_t length) {
#ifdef MADV_HUGEPAGE
  madvise(at, length, MADV_HUGEPAGE); /* a hint: THP may be off */
#else
  (void)at;
  (void)length;
#endif
}

/* Whole 2 MiB pages for bytes, zero, marked for huge pages. */
static void *map_huge(size_t bytes) {
  size_t length = huge_length(bytes);
  if (length < bytes)
    return NULL;
  unsigned char *at = map_aligned(length, PROT_READ | PROT_WRITE, 0);
  if (at)
    advise_huge(at, length);
  return at;
}

/* Moves a block's pages to a fresh 2 MiB boundary with room for wants
 * bytes: the kernel moves the page tables, nothing is copied and no page
 * faults again (a copy to a new block was a tenth of the fold thread in
 * the first batch, the store batch doubling). NULL on failure. */
static void *move_huge(void *block, size_t had, size_t wants) {
  unsigned char *reserved = map_aligned(wants, PROT_NONE, MAP_NORESERVE);
  if (!reserved)
    return NULL;
  void *moved = mremap(block, had, wants, MREMAP_MAYMOVE | MREMAP_FIXED,
                       reserved); /* replaces the reservation */
  if (moved == MAP_FAILED) {
    munmap(reserved, wants);
    return NULL;
  }
  advise_huge(moved, wants);
  return moved;
}

void *tly_huge_alloc(size_t bytes) {
  if (is_huge(bytes))
    return map_huge(bytes); /* fresh from the kernel: zero */
  /* Zeroed by writing, not calloc (tly_bytes.h: tly_zero_fill). */
  void *block = malloc(bytes ? bytes : 1);
  if (block)
    tly_zero_fill(block, bytes);
  return block;
}

void tly_huge_free(void *block, size_t bytes) {
  if (!block)
    return;
  if (is_huge(bytes))
    munmap(block, huge_length(bytes));
  else
    free(block);
}

void *tly_huge_realloc(void *block, size_t old_bytes, size_t bytes) {
  if (!block)
    return tly_huge_alloc(bytes);
  if (!is_huge(old_bytes) && !is_huge(bytes))
    return realloc(block, bytes ? bytes : 1);
  if (is_huge(old_bytes) && is_huge(bytes)) {
    size_t had = huge_length(old_bytes), wants = huge_length(bytes);
    if (had == wants)
      return block;
    /* In place when the pages after it are free (or when shrinking). */
    if (mremap(block, had, wants, 0) != MAP_FAILED)
      return block;
    void *moved = move_huge(block, had, wants);
    if (moved)
      return moved;
  }
  void *grown = is_huge(bytes) ? map_huge(bytes) : malloc(bytes ? bytes : 1);
  if (!grown)
    return NULL;
  memcpy(grown, block, old_bytes < bytes ? old_bytes : bytes);
  tly_huge_free(block, old_bytes);
  return grown;
}

/* ---- the slab ------------------------------------------------------------ */

/* Size classes: 16-byte steps to 256, 64-byte steps to 1,024, 256-byte
 * steps to 4,096. An object wastes less than a step; few classes means
 * few chunks, each a huge page once touched. */
#define CLASSES (16 + 12 + 12)

typedef struct {
  size_t size;
  unsigned char *cursor, *limit; /* the untouched rest of its newest chunk */
  void **free_objects;           /* outside the objects: a purged page reads
                                    zeroes */
  size_t free_count, free_cap;
} slab_class_t;

/* Chunks faulted in ahead by a helper thread ("tly-prefault"). The
 * kernel zeroes a fresh huge page (its clear_page) on the thread that
 * first touches it: in bench_fold that was 30 % of the fold thread in the
 * first batch, most of it these chunks, while the other core sat half
 * idle. The helper maps a chunk, touches each 4 KiB of it (one fault per
 * huge page, or per small page where THP gives none) and only then puts
 * it in the pool, so no chunk is written by two threads. The pool's target is
 * an eighth of the chunks in use, at most READY_MAX (32 MiB): a small slab
 * starts no helper and holds nothing ahead. */
#define READY_MAX 16
#define READY_SHARE 8

struct tly_slab {
  pthread_mutex_t lock;
  slab_class_t classes[CLASSES];
  void **chunks;
  size_t chunk_count, chunk_cap;
  pthread_cond_t wake; /* the helper: a chunk was taken, or stop */
  pthread_t helper;
  int helper_started, helper_failed, wanted, stopping;
  void *ready[READY_MAX];
  size_t ready_count;
};

static size_t class_of(size_t bytes) {
  if (bytes <= 256)
    return (bytes + 15) / 16 - 1;
  if (bytes <= 1024)
    return 16 + (bytes - 256 + 63) / 64 - 1;
  return 28 + (bytes - 1024 + 255) / 256 - 1;
}

static size_t class_size(size_t index) {
  if (index < 16)
    return (index + 1) * 16;
  if (index < 28)
    return 256 + (index - 16 + 1) * 64;
  return 1024 + (index - 28 + 1) * 256;
}

tly_slab_t *tly_slab_new(void) {
  tly_slab_t *slab = calloc(1, sizeof(*slab));
  if (!slab)
    return NULL;
  if (pthread_mutex_init(&slab->lock, NULL)) {
    free(slab);
    return NULL;
  }
  if (pthread_cond_init(&slab->wake, NULL)) {
    pthread_mutex_destroy(&slab->lock);
    free(slab);
    return NULL;
  }
  for (size_t i = 0; i < CLASSES; i++)
    slab->classes[i].size = class_size(i);
  return slab;
}

static size_t ready_target(const tly_slab_t *slab) {
  size_t target = slab->chunk_count / READY_SHARE;
  return target < READY_MAX ? target : READY_MAX;
}

/* The helper: fills the pool to its target each time a chunk is taken,
 * then waits. The mapping and the touch run outside the lock. */
static void *prefault_main(void *arg) {
  tly_slab_t *slab = arg;
  tly_thread_become_helper(); /* below the fold thread (tly_thread.h) */
  pthread_mutex_lock(&slab->lock);
  while (!slab->stopping) {
    if (!slab->wanted || slab->ready_count >= ready_target(slab)) {
      slab->wanted = 0;
      pthread_cond_wait(&slab->wake, &slab->lock);
      continue;
    }
    pthread_mutex_unlock(&slab->lock);
    volatile unsigned char *chunk = map_huge(TLY_HUGE_PAGE);
    for (size_t at = 0; chunk && at < TLY_HUGE_PAGE; at += SMALL_PAGE)
      chunk[at] = 0;
    pthread_mutex_lock(&slab->lock);
    if (!chunk) /* out of memory: the slab maps its own, as without us */
      slab->wanted = 0;
    else if (slab->stopping || !slab->wanted) /* purged meanwhile */
      munmap((void *)chunk, TLY_HUGE_PAGE);
    else
      slab->ready[slab->ready_count++] = (void *)chunk;
  }
  pthread_mutex_unlock(&slab->lock);
  return NULL;
}

/* With the lock held, after a chunk was taken: wakes the helper (started
 * the first time the pool has a target). */
static void want_ready(tly_slab_t *slab) {
  if (slab->ready_count >= ready_target(slab) || slab->helper_failed)
    return;
  if (!slab->helper_started) {
    if (pthread_create(&slab->helper, NULL, prefault_main, slab)) {
      slab->helper_failed = 1; /* chunks fault on first use, as before */
      return;
    }
    slab->helper_started = 1;
#if defined(__GLIBC__)
    pthread_setname_np(slab->helper, "tly-prefault");
#endif
  }
  slab->wanted = 1;
  pthread_cond_signal(&slab->wake);
}

static int add_chunk(tly_slab_t *slab, slab_class_t *class) {
  if (slab->chunk_count == slab->chunk_cap) {
    size_t cap = slab->chunk_cap ? slab->chunk_cap * 2 : 16;
    void **chunks = realloc(slab->chunks, cap * sizeof(*chunks));
    if (!chunks)
      return -1;
    slab->chunks = chunks;
    slab->chunk_cap = cap;
  }
  unsigned char *chunk = slab->ready_count ? slab->ready[--slab->ready_count]
                                           : map_huge(TLY_HUGE_PAGE);
  if (!chunk)
    return -1;
  slab->chunks[slab->chunk_count++] = chunk;
  class->cursor = chunk;
  class->limit = chunk + TLY_HUGE_PAGE;
  want_ready(slab);
  return 0;
}

static void unmap_ready(tly_slab_t *slab) {
  while (slab->ready_count)
    munmap(slab->ready[--slab->ready_count], TLY_HUGE_PAGE);
}

void *tly_slab_alloc(tly_slab_t *slab, size_t bytes) {
  if (!bytes)
    return NULL;
  if (SLAB_USES_MALLOC || !slab || bytes > TLY_SLAB_MAX)
    return calloc(1, bytes);
  slab_class_t *class = &slab->classes[class_of(bytes)];
  pthread_mutex_lock(&slab->lock);
  if (class->free_count) {
    void *object = class->free_objects[--class->free_count];
    pthread_mutex_unlock(&slab->lock);
    memset(object, 0, class->size);
    return object;
  }
  if ((size_t)(class->limit - class->cursor) < class->size &&
      add_chunk(slab, class)) {
    pthread_mutex_unlock(&slab->lock);
    return NULL;
  }
  void *object = class->cursor; /* never used: still zero */
  class->cursor += class->size;
  pthread_mutex_unlock(&slab->lock);
  return object;
}

void tly_slab_free(tly_slab_t *slab, void *object, size_t bytes) {
  if (!object)
    return;
  if (SLAB_USES_MALLOC || !slab || bytes > TLY_SLAB_MAX) {
    free(object);
    return;
  }
  slab_class_t *class = &slab->classes[class_of(bytes)];
  pthread_mutex_lock(&slab->lock);
  if (class->free_count == class->free_cap) {
    size_t cap = class->free_cap ? class->free_cap * 2 : 256;
    void **grown = realloc(class->free_objects, cap * sizeof(*grown));
    if (!grown) { /* out of memory: the object is lost to reuse, no more */
      pthread_mutex_unlock(&slab->lock);
      return;
    }
    class->free_objects = grown;
    class->free_cap = cap;
  }
  class->free_objects[class->free_count++] = object;
  pthread_mutex_unlock(&slab->lock);
}

static int compare_addresses(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a,
            y = (uintptr_t) * (void *const *)b;
  return (x > y) - (x < y);
}

/* Gives back the small pages wholly inside [from, to). */
static size_t give_back(uintptr_t from, uintptr_t to) {
  uintptr_t first = (from + SMALL_PAGE - 1) & ~(SMALL_PAGE - 1);
  uintptr_t end = to & ~(SMALL_PAGE - 1);
  if (end <= first || madvise((void *)first, end - first, MADV_DONTNEED))
    return 0;
  return (size_t)(end - first);
}

size_t tly_slab_purge(tly_slab_t *slab) {
  if (!slab)
    return 0;
  pthread_mutex_lock(&slab->lock);
  /* Idle: nothing grows; the next chunk taken fills the pool again. */
  size_t given = slab->ready_count * TLY_HUGE_PAGE;
  slab->wanted = 0;
  unmap_ready(slab);
  for (size_t c = 0; c < CLASSES; c++) {
    slab_class_t *class = &slab->classes[c];
    if (class->limit > class->cursor) /* the newest chunk's unused rest */
      given += give_back((uintptr_t) class->cursor, (uintptr_t) class->limit);
    if (!class->free_count)
      continue;
    /* Runs of free objects side by side cover whole pages. */
    qsort(class->free_objects, class->free_count, sizeof(void *),
          compare_addresses);
    uintptr_t start = (uintptr_t) class->free_objects[0], end = start;
    for (size_t i = 0; i <= class->free_count; i++) {
      uintptr_t at =
          i < class->free_count ? (uintptr_t) class->free_objects[i] : 0;
      if (i < class->free_count && at == end) {
        end = at + class->size;
        continue;
      }
      given += give_back(start, end);
      start = at;
      end = at + class->size;
    }
  }
  pthread_mutex_unlock(&slab->lock);
  return given;
}

size_t tly_slab_mapped(tly_slab_t *slab) {
  if (!slab)
    return 0;
  pthread_mutex_lock(&slab->lock);
  size_t chunks = slab->chunk_count + slab->ready_count;
  pthread_mutex_unlock(&slab->lock);
  return chunks * TLY_HUGE_PAGE;
}

void tly_slab_destroy(tly_slab_t *slab) {
  if (!slab)
    return;
  if (slab->helper_started) {
    pthread_mutex_lock(&slab->lock);
    slab->stopping = 1;
    pthread_cond_signal(&slab->wake);
    pthread_mutex_unlock(&slab->lock);
    pthread_join(slab->helper, NULL);
  }
  unmap_ready(slab);
  for (size_t i = 0; i < slab->chunk_count; i++)
    munmap(slab->chunks[i], TLY_HUGE_PAGE);
  for (size_t c = 0; c < CLASSES; c++)
    free(slab->classes[c].free_objects);
  free(slab->chunks);
  pthread_cond_destroy(&slab->wake);
  pthread_mutex_destroy(&slab->lock);
  free(slab);
}
