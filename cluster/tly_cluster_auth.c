/*
 * tly_cluster_auth.c - the cluster secret, announcement MACs and forwarding
 * credentials (see tly_cluster_auth.h).
 *
 * Every MAC is HMAC-SHA256 over a domain tag ("tally.members.v1" or
 * "tally.forward.v1") and then each field as an 8-byte big-endian length
 * and its bytes, so no two different field lists hash the same input and a
 * MAC of one kind never passes as the other.
 */
#include "tly_cluster_auth.h"

#include "tly_sha256.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAC_LEN TLY_SHA256_LEN

/* ---- the secret --------------------------------------------------------- */

static int set_secret(tly_cluster_secret_t *out, const char *bytes, size_t len,
                      const char *source, char *errstr, size_t errstr_size) {
  /* A secret file usually ends with a newline: it is not part of it. */
  while (len && isspace((unsigned char)bytes[len - 1]))
    len--;
  if (len < TLY_CLUSTER_SECRET_MIN || len > TLY_CLUSTER_SECRET_MAX) {
    snprintf(errstr, errstr_size,
             "%s: expected a cluster secret of %d to %d bytes (e.g. "
             "`openssl rand -hex 32`), got %zu",
             source, TLY_CLUSTER_SECRET_MIN, TLY_CLUSTER_SECRET_MAX, len);
    return -1;
  }
  memcpy(out->bytes, bytes, len);
  out->len = len;
  return 0;
}

static int load_file(const char *path, tly_cluster_secret_t *out, char *errstr,
                     size_t errstr_size) {
  char buffer[TLY_CLUSTER_SECRET_MAX + 64], source[300];
  snprintf(source, sizeof(source), "--cluster-secret-file %s", path);
  FILE *file = fopen(path, "rb");
  if (!file) {
    snprintf(errstr, errstr_size, "%s: %s", source, strerror(errno));
    return -1;
  }
  size_t len = fread(buffer, 1, sizeof(buffer), file);
  int failed = ferror(file);
  fclose(file);
  int rc = -1;
  if (failed)
    snprintf(errstr, errstr_size, "%s: cannot read it", source);
  else if (len == sizeof(buffer))
    snprintf(errstr, errstr_size,
             "%s: expected a cluster secret of %d to %d bytes, the file is "
             "larger",
             source, TLY_CLUSTER_SECRET_MIN, TLY_CLUSTER_SECRET_MAX);
  else
    rc = set_secret(out, buffer, len, source, errstr, errstr_size);
  OPENSSL_cleanse(buffer, sizeof(buffer));
  return rc;
}

int tly_cluster_secret_load(const char *file, tly_cluster_secret_t *out,
                            char *errstr, size_t errstr_size) {
  const char *env = getenv(TLY_CLUSTER_SECRET_ENV);
  memset(out, 0, sizeof(*out));
  if (file && env) {
    snprintf(errstr, errstr_size,
             "--cluster-secret-file and %s are both set: use one",
             TLY_CLUSTER_SECRET_ENV);
    return -1;
  }
  if (file)
    return load_file(file, out, errstr, errstr_size) ? -1 : 1;
  if (env)
    return set_secret(out, env, strlen(env), TLY_CLUSTER_SECRET_ENV, errstr,
                      errstr_size)
               ? -1
               : 1;
  return 0;
}

int tly_cluster_secret_random(tly_cluster_secret_t *out) {
  memset(out, 0, sizeof(*out));
  out->len = 32;
  return RAND_bytes(out->bytes, (int)out->len) == 1 ? 0 : -1;
}

void tly_cluster_secret_clear(tly_cluster_secret_t *secret) {
  if (secret)
    OPENSSL_cleanse(secret, sizeof(*secret));
}

/* ---- HMAC over tagged fields -------------------------------------------- */

typedef struct {
  const void *data;
  size_t len;
} field_t;

/* HMAC-SHA256(secret, tag, fields...) into out (MAC_LEN bytes). 0 or -1. */
static int mac_fields(const tly_cluster_secret_t *secret, const char *tag,
                      const field_t *fields, size_t count,
                      unsigned char out[MAC_LEN]) {
  tly_hmac_t *hmac = tly_hmac_sha256_begin(secret->bytes, secret->len);
  int ok = hmac && !tly_hmac_update(hmac, tag, strlen(tag) + 1);
  for (size_t i = 0; ok && i < count; i++) {
    unsigned char len_be[8];
    uint64_t len = fields[i].len;
    for (int b = 7; b >= 0; b--, len >>= 8)
      len_be[b] = (unsigned char)(len & 0xff);
    ok = !tly_hmac_update(hmac, len_be, sizeof(len_be)) &&
         !tly_hmac_update(hmac, fields[i].data, fields[i].len);
  }
  return tly_hmac_end(hmac, out) || !ok ? -1 : 0;
}

/* Parses exactly 2 * MAC_LEN hex characters. 0 or -1. */
static int from_hex(const char *text, size_t len, unsigned char out[MAC_LEN]) {
  return tly_hex_decode(text, len, out, MAC_LEN);
}

/* ---- announcements ------------------------------------------------------ */

