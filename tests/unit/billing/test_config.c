/*
 * test_config.c - unit tests of billing/tly_config.c.
 *
 * The config is the fold's only source of prices and limits, and a bad file
 * must stop startup with a message that names the field. So besides reading
 * the defaults and a full file back, a table of broken configs checks that
 * each is refused and that the message starts with the expected JSON path
 * (and reason): an operator reads that message, not the code.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tly_config.h"
#include "tly_event.h"

static void test_defaults(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  assert_non_null(config);

  static const struct {
    const char *name;
    int64_t credits;
  } base[] = {{"anonymous", 1000}, {"free", 2500}, {"paid", 50000}};
  for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
    const tly_plan_t *plan = tly_config_plan(config, base[i].name);
    assert_non_null(plan);
    assert_int_equal(plan->credits, base[i].credits);
  }
  assert_int_equal(tly_config_plan(config, "anonymous")->base_price_micros, 0);
  assert_int_equal(tly_config_plan(config, "free")->base_price_micros, 0);
  assert_true(tly_config_plan(config, "paid")->base_price_micros > 0);
  assert_non_null(tly_config_plan(config, "starter"));
  assert_non_null(tly_config_plan(config, "professional"));
  assert_int_equal(tly_config_plan(config, "enterprise")->credits,
                   TLY_UNLIMITED);
  const tly_plan_t *ppu = tly_config_plan(config, "pay_per_use");
  assert_non_null(ppu);
  assert_int_equal(ppu->credits, TLY_UNLIMITED);
  assert_int_equal(ppu->limit_count, 0);
  const tly_feature_price_t *ppu_calls = tly_plan_price(ppu, "api_calls");
  assert_non_null(ppu_calls);
  assert_int_equal(ppu_calls->model, TLY_PRICE_GRADUATED);
  assert_null(tly_config_plan(config, "gold"));
  assert_int_equal(config->retention.daily_days, 90);
  assert_int_equal(config->retention.alerts_days, 90);

  /* Every built-in price ends with an open tier and rises strictly. */
  int saw_hard = 0, saw_soft = 0, saw_unlimited = 0;
  int saw_graduated = 0, saw_volume = 0;
  for (size_t p = 0; p < config->plan_count; p++) {
    const tly_plan_t *plan = &config->plans[p];
    for (size_t l = 0; l < plan->limit_count; l++) {
      saw_unlimited |= plan->limits[l].limit == TLY_UNLIMITED;
      saw_hard |= plan->limits[l].mode == TLY_LIMIT_HARD &&
                  plan->limits[l].limit != TLY_UNLIMITED;
      saw_soft |= plan->limits[l].mode == TLY_LIMIT_SOFT &&
                  plan->limits[l].limit != TLY_UNLIMITED;
    }
    for (size_t i = 0; i < plan->price_count; i++) {
      const tly_feature_price_t *price = &plan->prices[i];
      saw_graduated |= price->model == TLY_PRICE_GRADUATED;
      saw_volume |= price->model == TLY_PRICE_VOLUME;
      assert_true(price->tier_count >= 1);
      assert_int_equal(price->tiers[price->tier_count - 1].up_to, -1);
      for (size_t t = 1; t + 1 < price->tier_count; t++)
        assert_true(price->tiers[t].up_to > price->tiers[t - 1].up_to);
    }
  }
  assert_true(saw_hard && saw_soft && saw_unlimited);
  assert_true(saw_graduated && saw_volume);

  const tly_plan_t *free_plan = tly_config_plan(config, "free");
  const tly_feature_limit_t *calls = tly_plan_limit(free_plan, "api_calls");
  assert_non_null(calls);
  assert_int_equal(calls->mode, TLY_LIMIT_HARD);
  assert_null(tly_plan_limit(free_plan, "nope"));
  assert_null(tly_plan_price(free_plan, "nope"));

  static const int thresholds[] = {25, 50, 75, 90, 100};
  assert_int_equal(config->threshold_count, 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(config->thresholds[i], thresholds[i]);
  assert_int_equal(config->micros_per_credit, 1000);
  assert_int_equal(config->margin_bps, 2000);
  assert_int_equal(config->unknown_model, TLY_UNKNOWN_MODEL_DEAD_LETTER);
  assert_true(config->fallback.input_per_mtok > 0);
  assert_true(config->fallback.output_per_mtok > 0);
  assert_int_equal(config->cycle_anchor_ms, 0);
  assert_string_equal(config->default_plan[TLY_SUBJECT_USER], "free");
  assert_string_equal(config->default_plan[TLY_SUBJECT_API_KEY], "free");
  assert_string_equal(config->default_plan[TLY_SUBJECT_ANONYMOUS], "anonymous");

  const tly_model_price_t *gpt = tly_config_model(config, "gpt-4o");
  assert_non_null(gpt);
  assert_int_equal(gpt->input_per_mtok, 2500000);
  assert_int_equal(gpt->output_per_mtok, 10000000);
  const tly_model_price_t *sonnet = tly_config_model(config, "claude-sonnet");
  assert_non_null(sonnet);
  assert_int_equal(sonnet->input_per_mtok, 3000000);
  assert_int_equal(sonnet->output_per_mtok, 15000000);
  assert_non_null(tly_config_model(config, "gpt-4o-mini"));
  assert_non_null(tly_config_model(config, "gemini-flash"));
  assert_null(tly_config_model(config, "gpt-5"));
  tly_config_free(config);
}

