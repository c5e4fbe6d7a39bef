/*
 * tly_config.h - tally's configuration: plans, prices, thresholds, cycles.
 *
 * Loaded once at startup from a JSON file (jansson) and validated whole: a
 * bad field stops startup with a message naming the field by its JSON path
 * and saying why, e.g. "plans.pro.limits.api_calls.limit: must be an
 * integer >= 0". With no file, tly_config_default() gives the built-in
 * configuration so `tally dev` works out of the box. The fold reads the
 * config and never changes it; all money is integer micro-units (1 USD =
 * 1,000,000) and all percentages integers.
 *
 * The module owns the config's types, its defaults and its loader
 * (tly_config.c; the "http" and "stripe" sections in tly_config_ports.c).
 * It does no I/O past the load (the file, and the environment for the
 * Stripe secrets) and includes nothing above billing/: only base/
 * (tly_sha256.h) and schema/ (tly_event_time.h).
 *
 * JSON shape (every key optional unless marked):
 * {
 *   "credits": {"micros_per_credit": 1000},
 *   "pricing": {
 *     "margin_bps": 2000,                    // 20 % on top of model prices
 *     "unknown_model": "dead_letter" | "fallback",
 *     "fallback": {"input_per_mtok": 1000000, "output_per_mtok": 4000000},
 *     "models": {"gpt-4o": {"input_per_mtok": 2500000,
 *                           "output_per_mtok": 10000000}, ...}
 *   },
 *   "thresholds": [25, 50, 75, 90, 100],     // default for every plan
 *   "cycles": {"anchor": "2026-01-01T00:00:00Z"},   // monthly from here
 *   "default_plans": {"anonymous": "anonymous", "user": "free",
 *                     "api_key": "free"},
 *   "retention": {"daily_days": 90,          // daily usage buckets
 *                 "alerts_days": 90},        // alert history (/alerts)
 *   "events": {"max_future_skew_ms": 300000, // occurred_at at most this far
 *                                            // ahead of the record's Kafka
 *                                            // timestamp (processor) or now
 *                                            // (HTTP, emit); 0 .. 1 year
 *              "dedupe_window_ms": 3024000000}, // 35 days (default): older
 *                                            // events are dead-lettered;
 *                                            // 1 hour .. 366 days
 *   "http": {                                // the HTTP port
 *     "api_keys": [{"name": "svc", "sha256": "<64 hex: SHA-256 of the key>"}],
 *     "metrics_public": true,                // /metrics without a token
 *     "max_body_bytes": 1048576,             // larger bodies: 413
 *     "max_url_bytes": 4096,                 // longer request targets: 414
 *     "max_connections": 1024,               // open connections, at most;
 *     "max_connections_per_ip": 256,         //   from one address (0: any);
 *                                            //   past either, the oldest
 *                                            //   idle one is closed
 *     "header_timeout_ms": 10000,            // idle/accept -> headers in
 *     "request_timeout_ms": 30000,           // idle/accept -> body in
 *     "threads": 0                           // HTTP threads; 0: one per
 *                                            //   two cores, at least 1
 *   },
 *   "stripe": {                              // webhooks, portal, reporting
 *     "api_base": "https://api.stripe.com",
 *     "secret_key_env": "STRIPE_SECRET_KEY", // the variable's name, never
 *                                            // the key; must be set
 *     "api_version": "2024-06-20",           // sent as Stripe-Version
 *     "webhook_secrets": ["whsec_..."],      // endpoint secrets (several
 *     "webhook_secrets_env": "STRIPE_WHSEC", // while rotating); the env
 *                                            // variable may hold a comma-
 *                                            // separated list too
 *     "webhook_tolerance_s": 300,            // signed timestamp vs clock
 *     "prices": {"price_123": "pro"},        // Stripe price id -> plan
 *     "meters": {"api_calls": "api_calls"},  // feature -> meter event_name
 *     "report_window_s": 3600,               // usage reporting: window
 *                                            //   (whole hours, <= 1 day),
 *     "max_requests_per_s": 25,              //   request rate,
 *     "retry_max_s": 300,                    //   longest retry backoff,
 *     "timeout_ms": 10000,                   //   one request's time limit
 *     "portal_return_url": "https://app.example.com/billing",
 *     "plans": {"pro": {"prices": {          // subscriptions tally creates:
 *         "base": "price_pro_monthly",       //   the plan's licensed price,
 *         "metered": {"api_calls": "price_api"}}}}, // one per stripe.meters
 *     "proration_behavior": "create_prorations"   // or always_invoice, none
 *   },
 *   "meters": {                              // how a feature aggregates
 *     "storage_bytes": {"aggregation": "latest"},   // sum (default) | count
 *     "seats": {"aggregation": "unique_count",      //   | max | latest
 *               "property": "user_id"},             //   | unique_count
 *     "api_calls": {"group_by": ["properties.region"]} // dimensions
 *   },                                       // (tly_config_meters.c)
 *   "plans": {
 *     "pro": {
 *       "credits": 50000,                    // required; -1 = unlimited
 *       "base_price_micros": 29000000,
 *       "thresholds": [50, 100],             // overrides the default
 *       "limits": {"api_calls": {"limit": 100000, "mode": "hard"},
 *                  "ai_tokens": {"limit": 5000000, "mode": "soft"},
 *                  "storage_bytes": {"unlimited": true}},
 *       "prices": {"api_calls": {"model": "graduated",
 *                                "tiers": [{"up_to": 1000, "unit_micros": 0},
 *                                          {"up_to": null, "unit_micros":
 * 100}]}, "storage_bytes": {"model": "volume", "tiers": [...]}}
 *     }, ...
 *   }
 * }
 * The plans "anonymous" (1,000 credits), "free" (2,500) and "paid" (50,000)
 * always exist; the file may redefine them.
 */
