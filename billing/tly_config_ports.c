/*
 * tly_config_ports.c - the sections of the config that the ports read and
 * the fold never does: "http" (API key digests, limits of the HTTP port)
 * and "stripe" (webhooks, the billing portal and usage reporting), with
 * the Stripe lookups.
 *
 * These are the only sections that reach outside the file: the Stripe API
 * key and webhook secrets are read from the environment here, once, at
 * load, and wiped when the config is freed; they are never logged nor
 * quoted in a message. The checks and the error format are the loader's
 * (tly_config_internal.h); the defaults are tly_config_default's.
 */
#include "tly_config.h"

#include "tly_config_internal.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The HTTP section.                                                        */

int tly_config_add_api_key(tly_config_t *config, const char *name,
                           const unsigned char sha256[TLY_SHA256_LEN]) {
  tly_http_config_t *http = &config->http;
  if (!valid_name(name))
    return -1;
  for (size_t i = 0; i < http->api_key_count; i++)
    if (memcmp(http->api_keys[i].sha256, sha256, TLY_SHA256_LEN) == 0)
      return 0;
  tly_api_key_t *grown = realloc(http->api_keys, (http->api_key_count + 1) *
                                                     sizeof(*http->api_keys));
  if (!grown)
    return -1;
  http->api_keys = grown;
  tly_api_key_t *key = &http->api_keys[http->api_key_count++];
  memset(key, 0, sizeof(*key));
  snprintf(key->name, sizeof(key->name), "%s", name);
  memcpy(key->sha256, sha256, TLY_SHA256_LEN);
  return 0;
}

/* One entry of http.api_keys: {"name": ..., "sha256": ...}, both required.
 * A raw key where the digest belongs is the likeliest mistake, so the
 * message says what is expected rather than quoting the value. */
static int parse_api_key(tly_config_t *config, json_t *object, const char *path,
                         tly_err_t *err) {
  char key_path[TLY_PATH_SIZE];
  const char *key, *name = NULL;
  json_t *value;
  unsigned char digest[TLY_SHA256_LEN];
  int have_digest = 0;
  if (check_object(err, path, object) != 0)
    return -1;
  json_object_foreach(object, key, value) {
    path_key(key_path, path, key);
    if (strcmp(key, "name") == 0) {
      name = json_string_value(value);
      if (!name)
        return fail(err, key_path, "must be a string");
      if (check_name(err, key_path, name) != 0)
        return -1;
      for (size_t i = 0; i < config->http.api_key_count; i++)
        if (strcmp(config->http.api_keys[i].name, name) == 0)
          return fail(err, key_path, "duplicate key name '%s'", name);
    } else if (strcmp(key, "sha256") == 0) {
      if (tly_sha256_hex_parse(json_string_value(value), digest) != 0)
        return fail(err, key_path,
                    "must be the SHA-256 of the key as 64 hex characters "
                    "(e.g. printf %%s \"$KEY\" | sha256sum); raw keys are "
                    "never configured");
      have_digest = 1;
    } else {
      return fail(err, key_path, "unknown key");
    }
  }
  if (!name) {
    path_key(key_path, path, "name");
    return fail(err, key_path, "required");
  }
  if (!have_digest) {
    path_key(key_path, path, "sha256");
    return fail(err, key_path, "required");
  }
  if (tly_config_add_api_key(config, name, digest) != 0)
    return fail(err, path, "out of memory");
  return 0;
}

