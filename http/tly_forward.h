/*
 * tly_forward.h - forwards an HTTP request to the instance that serves the
 * subject's partition (see tly_members.h), for the HTTP port.
 *
 * Like a billing portal call, a forward runs on a thread of its own while
 * the connection is suspended, so it never blocks an HTTP thread (each
 * serves many connections); done(opaque) is called from that thread once
 * the answer (or the failure) is in. The number of forwards in flight is
 * bounded: past it, tly_forward_request refuses and the port answers 503.
 * The client's Authorization header never goes along: this instance
 * authenticated the client, and the owner is sent a short-lived credential
 * instead (X-Tally-Forward-Auth, tly_cluster_auth.h), with
 * X-Tally-Forwarded: 1 so the owner never forwards it again. Answers are
 * bounded in size.
 */
#ifndef TLY_FORWARD_H
#define TLY_FORWARD_H

#include <stddef.h>

/* The header marking a forwarded request, and the one naming who answered. */
#define TLY_FORWARDED_HEADER "X-Tally-Forwarded"
#define TLY_SERVED_BY_HEADER "X-Tally-Served-By"

typedef struct tly_forward tly_forward_t;
typedef struct tly_forward_call tly_forward_call_t;

typedef struct {
  unsigned max_in_flight;    /* default 64 */
  long connect_timeout_ms;   /* default 1000 */
  long timeout_ms;           /* default 5000 */
  size_t max_response_bytes; /* default 8 MiB */
} tly_forward_conf_t;

/* NULL on OOM. conf may be NULL (defaults). */
tly_forward_t *tly_forward_new(const tly_forward_conf_t *conf);

/* What to send: base URL of the owner ("http://127.0.0.1:8081"), the
 * request target (path and query, as received), method, the forwarding
 * credential (TLY_FORWARD_AUTH_HEADER's value; NULL: none), body (NULL:
 * none), Accept (NULL: none; sent as "Accept: text/csv" only). Everything
 * is copied. No other header is sent: never the client's Authorization. */
typedef struct {
  const char *base_url;
  const char *target;
  const char *method;
  const char *credential;
  const char *content_type;
  const char *accept; /* the client's Accept, when it names text/csv */
  const char *body;
  size_t body_len;
  long timeout_ms; /* 0: the forwarder's */
} tly_forward_request_t;

/* Starts a forward. On 0, *call is the caller's (free it with
 * tly_forward_call_free once done ran) and done(opaque) is called exactly
 * once, from another thread. -1 when closing, at the in-flight bound or
 * out of resources (done is never called). */
int tly_forward_request(tly_forward_t *forward,
                        const tly_forward_request_t *request,
                        void (*done)(void *opaque), void *opaque,
                        tly_forward_call_t **call);

/* The result of a finished call: the owner's status (0: no answer, error
 * says why), content type ("" if none) and body (may be NULL when empty).
 * The pointers live as long as the call. */
typedef struct {
  long status;
  const char *content_type;
  const char *body;
  size_t body_len;
  const char *error;
} tly_forward_result_t;
void tly_forward_result(const tly_forward_call_t *call,
                        tly_forward_result_t *out);
void tly_forward_call_free(tly_forward_call_t *call);

/* Forwards in flight now (for metrics and tests). */
unsigned tly_forward_in_flight(tly_forward_t *forward);

/* Refuses new calls and waits for those in flight (each bounded by its
 * timeout). Call before the HTTP daemon stops: a call resumes its
 * connection. */
void tly_forward_close(tly_forward_t *forward);
/* Closes (if not yet) and frees; NULL is fine. */
void tly_forward_destroy(tly_forward_t *forward);

#endif
