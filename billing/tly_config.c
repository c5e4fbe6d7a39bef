/*
 * tly_config.c - the built-in configuration and the JSON config loader.
 *
 * The fold trusts its config completely (it never re-checks a tier order or a
 * threshold range), so every check lives here and runs once, at startup: the
 * file is applied on top of tly_config_default() and the first problem stops
 * the load with "<json path>: <reason>". Keys are checked in document order so
 * "first" means what a reader of the file would call first; references between
 * sections (default_plans -> plans) are checked after the whole file is read,
 * since a plan may be defined after the default that names it.
 *
 * Ownership: a tly_config_t owns its models and plans arrays, and each plan
 * owns its limits and prices arrays; tly_config_free releases all of them.
 * Money is integer micro-units throughout; a JSON real where an integer is
 * expected is an error rather than a rounding.
 *
 * This file holds the defaults, the lookups, the dates and the sections the
 * fold reads (credits, pricing, thresholds, cycles, default_plans, plans,
 * retention, events); the ports' sections ("http", "stripe", with the
 * secrets read from the environment) are tly_config_ports.c's, and the
 * checks both use are tly_config_internal.h's.
 */
#include "tly_config.h"

#include "tly_config_internal.h"
#include "tly_event.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TLY_MARGIN_BPS_MAX 100000 /* 1,000 %: anything above is a typo */

/* ------------------------------------------------------------------------ */
/* Built-in configuration, as tables so the defaults read like the docs.    */

typedef struct {
  const char *feature;
  int64_t limit;
  tly_limit_mode_t mode;
} tly_limit_seed_t;

typedef struct {
  const char *feature;
  tly_price_model_t model;
  size_t tier_count;
  tly_tier_t tiers[4];
} tly_price_seed_t;

typedef struct {
  const char *name;
  int64_t credits;
  int64_t base_price_micros;
  const tly_limit_seed_t *limits;
  size_t limit_count;
  const tly_price_seed_t *prices;
  size_t price_count;
} tly_plan_seed_t;

static const tly_limit_seed_t anonymous_limits[] = {
    {"api_calls", 100, TLY_LIMIT_HARD},
    {"ai_tokens", 10000, TLY_LIMIT_HARD},
    {"storage_bytes", 10 * TLY_MIB, TLY_LIMIT_HARD},
};
static const tly_limit_seed_t free_limits[] = {
    {"api_calls", 1000, TLY_LIMIT_HARD},
    {"ai_tokens", 100000, TLY_LIMIT_HARD},
    {"storage_bytes", 100 * TLY_MIB, TLY_LIMIT_HARD},
};
static const tly_limit_seed_t paid_limits[] = {
    {"api_calls", 100000, TLY_LIMIT_SOFT},
    {"ai_tokens", 5000000, TLY_LIMIT_SOFT},
    {"storage_bytes", TLY_UNLIMITED, TLY_LIMIT_SOFT},
};
static const tly_price_seed_t paid_prices[] = {
    {"api_calls", TLY_PRICE_GRADUATED, 2, {{100000, 0}, {-1, 100}}},
    {"storage_bytes", TLY_PRICE_VOLUME, 2, {{10 * TLY_GIB, 0}, {-1, 1}}},
};
static const tly_limit_seed_t starter_limits[] = {
    {"api_calls", 10000, TLY_LIMIT_HARD},
    {"ai_tokens", 1000000, TLY_LIMIT_SOFT},
    {"storage_bytes", TLY_GIB, TLY_LIMIT_HARD},
};
static const tly_price_seed_t starter_prices[] = {
    {"api_calls", TLY_PRICE_GRADUATED, 2, {{10000, 0}, {-1, 200}}},
};
static const tly_limit_seed_t professional_limits[] = {
    {"api_calls", 500000, TLY_LIMIT_SOFT},
    {"ai_tokens", 20000000, TLY_LIMIT_SOFT},
    {"storage_bytes", 100 * TLY_GIB, TLY_LIMIT_HARD},
};
static const tly_price_seed_t professional_prices[] = {
    {"api_calls",
     TLY_PRICE_GRADUATED,
     3,
     {{500000, 0}, {5000000, 50}, {-1, 20}}},
    {"storage_bytes",
     TLY_PRICE_VOLUME,
     3,
     {{10 * TLY_GIB, 0}, {100 * TLY_GIB, 2}, {-1, 1}}},
};
static const tly_limit_seed_t enterprise_limits[] = {
    {"api_calls", 10000000, TLY_LIMIT_SOFT},
    {"ai_tokens", TLY_UNLIMITED, TLY_LIMIT_SOFT},
    {"storage_bytes", TLY_UNLIMITED, TLY_LIMIT_SOFT},
};
static const tly_price_seed_t enterprise_prices[] = {
    {"api_calls",
     TLY_PRICE_VOLUME,
     3,
     {{1000000, 50}, {10000000, 30}, {-1, 10}}},
};
/* Pay-per-use never blocks: no limits, every call is billed. */
static const tly_price_seed_t pay_per_use_prices[] = {
    {"api_calls", TLY_PRICE_GRADUATED, 3, {{1000, 0}, {100000, 100}, {-1, 50}}},
};

