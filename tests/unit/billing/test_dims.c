/*
 * test_dims.c - dimensions (tly_dims.h) over an in-memory state view: a
 * table of event sequences (AI events grouped by model and provider by
 * default, a max meter grouped by a property, a latest meter whose value
 * falls), each checked hour by hour: every dimension's groups sum to the
 * feature's bucket exactly (quantity, tokens, events, cost); events
 * without the dimension land in "none"; the bound (64 values per subject,
 * feature, dimension and hour; the 65th and later in "other", a new hour
 * starting afresh); a value longer than 64 bytes in "other"; group_by []
 * turning the AI default off; a view without group_bucket keeping no group;
 * a feature name holding 0x1f refused with nothing changed; the config
 * refusing a group_by key longer than 32 bytes; and a group's bucket
 * round-tripping through the bucket encoding.
 */
#include "tly_billing.h"
#include "tly_dims.h"
#include "tly_mem_view.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define JAN1 1767225600000LL /* 2026-01-01T00:00:00Z */
#define HOUR 3600000LL

static const char *config_json =
    "{\"pricing\": {\"margin_bps\": 2000, \"unknown_model\": \"fallback\","
    "   \"fallback\": {\"input_per_mtok\": 7, \"output_per_mtok\": 11},"
    "   \"models\": {\"m1\": {\"input_per_mtok\": 1000000,"
    "                        \"output_per_mtok\": 3000000},"
    "              \"m2\": {\"input_per_mtok\": 333, \"output_per_mtok\": "
    "777}}},"
    " \"cycles\": {\"anchor\": \"2026-01-01T00:00:00Z\"},"
    " \"default_plans\": {\"user\": \"t\", \"api_key\": \"t\","
    "                     \"anonymous\": \"t\"},"
    " \"meters\": {\"peak\": {\"aggregation\": \"max\","
    "                         \"group_by\": [\"properties.region\"]},"
    "              \"gauge\": {\"aggregation\": \"latest\","
    "                          \"group_by\": [\"properties.region\", "
    "\"model\"]},"
    "              \"plain_ai\": {\"group_by\": []}},"
    " \"plans\": {\"t\": {\"credits\": -1, \"prices\": {"
    "     \"peak\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 100}]},"
    "     \"gauge\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 3}]}}}}}";

typedef tly_mem_fixture_t fixture_t;

static int setup(void **ctx) {
  *ctx = tly_mem_fixture_new(config_json, TLY_MEM_WITH_NAMES, 0);
  return *ctx ? 0 : -1;
}

static int teardown(void **ctx) {
  tly_mem_fixture_free(*ctx);
  return 0;
}

typedef struct {
  const char *feature;
  int64_t quantity;
  int64_t offset_ms; /* after JAN1 */
  const char *model; /* NULL: no AI detail */
  const char *provider;
  const char *region; /* NULL: no property */
} step_t;

static tly_fold_result_t fold(fixture_t *f, const step_t *s) {
  char event_id[32];
  tly_property_t property = {"region", (char *)s->region};
  snprintf(event_id, sizeof(event_id), "e-%d", ++f->counter);
  tly_event_t e = {.event_id = event_id,
                   .occurred_at_ms = JAN1 + s->offset_ms,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = "alice",
                   .body_kind = TLY_BODY_USAGE_RECORDED};
  e.body.usage.feature = (char *)s->feature;
  e.body.usage.quantity = s->quantity;
  e.body.usage.unit = "";
  if (s->model) {
    e.body.usage.has_ai = 1;
    e.body.usage.ai.model = (char *)s->model;
    e.body.usage.ai.provider = (char *)s->provider;
    e.body.usage.ai.input_tokens = s->quantity * 3;
    e.body.usage.ai.output_tokens = s->quantity;
  }
  if (s->region) {
    e.body.usage.property_count = 1;
    e.body.usage.properties = &property;
  }
  return tly_billing_fold(&f->billing, &f->m->view, &e, &f->alerts, f->errstr,
                          sizeof(f->errstr));
}

/* The group bucket of (hour, feature, label, value), or NULL. */
static const tly_bucket_t *group(tly_mem_view_t *m, int32_t hour,
                                 const char *feature, const char *label,
                                 const char *value) {
  char name[TLY_BUCKET_NAME_MAX];
  assert_true(tly_dims_bucket_name(name, sizeof(name), feature, label, value));
  const tly_mem_bucket_t *found = tly_mem_bucket_find(m, "alice", hour, name);
  return found ? &found->bucket : NULL;
}

/* Every feature bucket equals the sum of its groups of label, field by
 * field; returns how many groups of label there are in all. */