#ifndef TLY_CONFIG_H
#define TLY_CONFIG_H

#include "tly_event_time.h"
#include "tly_sha256.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_CONFIG_MAX_THRESHOLDS 16
#define TLY_CONFIG_MAX_TIERS 16
#define TLY_CONFIG_NAME_MAX 64
#define TLY_UNLIMITED (-1)

typedef enum { TLY_LIMIT_HARD = 0, TLY_LIMIT_SOFT = 1 } tly_limit_mode_t;
typedef enum {
  TLY_PRICE_GRADUATED = 0,
  TLY_PRICE_VOLUME = 1
} tly_price_model_t;
typedef enum {
  TLY_UNKNOWN_MODEL_DEAD_LETTER = 0,
  TLY_UNKNOWN_MODEL_FALLBACK = 1
} tly_unknown_model_t;

typedef struct {
  int64_t up_to;       /* inclusive upper bound of the tier; -1: no bound */
  int64_t unit_micros; /* price per unit inside this tier */
} tly_tier_t;

typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  int64_t limit; /* units per cycle; TLY_UNLIMITED for none */
  tly_limit_mode_t mode;
} tly_feature_limit_t;

typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  tly_price_model_t model;
  size_t tier_count;
  tly_tier_t tiers[TLY_CONFIG_MAX_TIERS]; /* ascending up_to; last is -1 */
} tly_feature_price_t;

typedef struct {
  char name[TLY_CONFIG_NAME_MAX];
  int64_t credits;           /* per cycle; TLY_UNLIMITED for none */
  int64_t base_price_micros; /* per cycle */
  size_t threshold_count;
  int thresholds[TLY_CONFIG_MAX_THRESHOLDS]; /* ascending percents, 1..1000 */
  size_t limit_count;
  tly_feature_limit_t *limits;
  size_t price_count;
  tly_feature_price_t *prices;
} tly_plan_t;

typedef struct {
  char model[TLY_CONFIG_NAME_MAX];
  int64_t input_per_mtok;  /* micro-units per 1,000,000 input tokens */
  int64_t output_per_mtok; /* micro-units per 1,000,000 output tokens */
} tly_model_price_t;

/* The HTTP port's settings ("http" in the file). Only digests of API keys
 * are ever held (see tly_auth.h). */
#define TLY_HTTP_DEFAULT_MAX_BODY_BYTES 1048576
#define TLY_HTTP_DEFAULT_MAX_URL_BYTES 4096
/* Connections (tly_http_conn.h): the cap on open connections, the cap per
 * client address (0: none), and the read deadlines of a request. */