static const char full_config[] =
    "{\n"
    "  \"credits\": {\"micros_per_credit\": 500},\n"
    "  \"pricing\": {\n"
    "    \"margin_bps\": 1500,\n"
    "    \"unknown_model\": \"fallback\",\n"
    "    \"fallback\": {\"input_per_mtok\": 7, \"output_per_mtok\": 8},\n"
    "    \"models\": {\"gpt-4o\": {\"input_per_mtok\": 1, \"output_per_mtok\": "
    "2},\n"
    "               \"my-model_1.0\": {\"input_per_mtok\": 0, "
    "\"output_per_mtok\": 3}}\n"
    "  },\n"
    "  \"thresholds\": [10, 80, 1000],\n"
    "  \"cycles\": {\"anchor\": \"2026-01-15T12:30:00.250Z\"},\n"
    "  \"default_plans\": {\"user\": \"pro\", \"api_key\": \"paid\",\n"
    "                    \"anonymous\": \"free\"},\n"
    "  \"plans\": {\n"
    "    \"free\": {\"credits\": 3000},\n"
    "    \"pro\": {\n"
    "      \"credits\": 50000,\n"
    "      \"base_price_micros\": 29000000,\n"
    "      \"thresholds\": [50, 100],\n"
    "      \"limits\": {\"api_calls\": {\"limit\": 100000, \"mode\": "
    "\"hard\"},\n"
    "                 \"ai_tokens\": {\"limit\": 5000000, \"mode\": "
    "\"soft\"},\n"
    "                 \"storage_bytes\": {\"unlimited\": true}},\n"
    "      \"prices\": {\"api_calls\": {\"model\": \"graduated\",\n"
    "                     \"tiers\": [{\"up_to\": 1000, \"unit_micros\": 0},\n"
    "                               {\"up_to\": null, \"unit_micros\": "
    "100}]},\n"
    "                 \"storage_bytes\": {\"model\": \"volume\", \"tiers\": [\n"
    "                     {\"up_to\": 10, \"unit_micros\": 5},\n"
    "                     {\"up_to\": 20, \"unit_micros\": 4},\n"
    "                     {\"up_to\": null, \"unit_micros\": 3}]}}\n"
    "    },\n"
    "    \"unmetered\": {\"credits\": -1}\n"
    "  }\n"
    "}\n";