#define TLY_SEED_LIMITS(a) a, TLY_COUNT(a)
static const tly_plan_seed_t plan_seeds[] = {
    {"anonymous", 1000, 0, TLY_SEED_LIMITS(anonymous_limits), NULL, 0},
    {"free", 2500, 0, TLY_SEED_LIMITS(free_limits), NULL, 0},
    {"paid", 50000, 20000000, TLY_SEED_LIMITS(paid_limits),
     TLY_SEED_LIMITS(paid_prices)},
    {"starter", 10000, 9000000, TLY_SEED_LIMITS(starter_limits),
     TLY_SEED_LIMITS(starter_prices)},
    {"professional", 100000, 49000000, TLY_SEED_LIMITS(professional_limits),
     TLY_SEED_LIMITS(professional_prices)},
    {"enterprise", TLY_UNLIMITED, 500000000, TLY_SEED_LIMITS(enterprise_limits),
     TLY_SEED_LIMITS(enterprise_prices)},
    {"pay_per_use", TLY_UNLIMITED, 0, NULL, 0,
     TLY_SEED_LIMITS(pay_per_use_prices)},
};

/* USD list prices per million tokens, in micros (2.50 USD = 2,500,000). */
static const tly_model_price_t model_seeds[] = {
    {"gpt-4o", 2500000, 10000000},        {"gpt-4o-mini", 150000, 600000},
    {"claude-sonnet", 3000000, 15000000}, {"claude-haiku", 800000, 4000000},
    {"gemini-flash", 100000, 400000},     {"gemini-pro", 1250000, 10000000},
};

static const int default_thresholds[] = {25, 50, 75, 90, 100};

static void plan_clear(tly_plan_t *plan) {
  free(plan->limits);
  free(plan->prices);
  plan->limits = NULL;
  plan->prices = NULL;
  plan->limit_count = 0;
  plan->price_count = 0;
}

void tly_config_free(tly_config_t *config) {
  if (!config)
    return;
  for (size_t i = 0; i < config->plan_count; i++)
    plan_clear(&config->plans[i]);
  free(config->plans);
  free(config->models);
  free(config->http.api_keys);
  tly_config_stripe_clear(&config->stripe);
  tly_config_notifications_clear(&config->notifications);
  free(config->meters);
  free(config);
}

static int plan_from_seed(const tly_plan_seed_t *seed, tly_plan_t *plan) {
  memset(plan, 0, sizeof(*plan));
  snprintf(plan->name, sizeof(plan->name), "%s", seed->name);
  plan->credits = seed->credits;
  plan->base_price_micros = seed->base_price_micros;
  if (seed->limit_count) {
    plan->limits = calloc(seed->limit_count, sizeof(*plan->limits));
    if (!plan->limits)
      goto fail;
  }
  for (size_t i = 0; i < seed->limit_count; i++) {
    tly_feature_limit_t *limit = &plan->limits[i];
    snprintf(limit->feature, sizeof(limit->feature), "%s",
             seed->limits[i].feature);
    limit->limit = seed->limits[i].limit;
    limit->mode = seed->limits[i].mode;
  }
  plan->limit_count = seed->limit_count;
  if (seed->price_count) {
    plan->prices = calloc(seed->price_count, sizeof(*plan->prices));
    if (!plan->prices)
      goto fail;
  }
  for (size_t i = 0; i < seed->price_count; i++) {
    tly_feature_price_t *price = &plan->prices[i];
    snprintf(price->feature, sizeof(price->feature), "%s",
             seed->prices[i].feature);
    price->model = seed->prices[i].model;
    price->tier_count = seed->prices[i].tier_count;
    memcpy(price->tiers, seed->prices[i].tiers,
           price->tier_count * sizeof(price->tiers[0]));
  }
  plan->price_count = seed->price_count;
  return 0;
fail:
  plan_clear(plan);
  return -1;
}

