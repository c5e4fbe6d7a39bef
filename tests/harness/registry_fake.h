/*
 * registry_fake.h - a Confluent-Schema-Registry-shaped HTTP server for the
 * tests (libmicrohttpd on 127.0.0.1, in the test process), as
 * stripe_fake.h is Stripe-shaped.
 *
 * What it does as the registry documents it:
 *   - POST /subjects/{subject}/versions {"schema": "..."}: {"id": N}; a
 *     schema text it holds already (under any subject) keeps its id, a new
 *     one gets the next id, counting from first_id (not 1: the tests prove
 *     tally uses the ids it is given). 422 error_code 42201 for a body
 *     without a schema string;
 *   - GET /schemas/ids/{id}: {"schema": "..."}, or 404 {"error_code":
 *     40403, "message": "Schema N not found"};
 *   - GET /subjects and GET /subjects/{subject}/versions/latest;
 *   - basic auth with the one user and password it was started with
 *     (when given): 401 {"error_code": 401, ...} otherwise.
 * For tests: registry_fake_add (a client registering a schema),
 * registry_fake_down (answer 503 to everything, as a registry that is
 * down), counters. At most 64 schemas.
 */
#ifndef REGISTRY_FAKE_H
#define REGISTRY_FAKE_H

#include <stdint.h>

typedef struct registry_fake registry_fake_t;

/* user NULL: no auth. NULL when it cannot start. */
registry_fake_t *registry_fake_start(int32_t first_id, const char *user,
                                     const char *password);
void registry_fake_stop(registry_fake_t *fake);
int registry_fake_port(const registry_fake_t *fake);
/* "http://127.0.0.1:PORT" */
const char *registry_fake_url(const registry_fake_t *fake);

/* Registers schema_json under subject as a client would: its id. */
int32_t registry_fake_add(registry_fake_t *fake, const char *subject,
                          const char *schema_json);
/* The id of the latest schema under subject, or -1. */
int32_t registry_fake_subject_id(registry_fake_t *fake, const char *subject);
/* 1: every request is answered 503 until set back to 0. */
void registry_fake_down(registry_fake_t *fake, int down);
/* Requests answered so far: GET /schemas/ids/..., and 503s. */
long registry_fake_lookups(registry_fake_t *fake);
long registry_fake_refused(registry_fake_t *fake);

#endif