static void test_full_config(void **state) {
  (void)state;
  char errstr[256] = "";
  tly_config_t *config = tly_config_load_text(full_config, strlen(full_config),
                                              errstr, sizeof(errstr));
  assert_non_null(config);
  assert_string_equal(errstr, "");

  assert_int_equal(config->micros_per_credit, 500);
  assert_int_equal(config->margin_bps, 1500);
  assert_int_equal(config->unknown_model, TLY_UNKNOWN_MODEL_FALLBACK);
  assert_int_equal(config->fallback.input_per_mtok, 7);
  assert_int_equal(config->fallback.output_per_mtok, 8);
  const tly_model_price_t *gpt = tly_config_model(config, "gpt-4o");
  assert_int_equal(gpt->input_per_mtok, 1);
  assert_int_equal(gpt->output_per_mtok, 2);
  const tly_model_price_t *mine = tly_config_model(config, "my-model_1.0");
  assert_non_null(mine);
  assert_int_equal(mine->input_per_mtok, 0);
  assert_int_equal(mine->output_per_mtok, 3);
  /* Models merge: the built-ins the file does not mention stay. */
  assert_non_null(tly_config_model(config, "claude-sonnet"));

  assert_int_equal(config->threshold_count, 3);
  assert_int_equal(config->thresholds[0], 10);
  assert_int_equal(config->thresholds[1], 80);
  assert_int_equal(config->thresholds[2], 1000);
  /* 2026-01-15T12:30:00.250Z */
  assert_int_equal(config->cycle_anchor_ms, INT64_C(1768480200250));
  assert_string_equal(config->default_plan[TLY_SUBJECT_USER], "pro");
  assert_string_equal(config->default_plan[TLY_SUBJECT_API_KEY], "paid");
  assert_string_equal(config->default_plan[TLY_SUBJECT_ANONYMOUS], "free");

  /* "free" replaced whole: new credits, no limits left from the built-in. */
  const tly_plan_t *free_plan = tly_config_plan(config, "free");
  assert_int_equal(free_plan->credits, 3000);
  assert_int_equal(free_plan->limit_count, 0);
  assert_int_equal(free_plan->threshold_count, 0);
  assert_int_equal(tly_config_plan(config, "anonymous")->credits, 1000);
  assert_int_equal(tly_config_plan(config, "paid")->credits, 50000);
  assert_int_equal(tly_config_plan(config, "unmetered")->credits,
                   TLY_UNLIMITED);

  const tly_plan_t *pro = tly_config_plan(config, "pro");
  assert_non_null(pro);
  assert_int_equal(pro->credits, 50000);
  assert_int_equal(pro->base_price_micros, 29000000);
  assert_int_equal(pro->threshold_count, 2);
  assert_int_equal(pro->thresholds[0], 50);
  assert_int_equal(pro->thresholds[1], 100);
  assert_int_equal(pro->limit_count, 3);
  const tly_feature_limit_t *limit = tly_plan_limit(pro, "api_calls");
  assert_int_equal(limit->limit, 100000);
  assert_int_equal(limit->mode, TLY_LIMIT_HARD);
  limit = tly_plan_limit(pro, "ai_tokens");
  assert_int_equal(limit->limit, 5000000);
  assert_int_equal(limit->mode, TLY_LIMIT_SOFT);
  limit = tly_plan_limit(pro, "storage_bytes");
  assert_int_equal(limit->limit, TLY_UNLIMITED);

  assert_int_equal(pro->price_count, 2);
  const tly_feature_price_t *price = tly_plan_price(pro, "api_calls");
  assert_int_equal(price->model, TLY_PRICE_GRADUATED);
  assert_int_equal(price->tier_count, 2);
  assert_int_equal(price->tiers[0].up_to, 1000);
  assert_int_equal(price->tiers[0].unit_micros, 0);
  assert_int_equal(price->tiers[1].up_to, -1);
  assert_int_equal(price->tiers[1].unit_micros, 100);
  price = tly_plan_price(pro, "storage_bytes");
  assert_int_equal(price->model, TLY_PRICE_VOLUME);
  assert_int_equal(price->tier_count, 3);
  assert_int_equal(price->tiers[1].up_to, 20);
  assert_int_equal(price->tiers[1].unit_micros, 4);
  assert_int_equal(price->tiers[2].up_to, -1);
  tly_config_free(config);
}

static void test_empty_object_is_defaults(void **state) {
  (void)state;
  char errstr[128];
  tly_config_t *config = tly_config_load_text("{}", 2, errstr, sizeof(errstr));
  assert_non_null(config);
  assert_int_equal(tly_config_plan(config, "paid")->credits, 50000);
  assert_int_equal(config->threshold_count, 5);
  tly_config_free(config);
  const char *retention = "{\"retention\": {\"daily_days\": 30}}";
  config = tly_config_load_text(retention, strlen(retention), errstr,
                                sizeof(errstr));
  assert_non_null(config);
  assert_int_equal(config->retention.daily_days, 30);
  assert_int_equal(config->retention.alerts_days, 90);
  tly_config_free(config);
}

static void test_anchor_forms(void **state) {
  (void)state;
  static const struct {
    const char *anchor;
    int64_t ms;
  } cases[] = {
      {"1970-01-01T00:00:00Z", 0},
      {"2000-02-29T00:00:00Z", INT64_C(951782400000)},
      {"2026-01-01T00:00:00+00:00", INT64_C(1767225600000)},
      {"2026-01-01t00:00:00.5z", INT64_C(1767225600500)},
      {"2026-01-01T00:00:00.123456Z", INT64_C(1767225600123)},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char text[128], errstr[128] = "";
    snprintf(text, sizeof(text), "{\"cycles\": {\"anchor\": \"%s\"}}",
             cases[i].anchor);
    tly_config_t *config =
        tly_config_load_text(text, strlen(text), errstr, sizeof(errstr));
    if (!config)
      fail_msg("%s: %s", cases[i].anchor, errstr);
    assert_int_equal(config->cycle_anchor_ms, cases[i].ms);
    tly_config_free(config);
  }
}

typedef struct {
  const char *json;
  const char *expect; /* the message must start with this */
} bad_case_t;

#define PRO_TIERS(t)                                                           \
  "{\"plans\": {\"pro\": {\"credits\": 1, \"prices\": {\"api_calls\": "        \
  "{\"tiers\": " t "}}}}}"