int tly_config_apply_http(tly_config_t *config, json_t *section,
                          tly_err_t *err) {
  char path[TLY_PATH_SIZE], item_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "http", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "http", key);
    if (strcmp(key, "api_keys") == 0) {
      if (!json_is_array(value))
        return fail(err, path, "must be an array of {\"name\", \"sha256\"}");
      for (size_t i = 0; i < json_array_size(value); i++) {
        path_index(item_path, path, i);
        if (parse_api_key(config, json_array_get(value, i), item_path, err))
          return -1;
      }
    } else if (strcmp(key, "metrics_public") == 0) {
      if (!json_is_boolean(value))
        return fail(err, path, "must be true or false");
      config->http.metrics_public = json_is_true(value);
    } else if (strcmp(key, "max_body_bytes") == 0) {
      if (parse_int(err, path, value, 1024, 64 * TLY_MIB,
                    &config->http.max_body_bytes) != 0)
        return -1;
    } else if (strcmp(key, "max_url_bytes") == 0) {
      if (parse_int(err, path, value, 256, 16384,
                    &config->http.max_url_bytes) != 0)
        return -1;
    } else if (strcmp(key, "max_connections") == 0) {
      if (parse_int(err, path, value, 16, 1000000,
                    &config->http.max_connections) != 0)
        return -1;
    } else if (strcmp(key, "max_connections_per_ip") == 0) {
      if (parse_int(err, path, value, 0, 1000000,
                    &config->http.max_connections_per_ip) != 0)
        return -1;
    } else if (strcmp(key, "header_timeout_ms") == 0) {
      if (parse_int(err, path, value, 100, 600000,
                    &config->http.header_timeout_ms) != 0)
        return -1;
    } else if (strcmp(key, "request_timeout_ms") == 0) {
      if (parse_int(err, path, value, 100, 3600000,
                    &config->http.request_timeout_ms) != 0)
        return -1;
    } else if (strcmp(key, "threads") == 0) {
      if (parse_int(err, path, value, 0, TLY_HTTP_THREADS_MAX,
                    &config->http.threads) != 0)
        return -1;
    } else {
      return fail(err, path, "unknown key");
    }
  }
  /* Checked once the section is read, whatever the keys' order. */
  if (config->http.max_connections_per_ip > config->http.max_connections)
    return fail(err, "http.max_connections_per_ip",
                "must be at most http.max_connections (%lld)",
                (long long)config->http.max_connections);
  if (config->http.request_timeout_ms < config->http.header_timeout_ms)
    return fail(err, "http.request_timeout_ms",
                "must be at least http.header_timeout_ms (%lld)",
                (long long)config->http.header_timeout_ms);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The Stripe section. Keys, not secrets, live in the file: the API key is  */
/* named by an environment variable and read from it here, once.            */

/* Secrets are wiped, not just freed: freed memory is read again by the
 * next malloc, and a core dump shows whatever is left in it. */
static void secret_free(char *secret) {
  if (!secret)
    return;
  OPENSSL_cleanse(secret, strlen(secret));
  free(secret);
}

void tly_config_stripe_clear(tly_stripe_config_t *stripe) {
  secret_free(stripe->secret_key);
  for (size_t i = 0; i < stripe->webhook_secret_count; i++)
    secret_free(stripe->webhook_secrets[i]);
  free(stripe->webhook_secrets);
  free(stripe->prices);
  free(stripe->meters);
  free(stripe->plan_prices);
}

/* A non-empty string shorter than size, copied to out. */
static int parse_text(tly_err_t *err, const char *path, const json_t *value,
                      char *out, size_t size) {
  const char *text = json_string_value(value);
  if (!text || !*text || strlen(text) >= size)
    return fail(err, path, "must be a string of 1 to %zu characters", size - 1);
  snprintf(out, size, "%s", text);
  return 0;
}

/* Stripe ids and meter names go into form bodies and logs: printable
 * ASCII without spaces is what Stripe itself issues. */
static int check_stripe_id(tly_err_t *err, const char *path, const char *id,
                           size_t size) {
  size_t len = strlen(id);
  if (len == 0 || len >= size)
    return fail(err, path, "must be 1 to %zu characters", size - 1);
  for (size_t i = 0; i < len; i++)
    if (id[i] <= ' ' || id[i] > '~')
      return fail(err, path, "must be printable ASCII without spaces");
  return 0;
}

