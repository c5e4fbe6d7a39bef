/*
 * tly_http_conn.h - the HTTP port's connection guard: who is connected, in
 * which phase of a request and since when, and who goes when there are too
 * many, so that no client can starve /healthz or other clients.
 *
 * libmicrohttpd's own bounds cannot do this. Its connection limit refuses
 * (or stops accepting) new connections once reached, so 1,000 idle sockets
 * shut every other client out; its idle timeout restarts with every byte,
 * so a client dripping a byte a second holds a connection for ever; and
 * its per-IP limit refuses the newcomer, which on a shared address (a load
 * balancer, loopback) is the innocent one. This module keeps its own table
 * of connections (fed by MHD_OPTION_NOTIFY_CONNECTION) and enforces:
 *
 *   - read deadlines. A connection is "awaiting" from its accept, or from
 *     the end of its previous answer (keep-alive), until the headers of its
 *     next request are in: at most header_timeout_ms. The body must be in
 *     request_timeout_ms after that same moment, and an answer must be
 *     taken by the client within request_timeout_ms of being queued. Time
 *     a request spends suspended (waiting for Kafka, an owner instance or
 *     Stripe, each bounded by its own timeout) does not count. A connection
 *     past its deadline is closed without an answer.
 *   - a per-client cap (max_per_client connections from one address, 0:
 *     none). A client's connection past it closes that client's own oldest
 *     connection that is awaiting, else its oldest one still sending a
 *     body, else (all of them suspended or being answered) itself.
 *   - a connection cap (max_connections). A connection past it closes the
 *     oldest awaiting connection of the client holding the most
 *     connections; when no client has one awaiting, the oldest one still
 *     sending a body of the client holding the most; else itself.
 * Awaiting connections go first: a legitimate client sends its headers in
 * milliseconds, so it is never the oldest awaiting one for long. A request
 * suspended for Kafka, an owner or Stripe, or whose answer is being read,
 * is never cut for a newcomer (each is bounded by its own timeout).
 *
 * "Closing" is shutdown(2) of the socket (libmicrohttpd then sees the end
 * of the stream and closes the connection on its own thread). It is done
 * under the table's lock while the connection is in the table, and
 * libmicrohttpd closes a socket only after its NOTIFY_CLOSED callback,
 * which takes the same lock to remove it: a descriptor is never shut down
 * after it was closed and reused.
 *
 * The table (tly_conn_*) is the policy: it takes the time as an argument
 * and closes through a callback, so unit tests drive it with fake sockets
 * and a fake clock. tly_http_guard_* is the libmicrohttpd glue, with a
 * reaper thread enforcing the deadlines. This module never reads or writes
 * a socket and never answers a request.
 */
#ifndef TLY_HTTP_CONN_H
#define TLY_HTTP_CONN_H

#include "tly_config.h"

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  TLY_CONN_AWAITING = 0, /* no request yet, or its headers still arriving */
  TLY_CONN_BODY,         /* headers in, body arriving */
  TLY_CONN_WAITING,      /* suspended: the answer waits for Kafka etc. */
  TLY_CONN_ANSWERING     /* the answer is queued, the client reads it */
} tly_conn_phase_t;

/* Why a connection was closed by the guard (the metric's label). */
typedef enum {
  TLY_CONN_CLOSED_HEADER_DEADLINE = 0,
  TLY_CONN_CLOSED_BODY_DEADLINE,
  TLY_CONN_CLOSED_ANSWER_DEADLINE,
  TLY_CONN_CLOSED_CLIENT_LIMIT,
  TLY_CONN_CLOSED_CONNECTION_LIMIT,
  TLY_CONN_CLOSED_REASONS
} tly_conn_closed_reason_t;

/* The label of a reason: "header_deadline", ..., "connection_limit". */
const char *tly_conn_closed_reason_name(tly_conn_closed_reason_t reason);

typedef struct {
  int64_t max_connections;    /* >= 1 */
  int64_t max_per_client;     /* 0: no per-client cap */
  int64_t header_timeout_ms;  /* >= 1 */
  int64_t request_timeout_ms; /* >= 1 */
} tly_conn_limits_t;

typedef struct {
  uint64_t open; /* connections not (yet) closed by the guard */
  uint64_t closed[TLY_CONN_CLOSED_REASONS];
} tly_conn_stats_t;