tly_config_t *tly_config_default(void) {
  tly_config_t *config = calloc(1, sizeof(*config));
  if (!config)
    return NULL;
  config->micros_per_credit = 1000;
  config->margin_bps = 2000;
  config->unknown_model = TLY_UNKNOWN_MODEL_DEAD_LETTER;
  snprintf(config->fallback.model, sizeof(config->fallback.model), "%s",
           "fallback");
  config->fallback.input_per_mtok = 1000000;
  config->fallback.output_per_mtok = 4000000;
  config->cycle_anchor_ms = 0; /* calendar months, UTC */
  config->threshold_count = TLY_COUNT(default_thresholds);
  memcpy(config->thresholds, default_thresholds, sizeof(default_thresholds));
  snprintf(config->default_plan[TLY_SUBJECT_USER], TLY_CONFIG_NAME_MAX, "%s",
           "free");
  snprintf(config->default_plan[TLY_SUBJECT_API_KEY], TLY_CONFIG_NAME_MAX, "%s",
           "free");
  snprintf(config->default_plan[TLY_SUBJECT_ANONYMOUS], TLY_CONFIG_NAME_MAX,
           "%s", "anonymous");
  config->http.metrics_public = 1;
  config->http.max_body_bytes = TLY_HTTP_DEFAULT_MAX_BODY_BYTES;
  config->http.max_url_bytes = TLY_HTTP_DEFAULT_MAX_URL_BYTES;
  config->http.max_connections = TLY_HTTP_DEFAULT_MAX_CONNECTIONS;
  config->http.max_connections_per_ip = TLY_HTTP_DEFAULT_MAX_CONNECTIONS_PER_IP;
  config->http.header_timeout_ms = TLY_HTTP_DEFAULT_HEADER_TIMEOUT_MS;
  config->http.request_timeout_ms = TLY_HTTP_DEFAULT_REQUEST_TIMEOUT_MS;
  config->retention.daily_days = TLY_DEFAULT_RETENTION_DAYS;
  config->retention.alerts_days = TLY_DEFAULT_RETENTION_DAYS;
  config->events.max_future_skew_ms = TLY_DEFAULT_MAX_FUTURE_SKEW_MS;
  config->events.dedupe_window_ms = TLY_DEFAULT_DEDUPE_WINDOW_MS;
  snprintf(config->stripe.api_base, sizeof(config->stripe.api_base), "%s",
           TLY_STRIPE_DEFAULT_API_BASE);
  snprintf(config->stripe.api_version, sizeof(config->stripe.api_version), "%s",
           TLY_STRIPE_DEFAULT_API_VERSION);
  config->stripe.webhook_tolerance_s = 300;
  config->stripe.report_window_s = 3600;
  config->stripe.max_requests_per_s = 25;
  config->stripe.retry_max_s = 300;
  config->stripe.timeout_ms = 10000;
  tly_config_notifications_defaults(&config->notifications);
  snprintf(config->stripe.proration_behavior,
           sizeof(config->stripe.proration_behavior), "create_prorations");

  config->models = calloc(TLY_COUNT(model_seeds), sizeof(*config->models));
  if (!config->models)
    goto fail;
  memcpy(config->models, model_seeds, sizeof(model_seeds));
  config->model_count = TLY_COUNT(model_seeds);

  config->plans = calloc(TLY_COUNT(plan_seeds), sizeof(*config->plans));
  if (!config->plans)
    goto fail;
  for (size_t i = 0; i < TLY_COUNT(plan_seeds); i++) {
    if (plan_from_seed(&plan_seeds[i], &config->plans[i]) != 0)
      goto fail;
    config->plan_count = i + 1;
  }
  return config;
fail:
  tly_config_free(config);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Lookups: plans, features and models are few, so a linear scan is enough. */

const tly_plan_t *tly_config_plan(const tly_config_t *config,
                                  const char *name) {
  if (!config || !name)
    return NULL;
  for (size_t i = 0; i < config->plan_count; i++)
    if (strcmp(config->plans[i].name, name) == 0)
      return &config->plans[i];
  return NULL;
}

const tly_feature_limit_t *tly_plan_limit(const tly_plan_t *plan,
                                          const char *feature) {
  if (!plan || !feature)
    return NULL;
  for (size_t i = 0; i < plan->limit_count; i++)
    if (strcmp(plan->limits[i].feature, feature) == 0)
      return &plan->limits[i];
  return NULL;
}

const tly_feature_price_t *tly_plan_price(const tly_plan_t *plan,
                                          const char *feature) {
  if (!plan || !feature)
    return NULL;
  for (size_t i = 0; i < plan->price_count; i++)
    if (strcmp(plan->prices[i].feature, feature) == 0)
      return &plan->prices[i];
  return NULL;
}

const tly_model_price_t *tly_config_model(const tly_config_t *config,
                                          const char *model) {
  if (!config || !model)
    return NULL;
  for (size_t i = 0; i < config->model_count; i++)
    if (strcmp(config->models[i].model, model) == 0)
      return &config->models[i];
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Validation helpers. Each returns 0, or -1 with err filled.               */

static int parse_thresholds(tly_err_t *err, const char *path,
                            const json_t *value, int *out, size_t *count) {
  char item_path[TLY_PATH_SIZE];
  size_t size = json_array_size(value);
  if (!json_is_array(value) || size == 0 || size > TLY_CONFIG_MAX_THRESHOLDS)
    return fail(err, path, "must be an array of 1 to %d percents",
                TLY_CONFIG_MAX_THRESHOLDS);
  for (size_t i = 0; i < size; i++) {
    int64_t percent = 0;
    path_index(item_path, path, i);
    if (parse_int(err, item_path, json_array_get(value, i), 1, 1000,
                  &percent) != 0)
      return -1;
    if (i > 0 && percent <= out[i - 1])
      return fail(err, item_path, "must be ascending");
    out[i] = (int)percent;
  }
  *count = size;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* RFC 3339 in UTC, integer arithmetic only.                                */

static int parse_digits(const char *text, int count, int *out) {
  int value = 0;
  for (int i = 0; i < count; i++) {
    if (!isdigit((unsigned char)text[i]))
      return -1;
    value = value * 10 + (text[i] - '0');
  }
  *out = value;
  return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil): exact for every year, no tables, no floating point. */
int64_t tly_days_from_civil(int64_t year, int64_t month, int64_t day) {
  year -= month <= 2;
  int64_t era = (year >= 0 ? year : year - 399) / 400;
  int64_t year_of_era = year - era * 400;
  int64_t day_of_year =
      (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  int64_t day_of_era =
      year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + day_of_era - 719468;
}

void tly_civil_from_days(int64_t days, int64_t *year, int64_t *month,
                         int64_t *day) {
  days += 719468;
  int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  int64_t day_of_era = days - era * 146097;
  int64_t year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 -
                         day_of_era / 146096) /
                        365;
  int64_t day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  int64_t mp = (5 * day_of_year + 2) / 153;
  *day = day_of_year - (153 * mp + 2) / 5 + 1;
  *month = mp + (mp < 10 ? 3 : -9);
  *year = year_of_era + era * 400 + (*month <= 2);
}

static int days_in_month(int year, int month) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return days[month - 1] + (month == 2 && leap);
}

/* "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)"; fractions below a millisecond
 * are dropped. Other offsets are refused rather than converted: cycles are
 * anchored in UTC and a local offset in the file is most likely a mistake. */
static int parse_rfc3339_utc(const char *text, int64_t *out_ms) {
  int year, month, day, hour, minute, second, millis = 0;
  if (strlen(text) < 20 || parse_digits(text, 4, &year) != 0 ||
      text[4] != '-' || parse_digits(text + 5, 2, &month) != 0 ||
      text[7] != '-' || parse_digits(text + 8, 2, &day) != 0 ||
      (text[10] != 'T' && text[10] != 't') ||
      parse_digits(text + 11, 2, &hour) != 0 || text[13] != ':' ||
      parse_digits(text + 14, 2, &minute) != 0 || text[16] != ':' ||
      parse_digits(text + 17, 2, &second) != 0)
    return -1;
  const char *rest = text + 19;
  if (*rest == '.') {
    int digits = 0;
    for (rest++; isdigit((unsigned char)*rest); rest++, digits++)
      if (digits < 3)
        millis = millis * 10 + (*rest - '0');
    if (digits == 0)
      return -1;
    for (; digits < 3; digits++)
      millis *= 10;
  }
  if (strcmp(rest, "Z") != 0 && strcmp(rest, "z") != 0 &&
      strcmp(rest, "+00:00") != 0)
    return -1;
  if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
      hour > 23 || minute > 59 || second > 59)
    return -1;
  int64_t seconds = tly_days_from_civil(year, month, day) * 86400 +
                    (int64_t)hour * 3600 + minute * 60 + second;
  *out_ms = seconds * 1000 + millis;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Sections.                                                                */

static int apply_credits(tly_config_t *config, json_t *section,
                         tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "credits", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "credits", key);
    if (strcmp(key, "micros_per_credit") == 0) {
      if (parse_int(err, path, value, 1, INT64_MAX,
                    &config->micros_per_credit) != 0)
        return -1;
    } else {
      return fail(err, path, "unknown key");
    }
  }
  return 0;
}

