/*
 * tly_config_stripe_plans.c - the config's "stripe.plans" and
 * "stripe.proration_behavior": which Stripe prices tally subscribes a
 * customer to for each plan (the routes of /v1/subjects/{s}/subscription),
 * and how Stripe prorates a plan change.
 *
 *   "plans": {"pro": {"prices": {"base": "price_pro",
 *                                "metered": {"api_calls": "price_api"}}}}
 *
 * base: the plan's licensed price (required). metered: one price per
 * reported meter, keyed by a feature of stripe.meters (at most
 * TLY_STRIPE_PLAN_METERED_MAX). The plan must exist (checked once the whole
 * file is read). A base price doubles as the stripe.prices entry the
 * webhook maps back to the plan; naming it there for another plan is an
 * error. Pure loader code: no I/O.
 */
#include "tly_config_internal.h"

#include <stdlib.h>

/* Stripe ids go into form bodies and logs: printable ASCII, no spaces. */
static int parse_price_id(tly_err_t *err, const char *path, const json_t *value,
                          char *out, size_t size) {
  const char *id = json_string_value(value);
  size_t len = id ? strlen(id) : 0;
  if (!id || len == 0 || len >= size)
    return fail(err, path, "must be a Stripe price id of 1 to %zu characters",
                size - 1);
  for (size_t i = 0; i < len; i++)
    if (id[i] <= ' ' || id[i] > '~')
      return fail(err, path, "must be printable ASCII without spaces");
  snprintf(out, size, "%s", id);
  return 0;
}

static int parse_metered(tly_err_t *err, const char *path, json_t *object,
                         tly_stripe_plan_prices_t *prices) {
  char item_path[TLY_PATH_SIZE];
  const char *feature;
  json_t *value;
  if (check_object(err, path, object))
    return -1;
  if (json_object_size(object) > TLY_STRIPE_PLAN_METERED_MAX)
    return fail(err, path, "at most %d metered prices",
                TLY_STRIPE_PLAN_METERED_MAX);
  json_object_foreach(object, feature, value) {
    tly_stripe_metered_price_t *metered =
        &prices->metered[prices->metered_count];
    path_key(item_path, path, feature);
    if (check_name(err, item_path, feature) ||
        parse_price_id(err, item_path, value, metered->price_id,
                       sizeof(metered->price_id)))
      return -1;
    snprintf(metered->feature, sizeof(metered->feature), "%s", feature);
    prices->metered_count++;
  }
  return 0;
}

static int parse_plan(tly_err_t *err, const char *path, json_t *object,
                      tly_stripe_plan_prices_t *prices) {
  char key_path[TLY_PATH_SIZE], prices_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value, *section;
  if (check_object(err, path, object))
    return -1;
  json_object_foreach(object, key, value) {
    if (strcmp(key, "prices") != 0) {
      path_key(key_path, path, key);
      return fail(err, key_path, "unknown key");
    }
  }
  path_key(prices_path, path, "prices");
  section = json_object_get(object, "prices");
  if (!section)
    return fail(err, prices_path, "required");
  if (check_object(err, prices_path, section))
    return -1;
  json_object_foreach(section, key, value) {
    path_key(key_path, prices_path, key);
    if (strcmp(key, "base") == 0) {
      if (parse_price_id(err, key_path, value, prices->base_price_id,
                         sizeof(prices->base_price_id)))
        return -1;
    } else if (strcmp(key, "metered") == 0) {
      if (parse_metered(err, key_path, value, prices))
        return -1;
    } else {
      return fail(err, key_path, "unknown key (base, metered)");
    }
  }
  if (!prices->base_price_id[0]) {
    path_key(key_path, prices_path, "base");
    return fail(err, key_path, "required (the plan's licensed price id)");
  }
  return 0;
}

