/*
 * tly_thread.h - the processor's helper threads yield to the fold.
 *
 * Why: the fold thread is the processor's bottleneck (one thread folds
 * every record in order), and on a small machine it shares its cores with
 * helpers whose work can wait or be skipped: the prefault helper (pages
 * the fold would otherwise fault in itself), the release helper (messages
 * the fold would otherwise destroy itself) and the dedupe filter builder
 * (lookups go to RocksDB until it is done). In bench_fold on 2 cores the
 * fold thread was preempted ~2,300 times in 5 s and ran on a CPU ~80 % of
 * its wall time. Those helpers now run at a lower priority (nice
 * TLY_THREAD_HELPER_NICE), so they take what the fold leaves. Threads the
 * fold depends on keep the normal priority: librdkafka's fetches (lowered,
 * they starved the consumer's queue while the machine was busy), RocksDB's
 * flushes and compactions (a write stalls on them), the writer, the
 * producers and the HTTP port.
 *
 * TALLY_HELPER_NICE=0 in the environment turns it off; 1..19 sets the nice
 * value. A nice value is per thread on Linux: lowering one's own priority
 * (raising the value) needs no privilege.
 */
#ifndef TLY_THREAD_H
#define TLY_THREAD_H

#include <stddef.h>

#define TLY_THREAD_HELPER_NICE 10

/* The nice value helper threads take: TALLY_HELPER_NICE if set (0..19,
 * anything else is the default), else TLY_THREAD_HELPER_NICE. 0: off. */
int tly_thread_helper_nice(void);

/* 0 when TALLY_HELPER_NICE is unset, empty or 0..19; else -1 with the
 * reason in errstr (tally run and dev stop at startup naming it). */
int tly_thread_helper_nice_check(char *errstr, size_t errstr_size);

/* Lowers the calling thread to the helper nice value (nothing when it is
 * 0). Returns the value now in effect for the thread, or -1 when it could
 * not be set (the thread runs on as it was). */
int tly_thread_become_helper(void);

#endif