static const bad_case_t bad_cases[] = {
    {"[]", "config: must be a JSON object"},
    {"{\"plan\": {}}", "plan: unknown key"},
    {"{\"credits\": {\"micros_per_credit\": 0}}",
     "credits.micros_per_credit: must be an integer >= 1"},
    {"{\"credits\": {\"micros_per_credit\": 1000.0}}",
     "credits.micros_per_credit: must be an integer >= 1"},
    {"{\"credits\": 5}", "credits: must be an object"},
    {"{\"pricing\": {\"margin_bps\": -1}}", "pricing.margin_bps: "},
    {"{\"pricing\": {\"margin_bps\": 20.5}}", "pricing.margin_bps: "},
    {"{\"pricing\": {\"unknown_model\": \"drop\"}}",
     "pricing.unknown_model: must be \"dead_letter\" or \"fallback\""},
    {"{\"pricing\": {\"fallback\": {\"input_per_mtok\": \"1\"}}}",
     "pricing.fallback.input_per_mtok: must be an integer >= 0"},
    {"{\"pricing\": {\"models\": {\"gpt-4o\": {\"input_per_mtok\": 2.5, "
     "\"output_per_mtok\": 10}}}}",
     "pricing.models.gpt-4o.input_per_mtok: must be an integer >= 0"},
    {"{\"pricing\": {\"models\": {\"x\": {\"input_per_mtok\": 1}}}}",
     "pricing.models.x.output_per_mtok: required"},
    {"{\"pricing\": {\"models\": {\"bad name\": {\"input_per_mtok\": 1, "
     "\"output_per_mtok\": 1}}}}",
     "pricing.models.bad name: not a valid name"},
    {"{\"pricing\": {\"models\": {\"x\": {\"input_per_mtok\": 1, "
     "\"output_per_mtok\": 1, \"cached\": 1}}}}",
     "pricing.models.x.cached: unknown key"},
    {"{\"pricing\": {\"currency\": \"usd\"}}", "pricing.currency: unknown key"},
    {"{\"thresholds\": [25, 50, 50]}", "thresholds[2]: must be ascending"},
    {"{\"retention\": {\"daily_days\": 0}}", "retention.daily_days: "},
    {"{\"retention\": {\"alerts_days\": \"90\"}}", "retention.alerts_days: "},
    {"{\"retention\": {\"hourly_days\": 3}}",
     "retention.hourly_days: unknown key"},
    {"{\"retention\": 90}", "retention: must be an object"},
    {"{\"thresholds\": [0]}", "thresholds[0]: must be an integer from 1 to"},
    {"{\"thresholds\": [1001]}", "thresholds[0]: must be an integer from 1 to"},
    {"{\"thresholds\": [50.5]}", "thresholds[0]: "},
    {"{\"thresholds\": []}", "thresholds: must be an array of 1 to 16"},
    {"{\"thresholds\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}",
     "thresholds: must be an array of 1 to 16"},
    {"{\"cycles\": {\"anchor\": \"2026-01-01\"}}",
     "cycles.anchor: not an RFC 3339 UTC time"},
    {"{\"cycles\": {\"anchor\": \"2026-02-30T00:00:00Z\"}}",
     "cycles.anchor: not an RFC 3339 UTC time"},
    {"{\"cycles\": {\"anchor\": \"2026-01-01T00:00:00+01:00\"}}",
     "cycles.anchor: not an RFC 3339 UTC time"},
    {"{\"cycles\": {\"anchor\": 0}}",
     "cycles.anchor: not an RFC 3339 UTC time"},
    {"{\"cycles\": {\"period\": \"month\"}}", "cycles.period: unknown key"},
    {"{\"default_plans\": {\"user\": \"gold\"}}",
     "default_plans.user: no plan named 'gold'"},
    {"{\"default_plans\": {\"robot\": \"free\"}}",
     "default_plans.robot: unknown key"},
    {"{\"default_plans\": {\"user\": 3}}",
     "default_plans.user: must be a plan name"},
    {"{\"plans\": {\"pro\": {}}}", "plans.pro.credits: required"},
    {"{\"plans\": {\"pro\": {\"credits\": -2}}}",
     "plans.pro.credits: must be an integer >= -1 (-1 = unlimited)"},
    {"{\"plans\": {\"pro\": {\"credits\": 1.5}}}",
     "plans.pro.credits: must be an integer >= -1 (-1 = unlimited)"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"base_price_micros\": -5}}}",
     "plans.pro.base_price_micros: must be an integer >= 0"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limts\": {}}}}",
     "plans.pro.limts: unknown key"},
    {"{\"plans\": {\"pro\": 5}}", "plans.pro: must be an object"},
    {"{\"plans\": {\"\": {\"credits\": 1}}}", "plans.: not a valid name"},
    {"{\"plans\": {"
     "\"a234567890123456789012345678901234567890123456789012345678901234\": "
     "{\"credits\": 1}}}",
     "plans.a234567890123456789012345678901234567890123456789012345678901234: "
     "not a valid name"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"thresholds\": [90, 50]}}}",
     "plans.pro.thresholds[1]: must be ascending"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api_calls\": "
     "{\"limit\": 10, \"mode\": \"block\"}}}}}",
     "plans.pro.limits.api_calls.mode: must be \"hard\" or \"soft\""},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api_calls\": "
     "{\"limit\": -1}}}}}",
     "plans.pro.limits.api_calls.limit: must be an integer >= 0"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api_calls\": "
     "{\"mode\": \"soft\"}}}}}",
     "plans.pro.limits.api_calls: needs \"limit\" or \"unlimited\": true"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api_calls\": "
     "{\"limit\": 1, \"unlimited\": true}}}}}",
     "plans.pro.limits.api_calls: "},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api_calls\": "
     "{\"unlimited\": 1}}}}}",
     "plans.pro.limits.api_calls.unlimited: must be true or false"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api/calls\": "
     "{\"limit\": 1}}}}}",
     "plans.pro.limits.api/calls: not a valid name"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limits\": {\"api_calls\": "
     "{\"limit\": 1, \"max\": 2}}}}}",
     "plans.pro.limits.api_calls.max: unknown key"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"prices\": {\"api_calls\": "
     "{\"model\": \"flat\", \"tiers\": [{\"up_to\": null, \"unit_micros\": "
     "1}]}}}}}",
     "plans.pro.prices.api_calls.model: must be \"graduated\" or \"volume\""},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"prices\": {\"api_calls\": "
     "{\"model\": \"volume\"}}}}}",
     "plans.pro.prices.api_calls.tiers: required"},
    {PRO_TIERS("[]"), "plans.pro.prices.api_calls.tiers: must be an array"},
    {PRO_TIERS("[{\"up_to\": 10, \"unit_micros\": 1}, {\"up_to\": 10, "
               "\"unit_micros\": 1}, {\"up_to\": null, \"unit_micros\": 1}]"),
     "plans.pro.prices.api_calls.tiers[1].up_to: must be greater than the "
     "previous tier's"},
    {PRO_TIERS("[{\"up_to\": 10, \"unit_micros\": 1}]"),
     "plans.pro.prices.api_calls.tiers: the last tier must have up_to null"},
    {PRO_TIERS("[{\"up_to\": null, \"unit_micros\": 1}, {\"up_to\": null, "
               "\"unit_micros\": 1}]"),
     "plans.pro.prices.api_calls.tiers[0].up_to: only the last tier"},
    {PRO_TIERS("[{\"up_to\": 0, \"unit_micros\": 1}, {\"up_to\": null, "
               "\"unit_micros\": 1}]"),
     "plans.pro.prices.api_calls.tiers[0].up_to: must be an integer >= 1 or "
     "null"},
    {PRO_TIERS("[{\"up_to\": null, \"unit_micros\": 0.5}]"),
     "plans.pro.prices.api_calls.tiers[0].unit_micros: must be an integer >= "
     "0"},
    {PRO_TIERS("[{\"up_to\": null}]"),
     "plans.pro.prices.api_calls.tiers[0].unit_micros: required"},
    {PRO_TIERS("[{\"unit_micros\": 1}]"),
     "plans.pro.prices.api_calls.tiers[0].up_to: required"},
    {PRO_TIERS("[{\"up_to\": null, \"unit_micros\": 1, \"flat\": 2}]"),
     "plans.pro.prices.api_calls.tiers[0].flat: unknown key"},
    {PRO_TIERS("[5]"),
     "plans.pro.prices.api_calls.tiers[0]: must be an object"},
    {"{\"stripe\": 5}", "stripe: must be an object"},
    {"{\"stripe\": {\"secret_key\": \"sk_test_123\"}}",
     "stripe.secret_key: the API key never goes in the file"},
    {"{\"stripe\": {\"secret_key_env\": \"sk_live_abc\"}}",
     "stripe.secret_key_env: must name an environment variable"},
    {"{\"stripe\": {\"secret_key_env\": \"NO SUCH\"}}",
     "stripe.secret_key_env: must be the name of an environment variable"},
    {"{\"stripe\": {\"secret_key_env\": \"TALLY_TEST_UNSET_VARIABLE\"}}",
     "stripe.secret_key_env: environment variable TALLY_TEST_UNSET_VARIABLE "
     "is not set"},
    {"{\"stripe\": {\"webhook_secrets\": [\"sk_test_1\"]}}",
     "stripe.webhook_secrets[0]: a webhook endpoint secret starts with"},
    {"{\"stripe\": {\"webhook_secrets\": [\"whsec_a\", 3]}}",
     "stripe.webhook_secrets[1]: must be a string"},
    {"{\"stripe\": {\"webhook_secrets\": []}}",
     "stripe.webhook_secrets: must be an array"},
    {"{\"stripe\": {\"webhook_secrets_env\": \"TALLY_TEST_UNSET_VARIABLE\"}}",
     "stripe.webhook_secrets_env: environment variable"},
    {"{\"stripe\": {\"webhook_tolerance_s\": 0}}",
     "stripe.webhook_tolerance_s: must be an integer from 1 to 86400"},
    {"{\"stripe\": {\"prices\": {\"price_1\": \"gold\"}}}",
     "stripe.prices.price_1: no plan named 'gold'"},
    {"{\"stripe\": {\"prices\": {\"price 1\": \"free\"}}}",
     "stripe.prices.price 1: must be printable ASCII without spaces"},
    {"{\"stripe\": {\"prices\": {\"price_1\": 7}}}",
     "stripe.prices.price_1: must be a plan name"},
    {"{\"stripe\": {\"meters\": {\"api_calls\": \"\"}}}",
     "stripe.meters.api_calls: must be 1 to 100 characters"},
    {"{\"stripe\": {\"meters\": {\"api/calls\": \"x\"}}}",
     "stripe.meters.api/calls: not a valid name"},
    {"{\"stripe\": {\"api_base\": \"ftp://x\"}}",
     "stripe.api_base: must be an http:// or https:// URL"},
    {"{\"stripe\": {\"api_version\": \"\"}}", "stripe.api_version: must be"},
    {"{\"stripe\": {\"report_window_s\": 10}}", "stripe.report_window_s: "},
    {"{\"stripe\": {\"report_window_s\": 5400}}",
     "stripe.report_window_s: must be a whole number of hours"},
    {"{\"stripe\": {\"report_window_s\": 172800}}",
     "stripe.report_window_s: must be an integer from 3600 to 86400"},
    {"{\"stripe\": {\"max_requests_per_s\": 0}}",
     "stripe.max_requests_per_s: "},
    {"{\"stripe\": {\"retry_max_s\": 1.5}}", "stripe.retry_max_s: "},
    {"{\"stripe\": {\"timeout_ms\": 5}}", "stripe.timeout_ms: "},
    {"{\"stripe\": {\"portal_return_url\": \"example.com\"}}",
     "stripe.portal_return_url: must be an http:// or https:// URL"},
    {"{\"stripe\": {\"webhook_secret\": \"whsec_1\"}}",
     "stripe.webhook_secret: unknown key"},
    /* stripe.plans: what a subscription is made of. */
    {"{\"stripe\": {\"plans\": {\"gold\": {\"prices\": {\"base\": "
     "\"price_g\"}}}}}",
     "stripe.plans.gold: no plan named 'gold'"},
    {"{\"stripe\": {\"plans\": {\"free\": {}}}}",
     "stripe.plans.free.prices: required"},
    {"{\"stripe\": {\"plans\": {\"free\": {\"prices\": {}}}}}",
     "stripe.plans.free.prices.base: required"},
    {"{\"stripe\": {\"plans\": {\"free\": {\"prices\": {\"base\": "
     "\"a b\"}}}}}",
     "stripe.plans.free.prices.base: must be printable ASCII"},
    {"{\"stripe\": {\"plans\": {\"free\": {\"price\": 1}}}}",
     "stripe.plans.free.price: unknown key"},
    {"{\"stripe\": {\"plans\": {\"free\": {\"prices\": {\"base\": "
     "\"price_f\", \"metered\": {\"api_calls\": \"price_a\"}}}}}}",
     "stripe.plans.free.prices.metered.api_calls: 'api_calls' is not a "
     "reported meter"},
    {"{\"stripe\": {\"prices\": {\"price_f\": \"paid\"}, \"plans\": "
     "{\"free\": {\"prices\": {\"base\": \"price_f\"}}}}}",
     "stripe.plans.free.prices.base: price price_f is mapped to plan 'paid'"},
    {"{\"stripe\": {\"proration_behavior\": \"sometimes\"}}",
     "stripe.proration_behavior: must be"},
    /* The first error in document order wins. */
    {"{\"thresholds\": [5, 1], \"credits\": {\"micros_per_credit\": 0}}",
     "thresholds[1]: must be ascending"},
};

