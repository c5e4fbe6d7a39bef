/*
 * tly_sha256.c - SHA-256 digests, HMAC-SHA256, hex (tly_sha256.h).
 */
/* The SHA256_* functions without OpenSSL 3's deprecation warnings (see
 * tly_sha256). */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "tly_sha256.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int tly_hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

void tly_hex_encode(const unsigned char *bytes, size_t len, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  out[2 * len] = '\0';
}

int tly_hex_decode(const char *text, size_t text_len, unsigned char *out,
                   size_t out_len) {
  if (!text || text_len != 2 * out_len)
    return -1;
  for (size_t i = 0; i < out_len; i++) {
    int high = tly_hex_value(text[2 * i]), low = tly_hex_value(text[2 * i + 1]);
    if (high < 0 || low < 0)
      return -1;
    out[i] = (unsigned char)(high << 4 | low);
  }
  return 0;
}

int tly_sha256_hex_parse(const char *hex, unsigned char out[TLY_SHA256_LEN]) {
  return hex ? tly_hex_decode(hex, strlen(hex), out, TLY_SHA256_LEN) : -1;
}

/* SHA256() looks the algorithm up in OpenSSL's provider tables on every
 * call (EVP_MD_fetch: a lock, a hash table, a string copy) and allocates a
 * context, which costs more than the digest of a short token (every
 * authenticated request hashes its token). The SHA256_* functions are the
 * digest itself, without the lookup; OpenSSL 3 marks them deprecated (for
 * the providers' sake), so where a build lacks them the algorithm is
 * fetched once and each thread keeps a context instead. */
#ifndef OPENSSL_NO_DEPRECATED_3_0
void tly_sha256(const void *data, size_t len,
                unsigned char out[TLY_SHA256_LEN]) {
  SHA256_CTX ctx;
  if (!SHA256_Init(&ctx) || !SHA256_Update(&ctx, data, len) ||
      !SHA256_Final(out, &ctx))
    SHA256(data, len, out);
  OPENSSL_cleanse(&ctx, sizeof(ctx));
}
#else
static EVP_MD *sha256_md;
static pthread_key_t sha256_ctx_key;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static int sha256_key_ok;

static void sha256_ctx_free(void *ctx) { EVP_MD_CTX_free(ctx); }

static void sha256_init(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  sha256_key_ok = pthread_key_create(&sha256_ctx_key, sha256_ctx_free) == 0;
}

void tly_sha256(const void *data, size_t len,
                unsigned char out[TLY_SHA256_LEN]) {
  pthread_once(&sha256_once, sha256_init);
  EVP_MD_CTX *ctx =
      sha256_md && sha256_key_ok ? pthread_getspecific(sha256_ctx_key) : NULL;
  if (!ctx && sha256_md && sha256_key_ok && (ctx = EVP_MD_CTX_new()) &&
      pthread_setspecific(sha256_ctx_key, ctx) != 0) {
    EVP_MD_CTX_free(ctx);
    ctx = NULL;
  }
  unsigned int out_len = 0;
  if (!ctx || !EVP_DigestInit_ex2(ctx, sha256_md, NULL) ||
      !EVP_DigestUpdate(ctx, data, len) ||
      !EVP_DigestFinal_ex(ctx, out, &out_len) || out_len != TLY_SHA256_LEN)
    SHA256(data, len, out);
}
#endif

void tly_sha256_hex(const void *data, size_t len,
                    char out[TLY_SHA256_HEX_LEN + 1]) {
  unsigned char digest[TLY_SHA256_LEN];
  tly_sha256(data, len, digest);
  tly_hex_encode(digest, TLY_SHA256_LEN, out);
}

struct tly_hmac {
  EVP_MAC *mac;
  EVP_MAC_CTX *ctx;
  int failed;
};

tly_hmac_t *tly_hmac_sha256_begin(const void *key, size_t key_len) {
  char digest_name[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
      OSSL_PARAM_construct_end()};
  tly_hmac_t *hmac = calloc(1, sizeof(*hmac));
  if (!hmac)
    return NULL;
  hmac->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  hmac->ctx = hmac->mac ? EVP_MAC_CTX_new(hmac->mac) : NULL;
  hmac->failed =
      !hmac->ctx ||
      !EVP_MAC_init(hmac->ctx, (const unsigned char *)key, key_len, params);
  return hmac;
}

int tly_hmac_update(tly_hmac_t *hmac, const void *data, size_t len) {
  if (!hmac || hmac->failed)
    return -1;
  if (len && !EVP_MAC_update(hmac->ctx, (const unsigned char *)data, len))
    hmac->failed = 1;
  return hmac->failed ? -1 : 0;
}

int tly_hmac_end(tly_hmac_t *hmac, unsigned char out[TLY_SHA256_LEN]) {
  if (!hmac)
    return -1;
  size_t out_len = 0;
  int ok = !hmac->failed &&
           EVP_MAC_final(hmac->ctx, out, &out_len, TLY_SHA256_LEN) &&
           out_len == TLY_SHA256_LEN;
  EVP_MAC_CTX_free(hmac->ctx);
  EVP_MAC_free(hmac->mac);
  free(hmac);
  return ok ? 0 : -1;
}