/* Both prices of a model; "required" forces a full definition (a model entry
 * with one price missing would silently bill that side at zero). */
static int parse_model_price(tly_err_t *err, const char *path, json_t *object,
                             int required, tly_model_price_t *price) {
  char key_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  int have_input = 0, have_output = 0;
  if (check_object(err, path, object) != 0)
    return -1;
  json_object_foreach(object, key, value) {
    path_key(key_path, path, key);
    if (strcmp(key, "input_per_mtok") == 0) {
      if (parse_int(err, key_path, value, 0, INT64_MAX,
                    &price->input_per_mtok) != 0)
        return -1;
      have_input = 1;
    } else if (strcmp(key, "output_per_mtok") == 0) {
      if (parse_int(err, key_path, value, 0, INT64_MAX,
                    &price->output_per_mtok) != 0)
        return -1;
      have_output = 1;
    } else {
      return fail(err, key_path, "unknown key");
    }
  }
  if (required && !have_input) {
    path_key(key_path, path, "input_per_mtok");
    return fail(err, key_path, "required");
  }
  if (required && !have_output) {
    path_key(key_path, path, "output_per_mtok");
    return fail(err, key_path, "required");
  }
  return 0;
}

static int apply_models(tly_config_t *config, json_t *models, tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *name;
  json_t *value;
  if (check_object(err, "pricing.models", models) != 0)
    return -1;
  json_object_foreach(models, name, value) {
    tly_model_price_t price;
    memset(&price, 0, sizeof(price));
    path_key(path, "pricing.models", name);
    if (check_name(err, path, name) != 0 ||
        parse_model_price(err, path, value, 1, &price) != 0)
      return -1;
    snprintf(price.model, sizeof(price.model), "%s", name);
    tly_model_price_t *existing =
        (tly_model_price_t *)tly_config_model(config, name);
    if (existing) {
      *existing = price;
      continue;
    }
    tly_model_price_t *grown = realloc(
        config->models, (config->model_count + 1) * sizeof(*config->models));
    if (!grown)
      return fail(err, path, "out of memory");
    config->models = grown;
    config->models[config->model_count++] = price;
  }
  return 0;
}