static void test_bad_configs(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
    char errstr[512] = "";
    const char *json = bad_cases[i].json;
    tly_config_t *config =
        tly_config_load_text(json, strlen(json), errstr, sizeof(errstr));
    if (config) {
      tly_config_free(config);
      fail_msg("case %zu accepted: %s", i, json);
    }
    size_t prefix = strlen(bad_cases[i].expect);
    if (strncmp(errstr, bad_cases[i].expect, prefix) != 0)
      fail_msg("case %zu: %s\n  got:    %s\n  wanted: %s...", i, json, errstr,
               bad_cases[i].expect);
  }
}

static void test_syntax_error(void **state) {
  (void)state;
  char errstr[256] = "";
  const char *text = "{\n  \"credits\": {\"micros_per_credit\": 1,}\n}";
  assert_null(tly_config_load_text(text, strlen(text), errstr, sizeof(errstr)));
  assert_true(strncmp(errstr, "config: line 2 column ", 22) == 0);

  /* Duplicate keys are refused too: which one was meant is a guess. */
  text = "{\"plans\": {\"pro\": {\"credits\": 1, \"credits\": 2}}}";
  assert_null(tly_config_load_text(text, strlen(text), errstr, sizeof(errstr)));
  assert_true(strncmp(errstr, "config: line 1 column ", 22) == 0);
  assert_non_null(strstr(errstr, "duplicate"));

  /* A tiny or absent error buffer still gives NULL without overflow. */
  char tiny[4];
  assert_null(tly_config_load_text("{", 1, tiny, sizeof(tiny)));
  assert_int_equal(strlen(tiny), 3);
  assert_null(tly_config_load_text("[]", 2, NULL, 0));
}

