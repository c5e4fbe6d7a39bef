/*
 * tly_sha256.h - SHA-256 digests and HMAC-SHA256, hex both ways, and the API
 * key digest type.
 *
 * Pure helpers over OpenSSL's libcrypto: no state, no I/O, no logging. The
 * one place tally calls OpenSSL's digest and MAC functions (Stripe webhook
 * signatures, tally.members and forwarding credentials, API key digests).
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
/* SHA-256(data). Thread-safe. */
void tly_sha256(const void *data, size_t len,
                unsigned char out[TLY_SHA256_LEN]);
/* Lowercase hex of SHA-256(data); out holds TLY_SHA256_HEX_LEN + 1 bytes. */
void tly_sha256_hex(const void *data, size_t len,
                    char out[TLY_SHA256_HEX_LEN + 1]);

/* Hex digit value (either case), or -1. */
int tly_hex_value(char c);
/* Lowercase hex of len bytes; out holds 2 * len + 1 bytes. */
void tly_hex_encode(const unsigned char *bytes, size_t len, char *out);
/* Exactly 2 * out_len hex characters (either case) into out. 0, or -1. */
int tly_hex_decode(const char *text, size_t text_len, unsigned char *out,
                   size_t out_len);

/* HMAC-SHA256 fed in parts: begin, update as often as needed, then end,
 * which writes the MAC and frees the context (also on failure). begin
 * returns NULL only when out of memory; update and end return 0, or -1
 * (after which only end may be called). */
typedef struct tly_hmac tly_hmac_t;
tly_hmac_t *tly_hmac_sha256_begin(const void *key, size_t key_len);
int tly_hmac_update(tly_hmac_t *hmac, const void *data, size_t len);
int tly_hmac_end(tly_hmac_t *hmac, unsigned char out[TLY_SHA256_LEN]);

#endif