#define TLY_HTTP_DEFAULT_MAX_CONNECTIONS 1024
#define TLY_HTTP_DEFAULT_MAX_CONNECTIONS_PER_IP 256
#define TLY_HTTP_DEFAULT_HEADER_TIMEOUT_MS 10000
#define TLY_HTTP_DEFAULT_REQUEST_TIMEOUT_MS 30000
typedef struct {
  size_t api_key_count;
  tly_api_key_t *api_keys;
  int metrics_public;             /* default 1 */
  int64_t max_body_bytes;         /* default TLY_HTTP_DEFAULT_MAX_BODY_BYTES */
  int64_t max_url_bytes;          /* default TLY_HTTP_DEFAULT_MAX_URL_BYTES */
  int64_t max_connections;        /* 16 .. 1,000,000 */
  int64_t max_connections_per_ip; /* 0 .. max_connections; 0: no cap */
  int64_t header_timeout_ms;      /* awaiting -> headers in; 100 .. 600,000 */
  int64_t request_timeout_ms;     /* awaiting -> body in, and an answer's
                                     reading; header_timeout_ms .. 3,600,000 */
  int64_t threads; /* the port's threads, 1 .. TLY_HTTP_THREADS_MAX; 0 (the
                      default): tly_http_default_threads() */
} tly_http_config_t;
#define TLY_HTTP_THREADS_MAX 64

/* How long the usage history keeps what it holds ("retention"), in days of
 * event time after the day (or alert) itself. Closed cycles are kept for
 * good: they are the invoice basis. */
#define TLY_DEFAULT_RETENTION_DAYS 90
typedef struct {
  int64_t daily_days;  /* the usage buckets behind /usage/daily (hourly,
                          summed per day); default 90 */
  int64_t alerts_days; /* the alert history of /alerts; default 90 */
} tly_retention_config_t;

/* The Stripe section ("stripe" in the file). Secrets are read from the
 * environment (or the file, for webhook secrets) at load and never logged:
 * only tly_config_free clears them. configured is 0 without the section. */
#define TLY_STRIPE_DEFAULT_API_BASE "https://api.stripe.com"
#define TLY_STRIPE_DEFAULT_API_VERSION "2024-06-20"
#define TLY_STRIPE_ID_MAX 128         /* price ids, customer ids */
#define TLY_STRIPE_EVENT_NAME_MAX 100 /* Stripe's limit for a meter's name */
#define TLY_STRIPE_URL_MAX 1024
typedef struct {
  char price_id[TLY_STRIPE_ID_MAX];
  char plan[TLY_CONFIG_NAME_MAX];
} tly_stripe_price_t;

typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  char event_name[TLY_STRIPE_EVENT_NAME_MAX + 1];
} tly_stripe_meter_t;

/* stripe.plans.<plan>.prices: what tally subscribes a customer to for a
 * plan (POST /v1/subjects/{s}/subscription): the base (licensed) price and
 * one metered price per reported meter (a feature of stripe.meters). */
#define TLY_STRIPE_PLAN_METERED_MAX 16 /* Stripe: 20 items a subscription */
typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  char price_id[TLY_STRIPE_ID_MAX];
} tly_stripe_metered_price_t;

typedef struct {
  char plan[TLY_CONFIG_NAME_MAX];
  char base_price_id[TLY_STRIPE_ID_MAX];
  size_t metered_count;
  tly_stripe_metered_price_t metered[TLY_STRIPE_PLAN_METERED_MAX];
} tly_stripe_plan_prices_t;