static int check_url(tly_err_t *err, const char *path, const char *url) {
  if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
    return fail(err, path, "must be an http:// or https:// URL");
  for (const char *p = url; *p; p++)
    if (*p <= ' ' || *p > '~')
      return fail(err, path, "must be printable ASCII without spaces");
  return 0;
}

/* The name of an environment variable: [A-Za-z_][A-Za-z0-9_]*. A value
 * that looks like a Stripe key or secret is refused by name, since pasting
 * the key where its variable's name belongs is the likeliest mistake and
 * the message must not quote it. */
static int parse_env_name(tly_err_t *err, const char *path, const json_t *value,
                          char *out, size_t size) {
  static const char *const key_prefixes[] = {"sk_", "rk_", "pk_", "whsec_"};
  const char *name = json_string_value(value);
  int valid = name && *name && strlen(name) < size &&
              (isalpha((unsigned char)name[0]) || name[0] == '_');
  for (const char *p = name; valid && *p; p++)
    valid = isalnum((unsigned char)*p) || *p == '_';
  for (size_t i = 0; name && i < TLY_COUNT(key_prefixes); i++)
    if (strncmp(name, key_prefixes[i], strlen(key_prefixes[i])) == 0)
      return fail(err, path,
                  "must name an environment variable (e.g. "
                  "STRIPE_SECRET_KEY) that holds the secret, never the "
                  "secret itself");
  if (!valid)
    return fail(err, path,
                "must be the name of an environment variable "
                "([A-Za-z_][A-Za-z0-9_]*, below %zu characters)",
                size);
  snprintf(out, size, "%s", name);
  return 0;
}

/* Takes ownership of secret (wiped on failure). */
static int add_webhook_secret(tly_err_t *err, const char *path,
                              tly_stripe_config_t *stripe, char *secret) {
  if (strncmp(secret, "whsec_", 6) != 0 || strlen(secret) <= 6) {
    secret_free(secret);
    return fail(err, path,
                "a webhook endpoint secret starts with \"whsec_\" (the "
                "endpoint's signing secret, not an API key)");
  }
  for (const char *p = secret; *p; p++)
    if (*p <= ' ' || *p > '~') {
      secret_free(secret);
      return fail(err, path, "must be printable ASCII without spaces");
    }
  char **grown = realloc(stripe->webhook_secrets,
                         (stripe->webhook_secret_count + 1) * sizeof(*grown));
  if (!grown) {
    secret_free(secret);
    return fail(err, path, "out of memory");
  }
  stripe->webhook_secrets = grown;
  stripe->webhook_secrets[stripe->webhook_secret_count++] = secret;
  return 0;
}

static int parse_webhook_secrets(tly_err_t *err, const char *path,
                                 const json_t *value,
                                 tly_stripe_config_t *stripe) {
  char item_path[TLY_PATH_SIZE];
  if (!json_is_array(value) || json_array_size(value) == 0)
    return fail(err, path,
                "must be an array of endpoint secrets (\"whsec_...\")");
  for (size_t i = 0; i < json_array_size(value); i++) {
    const char *text = json_string_value(json_array_get(value, i));
    path_index(item_path, path, i);
    if (!text)
      return fail(err, item_path, "must be a string");
    char *secret = strdup(text);
    if (!secret)
      return fail(err, item_path, "out of memory");
    if (add_webhook_secret(err, item_path, stripe, secret))
      return -1;
  }
  return 0;
}

/* The variable may hold several secrets (rotation), separated by commas or
 * white space. */
static int load_webhook_secrets_env(tly_err_t *err, const char *path,
                                    tly_stripe_config_t *stripe) {
  const char *value = getenv(stripe->webhook_secrets_env);
  size_t before = stripe->webhook_secret_count;
  if (!value || !*value)
    return fail(err, path, "environment variable %s is not set",
                stripe->webhook_secrets_env);
  while (*value) {
    size_t skip = strspn(value, ", \t\r\n");
    value += skip;
    size_t len = strcspn(value, ", \t\r\n");
    if (!len)
      break;
    char *secret = strndup(value, len);
    if (!secret)
      return fail(err, path, "out of memory");
    if (add_webhook_secret(err, path, stripe, secret))
      return -1;
    value += len;
  }
  if (stripe->webhook_secret_count == before)
    return fail(err, path, "environment variable %s holds no secret",
                stripe->webhook_secrets_env);
  return 0;
}

