/*
 * tly_sha256.h - SHA-256 digests as hex, and the API key digest type.
 *
 * Pure helpers over OpenSSL's libcrypto: no state, no I/O, no logging.
 * Only SHA-256 digests of API keys are ever configured or kept in memory
 * (billing/tly_config.h holds them, http/tly_auth.h checks tokens against
 * them); the key itself never passes through here. Must never depend on
 * anything above base/.
 */
#ifndef TLY_SHA256_H
#define TLY_SHA256_H

#include <stddef.h>

#define TLY_SHA256_LEN 32
#define TLY_SHA256_HEX_LEN 64

typedef struct {
  char name[64]; /* for logs and metrics; never the key */
  unsigned char sha256[TLY_SHA256_LEN];
} tly_api_key_t;

/* Parses 64 hex characters (either case) into a digest. 0, or -1. */
int tly_sha256_hex_parse(const char *hex, unsigned char out[TLY_SHA256_LEN]);
/* Lowercase hex of SHA-256(data); out holds TLY_SHA256_HEX_LEN + 1 bytes. */
void tly_sha256_hex(const void *data, size_t len,
                    char out[TLY_SHA256_HEX_LEN + 1]);

#endif
