/*
 * tly_config_notify.c - the config file's "notifications" section: alert
 * webhooks (http/tly_webhooks.c delivers them).
 *
 *   "notifications": {
 *     "webhooks": [{"url": "https://example.com/hooks/tally",
 *                   "secret_env": "TALLY_WEBHOOK_SECRET",
 *                   "types": ["limit_warning", "limit_exceeded"]}],
 *     "retry_initial_ms": 1000, "retry_max_ms": 600000,
 *     "give_up_s": 86400, "timeout_ms": 10000}
 *
 * At most TLY_WEBHOOKS_MAX endpoints; url http:// or https:// (at most
 * 511 bytes); secret_env names an environment variable that must be set
 * (its value is the signing secret: "whsec_" and base64, as Standard
 * Webhooks writes them, or any other text taken as is); types (optional,
 * default every type) are alert type names. Reads the environment at load,
 * as the stripe section does; no other I/O.
 */
#include "tly_config_internal.h"

#include "tly_alert.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tly_config_notifications_defaults(tly_notifications_config_t *n) {
  memset(n, 0, sizeof(*n));
  n->retry_initial_ms = 1000;
  n->retry_max_ms = 600000;
  n->give_up_s = 86400;
  n->timeout_ms = 10000;
}

void tly_config_notifications_clear(tly_notifications_config_t *n) {
  OPENSSL_cleanse(n, sizeof(*n));
}

static int parse_webhook(tly_webhook_config_t *hook, json_t *item,
                         const char *path, tly_err_t *err) {
  char field[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, path, item) != 0)
    return -1;
  json_object_foreach(item, key, value) {
    path_key(field, path, key);
    if (strcmp(key, "url") == 0) {
      const char *url = json_string_value(value);
      if (!url || strlen(url) >= sizeof(hook->url) ||
          (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return fail(err, field,
                    "must be an http:// or https:// URL of at most %zu bytes",
                    sizeof(hook->url) - 1);
      snprintf(hook->url, sizeof(hook->url), "%s", url);
    } else if (strcmp(key, "secret_env") == 0) {
      const char *name = json_string_value(value);
      if (!name || !*name || strlen(name) >= sizeof(hook->secret_env))
        return fail(err, field, "must name an environment variable");
      snprintf(hook->secret_env, sizeof(hook->secret_env), "%s", name);
    } else if (strcmp(key, "types") == 0) {
      if (!json_is_array(value) || json_array_size(value) == 0)
        return fail(err, field, "must be a non-empty array of alert types");
      for (size_t i = 0; i < json_array_size(value); i++) {
        const char *name = json_string_value(json_array_get(value, i));
        int found = -1;
        for (int t = 0; name && t < TLY_ALERT__COUNT && found < 0; t++)
          if (strcmp(name, tly_alert_type_name((tly_alert_type_t)t)) == 0)
            found = t;
        if (found < 0)
          return fail(err, field, "unknown alert type '%.64s'",
                      name ? name : "(not a string)");
        hook->types |= 1u << found;
      }
    } else {
      return fail(err, field, "unknown key");
    }
  }
  if (!hook->url[0]) {
    path_key(field, path, "url");
    return fail(err, field, "required");
  }
  path_key(field, path, "secret_env");
  if (!hook->secret_env[0])
    return fail(err, field, "required (the signing secret's variable)");
  const char *secret = getenv(hook->secret_env);
  if (!secret || !*secret || strlen(secret) >= sizeof(hook->secret))
    return fail(err, field,
                "environment variable %s is not set (or longer than %zu bytes)",
                hook->secret_env, sizeof(hook->secret) - 1);
  snprintf(hook->secret, sizeof(hook->secret), "%s", secret);
  return 0;
}

int tly_config_apply_notifications(tly_config_t *config, json_t *section,
                                   tly_err_t *err) {
  tly_notifications_config_t *n = &config->notifications;
  char path[TLY_PATH_SIZE], item_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "notifications", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "notifications", key);
    if (strcmp(key, "webhooks") == 0) {
      if (!json_is_array(value) || json_array_size(value) > TLY_WEBHOOKS_MAX)
        return fail(err, path, "must be an array of at most %d endpoints",
                    TLY_WEBHOOKS_MAX);
      for (size_t i = 0; i < json_array_size(value); i++) {
        path_index(item_path, path, i);
        if (parse_webhook(&n->webhooks[i], json_array_get(value, i), item_path,
                          err))
          return -1;
        n->webhook_count = i + 1;
      }
    } else if (strcmp(key, "retry_initial_ms") == 0) {
      if (parse_int(err, path, value, 10, 600000, &n->retry_initial_ms))
        return -1;
    } else if (strcmp(key, "retry_max_ms") == 0) {
      if (parse_int(err, path, value, 10, 3600000, &n->retry_max_ms))
        return -1;
    } else if (strcmp(key, "give_up_s") == 0) {
      if (parse_int(err, path, value, 1, 30 * 86400, &n->give_up_s))
        return -1;
    } else if (strcmp(key, "timeout_ms") == 0) {
      if (parse_int(err, path, value, 100, 60000, &n->timeout_ms))
        return -1;
    } else {
      return fail(err, path, "unknown key");
    }
  }
  if (n->retry_max_ms < n->retry_initial_ms)
    return fail(err, "notifications.retry_max_ms",
                "must be at least retry_initial_ms");
  return 0;
}