static size_t check_sums(tly_mem_view_t *m, const char *feature,
                         const char *label) {
  size_t groups = 0;
  for (size_t i = 0; i < m->bucket_count; i++) {
    const tly_mem_bucket_t *b = &m->buckets[i];
    if (strcmp(b->name, feature) != 0)
      continue;
    tly_bucket_t sum = {0};
    for (size_t j = 0; j < m->bucket_count; j++) {
      size_t feature_len, label_len;
      const char *part, *value;
      const tly_mem_bucket_t *g = &m->buckets[j];
      if (g->hour != b->hour || !g->bucket.event_count ||
          !tly_dims_split(g->name, &feature_len, &part, &label_len, &value) ||
          feature_len != strlen(feature) ||
          strncmp(g->name, feature, feature_len) ||
          label_len != strlen(label) || strncmp(part, label, label_len))
        continue;
      groups++;
      assert_int_equal(tly_bucket_add(&sum, &g->bucket), 0);
    }
    if (memcmp(&sum, &b->bucket, sizeof(sum)) != 0)
      fail_msg("%s by %s, hour %d: groups sum to q=%lld e=%lld c=%lld, the "
               "feature has q=%lld e=%lld c=%lld",
               feature, label, (int)b->hour, (long long)sum.quantity,
               (long long)sum.event_count, (long long)sum.cost_micros,
               (long long)b->bucket.quantity, (long long)b->bucket.event_count,
               (long long)b->bucket.cost_micros);
  }
  return groups;
}

static void table(void **ctx) {
  fixture_t *f = *ctx;
  const step_t steps[] = {
      /* AI: by model and provider by default */
      {"ai", 100, 0, "m1", "openai", NULL},
      {"ai", 250, 10, "m2", "anthropic", NULL},
      {"ai", 3, 20, "m1", "openai", NULL},
      {"ai", 7, HOUR, "unknown-model", "openai", NULL}, /* the fallback */
      {"ai", 11, HOUR + 5, "m2", "", NULL},             /* no provider */
      /* max by region: the rise of the maximum goes to the event's region */
      {"peak", 5, 0, NULL, NULL, "eu"},
      {"peak", 9, 1, NULL, NULL, "us"},
      {"peak", 4, 2, NULL, NULL, "eu"},
      {"peak", 12, HOUR, NULL, NULL, NULL},
      /* latest by region and model: a value that falls */
      {"gauge", 50, 0, "m1", "p", "eu"},
      {"gauge", 20, 1, NULL, NULL, "us"},
      {"gauge", 30, 2 * HOUR, "m2", "p", NULL},
      /* group_by []: no groups */
      {"plain_ai", 5, 0, "m1", "openai", NULL},
  };
  for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
    if (fold(f, &steps[i]) != TLY_FOLD_APPLIED)
      fail_msg("step %zu: %s", i, f->errstr);
  int32_t h0 = tly_billing_hour(JAN1), h1 = h0 + 1;

  assert_int_equal(check_sums(f->m, "ai", "model"), 4);
  assert_int_equal(check_sums(f->m, "ai", "provider"), 4);
  assert_int_equal(group(f->m, h0, "ai", "model", "m1")->quantity, 103);
  assert_int_equal(group(f->m, h0, "ai", "model", "m1")->input_tokens, 309);
  assert_int_equal(group(f->m, h0, "ai", "model", "m1")->event_count, 2);
  assert_int_equal(group(f->m, h0, "ai", "provider", "anthropic")->quantity,
                   250);
  assert_int_equal(group(f->m, h1, "ai", "provider", TLY_DIM_NONE)->quantity,
                   11);
  assert_non_null(group(f->m, h1, "ai", "model", "unknown-model"));
  /* The cost by model: each group holds exactly what its events added. */
  assert_true(group(f->m, h0, "ai", "model", "m1")->cost_micros > 0);

  assert_int_equal(check_sums(f->m, "peak", "properties.region"), 3);
  assert_int_equal(group(f->m, h0, "peak", "properties.region", "eu")->quantity,
                   5);
  assert_int_equal(group(f->m, h0, "peak", "properties.region", "us")->quantity,
                   4); /* 5 -> 9 */
  assert_int_equal(
      group(f->m, h0, "peak", "properties.region", "eu")->event_count, 2);
  assert_int_equal(
      group(f->m, h1, "peak", "properties.region", TLY_DIM_NONE)->quantity, 3);

  assert_int_equal(check_sums(f->m, "gauge", "properties.region"), 3);
  assert_int_equal(check_sums(f->m, "gauge", "model"), 3);
  assert_int_equal(
      group(f->m, h0, "gauge", "properties.region", "us")->quantity, -30);
  assert_int_equal(group(f->m, h0, "gauge", "model", TLY_DIM_NONE)->quantity,
                   -30);
  assert_null(group(f->m, h0, "gauge", "provider", "p")); /* not listed */

  assert_null(group(f->m, h0, "plain_ai", "model", "m1"));
}

/* 70 regions in one hour: 64 by name, the rest in "other"; a known value
 * past the bound keeps its group; the next hour starts afresh. */
