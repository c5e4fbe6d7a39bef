/*
 * tly_auth.h - bearer-token authentication of the HTTP port.
 *
 * Only SHA-256 digests of API keys are ever configured or kept in memory
 * (the config's "http.api_keys", `tally run --api-key-sha256 HEX`). A
 * request's token is hashed and its digest compared with every configured
 * digest in constant time (CRYPTO_memcmp, and no early exit over the list),
 * so neither the comparison nor the key count leaks through timing which
 * bytes of a guess were right. Tokens are never logged.
 */
#ifndef TLY_AUTH_H
#define TLY_AUTH_H

#include "tly_sha256.h"

#include <stddef.h>

/* Longer Authorization headers are refused as malformed before hashing. */
#define TLY_AUTH_TOKEN_MAX 1024

typedef enum {
  TLY_AUTH_OK = 0,
  TLY_AUTH_MISSING,   /* no Authorization header */
  TLY_AUTH_MALFORMED, /* not "Bearer <token>" */
  TLY_AUTH_INVALID    /* no configured key has this token's digest */
} tly_auth_result_t;

/*
 * Checks an Authorization header value (NULL when absent) against the keys.
 * On TLY_AUTH_OK and when key_out is not NULL, *key_out is the matching key.
 * The scheme is case-insensitive ("bearer" works), the token is everything
 * after the spaces that follow it, up to trailing whitespace.
 */
tly_auth_result_t tly_auth_check(const tly_api_key_t *keys, size_t key_count,
                                 const char *authorization,
                                 const tly_api_key_t **key_out);

/*
 * The same check for the schema registry's routes, which Confluent's
 * clients call with basic auth (basic.auth.user.info = "user:password"):
 * "Basic base64(user:key)" is checked with the password as the token (the
 * user name is not checked); "Bearer <key>" as tly_auth_check does.
 */
tly_auth_result_t tly_auth_check_basic_or_bearer(const tly_api_key_t *keys,
                                                 size_t key_count,
                                                 const char *authorization);

/* A short, fixed reason for a failed check (for the 401 body). */
const char *tly_auth_reason(tly_auth_result_t result);

#endif