typedef struct {
  int configured;
  char api_base[TLY_STRIPE_URL_MAX]; /* no trailing slash */
  char secret_key_env[128];          /* "" when not given */
  char *secret_key; /* its value at load; NULL when secret_key_env is "" */
  char api_version[32];
  size_t webhook_secret_count;
  char **webhook_secrets; /* the file's, then the env variable's */
  char webhook_secrets_env[128];
  int64_t webhook_tolerance_s; /* default 300 */
  size_t price_count;
  tly_stripe_price_t *prices;
  size_t meter_count;
  tly_stripe_meter_t *meters;
  int64_t report_window_s;    /* default 3600; a multiple of 3600 */
  int64_t max_requests_per_s; /* default 25 */
  int64_t retry_max_s;        /* default 300 */
  int64_t timeout_ms;         /* default 10000 */
  char portal_return_url[TLY_STRIPE_URL_MAX]; /* "" = Stripe's default */
  size_t plan_price_count;
  tly_stripe_plan_prices_t *plan_prices; /* stripe.plans */
  /* stripe.proration_behavior: "create_prorations" (default),
   * "always_invoice" or "none", sent on a plan change. */
  char proration_behavior[32];
} tly_stripe_config_t;

/* Alert webhooks ("notifications" in the file; http/tly_webhooks.h
 * delivers): every alert of the listed types goes to each endpoint, signed
 * the Standard Webhooks way with the secret read at load from secret_env. */
#define TLY_WEBHOOKS_MAX 8
#define TLY_WEBHOOK_URL_MAX 512
typedef struct {
  char url[TLY_WEBHOOK_URL_MAX]; /* http:// or https:// */
  char secret_env[128];
  char secret[512]; /* its value at load (wiped when the config is freed) */
  uint32_t types;   /* bit per tly_alert_type_t; 0: every type */
} tly_webhook_config_t;
typedef struct {
  size_t webhook_count;
  tly_webhook_config_t webhooks[TLY_WEBHOOKS_MAX];
  int64_t retry_initial_ms; /* first retry's wait, doubling; default 1000 */
  int64_t retry_max_ms;     /* the longest wait; default 600000 (10 min) */
  int64_t give_up_s;        /* then the dead-letter topic; default 86400 */
  int64_t timeout_ms;       /* one delivery; default 10000 */
} tly_notifications_config_t;
/* A meter ("meters.<feature>" in the file, tly_config_meters.c): how the
 * fold aggregates a feature's events of a cycle into the value limits,
 * thresholds, tiers, alerts, the pre-check and Stripe work on (see
 * billing/tly_meters.h for each rule), and the dimensions its hourly
 * buckets are kept by. A feature without a meter sums its quantities and
 * has no dimensions (an AI event's feature groups by model and provider). */
typedef enum {
  TLY_AGG_SUM = 0,
  TLY_AGG_COUNT = 1,
  TLY_AGG_MAX = 2,
  TLY_AGG_LATEST = 3,
  TLY_AGG_UNIQUE_COUNT = 4
} tly_aggregation_t;

#define TLY_METER_PROPERTY_MAX 128 /* a property key with its NUL */
#define TLY_METER_GROUP_MAX 4      /* group_by entries per meter */
#define TLY_DIM_KEY_MAX 32         /* a property key in group_by (bytes) */
typedef enum {
  TLY_DIM_MODEL = 0,
  TLY_DIM_PROVIDER = 1,
  TLY_DIM_PROPERTY = 2
} tly_dimension_kind_t;

typedef struct {
  tly_dimension_kind_t kind;
  char key[TLY_METER_PROPERTY_MAX]; /* the property's key (TLY_DIM_PROPERTY) */
} tly_dimension_t;

typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  tly_aggregation_t aggregation;
  char property[TLY_METER_PROPERTY_MAX]; /* unique_count's property */
  int group_by_set; /* group_by given (even empty): no AI default */
  size_t group_count;
  tly_dimension_t group_by[TLY_METER_GROUP_MAX];
} tly_meter_t;

/* The dedupe window: an event older than its partition's watermark minus
 * the window is dead-lettered (its id may be forgotten). 35 days by
 * default, as far back as Stripe takes meter events (a backfill after an
 * outage). Every build before the window was configurable used 7 days
 * (the legacy window: what stored state without a dedupe floor record was
 * built with). */
#define TLY_DEFAULT_DEDUPE_WINDOW_MS (35LL * 24 * 3600 * 1000)
#define TLY_LEGACY_DEDUPE_WINDOW_MS (7LL * 24 * 3600 * 1000)
#define TLY_DEDUPE_WINDOW_MIN_MS (3600LL * 1000)            /* an hour */
#define TLY_DEDUPE_WINDOW_MAX_MS (366LL * 24 * 3600 * 1000) /* 366 days */

