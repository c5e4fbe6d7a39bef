/*
 * tly_stripe_client.h - a small Stripe API client over libcurl, shared by
 * the billing portal route and the usage-reporting emitter.
 *
 * One call is one HTTP request (POST, or GET or DELETE with the parameters
 * as the query string): form-encoded parameters (keys may carry
 * Stripe's brackets, "payload[stripe_customer_id]"), the secret key as a
 * bearer token, the pinned Stripe-Version, an optional Idempotency-Key and
 * a total time limit. It never retries: the caller decides, from what the
 * response says (status, Retry-After, Stripe-Should-Retry), whether and
 * when. The key is never logged, and no message of this module quotes it.
 *
 * Thread safety: a client may be used from several threads at once (each
 * call has its own curl handle). Create it before starting threads:
 * tly_stripe_client_new initialises libcurl.
 */
#ifndef TLY_STRIPE_CLIENT_H
#define TLY_STRIPE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *api_base;    /* "https://api.stripe.com", no trailing slash */
  const char *secret_key;  /* sk_... (copied) */
  const char *api_version; /* Stripe-Version header; NULL or "": none */
  long timeout_ms;         /* whole request, connect included */
} tly_stripe_client_conf_t;

typedef struct tly_stripe_client tly_stripe_client_t;

/* NULL with errstr on a bad conf or OOM. */
tly_stripe_client_t *tly_stripe_client_new(const tly_stripe_client_conf_t *conf,
                                           char *errstr, size_t errstr_size);
void tly_stripe_client_destroy(tly_stripe_client_t *client);

typedef struct {
  const char *key; /* "customer", "payload[value]" */
  const char *value;
} tly_stripe_param_t;

typedef struct {
  long status; /* HTTP status; 0: no answer (see error, timed_out) */
  char *body;  /* malloc'd, NUL-terminated (may be ""); NULL if none */
  size_t body_len;
  int64_t retry_after_s;   /* Retry-After in seconds; -1 absent */
  int should_retry;        /* Stripe-Should-Retry: 1 true, 0 false, -1 absent */
  int idempotent_replayed; /* Idempotent-Replayed: true */
  int timed_out;           /* no answer within timeout_ms */
  char request_id[64];     /* Request-Id, for support tickets */
  char error[256];         /* transport error when status is 0 */
} tly_stripe_response_t;

/*
 * POST api_base + path with the params form-encoded (in the given order).
 * idempotency_key NULL: none. Fills *out (clear it with
 * tly_stripe_response_clear) and returns 0 when an HTTP answer came, of any
 * status; -1 when none did (connection refused or dropped, timeout: out
 * says which), which the caller treats as "may or may not have been
 * applied" and retries with the same Idempotency-Key.
 */
int tly_stripe_post(tly_stripe_client_t *client, const char *path,
                    const tly_stripe_param_t *params, size_t param_count,
                    const char *idempotency_key, tly_stripe_response_t *out);
/* GET api_base + path with the params as the query string (encoded as
 * tly_stripe_form_encode does; none: no '?'). Same answers as
 * tly_stripe_post; a GET needs no Idempotency-Key. */
int tly_stripe_get(tly_stripe_client_t *client, const char *path,
                   const tly_stripe_param_t *params, size_t param_count,
                   tly_stripe_response_t *out);
/* DELETE api_base + path (a cancel), the params as the query string, with
 * an optional Idempotency-Key. Same answers as tly_stripe_post. */
int tly_stripe_delete(tly_stripe_client_t *client, const char *path,
                      const tly_stripe_param_t *params, size_t param_count,
                      const char *idempotency_key, tly_stripe_response_t *out);
void tly_stripe_response_clear(tly_stripe_response_t *response);

/* application/x-www-form-urlencoded of params: each key and value
 * percent-encoded (brackets too, as Stripe's own libraries send them),
 * joined by '&'. malloc'd, NULL on OOM. */
char *tly_stripe_form_encode(const tly_stripe_param_t *params, size_t count);

/* Stripe's error message ("error.message") in a response body, copied to
 * out ("" when the body is not a Stripe error). */
void tly_stripe_error_message(const char *body, char *out, size_t out_size);
/* Stripe's error code ("error.code", e.g. "idempotency_key_in_use"), copied
 * to out ("" when there is none). */
void tly_stripe_error_code(const char *body, char *out, size_t out_size);

/* Micro-units of currency (ISO code, either case) in one of Stripe's
 * amount units: 10,000 for cents, 1,000,000 for a zero-decimal currency
 * (jpy), 1,000 for a three-decimal one (kwd). */
int64_t tly_stripe_micros_per_unit(const char *currency);

#endif