static int apply_pricing(tly_config_t *config, json_t *section,
                         tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "pricing", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "pricing", key);
    if (strcmp(key, "margin_bps") == 0) {
      if (parse_int(err, path, value, 0, TLY_MARGIN_BPS_MAX,
                    &config->margin_bps) != 0)
        return -1;
    } else if (strcmp(key, "unknown_model") == 0) {
      const char *mode = json_string_value(value);
      if (mode && strcmp(mode, "dead_letter") == 0)
        config->unknown_model = TLY_UNKNOWN_MODEL_DEAD_LETTER;
      else if (mode && strcmp(mode, "fallback") == 0)
        config->unknown_model = TLY_UNKNOWN_MODEL_FALLBACK;
      else
        return fail(err, path, "must be \"dead_letter\" or \"fallback\"");
    } else if (strcmp(key, "fallback") == 0) {
      /* Partial: a missing side keeps the built-in fallback price. */
      if (parse_model_price(err, path, value, 0, &config->fallback) != 0)
        return -1;
    } else if (strcmp(key, "models") == 0) {
      if (apply_models(config, value, err) != 0)
        return -1;
    } else {
      return fail(err, path, "unknown key");
    }
  }
  return 0;
}

static int apply_cycles(tly_config_t *config, json_t *section, tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "cycles", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "cycles", key);
    if (strcmp(key, "anchor") == 0) {
      const char *text = json_string_value(value);
      if (!text || parse_rfc3339_utc(text, &config->cycle_anchor_ms) != 0)
        return fail(err, path, "not an RFC 3339 UTC time");
    } else {
      return fail(err, path, "unknown key");
    }
  }
  return 0;
}

/* Only the names' shape is checked here; that each names a plan is checked
 * once all plans are known (see check_default_plans). */
static int apply_default_plans(tly_config_t *config, json_t *section,
                               tly_err_t *err) {
  static const struct {
    const char *key;
    tly_subject_kind_t kind;
  } kinds[] = {{"user", TLY_SUBJECT_USER},
               {"api_key", TLY_SUBJECT_API_KEY},
               {"anonymous", TLY_SUBJECT_ANONYMOUS}};
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "default_plans", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    size_t k = 0;
    path_key(path, "default_plans", key);
    while (k < TLY_COUNT(kinds) && strcmp(kinds[k].key, key) != 0)
      k++;
    if (k == TLY_COUNT(kinds))
      return fail(err, path, "unknown key");
    const char *name = json_string_value(value);
    if (!name)
      return fail(err, path, "must be a plan name");
    if (check_name(err, path, name) != 0)
      return -1;
    snprintf(config->default_plan[kinds[k].kind], TLY_CONFIG_NAME_MAX, "%s",
             name);
  }
  return 0;
}

static int check_default_plans(const tly_config_t *config, json_t *section,
                               tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  json_object_foreach(section, key, value) {
    const char *name = json_string_value(value);
    if (!tly_config_plan(config, name)) {
      path_key(path, "default_plans", key);
      return fail(err, path, "no plan named '%s'", name);
    }
  }
  return 0;
}

static int parse_limit(tly_err_t *err, const char *path, json_t *object,
                       tly_feature_limit_t *limit) {
  char key_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  int have_limit = 0, unlimited = 0;
  if (check_object(err, path, object) != 0)
    return -1;
  limit->mode = TLY_LIMIT_HARD;
  json_object_foreach(object, key, value) {
    path_key(key_path, path, key);
    if (strcmp(key, "limit") == 0) {
      if (parse_int(err, key_path, value, 0, INT64_MAX, &limit->limit) != 0)
        return -1;
      have_limit = 1;
    } else if (strcmp(key, "mode") == 0) {
      const char *mode = json_string_value(value);
      if (mode && strcmp(mode, "hard") == 0)
        limit->mode = TLY_LIMIT_HARD;
      else if (mode && strcmp(mode, "soft") == 0)
        limit->mode = TLY_LIMIT_SOFT;
      else
        return fail(err, key_path, "must be \"hard\" or \"soft\"");
    } else if (strcmp(key, "unlimited") == 0) {
      if (!json_is_boolean(value))
        return fail(err, key_path, "must be true or false");
      unlimited = json_is_true(value);
    } else {
      return fail(err, key_path, "unknown key");
    }
  }
  if (unlimited && have_limit)
    return fail(err, path,
                "\"limit\" and \"unlimited\": true exclude each "
                "other");
  if (!unlimited && !have_limit)
    return fail(err, path, "needs \"limit\" or \"unlimited\": true");
  if (unlimited)
    limit->limit = TLY_UNLIMITED;
  return 0;
}

