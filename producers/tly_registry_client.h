/*
 * tly_registry_client.h - a Confluent Schema Registry client over libcurl:
 * the two calls tally makes. Owns the HTTP exchange with the registry
 * (basic auth, TLS with an optional CA bundle, a time limit, bounded
 * answers); never decides what a schema means (schema/ does) and never
 * retries (the caller decides when, from the result).
 *
 *   register: POST {url}/subjects/{subject}/versions {"schema": "..."}
 *             -> {"id": N}   (the same schema again gets the same id)
 *   fetch:    GET  {url}/schemas/ids/{id} -> {"schema": "...",
 *             "schemaType": absent or "AVRO"}
 *
 * The password is never logged and no message of this module quotes it.
 * Thread safety: each call has its own curl handle, so calls may come from
 * several threads; create the client before starting them
 * (tly_registry_new initialises libcurl).
 */
#ifndef TLY_REGISTRY_CLIENT_H
#define TLY_REGISTRY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/* An answer larger than this is refused (a schema is at most 256 KiB). */
#define TLY_REGISTRY_ANSWER_MAX (512 * 1024)
#define TLY_REGISTRY_DEFAULT_TIMEOUT_MS 5000

typedef struct {
  const char *url;      /* "http://registry:8081" (a trailing '/' is fine) */
  const char *user;     /* basic auth user; NULL: no auth */
  const char *password; /* copied; with user */
  const char *ca_file;  /* PEM bundle to verify https with; NULL: system's */
  long timeout_ms;      /* each call, connect included; 0: the default */
} tly_registry_conf_t;

typedef enum {
  TLY_REGISTRY_OK = 0,
  /* Definitive: the registry answered 404 with error_code 40403 (schema)
   * or 40401 (subject). Nothing else counts as "does not exist": a 404
   * without that code (a wrong URL, a proxy) is UNAVAILABLE. */
  TLY_REGISTRY_NOT_FOUND,
  /* Definitive: another 4xx with the registry's error (the schema is
   * invalid or incompatible with the subject's, 401/403 auth). */
  TLY_REGISTRY_REFUSED,
  /* Worth retrying: no answer, a timeout, 5xx, 408, 429, or an answer that
   * is not the registry's. */
  TLY_REGISTRY_UNAVAILABLE
} tly_registry_result_t;

typedef struct tly_registry tly_registry_t;

/* NULL with errstr on a bad conf (no URL, not http/https) or OOM. */
tly_registry_t *tly_registry_new(const tly_registry_conf_t *conf, char *errstr,
                                 size_t errstr_size);
void tly_registry_destroy(tly_registry_t *registry);
/* The URL, for messages. */
const char *tly_registry_url(const tly_registry_t *registry);

/* Registers schema_json under subject: *id is the registry's id on OK;
 * errstr says why otherwise. */
tly_registry_result_t tly_registry_register(tly_registry_t *registry,
                                            const char *subject,
                                            const char *schema_json,
                                            int32_t *id, char *errstr,
                                            size_t errstr_size);

/* The schema registered under id: *schema_json (malloc'd, NUL-terminated,
 * *schema_len bytes) on OK. Definitive answers only: NOT_FOUND (404 with
 * 40403), and REFUSED for a schema that is not Avro ("schema id 7 is a
 * PROTOBUF schema; tally reads Avro") or an answer over
 * TLY_REGISTRY_ANSWER_MAX; every other failure, a 401 or 403
 * included, is UNAVAILABLE. */
tly_registry_result_t tly_registry_fetch(tly_registry_t *registry, int32_t id,
                                         char **schema_json, size_t *schema_len,
                                         char *errstr, size_t errstr_size);

#endif
