/*
 * tly_stripe_portal.h - Stripe billing portal sessions for the HTTP port
 * (POST /v1/subjects/{subject}/billing-portal).
 *
 * A session is one Stripe call (POST /v1/billing_portal/sessions with the
 * subject's Stripe customer and stripe.portal_return_url), which may take
 * up to stripe.timeout_ms. So that it never blocks an HTTP thread (each
 * serves many connections), the call runs on a thread of its own while the
 * connection is suspended (a task, tly_http_tasks.h), and `done` is called
 * (from that thread) once the result is in: the HTTP port resumes the
 * connection there and reads the answer with tly_http_task_answer.
 */
#ifndef TLY_STRIPE_PORTAL_H
#define TLY_STRIPE_PORTAL_H

#include "tly_config.h"
#include "tly_http_tasks.h"

#include <jansson.h>
#include <stddef.h>

typedef struct tly_stripe_portal tly_stripe_portal_t;

/* NULL with errstr on failure; stripe must hold a secret key (the caller
 * answers 503 without one). Keeps a pointer to stripe (the config outlives
 * it). */
tly_stripe_portal_t *tly_stripe_portal_new(const tly_stripe_config_t *stripe,
                                           char *errstr, size_t errstr_size);

/* Starts a session for customer. On 0, *call is the caller's (free it with
 * tly_http_task_free, once done has been called) and done(opaque) will be
 * called exactly once, from another thread. -1 when closing or out of
 * resources (done is never called). The finished call's answer
 * (tly_http_task_answer): 200 {"url", "id"}, or 502 with Stripe's error
 * (or the transport's), as tly_stripe_portal_result. */
int tly_stripe_portal_request(tly_stripe_portal_t *portal, const char *customer,
                              void (*done)(void *opaque), void *opaque,
                              tly_http_task_t **call);

/* The answer for a Stripe response, pure (for tests): status 0 means no
 * answer came (transport_error says why). */
json_t *tly_stripe_portal_result(long stripe_status, const char *body,
                                 const char *transport_error, int *status);

/* Refuses new calls and waits for those in flight (each is bounded by
 * stripe.timeout_ms). Call before the HTTP daemon stops, since a call in
 * flight resumes its connection. */
void tly_stripe_portal_close(tly_stripe_portal_t *portal);
/* Closes (if not yet) and frees. NULL is fine. */
void tly_stripe_portal_destroy(tly_stripe_portal_t *portal);

#endif