static int parse_tiers(tly_err_t *err, const char *path, json_t *array,
                       tly_feature_price_t *price) {
  char tier_path[TLY_PATH_SIZE], key_path[TLY_PATH_SIZE];
  size_t size = json_array_size(array);
  if (!json_is_array(array) || size == 0 || size > TLY_CONFIG_MAX_TIERS)
    return fail(err, path, "must be an array of 1 to %d tiers",
                TLY_CONFIG_MAX_TIERS);
  for (size_t i = 0; i < size; i++) {
    tly_tier_t *tier = &price->tiers[i];
    json_t *object = json_array_get(array, i), *value;
    const char *key;
    int have_up_to = 0, have_unit = 0;
    path_index(tier_path, path, i);
    if (check_object(err, tier_path, object) != 0)
      return -1;
    json_object_foreach(object, key, value) {
      path_key(key_path, tier_path, key);
      if (strcmp(key, "up_to") == 0) {
        if (json_is_null(value)) {
          if (i + 1 != size)
            return fail(err, key_path,
                        "only the last tier may have up_to null");
          tier->up_to = -1;
        } else {
          if (!json_is_integer(value) || json_integer_value(value) < 1)
            return fail(err, key_path, "must be an integer >= 1 or null");
          tier->up_to = (int64_t)json_integer_value(value);
          if (i > 0 && tier->up_to <= price->tiers[i - 1].up_to)
            return fail(err, key_path,
                        "must be greater than the previous tier's");
        }
        have_up_to = 1;
      } else if (strcmp(key, "unit_micros") == 0) {
        if (parse_int(err, key_path, value, 0, INT64_MAX, &tier->unit_micros) !=
            0)
          return -1;
        have_unit = 1;
      } else {
        return fail(err, key_path, "unknown key");
      }
    }
    if (!have_up_to) {
      path_key(key_path, tier_path, "up_to");
      return fail(err, key_path, "required (null for the last tier)");
    }
    if (!have_unit) {
      path_key(key_path, tier_path, "unit_micros");
      return fail(err, key_path, "required");
    }
  }
  if (price->tiers[size - 1].up_to != -1)
    return fail(err, path, "the last tier must have up_to null");
  price->tier_count = size;
  return 0;
}

static int parse_price(tly_err_t *err, const char *path, json_t *object,
                       tly_feature_price_t *price) {
  char key_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  int have_tiers = 0;
  if (check_object(err, path, object) != 0)
    return -1;
  price->model = TLY_PRICE_GRADUATED;
  json_object_foreach(object, key, value) {
    path_key(key_path, path, key);
    if (strcmp(key, "model") == 0) {
      const char *model = json_string_value(value);
      if (model && strcmp(model, "graduated") == 0)
        price->model = TLY_PRICE_GRADUATED;
      else if (model && strcmp(model, "volume") == 0)
        price->model = TLY_PRICE_VOLUME;
      else
        return fail(err, key_path, "must be \"graduated\" or \"volume\"");
    } else if (strcmp(key, "tiers") == 0) {
      if (parse_tiers(err, key_path, value, price) != 0)
        return -1;
      have_tiers = 1;
    } else {
      return fail(err, key_path, "unknown key");
    }
  }
  if (!have_tiers) {
    path_key(key_path, path, "tiers");
    return fail(err, key_path, "required");
  }
  return 0;
}

static int parse_limits(tly_err_t *err, const char *path, json_t *object,
                        tly_plan_t *plan) {
  char feature_path[TLY_PATH_SIZE];
  const char *feature;
  json_t *value;
  if (check_object(err, path, object) != 0)
    return -1;
  plan->limits = calloc(json_object_size(object) + 1, sizeof(*plan->limits));
  if (!plan->limits)
    return fail(err, path, "out of memory");
  json_object_foreach(object, feature, value) {
    tly_feature_limit_t *limit = &plan->limits[plan->limit_count];
    path_key(feature_path, path, feature);
    if (check_name(err, feature_path, feature) != 0 ||
        parse_limit(err, feature_path, value, limit) != 0)
      return -1;
    snprintf(limit->feature, sizeof(limit->feature), "%s", feature);
    plan->limit_count++;
  }
  return 0;
}

