/*
 * tly_http_latency.c - per-route latency histograms in per-thread shards
 * (see tly_http_latency.h).
 */
#include "tly_http_latency.h"

#include <stdatomic.h>
#include <stdlib.h>

/* One row of one shard: the bucket counts (not cumulative: the bucket an
 * observation fell in, TLY_HTTP_LATENCY_BUCKETS for +Inf only), the sum. */
typedef struct {
  atomic_uint_least64_t buckets[TLY_HTTP_LATENCY_BUCKETS + 1];
  atomic_uint_least64_t sum_us;
} row_t;

struct tly_http_latency {
  size_t rows;
  /* Each shard's rows in their own allocation of whole cache lines. */
  row_t *shards[TLY_HTTP_LATENCY_SHARDS];
};

static const int64_t bounds_us[TLY_HTTP_LATENCY_BUCKETS] =
    TLY_HTTP_LATENCY_BOUNDS_US;

/* Which shard this thread counts in: taken on its first observation. */
static atomic_uint next_shard;
static _Thread_local int thread_shard = -1;

tly_http_latency_t *tly_http_latency_new(size_t rows) {
  tly_http_latency_t *latency = calloc(1, sizeof(*latency));
  if (!latency)
    return NULL;
  latency->rows = rows;
  for (int s = 0; s < TLY_HTTP_LATENCY_SHARDS; s++) {
    /* Rounded up to whole cache lines, so shards never share one. */
    size_t bytes = (rows * sizeof(row_t) + 63) / 64 * 64;
    latency->shards[s] = aligned_alloc(64, bytes ? bytes : 64);
    if (!latency->shards[s]) {
      tly_http_latency_free(latency);
      return NULL;
    }
    for (size_t r = 0; r < rows; r++) {
      row_t *row = &latency->shards[s][r];
      for (int b = 0; b <= TLY_HTTP_LATENCY_BUCKETS; b++)
        atomic_init(&row->buckets[b], 0);
      atomic_init(&row->sum_us, 0);
    }
  }
  return latency;
}

void tly_http_latency_free(tly_http_latency_t *latency) {
  if (!latency)
    return;
  for (int s = 0; s < TLY_HTTP_LATENCY_SHARDS; s++)
    free(latency->shards[s]);
  free(latency);
}

void tly_http_latency_observe(tly_http_latency_t *latency, size_t row,
                              int64_t micros) {
  if (!latency || row >= latency->rows)
    return;
  if (thread_shard < 0)
    thread_shard =
        (int)(atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) %
              TLY_HTTP_LATENCY_SHARDS);
  if (micros < 0)
    micros = 0;
  int bucket = 0;
  while (bucket < TLY_HTTP_LATENCY_BUCKETS && micros > bounds_us[bucket])
    bucket++;
  row_t *counts = &latency->shards[thread_shard][row];
  atomic_fetch_add_explicit(&counts->buckets[bucket], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&counts->sum_us, (uint64_t)micros,
                            memory_order_relaxed);
}

void tly_http_latency_read(tly_http_latency_t *latency, size_t row,
                           tly_http_latency_snapshot_t *out) {
  uint64_t in_bucket[TLY_HTTP_LATENCY_BUCKETS + 1] = {0};
  out->sum_us = 0;
  if (latency && row < latency->rows)
    for (int s = 0; s < TLY_HTTP_LATENCY_SHARDS; s++) {
      row_t *counts = &latency->shards[s][row];
      for (int b = 0; b <= TLY_HTTP_LATENCY_BUCKETS; b++)
        in_bucket[b] +=
            atomic_load_explicit(&counts->buckets[b], memory_order_relaxed);
      out->sum_us +=
          atomic_load_explicit(&counts->sum_us, memory_order_relaxed);
    }
  uint64_t total = 0;
  for (int b = 0; b < TLY_HTTP_LATENCY_BUCKETS; b++) {
    total += in_bucket[b];
    out->buckets[b] = total;
  }
  out->count = total + in_bucket[TLY_HTTP_LATENCY_BUCKETS];
}