static void test_file_not_found(void **state) {
  (void)state;
  char errstr[256] = "";
  const char *path = "/nonexistent/tally/config.json";
  assert_null(tly_config_load_file(path, errstr, sizeof(errstr)));
  assert_string_equal(errstr, "/nonexistent/tally/config.json: No such file or "
                              "directory");
}

static void test_file_round_trip(void **state) {
  (void)state;
  char path[] = "/tmp/tally-config-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *file = fdopen(fd, "w");
  assert_non_null(file);
  fputs(full_config, file);
  fclose(file);

  char errstr[256] = "";
  tly_config_t *config = tly_config_load_file(path, errstr, sizeof(errstr));
  unlink(path);
  if (!config)
    fail_msg("%s", errstr);
  assert_int_equal(tly_config_plan(config, "pro")->base_price_micros, 29000000);
  tly_config_free(config);
}

/* The "stripe" section: defaults without it, every key read with it, secrets
 * from the environment (several webhook secrets in one variable), prices
 * checked against plans defined after the section. */
static void test_stripe_section(void **state) {
  (void)state;
  char errstr[512] = "";
  tly_config_t *config = tly_config_default();
  assert_non_null(config);
  assert_int_equal(config->stripe.configured, 0);
  assert_string_equal(config->stripe.api_base, "https://api.stripe.com");
  assert_string_equal(config->stripe.api_version, "2024-06-20");
  assert_int_equal(config->stripe.webhook_tolerance_s, 300);
  assert_int_equal(config->stripe.report_window_s, 3600);
  assert_int_equal(config->stripe.max_requests_per_s, 25);
  assert_int_equal(config->stripe.retry_max_s, 300);
  assert_int_equal(config->stripe.timeout_ms, 10000);
  assert_null(config->stripe.secret_key);
  assert_int_equal(config->stripe.webhook_secret_count, 0);
  assert_false(tly_config_stripe_reports(config));
  tly_config_free(config);

  setenv("TALLY_TEST_STRIPE_KEY", "sk_test_abc", 1);
  setenv("TALLY_TEST_WHSEC", " whsec_two, whsec_three\n", 1);
  static const char text[] =
      "{\"stripe\": {\"api_base\": \"http://127.0.0.1:9/\", "
      "\"secret_key_env\": \"TALLY_TEST_STRIPE_KEY\", "
      "\"api_version\": \"2025-03-31.basil\", "
      "\"webhook_secrets\": [\"whsec_one\"], "
      "\"webhook_secrets_env\": \"TALLY_TEST_WHSEC\", "
      "\"webhook_tolerance_s\": 60, "
      "\"prices\": {\"price_pro\": \"pro\", \"price_free\": \"free\"}, "
      "\"meters\": {\"api_calls\": \"api_requests\"}, "
      "\"report_window_s\": 7200, \"max_requests_per_s\": 5, "
      "\"retry_max_s\": 30, \"timeout_ms\": 2000, "
      "\"portal_return_url\": \"https://app.example.com/billing\"}, "
      "\"plans\": {\"pro\": {\"credits\": 10}}}";
  config = tly_config_load_text(text, strlen(text), errstr, sizeof(errstr));
  if (!config)
    fail_msg("%s", errstr);
  const tly_stripe_config_t *stripe = &config->stripe;
  assert_int_equal(stripe->configured, 1);
  assert_string_equal(stripe->api_base, "http://127.0.0.1:9");
  assert_string_equal(stripe->secret_key_env, "TALLY_TEST_STRIPE_KEY");
  assert_string_equal(stripe->secret_key, "sk_test_abc");
  assert_string_equal(stripe->api_version, "2025-03-31.basil");
  assert_int_equal(stripe->webhook_secret_count, 3);
  assert_string_equal(stripe->webhook_secrets[0], "whsec_one");
  assert_string_equal(stripe->webhook_secrets[1], "whsec_two");
  assert_string_equal(stripe->webhook_secrets[2], "whsec_three");
  assert_int_equal(stripe->webhook_tolerance_s, 60);
  assert_string_equal(tly_config_stripe_plan(config, "price_pro"), "pro");
  assert_string_equal(tly_config_stripe_plan(config, "price_free"), "free");
  assert_null(tly_config_stripe_plan(config, "price_gold"));
  assert_int_equal(stripe->meter_count, 1);
  assert_string_equal(stripe->meters[0].feature, "api_calls");
  assert_string_equal(stripe->meters[0].event_name, "api_requests");
  assert_int_equal(stripe->report_window_s, 7200);
  assert_true(tly_config_stripe_reports(config));
  assert_string_equal(tly_config_stripe_meter(config, "api_calls"),
                      "api_requests");
  assert_null(tly_config_stripe_meter(config, "ai_tokens"));
  assert_int_equal(stripe->max_requests_per_s, 5);
  assert_int_equal(stripe->retry_max_s, 30);
  assert_int_equal(stripe->timeout_ms, 2000);
  assert_string_equal(stripe->portal_return_url,
                      "https://app.example.com/billing");
  assert_string_equal(stripe->proration_behavior, "create_prorations");
  assert_null(tly_config_stripe_plan_prices(config, "pro"));
  tly_config_free(config);

  /* stripe.plans: the base price maps back to its plan for the webhook. */
  static const char plans[] =
      "{\"stripe\": {\"meters\": {\"api_calls\": \"api_requests\"}, "
      "\"proration_behavior\": \"always_invoice\", "
      "\"plans\": {\"pro\": {\"prices\": {\"base\": \"price_pro\", "
      "\"metered\": {\"api_calls\": \"price_api\"}}}}}, "
      "\"plans\": {\"pro\": {\"credits\": 10}}}";
  config = tly_config_load_text(plans, strlen(plans), errstr, sizeof(errstr));
  if (!config)
    fail_msg("%s", errstr);
  const tly_stripe_plan_prices_t *prices =
      tly_config_stripe_plan_prices(config, "pro");
  assert_non_null(prices);
  assert_string_equal(prices->base_price_id, "price_pro");
  assert_int_equal(prices->metered_count, 1);
  assert_string_equal(prices->metered[0].feature, "api_calls");
  assert_string_equal(prices->metered[0].price_id, "price_api");
  assert_string_equal(tly_config_stripe_plan(config, "price_pro"), "pro");
  assert_null(tly_config_stripe_plan(config, "price_api"));
  assert_string_equal(config->stripe.proration_behavior, "always_invoice");
  tly_config_free(config);

  /* A message about the key names the variable, never its value. */
  setenv("TALLY_TEST_WHSEC", "sk_live_secret", 1);
  static const char bad[] =
      "{\"stripe\": {\"webhook_secrets_env\": \"TALLY_TEST_WHSEC\"}}";
  assert_null(tly_config_load_text(bad, strlen(bad), errstr, sizeof(errstr)));
  assert_non_null(strstr(errstr, "stripe.webhook_secrets_env"));
  assert_null(strstr(errstr, "sk_live_secret"));
  setenv("TALLY_TEST_STRIPE_KEY", "", 1);
  static const char empty[] =
      "{\"stripe\": {\"secret_key_env\": \"TALLY_TEST_STRIPE_KEY\"}}";
  assert_null(
      tly_config_load_text(empty, strlen(empty), errstr, sizeof(errstr)));
  assert_string_equal(errstr, "stripe.secret_key_env: environment variable "
                              "TALLY_TEST_STRIPE_KEY is not set");
  unsetenv("TALLY_TEST_STRIPE_KEY");
  unsetenv("TALLY_TEST_WHSEC");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stripe_section),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_full_config),
      cmocka_unit_test(test_empty_object_is_defaults),
      cmocka_unit_test(test_anchor_forms),
      cmocka_unit_test(test_bad_configs),
      cmocka_unit_test(test_syntax_error),
      cmocka_unit_test(test_file_not_found),
      cmocka_unit_test(test_file_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