/* ---- the table (the policy) ------------------------------------------- */

typedef struct tly_conn tly_conn_t;
typedef struct tly_conn_table tly_conn_table_t;

/* Closes socket fd (shutdown(2) in the glue). Called with the table's lock
 * held: it must not call back into the table. */
typedef void (*tly_conn_close_fn)(void *opaque, int fd,
                                  tly_conn_closed_reason_t reason);

/* NULL when out of memory. */
tly_conn_table_t *tly_conn_table_new(const tly_conn_limits_t *limits,
                                     tly_conn_close_fn close_fn, void *opaque);
/* Frees the table and any connection still in it. */
void tly_conn_table_free(tly_conn_table_t *table);

/* A new connection from client (the address bytes, at most 16; the same
 * bytes are the same client), awaiting its first request. May close other
 * connections, or this one, to keep the caps. NULL when out of memory
 * (the connection is then not guarded). */
tly_conn_t *tly_conn_open(tly_conn_table_t *table, int fd, const void *client,
                          size_t client_len, int64_t now_ms);
/* The connection is gone (libmicrohttpd closes its socket after this);
 * frees conn. */
void tly_conn_closed(tly_conn_table_t *table, tly_conn_t *conn);
/* The connection entered phase at now_ms (TLY_CONN_AWAITING: its previous
 * request is over and its next one may come). */
void tly_conn_phase(tly_conn_table_t *table, tly_conn_t *conn,
                    tly_conn_phase_t phase, int64_t now_ms);
/* Closes every connection past its deadline at now_ms; how many. */
size_t tly_conn_expire(tly_conn_table_t *table, int64_t now_ms);
void tly_conn_stats(tly_conn_table_t *table, tly_conn_stats_t *out);
/* 1 when the guard closed conn (it is on its way out), else 0. */
int tly_conn_is_closed(tly_conn_table_t *table, const tly_conn_t *conn);

/* ---- the libmicrohttpd glue ------------------------------------------- */

typedef struct tly_http_guard tly_http_guard_t;

/* From the config's http section (max_connections,
 * max_connections_per_ip, header_timeout_ms, request_timeout_ms). Raises
 * the process's open-file limit to its hard limit, and lowers the
 * connection cap (with a warning) when the descriptors left after a
 * reserve for the store and Kafka cannot hold it. NULL with errstr. */
tly_http_guard_t *tly_http_guard_new(const tly_http_config_t *config,
                                     char *errstr, size_t errstr_size);
/* Starts the reaper thread (deadlines). 0, or -1 with errstr. */
int tly_http_guard_start(tly_http_guard_t *guard, char *errstr,
                         size_t errstr_size);
/* Stops the reaper; before MHD_stop_daemon. NULL-safe. */
void tly_http_guard_stop(tly_http_guard_t *guard);
/* After MHD_stop_daemon (every connection was closed). NULL-safe. */
void tly_http_guard_free(tly_http_guard_t *guard);

/* MHD_OPTION_CONNECTION_LIMIT for a daemon of threads worker threads:
 * high enough that libmicrohttpd never refuses a connection itself (the
 * guard makes room instead), however the connections spread over the
 * workers. */
unsigned tly_http_guard_mhd_connection_limit(const tly_http_guard_t *guard,
                                             unsigned threads);
/* MHD_OPTION_CONNECTION_TIMEOUT in seconds: a backstop for idle
 * connections the deadlines already cover. */
unsigned tly_http_guard_mhd_timeout_s(const tly_http_guard_t *guard);
/* The effective connection cap (after the open-file limit). */
int64_t tly_http_guard_max_connections(const tly_http_guard_t *guard);

/* The MHD_NotifyConnectionCallback to pass with MHD_OPTION_NOTIFY_CONNECTION
 * (cls: the guard). */
void tly_http_guard_notify(void *cls, struct MHD_Connection *connection,
                           void **socket_context,
                           enum MHD_ConnectionNotificationCode code);
/* The request on connection entered phase (from the access handler and
 * the completion callback). */
void tly_http_guard_phase(struct MHD_Connection *connection,
                          tly_conn_phase_t phase);
void tly_http_guard_stats(tly_http_guard_t *guard, tly_conn_stats_t *out);

#endif