static int members_mac(const tly_cluster_secret_t *secret, const char *key,
                       size_t key_len, int64_t at_ms, const char *value,
                       size_t value_len, unsigned char out[MAC_LEN]) {
  char at[24];
  int at_len = snprintf(at, sizeof(at), "%" PRId64, at_ms);
  const field_t fields[] = {{key, key_len},
                            {at, (size_t)at_len},
                            {value ? "value" : "tombstone", value ? 5 : 9},
                            {value, value ? value_len : 0}};
  return mac_fields(secret, "tally.members.v1", fields,
                    sizeof(fields) / sizeof(fields[0]), out);
}

void tly_cluster_members_mac(const tly_cluster_secret_t *secret,
                             const char *key, size_t key_len, int64_t at_ms,
                             const char *value, size_t value_len, char *out) {
  unsigned char mac[MAC_LEN];
  if (members_mac(secret, key, key_len, at_ms, value, value_len, mac)) {
    /* Only on OOM: a value no MAC can equal. */
    memset(out, 'x', TLY_CLUSTER_MAC_HEX_LEN);
    out[TLY_CLUSTER_MAC_HEX_LEN] = '\0';
    return;
  }
  tly_hex_encode(mac, MAC_LEN, out);
}

int tly_cluster_members_verify(const tly_cluster_secret_t *secret,
                               const char *key, size_t key_len, int64_t at_ms,
                               const char *value, size_t value_len,
                               const char *mac, size_t mac_len) {
  unsigned char expected[MAC_LEN], given[MAC_LEN];
  if (!secret || !mac || from_hex(mac, mac_len, given) ||
      members_mac(secret, key, key_len, at_ms, value, value_len, expected))
    return 0;
  return CRYPTO_memcmp(expected, given, MAC_LEN) == 0;
}

/* ---- forwarding credentials --------------------------------------------- */

static int forward_mac(const tly_cluster_secret_t *secret,
                       const tly_forward_scope_t *scope, int64_t expiry_ms,
                       unsigned char out[MAC_LEN]) {
  char expiry[24];
  int expiry_len = snprintf(expiry, sizeof(expiry), "%" PRId64, expiry_ms);
  const char *method = scope->method ? scope->method : "";
  const char *target = scope->target ? scope->target : "";
  const char *owner = scope->owner_instance ? scope->owner_instance : "";
  const field_t fields[] = {{method, strlen(method)},
                            {target, strlen(target)},
                            {expiry, (size_t)expiry_len},
                            {owner, strlen(owner)},
                            {scope->body, scope->body ? scope->body_len : 0}};
  return mac_fields(secret, "tally.forward.v1", fields,
                    sizeof(fields) / sizeof(fields[0]), out);
}

int tly_cluster_forward_credential(const tly_cluster_secret_t *secret,
                                   const tly_forward_scope_t *scope,
                                   int64_t expiry_ms, char *out,
                                   size_t out_size) {
  unsigned char mac[MAC_LEN];
  char hex[TLY_CLUSTER_MAC_HEX_LEN + 1];
  if (!secret || forward_mac(secret, scope, expiry_ms, mac))
    return -1;
  tly_hex_encode(mac, MAC_LEN, hex);
  int n = snprintf(out, out_size, "%" PRId64 ".%s", expiry_ms, hex);
  return n > 0 && (size_t)n < out_size ? 0 : -1;
}

tly_forward_auth_t tly_cluster_forward_check(const tly_cluster_secret_t *secret,
                                             const char *credential,
                                             const tly_forward_scope_t *scope,
                                             int64_t now_ms) {
  unsigned char expected[MAC_LEN], given[MAC_LEN];
  if (!credential)
    return TLY_FORWARD_AUTH_MISSING;
  if (!secret)
    return TLY_FORWARD_AUTH_NO_SECRET;
  /* "<digits>.<64 hex>", nothing else. */
  size_t digits = strspn(credential, "0123456789");
  if (digits == 0 || digits > 18 || credential[digits] != '.' ||
      from_hex(credential + digits + 1, strlen(credential + digits + 1), given))
    return TLY_FORWARD_AUTH_MALFORMED;
  int64_t expiry_ms = strtoll(credential, NULL, 10);
  if (forward_mac(secret, scope, expiry_ms, expected))
    return TLY_FORWARD_AUTH_INVALID;
  /* The MAC first: an expiry is only worth judging once it is ours. */
  if (CRYPTO_memcmp(expected, given, MAC_LEN) != 0)
    return TLY_FORWARD_AUTH_INVALID;
  if (expiry_ms < now_ms ||
      expiry_ms - now_ms > 2 * TLY_FORWARD_CREDENTIAL_TTL_MS)
    return TLY_FORWARD_AUTH_EXPIRED;
  return TLY_FORWARD_AUTH_OK;
}

const char *tly_cluster_forward_reason(tly_forward_auth_t result) {
  switch (result) {
  case TLY_FORWARD_AUTH_OK:
    return "ok";
  case TLY_FORWARD_AUTH_MISSING:
    return "a forwarded request needs the forwarding credential "
           "(" TLY_FORWARD_AUTH_HEADER ")";
  case TLY_FORWARD_AUTH_NO_SECRET:
    return "this instance has no cluster secret: forwarded requests are "
           "refused";
  case TLY_FORWARD_AUTH_MALFORMED:
    return "malformed forwarding credential";
  case TLY_FORWARD_AUTH_EXPIRED:
    return "expired forwarding credential";
  case TLY_FORWARD_AUTH_INVALID:
    return "invalid forwarding credential";
  }
  return "invalid forwarding credential";
}