static int parse_prices(tly_err_t *err, const char *path, json_t *object,
                        tly_plan_t *plan) {
  char feature_path[TLY_PATH_SIZE];
  const char *feature;
  json_t *value;
  if (check_object(err, path, object) != 0)
    return -1;
  plan->prices = calloc(json_object_size(object) + 1, sizeof(*plan->prices));
  if (!plan->prices)
    return fail(err, path, "out of memory");
  json_object_foreach(object, feature, value) {
    tly_feature_price_t *price = &plan->prices[plan->price_count];
    path_key(feature_path, path, feature);
    if (check_name(err, feature_path, feature) != 0 ||
        parse_price(err, feature_path, value, price) != 0)
      return -1;
    snprintf(price->feature, sizeof(price->feature), "%s", feature);
    plan->price_count++;
  }
  return 0;
}

/* A plan in the file is whole: keys it leaves out take the empty value (no
 * limits, no prices, base price 0, the default thresholds), never the
 * built-in plan's, so what the file says is all the plan is. */
static int parse_plan(tly_err_t *err, const char *path, const char *name,
                      json_t *object, tly_plan_t *plan) {
  char key_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  int have_credits = 0;
  memset(plan, 0, sizeof(*plan));
  if (check_name(err, path, name) != 0 || check_object(err, path, object) != 0)
    return -1;
  snprintf(plan->name, sizeof(plan->name), "%s", name);
  json_object_foreach(object, key, value) {
    int rc = 0;
    path_key(key_path, path, key);
    if (strcmp(key, "credits") == 0) {
      rc = parse_int(err, key_path, value, TLY_UNLIMITED, INT64_MAX,
                     &plan->credits);
      have_credits = 1;
    } else if (strcmp(key, "base_price_micros") == 0) {
      rc = parse_int(err, key_path, value, 0, INT64_MAX,
                     &plan->base_price_micros);
    } else if (strcmp(key, "thresholds") == 0) {
      rc = parse_thresholds(err, key_path, value, plan->thresholds,
                            &plan->threshold_count);
    } else if (strcmp(key, "limits") == 0) {
      rc = parse_limits(err, key_path, value, plan);
    } else if (strcmp(key, "prices") == 0) {
      rc = parse_prices(err, key_path, value, plan);
    } else {
      rc = fail(err, key_path, "unknown key");
    }
    if (rc != 0)
      return -1;
  }
  if (!have_credits) {
    path_key(key_path, path, "credits");
    return fail(err, key_path, "required");
  }
  return 0;
}

static int apply_plans(tly_config_t *config, json_t *section, tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *name;
  json_t *value;
  tly_plan_t plan;
  memset(&plan, 0, sizeof(plan));
  if (check_object(err, "plans", section) != 0)
    return -1;
  json_object_foreach(section, name, value) {
    path_key(path, "plans", name);
    if (parse_plan(err, path, name, value, &plan) != 0)
      goto fail;
    tly_plan_t *existing = (tly_plan_t *)tly_config_plan(config, name);
    if (existing) {
      plan_clear(existing);
      *existing = plan;
    } else {
      tly_plan_t *grown = realloc(config->plans, (config->plan_count + 1) *
                                                     sizeof(*config->plans));
      if (!grown) {
        fail(err, path, "out of memory");
        goto fail;
      }
      config->plans = grown;
      config->plans[config->plan_count++] = plan;
    }
    /* Ownership of the arrays moved into config. */
    memset(&plan, 0, sizeof(plan));
  }
  return 0;
fail:
  plan_clear(&plan);
  return -1;
}

static int apply_retention(tly_config_t *config, json_t *section,
                           tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "retention", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "retention", key);
    int64_t *days =
        strcmp(key, "daily_days") == 0    ? &config->retention.daily_days
        : strcmp(key, "alerts_days") == 0 ? &config->retention.alerts_days
                                          : NULL;
    if (!days)
      return fail(err, path, "unknown key");
    /* At least a day; at most ten years, so day arithmetic stays small. */
    if (parse_int(err, path, value, 1, 3660, days) != 0)
      return -1;
  }
  return 0;
}

/* How far an event's occurred_at may lie ahead of the clock that judges it
 * (tly_event_time.h): 0 (none) to a year; the dedupe window: an hour to
 * 366 days (tly_config.h). */
static int apply_events(tly_config_t *config, json_t *section, tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *key;
  json_t *value;
  if (check_object(err, "events", section) != 0)
    return -1;
  json_object_foreach(section, key, value) {
    path_key(path, "events", key);
    if (strcmp(key, "max_future_skew_ms") == 0) {
      if (parse_int(err, path, value, 0, TLY_MAX_FUTURE_SKEW_LIMIT_MS,
                    &config->events.max_future_skew_ms) != 0)
        return -1;
    } else if (strcmp(key, "dedupe_window_ms") == 0) {
      if (parse_int(err, path, value, TLY_DEDUPE_WINDOW_MIN_MS,
                    TLY_DEDUPE_WINDOW_MAX_MS,
                    &config->events.dedupe_window_ms) != 0)
        return -1;
    } else {
      return fail(err, path, "unknown key");
    }
  }
  return 0;
}