static int parse_plans(tly_err_t *err, const char *path, json_t *object,
                       tly_stripe_config_t *stripe) {
  char plan_path[TLY_PATH_SIZE];
  const char *plan;
  json_t *value;
  if (check_object(err, path, object))
    return -1;
  free(stripe->plan_prices);
  stripe->plan_price_count = 0;
  stripe->plan_prices =
      calloc(json_object_size(object) + 1, sizeof(*stripe->plan_prices));
  if (!stripe->plan_prices)
    return fail(err, path, "out of memory");
  json_object_foreach(object, plan, value) {
    tly_stripe_plan_prices_t *prices =
        &stripe->plan_prices[stripe->plan_price_count];
    path_key(plan_path, path, plan);
    if (check_name(err, plan_path, plan) ||
        parse_plan(err, plan_path, value, prices))
      return -1;
    snprintf(prices->plan, sizeof(prices->plan), "%s", plan);
    stripe->plan_price_count++;
  }
  return 0;
}

int tly_config_apply_stripe_plans(tly_config_t *config, const char *key,
                                  json_t *value, tly_err_t *err, int *rc) {
  tly_stripe_config_t *stripe = &config->stripe;
  if (strcmp(key, "plans") == 0) {
    *rc = parse_plans(err, "stripe.plans", value, stripe);
    return 1;
  }
  if (strcmp(key, "proration_behavior") == 0) {
    static const char *const allowed[] = {"create_prorations", "always_invoice",
                                          "none"};
    const char *text = json_string_value(value);
    for (size_t i = 0; text && i < TLY_COUNT(allowed); i++)
      if (strcmp(text, allowed[i]) == 0) {
        snprintf(stripe->proration_behavior, sizeof(stripe->proration_behavior),
                 "%s", text);
        *rc = 0;
        return 1;
      }
    *rc = fail(err, "stripe.proration_behavior",
               "must be \"create_prorations\", \"always_invoice\" or "
               "\"none\"");
    return 1;
  }
  return 0;
}

int tly_config_check_stripe_plans(const tly_config_t *config, tly_err_t *err) {
  char path[TLY_PATH_SIZE], item_path[TLY_PATH_SIZE];
  const tly_stripe_config_t *stripe = &config->stripe;
  for (size_t i = 0; i < stripe->plan_price_count; i++) {
    const tly_stripe_plan_prices_t *prices = &stripe->plan_prices[i];
    path_key(path, "stripe.plans", prices->plan);
    if (!tly_config_plan(config, prices->plan))
      return fail(err, path, "no plan named '%s'", prices->plan);
    for (size_t p = 0; p < stripe->price_count; p++)
      if (strcmp(stripe->prices[p].price_id, prices->base_price_id) == 0 &&
          strcmp(stripe->prices[p].plan, prices->plan) != 0) {
        path_key(item_path, path, "prices.base");
        return fail(err, item_path,
                    "price %s is mapped to plan '%s' in stripe.prices",
                    prices->base_price_id, stripe->prices[p].plan);
      }
    for (size_t other = 0; other < i; other++)
      if (strcmp(stripe->plan_prices[other].base_price_id,
                 prices->base_price_id) == 0) {
        path_key(item_path, path, "prices.base");
        return fail(err, item_path, "price %s is plan '%s''s base price too",
                    prices->base_price_id, stripe->plan_prices[other].plan);
      }
    for (size_t m = 0; m < prices->metered_count; m++) {
      char metered_path[TLY_PATH_SIZE];
      path_key(metered_path, path, "prices.metered");
      path_key(item_path, metered_path, prices->metered[m].feature);
      if (!tly_config_stripe_meter(config, prices->metered[m].feature))
        return fail(err, item_path,
                    "'%s' is not a reported meter (a key of stripe.meters)",
                    prices->metered[m].feature);
    }
  }
  return 0;
}

const tly_stripe_plan_prices_t *
tly_config_stripe_plan_prices(const tly_config_t *config, const char *plan) {
  for (size_t i = 0; config && plan && i < config->stripe.plan_price_count; i++)
    if (strcmp(config->stripe.plan_prices[i].plan, plan) == 0)
      return &config->stripe.plan_prices[i];
  return NULL;
}