static void bound(void **ctx) {
  fixture_t *f = *ctx;
  char region[16];
  for (int i = 0; i < 70; i++) {
    snprintf(region, sizeof(region), "r%02d", i);
    step_t s = {"peak", i + 1, i, NULL, NULL, region};
    assert_int_equal(fold(f, &s), TLY_FOLD_APPLIED);
  }
  step_t known = {"peak", 100, 100, NULL, NULL, "r05"};
  assert_int_equal(fold(f, &known), TLY_FOLD_APPLIED);
  int32_t h0 = tly_billing_hour(JAN1);
  assert_int_equal(check_sums(f->m, "peak", "properties.region"), 65);
  assert_non_null(group(f->m, h0, "peak", "properties.region", "r63"));
  assert_null(group(f->m, h0, "peak", "properties.region", "r64"));
  const tly_bucket_t *other =
      group(f->m, h0, "peak", "properties.region", TLY_DIM_OTHER);
  assert_non_null(other);
  assert_int_equal(other->event_count, 6);
  assert_int_equal(other->quantity, 6); /* 64 -> 70, one at a time */
  assert_int_equal(
      group(f->m, h0, "peak", "properties.region", "r05")->event_count, 2);
  step_t next = {"peak", 200, HOUR, NULL, NULL, "r69"};
  assert_int_equal(fold(f, &next), TLY_FOLD_APPLIED);
  assert_non_null(group(f->m, h0 + 1, "peak", "properties.region", "r69"));
  /* A value longer than 64 bytes goes to "other". */
  char longer[80];
  memset(longer, 'x', 65);
  longer[65] = '\0';
  step_t big = {"peak", 300, 2 * HOUR, NULL, NULL, longer};
  assert_int_equal(fold(f, &big), TLY_FOLD_APPLIED);
  assert_non_null(
      group(f->m, h0 + 2, "peak", "properties.region", TLY_DIM_OTHER));
  assert_int_equal(check_sums(f->m, "peak", "properties.region"), 67);
}

static void refusals(void **ctx) {
  fixture_t *f = *ctx;
  /* A feature posing as a group: refused, nothing changed. */
  step_t forged = {"ai\x1fmodel\x1fm1", 5, 0, NULL, NULL, NULL};
  assert_int_equal(fold(f, &forged), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "0x1f"));
  assert_int_equal(f->m->bucket_count, 0);
  assert_int_equal(f->m->row_count, 0);
  /* Without group_bucket the view keeps no group (the totals still move). */
  tly_mem_view_free(f->m);
  f->m = tly_mem_view_new(0);
  step_t ai = {"ai", 5, 0, "m1", "openai", NULL};
  assert_int_equal(fold(f, &ai), TLY_FOLD_APPLIED);
  assert_int_equal(f->m->bucket_count, 1);
  /* The config refuses a key longer than TLY_DIM_KEY_MAX. */
  char errstr[512];
  const char *bad = "{\"meters\": {\"a\": {\"group_by\": [\"model\", "
                    "\"properties.k123456789012345678901234567890123\"]}}}";
  tly_config_t *config =
      tly_config_load_text(bad, strlen(bad), errstr, sizeof(errstr));
  assert_null(config);
  assert_non_null(strstr(errstr, "meters.a.group_by[1]"));
}

/* Labels as clients write them, and a group's bucket through the bucket
 * encoding (names longer than a feature's). */
static void labels_and_encoding(void **ctx) {
  (void)ctx;
  tly_dimension_t dim;
  char label[TLY_DIM_LABEL_MAX];
  assert_int_equal(tly_dims_parse_label("model", &dim), 0);
  assert_int_equal(dim.kind, TLY_DIM_MODEL);
  assert_int_equal(tly_dims_parse_label("properties.region", &dim), 0);
  tly_dims_label(&dim, label);
  assert_string_equal(label, "properties.region");
  assert_int_equal(tly_dims_parse_label("plan", &dim), -1);
  assert_int_equal(tly_dims_parse_label("properties.", &dim), -1);
  assert_int_equal(tly_dims_parse_label(NULL, &dim), -1);

  tly_subject_bucket_t b = {.hour = 7};
  char value[TLY_DIM_VALUE_MAX + 1];
  memset(value, 'v', TLY_DIM_VALUE_MAX);
  value[TLY_DIM_VALUE_MAX] = '\0';
  char feature[TLY_CONFIG_NAME_MAX];
  memset(feature, 'f', sizeof(feature) - 1);
  feature[sizeof(feature) - 1] = '\0';
  char longest_label[TLY_DIM_LABEL_MAX];
  snprintf(longest_label, sizeof(longest_label), "properties.%032d",
           0); /* a 32-byte key */
  assert_true(tly_dims_bucket_name(b.feature, sizeof(b.feature), feature,
                                   longest_label, value));
  b.totals = (tly_bucket_t){1, 2, 3, 4, 5};
  const tly_subject_bucket_t *list[] = {&b};
  unsigned char out[1024];
  size_t len = tly_bucket_encode(list, 1, out, sizeof(out));
  assert_true(len <= sizeof(out));
  tly_subject_bucket_t *decoded = NULL;
  size_t count = 0;
  assert_int_equal(tly_bucket_decode(out, len, 7, &decoded, &count), 0);
  assert_int_equal(count, 1);
  assert_string_equal(decoded[0].feature, b.feature);
  assert_memory_equal(&decoded[0].totals, &b.totals, sizeof(b.totals));
  free(decoded);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(table, setup, teardown),
      cmocka_unit_test_setup_teardown(bound, setup, teardown),
      cmocka_unit_test_setup_teardown(refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(labels_and_encoding, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
