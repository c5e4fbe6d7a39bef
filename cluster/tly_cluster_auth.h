/*
 * tly_cluster_auth.h - the cluster secret and the two things it
 * authenticates between instances: announcements on tally.members
 * (tly_members.h) and the internal credential of a forwarded HTTP request
 * (tly_forward.h).
 *
 * Any Kafka writer the cluster admits can write tally.members, so an
 * announcement counts only with a valid HMAC-SHA256 under the secret every
 * instance shares (TALLY_CLUSTER_SECRET or --cluster-secret-file, never on
 * the command line). A forwarded request carries no client key: the
 * forwarding instance authenticated the client and sends a short-lived
 * credential instead, HMAC-SHA256 over the method, the request target, the
 * body, the expiry and the owner's instance id, so a credential is good
 * for that one request at that one instance for TLY_FORWARD_CREDENTIAL_TTL_MS.
 * MACs are compared in constant time (CRYPTO_memcmp). The secret is never
 * logged; this module owns no I/O but reading the secret's file and the
 * environment.
 */
#ifndef TLY_CLUSTER_AUTH_H
#define TLY_CLUSTER_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define TLY_CLUSTER_SECRET_ENV "TALLY_CLUSTER_SECRET"
/* A secret has 16 to 1024 bytes (e.g. `openssl rand -hex 32`); the file's
 * trailing whitespace (a final newline) is not part of it. */
#define TLY_CLUSTER_SECRET_MIN 16
#define TLY_CLUSTER_SECRET_MAX 1024
#define TLY_CLUSTER_MAC_HEX_LEN 64

typedef struct {
  unsigned char bytes[TLY_CLUSTER_SECRET_MAX];
  size_t len;
} tly_cluster_secret_t;

/*
 * The secret from file (when not NULL) or the environment variable
 * TLY_CLUSTER_SECRET_ENV. 1 when loaded into *out, 0 when neither is set,
 * -1 with errstr naming the source (unreadable file, too short or too long,
 * both set).
 */
int tly_cluster_secret_load(const char *file, tly_cluster_secret_t *out,
                            char *errstr, size_t errstr_size);
/* A random secret (`tally dev`: one instance, one run). 0 or -1. */
int tly_cluster_secret_random(tly_cluster_secret_t *out);
/* Wipes it. */
void tly_cluster_secret_clear(tly_cluster_secret_t *secret);

/* ---- announcements on tally.members ------------------------------------ */

/* The Kafka headers of a signed record: its time (decimal ms since the
 * epoch, the announcer's clock) and the hex MAC. */
#define TLY_MEMBERS_AT_HEADER "tally.at"
#define TLY_MEMBERS_MAC_HEADER "tally.mac"

/* The lowercase hex MAC of one record of the members topic: its key, its
 * time and its value (NULL: a tombstone). out: TLY_CLUSTER_MAC_HEX_LEN + 1
 * bytes. */
void tly_cluster_members_mac(const tly_cluster_secret_t *secret,
                             const char *key, size_t key_len, int64_t at_ms,
                             const char *value, size_t value_len, char *out);
/* 1 when mac (mac_len bytes of hex, either case) is the MAC of the record,
 * else 0 (also when secret or mac is NULL). Constant time in the MAC. */
int tly_cluster_members_verify(const tly_cluster_secret_t *secret,
                               const char *key, size_t key_len, int64_t at_ms,
                               const char *value, size_t value_len,
                               const char *mac, size_t mac_len);

/* ---- the credential of a forwarded request ----------------------------- */

/* "<expiry ms>.<hex MAC>", in this header of the forwarded request. */
#define TLY_FORWARD_AUTH_HEADER "X-Tally-Forward-Auth"
/* A credential expires this long after it was made (the forwarder's
 * clock). The owner refuses one already expired or expiring more than
 * twice this ahead of its own clock: the instances' clocks must agree
 * within this much. */
#define TLY_FORWARD_CREDENTIAL_TTL_MS 10000
/* Room for the header value: digits, '.', the MAC, '\0'. */
#define TLY_FORWARD_CREDENTIAL_MAX (20 + 1 + TLY_CLUSTER_MAC_HEX_LEN + 1)

typedef struct {
  const char *method;
  const char *target; /* path and query, exactly as sent */
  const char *body;   /* NULL: none (same MAC as empty) */
  size_t body_len;
  const char *owner_instance; /* the instance id it is sent to */
} tly_forward_scope_t;

/* The header value for scope, valid until expiry_ms. 0, or -1 when out is
 * too small or the MAC cannot be computed. */
int tly_cluster_forward_credential(const tly_cluster_secret_t *secret,
                                   const tly_forward_scope_t *scope,
                                   int64_t expiry_ms, char *out,
                                   size_t out_size);

typedef enum {
  TLY_FORWARD_AUTH_OK = 0,
  TLY_FORWARD_AUTH_MISSING,   /* marked forwarded, no credential */
  TLY_FORWARD_AUTH_NO_SECRET, /* this instance has no cluster secret */
  TLY_FORWARD_AUTH_MALFORMED,
  TLY_FORWARD_AUTH_EXPIRED, /* or expiring further ahead than the TTL */
  TLY_FORWARD_AUTH_INVALID  /* wrong MAC: another request, instance or key */
} tly_forward_auth_t;

/* Checks a credential (NULL: none) for scope at now_ms (the owner's
 * clock); secret NULL: TLY_FORWARD_AUTH_NO_SECRET. */
tly_forward_auth_t tly_cluster_forward_check(const tly_cluster_secret_t *secret,
                                             const char *credential,
                                             const tly_forward_scope_t *scope,
                                             int64_t now_ms);
/* A short, fixed reason (for the 401 body and logs). */
const char *tly_cluster_forward_reason(tly_forward_auth_t result);

#endif