static int parse_stripe_prices(tly_err_t *err, const char *path, json_t *object,
                               tly_stripe_config_t *stripe) {
  char price_path[TLY_PATH_SIZE];
  const char *price_id;
  json_t *value;
  if (check_object(err, path, object) != 0)
    return -1;
  stripe->prices =
      calloc(json_object_size(object) + 1, sizeof(*stripe->prices));
  if (!stripe->prices)
    return fail(err, path, "out of memory");
  json_object_foreach(object, price_id, value) {
    tly_stripe_price_t *price = &stripe->prices[stripe->price_count];
    path_key(price_path, path, price_id);
    if (check_stripe_id(err, price_path, price_id, sizeof(price->price_id)))
      return -1;
    const char *plan = json_string_value(value);
    if (!plan || !valid_name(plan))
      return fail(err, price_path, "must be a plan name");
    snprintf(price->price_id, sizeof(price->price_id), "%s", price_id);
    snprintf(price->plan, sizeof(price->plan), "%s", plan);
    stripe->price_count++;
  }
  return 0;
}

static int parse_stripe_meters(tly_err_t *err, const char *path, json_t *object,
                               tly_stripe_config_t *stripe) {
  char feature_path[TLY_PATH_SIZE];
  const char *feature;
  json_t *value;
  if (check_object(err, path, object) != 0)
    return -1;
  stripe->meters =
      calloc(json_object_size(object) + 1, sizeof(*stripe->meters));
  if (!stripe->meters)
    return fail(err, path, "out of memory");
  json_object_foreach(object, feature, value) {
    tly_stripe_meter_t *meter = &stripe->meters[stripe->meter_count];
    path_key(feature_path, path, feature);
    if (check_name(err, feature_path, feature) != 0)
      return -1;
    const char *event_name = json_string_value(value);
    if (!event_name)
      return fail(err, feature_path, "must be a Stripe meter event_name");
    if (check_stripe_id(err, feature_path, event_name,
                        sizeof(meter->event_name)))
      return -1;
    snprintf(meter->feature, sizeof(meter->feature), "%s", feature);
    snprintf(meter->event_name, sizeof(meter->event_name), "%s", event_name);
    stripe->meter_count++;
  }
  return 0;
}

