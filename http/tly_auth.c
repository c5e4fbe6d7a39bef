/*
 * tly_auth.c - bearer tokens checked against SHA-256 digests (tly_auth.h).
 *
 * Why hash first: the configured secret is a digest, so comparing digests
 * is the only option, and it has a useful side effect: both operands of the
 * comparison always have the same length whatever was presented, so the
 * constant-time compare never branches on a length.
 */
#include "tly_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>
#include <strings.h>

tly_auth_result_t tly_auth_check(const tly_api_key_t *keys, size_t key_count,
                                 const char *authorization,
                                 const tly_api_key_t **key_out) {
  unsigned char digest[TLY_SHA256_LEN];
  const tly_api_key_t *match = NULL;

  if (!authorization)
    return TLY_AUTH_MISSING;
  size_t header_len = strlen(authorization);
  if (header_len > TLY_AUTH_TOKEN_MAX || header_len < 7 ||
      strncasecmp(authorization, "Bearer", 6) != 0 ||
      (authorization[6] != ' ' && authorization[6] != '\t'))
    return TLY_AUTH_MALFORMED;
  const char *token = authorization + 6;
  while (*token == ' ' || *token == '\t')
    token++;
  size_t token_len = strlen(token);
  while (token_len &&
         (token[token_len - 1] == ' ' || token[token_len - 1] == '\t'))
    token_len--;
  if (!token_len)
    return TLY_AUTH_MALFORMED;
  for (size_t i = 0; i < token_len; i++)
    if ((unsigned char)token[i] < 0x21 || (unsigned char)token[i] > 0x7e)
      return TLY_AUTH_MALFORMED;

  tly_sha256(token, token_len, digest);
  /* Every key is compared, match or not: the time spent does not depend on
   * which key (if any) matched. */
  for (size_t i = 0; i < key_count; i++)
    if (CRYPTO_memcmp(digest, keys[i].sha256, TLY_SHA256_LEN) == 0 && !match)
      match = &keys[i];
  if (!match)
    return TLY_AUTH_INVALID;
  if (key_out)
    *key_out = match;
  return TLY_AUTH_OK;
}

tly_auth_result_t tly_auth_check_basic_or_bearer(const tly_api_key_t *keys,
                                                 size_t key_count,
                                                 const char *authorization) {
  if (!authorization)
    return TLY_AUTH_MISSING;
  size_t header_len = strlen(authorization);
  if (header_len > TLY_AUTH_TOKEN_MAX)
    return TLY_AUTH_MALFORMED;
  if (header_len < 6 || strncasecmp(authorization, "Basic", 5) != 0 ||
      (authorization[5] != ' ' && authorization[5] != '\t'))
    return tly_auth_check(keys, key_count, authorization, NULL);
  const char *encoded = authorization + 5;
  while (*encoded == ' ' || *encoded == '\t')
    encoded++;
  size_t encoded_len = strlen(encoded);
  while (encoded_len &&
         (encoded[encoded_len - 1] == ' ' || encoded[encoded_len - 1] == '\t'))
    encoded_len--;
  if (!encoded_len || encoded_len % 4)
    return TLY_AUTH_MALFORMED;
  unsigned char decoded[TLY_AUTH_TOKEN_MAX];
  int decoded_len = EVP_DecodeBlock(decoded, (const unsigned char *)encoded,
                                    (int)encoded_len);
  if (decoded_len < 0)
    return TLY_AUTH_MALFORMED;
  /* EVP_DecodeBlock counts the padding's zero bytes: drop them. */
  for (size_t i = encoded_len; i > 0 && encoded[i - 1] == '='; i--)
    decoded_len--;
  const unsigned char *colon = memchr(decoded, ':', (size_t)decoded_len);
  if (!colon || memchr(decoded, '\0', (size_t)decoded_len))
    return TLY_AUTH_MALFORMED;
  /* The password as a bearer token, through the one constant-time check. */
  char bearer[TLY_AUTH_TOKEN_MAX + 8];
  size_t password_len = (size_t)(decoded + decoded_len - colon - 1);
  memcpy(bearer, "Bearer ", 7);
  memcpy(bearer + 7, colon + 1, password_len);
  bearer[7 + password_len] = '\0';
  tly_auth_result_t result = tly_auth_check(keys, key_count, bearer, NULL);
  OPENSSL_cleanse(bearer, sizeof(bearer));
  OPENSSL_cleanse(decoded, sizeof(decoded));
  return result;
}

const char *tly_auth_reason(tly_auth_result_t result) {
  switch (result) {
  case TLY_AUTH_OK:
    return "authenticated";
  case TLY_AUTH_MISSING:
    return "missing Authorization header (expected \"Bearer <api key>\")";
  case TLY_AUTH_MALFORMED:
    return "malformed Authorization header (expected \"Bearer <api key>\")";
  case TLY_AUTH_INVALID:
    break;
  }
  return "invalid API key";
}