static int apply_root(tly_config_t *config, json_t *root, tly_err_t *err) {
  const char *key;
  json_t *value, *default_plans = NULL;
  if (!json_is_object(root)) {
    snprintf(err->text, err->size, "config: must be a JSON object");
    return -1;
  }
  json_object_foreach(root, key, value) {
    int rc;
    if (strcmp(key, "credits") == 0) {
      rc = apply_credits(config, value, err);
    } else if (strcmp(key, "pricing") == 0) {
      rc = apply_pricing(config, value, err);
    } else if (strcmp(key, "thresholds") == 0) {
      rc = parse_thresholds(err, "thresholds", value, config->thresholds,
                            &config->threshold_count);
    } else if (strcmp(key, "cycles") == 0) {
      rc = apply_cycles(config, value, err);
    } else if (strcmp(key, "default_plans") == 0) {
      rc = apply_default_plans(config, value, err);
      default_plans = value;
    } else if (strcmp(key, "plans") == 0) {
      rc = apply_plans(config, value, err);
    } else if (strcmp(key, "http") == 0) {
      rc = tly_config_apply_http(config, value, err);
    } else if (strcmp(key, "retention") == 0) {
      rc = apply_retention(config, value, err);
    } else if (strcmp(key, "events") == 0) {
      rc = apply_events(config, value, err);
    } else if (strcmp(key, "stripe") == 0) {
      rc = tly_config_apply_stripe(config, value, err);
    } else if (strcmp(key, "notifications") == 0) {
      rc = tly_config_apply_notifications(config, value, err);
    } else if (strcmp(key, "meters") == 0) {
      rc = tly_config_apply_meters(config, value, err);
    } else {
      rc = fail(err, key, "unknown key");
    }
    if (rc != 0)
      return -1;
  }
  if (default_plans && check_default_plans(config, default_plans, err) != 0)
    return -1;
  if (tly_config_check_meters(config, err) != 0)
    return -1;
  return tly_config_check_stripe_prices(config, err) ||
                 tly_config_check_stripe_plans(config, err)
             ? -1
             : 0;
}

/* ------------------------------------------------------------------------ */
/* Entry points.                                                            */

tly_config_t *tly_config_load_text(const char *text, size_t len, char *errstr,
                                   size_t errstr_size) {
  char scratch[1];
  tly_err_t err = {errstr, errstr_size};
  tly_config_t *config = NULL;
  json_t *root = NULL;
  json_error_t json_error;
  if (!errstr || errstr_size == 0) {
    /* Callers that ignore the message still get a NULL on error. */
    err.text = scratch;
    err.size = sizeof(scratch);
  }
  err.text[0] = '\0';
  /* Duplicate keys are refused: with two "credits" in a plan, which one the
   * author meant is a guess, and money must not be guessed. */
  root = json_loadb(text ? text : "", text ? len : 0, JSON_REJECT_DUPLICATES,
                    &json_error);
  if (!root) {
    snprintf(err.text, err.size, "config: line %d column %d: %s",
             json_error.line, json_error.column, json_error.text);
    goto fail;
  }
  config = tly_config_default();
  if (!config) {
    snprintf(err.text, err.size, "config: out of memory");
    goto fail;
  }
  if (apply_root(config, root, &err) != 0)
    goto fail;
  json_decref(root);
  return config;
fail:
  json_decref(root);
  tly_config_free(config);
  return NULL;
}

tly_config_t *tly_config_load_file(const char *path, char *errstr,
                                   size_t errstr_size) {
  tly_config_t *config = NULL;
  char *text = NULL;
  size_t len = 0, capacity = 0;
  FILE *file = fopen(path, "rb");
  if (!file)
    goto io_fail;
  errno = 0; /* so a read error below reports its own cause */
  for (;;) {
    if (len == capacity) {
      size_t grown_capacity = capacity ? capacity * 2 : 4096;
      char *grown = realloc(text, grown_capacity);
      if (!grown) {
        errno = ENOMEM;
        goto io_fail;
      }
      text = grown;
      capacity = grown_capacity;
    }
    size_t got = fread(text + len, 1, capacity - len, file);
    len += got;
    if (got == 0) {
      if (ferror(file)) {
        errno = errno ? errno : EIO;
        goto io_fail;
      }
      break;
    }
  }
  fclose(file);
  config = tly_config_load_text(text, len, errstr, errstr_size);
  free(text);
  return config;
io_fail:
  if (errstr && errstr_size)
    snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
  if (file)
    fclose(file);
  free(text);
  return NULL;
}