int tly_config_apply_stripe(tly_config_t *config, json_t *section,
                            tly_err_t *err) {
  tly_stripe_config_t *stripe = &config->stripe;
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "stripe", section) != 0)
    return -1;
  stripe->configured = 1;
  json_object_foreach(section, key, value) {
    int rc = 0;
    path_key(path, "stripe", key);
    if (strcmp(key, "api_base") == 0) {
      rc = parse_text(err, path, value, stripe->api_base,
                      sizeof(stripe->api_base)) ||
           check_url(err, path, stripe->api_base);
      size_t len = strlen(stripe->api_base);
      while (!rc && len > 8 && stripe->api_base[len - 1] == '/')
        stripe->api_base[--len] = '\0';
    } else if (strcmp(key, "secret_key_env") == 0) {
      rc = parse_env_name(err, path, value, stripe->secret_key_env,
                          sizeof(stripe->secret_key_env));
      if (!rc) {
        const char *secret = getenv(stripe->secret_key_env);
        if (!secret || !*secret)
          rc = fail(err, path, "environment variable %s is not set",
                    stripe->secret_key_env);
        else if (!(stripe->secret_key = strdup(secret)))
          rc = fail(err, path, "out of memory");
      }
    } else if (strcmp(key, "secret_key") == 0) {
      rc = fail(err, path,
                "the API key never goes in the file: put it in an "
                "environment variable and name that in "
                "stripe.secret_key_env");
    } else if (strcmp(key, "api_version") == 0) {
      rc = parse_text(err, path, value, stripe->api_version,
                      sizeof(stripe->api_version)) ||
           check_stripe_id(err, path, stripe->api_version,
                           sizeof(stripe->api_version));
    } else if (strcmp(key, "webhook_secrets") == 0) {
      rc = parse_webhook_secrets(err, path, value, stripe);
    } else if (strcmp(key, "webhook_secrets_env") == 0) {
      rc = parse_env_name(err, path, value, stripe->webhook_secrets_env,
                          sizeof(stripe->webhook_secrets_env)) ||
           load_webhook_secrets_env(err, path, stripe);
    } else if (strcmp(key, "webhook_tolerance_s") == 0) {
      rc = parse_int(err, path, value, 1, 86400, &stripe->webhook_tolerance_s);
    } else if (strcmp(key, "prices") == 0) {
      rc = parse_stripe_prices(err, path, value, stripe);
    } else if (strcmp(key, "meters") == 0) {
      rc = parse_stripe_meters(err, path, value, stripe);
    } else if (strcmp(key, "report_window_s") == 0) {
      /* Windows are sums of the usage history's UTC hours, so only whole
       * hours can be summed exactly. */
      rc = parse_int(err, path, value, 3600, 86400, &stripe->report_window_s);
      if (!rc && stripe->report_window_s % 3600 != 0)
        rc = fail(err, path,
                  "must be a whole number of hours: a positive "
                  "multiple of 3600");
    } else if (strcmp(key, "max_requests_per_s") == 0) {
      rc = parse_int(err, path, value, 1, 10000, &stripe->max_requests_per_s);
    } else if (strcmp(key, "retry_max_s") == 0) {
      rc = parse_int(err, path, value, 1, 86400, &stripe->retry_max_s);
    } else if (strcmp(key, "timeout_ms") == 0) {
      rc = parse_int(err, path, value, 100, 120000, &stripe->timeout_ms);
    } else if (tly_config_apply_stripe_plans(config, key, value, err, &rc)) {
      /* rc set */
    } else if (strcmp(key, "portal_return_url") == 0) {
      rc = parse_text(err, path, value, stripe->portal_return_url,
                      sizeof(stripe->portal_return_url)) ||
           check_url(err, path, stripe->portal_return_url);
    } else {
      rc = fail(err, path, "unknown key");
    }
    if (rc != 0)
      return -1;
  }
  return 0;
}

/* stripe.prices name plans, which may be defined after the section. */
int tly_config_check_stripe_prices(const tly_config_t *config, tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  for (size_t i = 0; i < config->stripe.price_count; i++) {
    const tly_stripe_price_t *price = &config->stripe.prices[i];
    if (tly_config_plan(config, price->plan))
      continue;
    path_key(path, "stripe.prices", price->price_id);
    return fail(err, path, "no plan named '%s'", price->plan);
  }
  return 0;
}

int tly_config_stripe_reports(const tly_config_t *config) {
  return config->stripe.configured && config->stripe.meter_count > 0 &&
         config->stripe.secret_key != NULL;
}

const char *tly_config_stripe_meter(const tly_config_t *config,
                                    const char *feature) {
  for (size_t i = 0; i < config->stripe.meter_count; i++)
    if (strcmp(config->stripe.meters[i].feature, feature) == 0)
      return config->stripe.meters[i].event_name;
  return NULL;
}

const char *tly_config_stripe_plan(const tly_config_t *config,
                                   const char *price_id) {
  if (!config || !price_id)
    return NULL;
  for (size_t i = 0; i < config->stripe.price_count; i++)
    if (strcmp(config->stripe.prices[i].price_id, price_id) == 0)
      return config->stripe.prices[i].plan;
  for (size_t i = 0; i < config->stripe.plan_price_count; i++)
    if (strcmp(config->stripe.plan_prices[i].base_price_id, price_id) == 0)
      return config->stripe.plan_prices[i].plan;
  return NULL;
}