/* Event time ("events" in the file; the rules are tly_event_time.h's). */
typedef struct {
  int64_t max_future_skew_ms; /* default TLY_DEFAULT_MAX_FUTURE_SKEW_MS */
  int64_t dedupe_window_ms;   /* default TLY_DEFAULT_DEDUPE_WINDOW_MS */
} tly_events_config_t;

typedef struct {
  int64_t micros_per_credit; /* default 1000 */
  int64_t margin_bps;        /* basis points on model prices; default 2000 */
  tly_unknown_model_t unknown_model;
  tly_model_price_t fallback; /* used when unknown_model is FALLBACK */
  size_t model_count;
  tly_model_price_t *models;
  int64_t cycle_anchor_ms; /* monthly cycles start on this day/time */
  size_t threshold_count;  /* default thresholds for plans without */
  int thresholds[TLY_CONFIG_MAX_THRESHOLDS];
  char default_plan[3][TLY_CONFIG_NAME_MAX]; /* by tly_subject_kind_t */
  size_t plan_count;
  tly_plan_t *plans;
  tly_http_config_t http;
  tly_retention_config_t retention;
  tly_events_config_t events;
  tly_stripe_config_t stripe;
  tly_notifications_config_t notifications;
  size_t meter_count;
  tly_meter_t *meters;
} tly_config_t;

/* The built-in configuration. NULL only on OOM. Free with tly_config_free. */
tly_config_t *tly_config_default(void);
/* Parses and validates a config file (missing keys take the defaults).
 * NULL with errstr naming the field (JSON path) and the reason. */
tly_config_t *tly_config_load_file(const char *path, char *errstr,
                                   size_t errstr_size);
/* Same, from text. */
tly_config_t *tly_config_load_text(const char *text, size_t len, char *errstr,
                                   size_t errstr_size);
void tly_config_free(tly_config_t *config);

/* Adds an API key digest (e.g. from `--api-key-sha256`); a digest already
 * present is not added twice. 0, or -1 on OOM or an invalid name. */
int tly_config_add_api_key(tly_config_t *config, const char *name,
                           const unsigned char sha256[TLY_SHA256_LEN]);

/* Lookups (NULL when absent). */
const tly_plan_t *tly_config_plan(const tly_config_t *config, const char *name);
const tly_feature_limit_t *tly_plan_limit(const tly_plan_t *plan,
                                          const char *feature);
const tly_feature_price_t *tly_plan_price(const tly_plan_t *plan,
                                          const char *feature);
const tly_model_price_t *tly_config_model(const tly_config_t *config,
                                          const char *model);
/* The meter of a feature ("meters.<feature>"), or NULL (a sum). */
const tly_meter_t *tly_config_meter(const tly_config_t *config,
                                    const char *feature);
/* "sum", "count", "max", "latest", "unique_count". */
const char *tly_aggregation_name(tly_aggregation_t aggregation);
/* Whether usage is reported to Stripe: meters and a secret key given. */
int tly_config_stripe_reports(const tly_config_t *config);
/* The Stripe meter event_name of a feature (stripe.meters), or NULL. */
const char *tly_config_stripe_meter(const tly_config_t *config,
                                    const char *feature);
/* The plan of a Stripe price id (stripe.prices, then the base prices of
 * stripe.plans), or NULL. */
const char *tly_config_stripe_plan(const tly_config_t *config,
                                   const char *price_id);
/* The Stripe prices of a plan (stripe.plans), or NULL. */
const tly_stripe_plan_prices_t *
tly_config_stripe_plan_prices(const tly_config_t *config, const char *plan);

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil): exact for every year, no tables, no floating point.
 * Shared by the config, the fold's cycles and the HTTP port's dates. */
int64_t tly_days_from_civil(int64_t year, int64_t month, int64_t day);
/* The inverse: the date of a day number. */
void tly_civil_from_days(int64_t days, int64_t *year, int64_t *month,
                         int64_t *day);

#endif
