/*
 * tly_http_latency.h - the HTTP port's request latency histogram, one per
 * route of the route table (and one for requests no route matched), for
 * /metrics' tally_http_request_duration_seconds.
 *
 * Recorded on every answer, from the HTTP threads, so it takes no lock and
 * shares no cache line between threads: each thread counts in its own
 * shard (a thread takes the next of TLY_HTTP_LATENCY_SHARDS on its first
 * observation; threads past that many share shards, still correctly, as
 * every count is an atomic add). A reader sums the shards; it may see an
 * observation's bucket before its sum, never a torn count. Counts only:
 * never reads a clock (the caller measures) and never formats text.
 */
#ifndef TLY_HTTP_LATENCY_H
#define TLY_HTTP_LATENCY_H

#include <stddef.h>
#include <stdint.h>

/* Upper bounds (microseconds) of the buckets; the last bucket (+Inf) is
 * implied. From 100 us (an answer from the read cache) to 10 s (ingest
 * waits up to 10 s for Kafka). */
#define TLY_HTTP_LATENCY_BUCKETS 16
#define TLY_HTTP_LATENCY_BOUNDS_US                                             \
  {                                                                            \
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,      \
        500000, 1000000, 2500000, 5000000, 10000000                            \
  }
#define TLY_HTTP_LATENCY_SHARDS 8

typedef struct tly_http_latency tly_http_latency_t;

/* rows histograms (route indexes 0 .. rows-1). NULL on OOM. */
tly_http_latency_t *tly_http_latency_new(size_t rows);
void tly_http_latency_free(tly_http_latency_t *latency);

/* One request of row that took micros (negative counts as 0). A row out of
 * range is ignored. */
void tly_http_latency_observe(tly_http_latency_t *latency, size_t row,
                              int64_t micros);

typedef struct {
  uint64_t buckets[TLY_HTTP_LATENCY_BUCKETS]; /* cumulative: <= bound */
  uint64_t count;                             /* the +Inf bucket */
  uint64_t sum_us;
} tly_http_latency_snapshot_t;

/* The histogram of row, summed over the shards. */
void tly_http_latency_read(tly_http_latency_t *latency, size_t row,
                           tly_http_latency_snapshot_t *out);

#endif
