/*
 * bench_http.h - bench_fold's (d): the HTTP port's figures next to their
 * ceiling, a bare libmicrohttpd server started in the same process with
 * tally's threading model (epoll, a pool of as many threads as tally's
 * port), answering a fixed ~200-byte JSON with 200 the usual way (on the
 * second call, so connections are kept alive). wrk -t1 -c32
 * (BENCH_HTTP_CONNECTIONS) drives each in turn on loopback: the ceiling,
 * the quota pre-check rotating over every subject (with a bearer token),
 * /v1/subjects/{s}/usage and /healthz, in BENCH_HTTP_ROUNDS rounds
 * (default 4) that split BENCH_HTTP_S seconds per route between them;
 * each figure is the median of the rounds, each ratio the median of the
 * ratios to the same round's ceiling. Also printed: CPU seconds of the
 * server's threads per request, which the machine's other load disturbs
 * less than the rate.
 *
 * BENCH_ONLY_HTTP=1 build/bench_fold [events] [subjects] [partitions]
 * runs (d) alone on a small data set: default 1,000 subjects with one
 * event each on 16 partitions, 8 s per route (BENCH_HTTP_S).
 */
#ifndef BENCH_HTTP_H
#define BENCH_HTTP_H

#include "tly_config.h"
#include "tly_processor.h"
#include "tly_store.h"

/* The bearer token the benchmark's key is made of. */
#define BENCH_HTTP_TOKEN "bench-http-token"

enum {
  BENCH_CEILING = 0,
  BENCH_QUOTA,
  BENCH_USAGE,
  BENCH_HEALTHZ,
  BENCH_ROUTES
};

typedef struct {
  double rps, p50_ms, p99_ms;
  double cpu_us;         /* CPU of the server's threads per request */
  long requests, errors; /* errors: socket errors and non-2xx/3xx */
  int ok;                /* wrk ran and printed its result */
  /* Of the rounds (bench_http_result_t): the median ratio of rps to the
   * round's ceiling, their range, the median ratio of cpu_us. */
  double ratio, ratio_min, ratio_max, cpu_ratio;
} bench_http_figure_t;

#define BENCH_ROUNDS_MAX 16

typedef struct {
  int ran;
  long subjects;
  int rounds, seconds, connections; /* seconds: of each wrk run */
  unsigned threads;
  bench_http_figure_t figure[BENCH_ROUTES];
} bench_http_result_t;

/* Adds the benchmark's API key (BENCH_HTTP_TOKEN) to config. */
void bench_http_add_key(tly_config_t *config);

/* Runs (d) against a tally port started on store and processor (whose
 * partitions must be served: folded up to their replay targets). 0, or -1
 * when the port or the ceiling could not start. */
int bench_http_run(tly_store_t *store, tly_processor_t *processor,
                   tly_config_t *config, long subjects, int seconds,
                   bench_http_result_t *result);

/* Prints (d)'s rows of bench_fold's table. */
void bench_http_print(const bench_http_result_t *result);

/* BENCH_ONLY_HTTP=1: (d) alone on a small data set; the exit status. */
int bench_http_only(int argc, char **argv);

/* CPU seconds of this process's threads named name (prefix: whose name
 * starts with it), from /proc. */
double bench_thread_cpu_seconds(const char *name, int prefix);

/* bench_dedupe.c: the dedupe-scale run (BENCH_DEDUPE_IDS). */
int bench_dedupe_main(void);

/* bench_dedupe.c: the embedded broker's own process (BENCH_BROKER_CHILD). */
int bench_broker_child_main(void);

#endif
