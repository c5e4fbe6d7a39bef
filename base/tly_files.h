/*
 * tly_files.h - the process's open-file limit and how it is shared out:
 * RocksDB's open table files, then everything else (Kafka's sockets, the
 * listening socket, logs), then HTTP connections.
 *
 * Why RocksDB's share follows the limit: a point read opens every table
 * file it must check that is not open already, and the store keeps at
 * most max_open_files open. With a fixed 256 the 20 M-id run of
 * bench_fold held more table files than that (the dedupe window's
 * families keep up to 64 level-0 files each), and a third of the fold
 * thread went into reopening them (BlockBasedTable::Open, reading each
 * file's index and filter) for the spilled ids it looked up (README,
 * "Open table files").
 */
#ifndef TLY_FILES_H
#define TLY_FILES_H

#include <stdint.h>

/* RocksDB's open table files at an unknown limit, and the most at any. */
#define TLY_FILES_STORE_MIN 256
#define TLY_FILES_STORE_MAX 4096
/* Descriptors kept beside the store's for Kafka's sockets, the listening
 * socket, epoll, logs and the files tally opens itself. */
#define TLY_FILES_OTHERS 256

/* Raises the soft RLIMIT_NOFILE to the hard one (idempotent); the soft
 * limit now: UINT64_MAX when unlimited, 0 when it cannot be read. */
uint64_t tly_files_raise_limit(void);

/* RocksDB's max_open_files at that limit (0: unknown): half of what the
 * limit leaves past 512, within TLY_FILES_STORE_MIN..TLY_FILES_STORE_MAX.
 * 256 at 1,024 (as before), 1,792 at 4,096, 4,096 from 8,704 up. */
int tly_files_store_tables(uint64_t limit);

/* Descriptors kept for everything but HTTP connections at that limit: the
 * store's tables and TLY_FILES_OTHERS (512 at 1,024, as before). */
uint64_t tly_files_reserved(uint64_t limit);

#endif
