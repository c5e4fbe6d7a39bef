/*
 * tly_http.h - the HTTP query port (libmicrohttpd, JSON).
 *
 * Reads committed state straight from RocksDB; never writes state (the log
 * is the source of truth). Binds to 127.0.0.1 unless told otherwise.
 * Routes: GET /healthz, GET /metrics (Prometheus text),
 * GET /v1/subjects/{subject}/usage.
 */
#ifndef TLY_HTTP_H
#define TLY_HTTP_H

#include "tly_processor.h"
#include "tly_store.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *address; /* default "127.0.0.1" */
  uint16_t port;       /* 0: any free port; see tly_http_port() */
  tly_store_t *store;
  tly_processor_t *processor;
  const tly_config_t *config;
  unsigned threads;    /* default 2 */
} tly_http_conf_t;

typedef struct tly_http tly_http_t;

tly_http_t *tly_http_start(const tly_http_conf_t *conf, char *errstr,
                           size_t errstr_size);
uint16_t tly_http_port(const tly_http_t *http);
void tly_http_stop(tly_http_t *http);

#endif
