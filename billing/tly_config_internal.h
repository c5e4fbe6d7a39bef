/*
 * tly_config_internal.h - what the config loader's files share: the error
 * buffer, JSON paths, and the checks every section makes. Private to
 * billing/tly_config.c and billing/tly_config_ports.c: include it nowhere
 * else, and add nothing here that does I/O.
 *
 * The checks are small and called everywhere in both files, so they are
 * defined here (static inline) rather than exported under longer names.
 * Each returns 0, or -1 with err filled with "<json path>: <reason>".
 */
#ifndef TLY_CONFIG_INTERNAL_H
#define TLY_CONFIG_INTERNAL_H

#include "tly_config.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define TLY_COUNT(array) (sizeof(array) / sizeof((array)[0]))
/* Long enough for any path built from valid names; paths through unknown,
 * over-long keys are truncated, which only shortens the message. */
#define TLY_PATH_SIZE 512

typedef struct {
  char *text;
  size_t size;
} tly_err_t;

/* Sizes in bytes: the built-in limits, http.max_body_bytes. */
#define TLY_MIB INT64_C(1048576)
#define TLY_GIB INT64_C(1073741824)

__attribute__((format(printf, 3, 4))) static inline int
fail(tly_err_t *err, const char *path, const char *fmt, ...) {
  if (!err->text || err->size == 0)
    return -1;
  int used = snprintf(err->text, err->size, "%s: ", path);
  if (used >= 0 && (size_t)used < err->size) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(err->text + used, err->size - (size_t)used, fmt, args);
    va_end(args);
  }
  return -1;
}

/* Appends text to a path, truncating at TLY_PATH_SIZE (by hand rather than
 * with snprintf, whose truncation GCC warns about and -Werror refuses). */
static inline void path_append(char *out, size_t *used, const char *text) {
  while (*text && *used + 1 < TLY_PATH_SIZE)
    out[(*used)++] = *text++;
  out[*used] = '\0';
}

static inline void path_key(char *out, const char *parent, const char *key) {
  size_t used = 0;
  out[0] = '\0';
  path_append(out, &used, parent);
  if (parent[0])
    path_append(out, &used, ".");
  path_append(out, &used, key);
}

static inline void path_index(char *out, const char *parent, size_t index) {
  char suffix[32];
  size_t used = 0;
  snprintf(suffix, sizeof(suffix), "[%zu]", index);
  out[0] = '\0';
  path_append(out, &used, parent);
  path_append(out, &used, suffix);
}

/* Names end up in RocksDB keys, alert ids and log lines, so keep them to a
 * charset that needs no escaping anywhere. */
static inline int valid_name(const char *name) {
  size_t len = strlen(name);
  if (len == 0 || len >= TLY_CONFIG_NAME_MAX)
    return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!isalnum(c) && c != '_' && c != '.' && c != '-')
      return 0;
  }
  return 1;
}

static inline int check_name(tly_err_t *err, const char *path,
                             const char *name) {
  if (valid_name(name))
    return 0;
  return fail(err, path,
              "not a valid name (1..63 characters of A-Z a-z 0-9 _ . -)");
}

static inline int check_object(tly_err_t *err, const char *path,
                               const json_t *value) {
  return json_is_object(value) ? 0 : fail(err, path, "must be an object");
}

/* json_is_integer is false for reals, so 1.5 and 1.0 are both rejected. */
static inline int parse_int(tly_err_t *err, const char *path,
                            const json_t *value, int64_t min, int64_t max,
                            int64_t *out) {
  if (json_is_integer(value)) {
    json_int_t number = json_integer_value(value);
    if (number >= min && number <= max) {
      *out = (int64_t)number;
      return 0;
    }
  }
  if (max != INT64_MAX)
    return fail(err, path, "must be an integer from %" PRId64 " to %" PRId64,
                min, max);
  if (min == TLY_UNLIMITED)
    return fail(err, path, "must be an integer >= -1 (-1 = unlimited)");
  return fail(err, path, "must be an integer >= %" PRId64, min);
}

/* The sections of the ports (tly_config_ports.c): "http" and "stripe". */
int tly_config_apply_http(tly_config_t *config, json_t *section,
                          tly_err_t *err);
int tly_config_apply_stripe(tly_config_t *config, json_t *section,
                            tly_err_t *err);
/* stripe.prices name plans, which may be defined after the section. */
int tly_config_check_stripe_prices(const tly_config_t *config, tly_err_t *err);
/* "notifications" (tly_config_notify.c): the alert webhooks. */
int tly_config_apply_notifications(tly_config_t *config, json_t *section,
                                   tly_err_t *err);
void tly_config_notifications_defaults(tly_notifications_config_t *n);
void tly_config_notifications_clear(tly_notifications_config_t *n);
/* The "meters" section (tly_config_meters.c), at most this many meters;
 * and the check made once every section is in (stripe.meters against
 * aggregations). */
#define TLY_CONFIG_METERS_MAX 256
int tly_config_apply_meters(tly_config_t *config, json_t *section,
                            tly_err_t *err);
int tly_config_check_meters(const tly_config_t *config, tly_err_t *err);
/* stripe.plans and stripe.proration_behavior (tly_config_stripe_plans.c):
 * 1 when key is one of them (rc set), 0 when not. */
int tly_config_apply_stripe_plans(tly_config_t *config, const char *key,
                                  json_t *value, tly_err_t *err, int *rc);
/* stripe.plans name plans and meters defined anywhere in the file. */
int tly_config_check_stripe_plans(const tly_config_t *config, tly_err_t *err);
/* Frees what the stripe section holds, wiping its secrets. */
void tly_config_stripe_clear(tly_stripe_config_t *stripe);

#endif
