/*
 * test_corrections_groups.c - a usage_corrected event moves the groups
 * (tly_dims.h) its original went to, over an in-memory view with group
 * buckets that resolve names as the processor's does (a value of its own
 * up to TLY_DIM_VALUES_MAX used values per hour, then "other"):
 *  - amend, retract and amend again of AI events (model and provider) and
 *    of api_calls grouped by properties.region (one without a region):
 *    every bucket, feature and group, equals the stream "as if sent
 *    right"; the corrected quantity shows under the original's model and
 *    "none" of model stays empty;
 *  - a correction naming another model is priced at it but stays in the
 *    original's group;
 *  - an original that overflowed into "other": its correction moves
 *    "other", never the named group its value got later in that hour;
 *  - a version-1 contribution (written before groups were kept) still
 *    reads: its correction moves the feature only (the difference shows
 *    in "none", as before);
 *  - the bound: names beyond TLY_CONTRIBUTION_GROUPS_MAX bytes are not
 *    kept, and their dimension's difference shows in "none";
 *  - the encoding's round trip with groups, every prefix and bad groups
 *    refused.
 * In every case each dimension's groups sum to the feature, hour by hour.
 */
#include "tly_billing.h"
#include "tly_corrections.h"
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
#define DAY 86400000LL
#define SEP "\x1f"

static const char *config_json =
    "{\"pricing\": {\"margin_bps\": 0, \"unknown_model\": \"dead_letter\","
    "   \"models\": {\"m1\": {\"input_per_mtok\": 1000000, "
    "                        \"output_per_mtok\": 2000000},"
    "              \"m2\": {\"input_per_mtok\": 3000000, "
    "                        \"output_per_mtok\": 5000000}}},"
    " \"cycles\": {\"anchor\": \"2026-01-01T00:00:00Z\"},"
    " \"default_plans\": {\"user\": \"t\"},"
    " \"meters\": {\"api_calls\": {\"group_by\": [\"properties.region\"]},"
    "   \"wide\": {\"group_by\": ["
    "     \"properties.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1\","
    "     \"properties.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2\","
    "     \"properties.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa3\"]}},"
    " \"plans\": {\"t\": {\"credits\": -1,"
    "   \"prices\": {\"api_calls\": {\"model\": \"graduated\", \"tiers\": "
    "     [{\"up_to\": null, \"unit_micros\": 1000}]}}}}}";

/* A view with groups and contributions (tly_mem_view.h): its group
 * buckets resolve names as the processor's do. */
#define WITH (TLY_MEM_WITH_NAMES | TLY_MEM_WITH_CONTRIBUTIONS)

typedef tly_mem_fixture_t fixture_t;

static int setup(void **ctx) {
  *ctx = tly_mem_fixture_new(config_json, WITH, 1);
  return *ctx ? 0 : -1;
}

static int teardown(void **ctx) {
  tly_mem_fixture_free(*ctx);
  return 0;
}

/* One step: usage (corrects NULL) or a correction. model NULL: no ai. */
typedef struct {
  const char *event_id;
  const char *corrects;
  const char *feature;
  int64_t quantity;
  int64_t at_ms;
  const char *model, *provider;
  int64_t in, out;
  const char *region; /* property "region", or NULL */
} step_t;

static tly_fold_result_t fold_into(fixture_t *f, tly_mem_view_t *m,
                                   const step_t *s) {
  tly_property_t property = {"region", (char *)s->region};
  tly_event_t e = {.event_id = (char *)s->event_id,
                   .occurred_at_ms = s->at_ms,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = "alice",
                   .body_kind = s->corrects ? TLY_BODY_USAGE_CORRECTED
                                            : TLY_BODY_USAGE_RECORDED};
  e.body.usage.feature = (char *)s->feature;
  e.body.usage.quantity = s->quantity;
  e.body.usage.unit = "";
  e.body.usage.corrects = (char *)s->corrects;
  if (s->region) {
    e.body.usage.property_count = 1;
    e.body.usage.properties = &property;
  }
  if (s->model) {
    e.body.usage.has_ai = 1;
    e.body.usage.ai =
        (tly_ai_usage_t){(char *)s->provider, (char *)s->model, s->in, s->out};
  }
  return tly_billing_fold(&f->billing, &m->view, &e, &f->alerts, f->errstr,
                          sizeof(f->errstr));
}

static void fold_all(fixture_t *f, tly_mem_view_t *m, const step_t *steps,
                     size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fold_into(f, m, &steps[i]) != TLY_FOLD_APPLIED)
      fail_msg("step %zu (%s): %s", i, steps[i].event_id, f->errstr);
}

static tly_bucket_t bucket_of(tly_mem_view_t *m, int32_t hour,
                              const char *name) {
  tly_mem_bucket_t *b = tly_mem_bucket_find(m, "alice", hour, name);
  return b ? b->bucket : (tly_bucket_t){0};
}

static int32_t hour_of(int64_t t) { return tly_billing_hour(t); }

/* Every bucket of either side, feature or group, equal in both (absent is
 * zero). */
static void assert_buckets_equal(tly_mem_view_t *a, tly_mem_view_t *b) {
  tly_mem_view_t *sides[2] = {a, b};
  for (int s = 0; s < 2; s++)
    for (size_t i = 0; i < sides[s]->bucket_count; i++) {
      const tly_mem_bucket_t *x = &sides[s]->buckets[i];
      tly_bucket_t y = bucket_of(sides[1 - s], x->hour, x->name);
      if (memcmp(&x->bucket, &y, sizeof(y)) != 0)
        fail_msg("hour %d, bucket %s: quantity %lld tokens %lld,%lld events "
                 "%lld cost %lld against quantity %lld tokens %lld,%lld "
                 "events %lld cost %lld",
                 (int)x->hour, x->name, (long long)x->bucket.quantity,
                 (long long)x->bucket.input_tokens,
                 (long long)x->bucket.output_tokens,
                 (long long)x->bucket.event_count,
                 (long long)x->bucket.cost_micros, (long long)y.quantity,
                 (long long)y.input_tokens, (long long)y.output_tokens,
                 (long long)y.event_count, (long long)y.cost_micros);
    }
}

/* The groups of (hour, feature, label) summed. */
static tly_bucket_t groups_sum(tly_mem_view_t *m, int32_t hour,
                               const char *feature, const char *label) {
  char prefix[TLY_BUCKET_NAME_MAX];
  size_t len =
      tly_dims_bucket_name(prefix, sizeof(prefix), feature, label, NULL);
  tly_bucket_t sum = {0};
  for (size_t i = 0; i < m->bucket_count; i++)
    if (m->buckets[i].hour == hour && !strncmp(m->buckets[i].name, prefix, len))
      assert_int_equal(tly_bucket_add(&sum, &m->buckets[i].bucket), 0);
  return sum;
}

/* Each dimension's groups add up to the feature exactly in the hour. */
static void assert_groups_sum(tly_mem_view_t *m, int32_t hour,
                              const char *feature, const char *label) {
  tly_bucket_t sum = groups_sum(m, hour, feature, label),
               whole = bucket_of(m, hour, feature);
  if (memcmp(&sum, &whole, sizeof(sum)) != 0)
    fail_msg("hour %d, %s by %s: the groups sum to %lld (%lld events, cost "
             "%lld), the feature holds %lld (%lld events, cost %lld)",
             (int)hour, feature, label, (long long)sum.quantity,
             (long long)sum.event_count, (long long)sum.cost_micros,
             (long long)whole.quantity, (long long)whole.event_count,
             (long long)whole.cost_micros);
}

static char *group_name(char *out, const char *feature, const char *label,
                        const char *value) {
  assert_true(tly_dims_bucket_name(out, TLY_BUCKET_NAME_MAX, feature, label,
                                   value) > 0);
  return out;
}

#define AI(m, p, i, o) m, p, i, o
#define PLAIN NULL, NULL, 0, 0

/* Amend, retract and amend twice, AI and property groups: every bucket
 * equals "as if sent right"; the model's group moved, "none" did not. */
static void moves_the_originals_groups(void **ctx) {
  fixture_t *f = *ctx;
  const int64_t t = JAN1 + 5 * HOUR;
  const step_t stream[] = {
      {"e1", NULL, "ai_tokens", 150, t, AI("m1", "openai", 100, 50), NULL},
      {"e2", NULL, "ai_tokens", 15, t + 1, AI("m2", "anthropic", 10, 5), NULL},
      {"e3", NULL, "ai_tokens", 9, t + 2, AI("m2", "openai", 4, 5), NULL},
      {"e4", NULL, "api_calls", 3, t + 3, PLAIN, "eu"},
      {"e5", NULL, "api_calls", 2, t + 4, PLAIN, NULL},
      {"e6", NULL, "api_calls", 4, t + 5, PLAIN, "us"},
      /* an hour later: the originals' hour moves, not this one */
      {"c1", "e1", "ai_tokens", 50, t + HOUR, AI("m1", "openai", 40, 10), NULL},
      {"c2", "e2", "ai_tokens", 0, t + HOUR, PLAIN, NULL}, /* retract */
      {"c3", "e3", "ai_tokens", 2, t + HOUR, AI("m2", "openai", 1, 1), NULL},
      {"c4", "e3", "ai_tokens", 30, t + HOUR, AI("m2", "openai", 20, 10),
       NULL}, /* the latest wins */
      {"c5", "e4", "api_calls", 7, t + HOUR, PLAIN, NULL},
      {"c6", "e5", "api_calls", 1, t + HOUR, PLAIN, NULL},
      {"c7", "e6", "api_calls", 0, t + HOUR, PLAIN, NULL},
  };
  const step_t right[] = {
      {"e1", NULL, "ai_tokens", 50, t, AI("m1", "openai", 40, 10), NULL},
      {"e3", NULL, "ai_tokens", 30, t + 2, AI("m2", "openai", 20, 10), NULL},
      {"e4", NULL, "api_calls", 7, t + 3, PLAIN, "eu"},
      {"e5", NULL, "api_calls", 1, t + 4, PLAIN, NULL},
  };
  fold_all(f, f->m, stream, sizeof(stream) / sizeof(stream[0]));
  fold_all(f, f->ref, right, sizeof(right) / sizeof(right[0]));
  /* The retracted events' groups are left at zero in m: absent in ref. */
  assert_buckets_equal(f->m, f->ref);
  char name[TLY_BUCKET_NAME_MAX];
  tly_bucket_t m1 =
      bucket_of(f->m, hour_of(t), group_name(name, "ai_tokens", "model", "m1"));
  assert_int_equal(m1.quantity, 50);
  assert_int_equal(m1.input_tokens, 40);
  assert_int_equal(m1.cost_micros, 40 + 2 * 10);
  assert_int_equal(m1.event_count, 1);
  tly_bucket_t none = bucket_of(
      f->m, hour_of(t), group_name(name, "ai_tokens", "model", TLY_DIM_NONE));
  assert_int_equal(none.quantity, 0);
  assert_int_equal(none.event_count, 0);
  tly_bucket_t anthropic = bucket_of(
      f->m, hour_of(t), group_name(name, "ai_tokens", "provider", "anthropic"));
  assert_int_equal(anthropic.quantity, 0);
  assert_int_equal(anthropic.event_count, 0);
  /* e5 had no region: its correction stays in region "none". */
  tly_bucket_t region_none =
      bucket_of(f->m, hour_of(t),
                group_name(name, "api_calls", "properties.region", "none"));
  assert_int_equal(region_none.quantity, 1);
  /* Nothing moved in the corrections' own hour. */
  assert_int_equal(bucket_of(f->m, hour_of(t + HOUR), "ai_tokens").event_count,
                   0);
  assert_groups_sum(f->m, hour_of(t), "ai_tokens", "model");
  assert_groups_sum(f->m, hour_of(t), "ai_tokens", "provider");
  assert_groups_sum(f->m, hour_of(t), "api_calls", "properties.region");
}

/* A correction naming model m2 is priced at m2, but its difference stays
 * in the original's group m1 (the dimensions are the original's). */
static void another_model_stays_in_the_originals_group(void **ctx) {
  fixture_t *f = *ctx;
  const int64_t t = JAN1 + 2 * HOUR;
  const step_t stream[] = {
      {"e1", NULL, "ai_tokens", 30, t, AI("m1", "openai", 20, 10), NULL},
      {"c1", "e1", "ai_tokens", 7, t + 1, AI("m2", "other-co", 5, 2), NULL},
  };
  fold_all(f, f->m, stream, 2);
  char name[TLY_BUCKET_NAME_MAX];
  tly_bucket_t m1 =
      bucket_of(f->m, hour_of(t), group_name(name, "ai_tokens", "model", "m1"));
  assert_int_equal(m1.quantity, 7);
  assert_int_equal(m1.cost_micros, 5 * 3 + 2 * 5); /* at m2's price */
  assert_null(tly_mem_bucket_find(
      f->m, "alice", hour_of(t), group_name(name, "ai_tokens", "model", "m2")));
  assert_null(tly_mem_bucket_find(
      f->m, "alice", hour_of(t),
      group_name(name, "ai_tokens", "provider", "other-co")));
  assert_groups_sum(f->m, hour_of(t), "ai_tokens", "model");
  assert_groups_sum(f->m, hour_of(t), "ai_tokens", "provider");
}

/* An original that overflowed into "other" is corrected there, even once
 * its value has a group of its own in that hour. */
static void overflow_goes_back_to_other(void **ctx) {
  fixture_t *f = *ctx;
  const int64_t t = JAN1 + 9 * HOUR;
  static step_t fill[TLY_DIM_VALUES_MAX];
  static char ids[TLY_DIM_VALUES_MAX][16], regions[TLY_DIM_VALUES_MAX][16];
  for (int i = 0; i < TLY_DIM_VALUES_MAX; i++) {
    snprintf(ids[i], sizeof(ids[i]), "h%d", i);
    snprintf(regions[i], sizeof(regions[i]), "r%d", i);
    fill[i] = (step_t){ids[i], NULL, "api_calls", 1, t + i, PLAIN, regions[i]};
  }
  fold_all(f, f->m, fill, TLY_DIM_VALUES_MAX);
  const step_t after[] = {
      /* the hour is full: "late" goes to other */
      {"x", NULL, "api_calls", 5, t + 100, PLAIN, "late"},
      /* r5 and r6 retracted free a place (a used "other" counts as one
       * of the hour's values): "late" gets its own group */
      {"c1", "h5", "api_calls", 0, t + 101, PLAIN, NULL},
      {"c2", "h6", "api_calls", 0, t + 101, PLAIN, NULL},
      {"y", NULL, "api_calls", 2, t + 102, PLAIN, "late"},
      /* x is corrected where it went: other */
      {"c3", "x", "api_calls", 10, t + 103, PLAIN, NULL},
  };
  fold_all(f, f->m, after, 5);
  char name[TLY_BUCKET_NAME_MAX];
  tly_bucket_t other = bucket_of(
      f->m, hour_of(t),
      group_name(name, "api_calls", "properties.region", TLY_DIM_OTHER));
  tly_bucket_t late =
      bucket_of(f->m, hour_of(t),
                group_name(name, "api_calls", "properties.region", "late"));
  assert_int_equal(other.quantity, 10);
  assert_int_equal(other.event_count, 1);
  assert_int_equal(late.quantity, 2); /* y alone: never doubled */
  assert_int_equal(late.event_count, 1);
  assert_int_equal(bucket_of(f->m, hour_of(t), "api_calls").quantity,
                   TLY_DIM_VALUES_MAX - 2 + 10 + 2);
  assert_groups_sum(f->m, hour_of(t), "api_calls", "properties.region");
}

/* A contribution written before groups were kept (version 1) reads, and
 * its correction moves the feature only: the difference shows beyond the
 * groups ("none" in the answers), and the groups keep the original. */
static void version_1_moves_the_feature_only(void **ctx) {
  fixture_t *f = *ctx;
  const int64_t t = JAN1 + 3 * HOUR;
  const step_t e1 = {"e1", NULL, "ai_tokens", 30, t, AI("m1", "openai", 20, 10),
                     NULL};
  fold_all(f, f->m, &e1, 1);
  /* Rewrite e1's contribution as version 1 wrote it: no groups section. */
  tly_mem_contribution_t *slot = tly_mem_contribution_find(f->m, "alice", "e1");
  assert_non_null(slot);
  tly_contribution_t c;
  assert_int_equal(tly_contribution_decode(slot->value, slot->len, &c), 0);
  assert_int_equal(c.group_count, 2);
  c.group_count = 0;
  slot->len = tly_contribution_encode(&c, slot->value);
  assert_int_equal(slot->value[slot->len - 1], 0); /* no groups */
  slot->value[8] = 1;
  slot->len--;
  assert_int_equal(tly_contribution_decode(slot->value, slot->len, &c), 0);
  assert_int_equal(c.group_count, 0);
  assert_int_equal(c.quantity, 30);
  assert_string_equal(c.feature, "ai_tokens");

  const step_t c1 = {
      "c1", "e1", "ai_tokens", 6, t + 1, AI("m1", "openai", 4, 2), NULL};
  fold_all(f, f->m, &c1, 1);
  char name[TLY_BUCKET_NAME_MAX];
  assert_int_equal(bucket_of(f->m, hour_of(t), "ai_tokens").quantity, 6);
  tly_bucket_t m1 =
      bucket_of(f->m, hour_of(t), group_name(name, "ai_tokens", "model", "m1"));
  assert_int_equal(m1.quantity, 30); /* not moved: as before groups were kept */
  tly_bucket_t sum = groups_sum(f->m, hour_of(t), "ai_tokens", "model");
  assert_int_equal(bucket_of(f->m, hour_of(t), "ai_tokens").quantity -
                       sum.quantity,
                   6 - 30); /* the difference, beyond the groups */
  /* Written again as version 2, still without groups: the same next time. */
  slot = tly_mem_contribution_find(f->m, "alice", "e1");
  assert_int_equal(slot->value[8], 2);
  assert_int_equal(tly_contribution_decode(slot->value, slot->len, &c), 0);
  assert_int_equal(c.group_count, 0);
}

/* The bound: a contribution is at most TLY_CONTRIBUTION_MAX bytes. Three
 * dimensions of 108-byte names: the first two are kept, the third does not
 * fit, so only the first two move and the third's difference shows beyond
 * its groups ("none" in the answers). */
#define KEY(n) "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" #n
static void the_bound(void **ctx) {
  fixture_t *f = *ctx;
  const int64_t t = JAN1 + 4 * HOUR;
  char v[3][TLY_DIM_VALUE_MAX + 1];
  for (int i = 0; i < 3; i++) {
    memset(v[i], 'x' + i, TLY_DIM_VALUE_MAX);
    v[i][TLY_DIM_VALUE_MAX] = '\0';
  }
  tly_property_t props[3] = {{KEY(1), v[0]}, {KEY(2), v[1]}, {KEY(3), v[2]}};
  assert_int_equal(strlen(KEY(1)), TLY_DIM_KEY_MAX);
  tly_event_t e = {.event_id = "w1",
                   .occurred_at_ms = t,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = "alice",
                   .body_kind = TLY_BODY_USAGE_RECORDED};
  e.body.usage.feature = "wide";
  e.body.usage.quantity = 9;
  e.body.usage.unit = "";
  e.body.usage.property_count = 3;
  e.body.usage.properties = props;
  assert_int_equal(tly_billing_fold(&f->billing, &f->m->view, &e, &f->alerts,
                                    f->errstr, sizeof(f->errstr)),
                   TLY_FOLD_APPLIED);
  tly_contribution_t c;
  tly_mem_contribution_t *slot = tly_mem_contribution_find(f->m, "alice", "w1");
  assert_true(slot->len <= TLY_CONTRIBUTION_MAX);
  assert_int_equal(tly_contribution_decode(slot->value, slot->len, &c), 0);
  assert_int_equal(c.group_count, 2);
  assert_int_equal(strlen(c.groups[0]), 11 + 32 + 1 + TLY_DIM_VALUE_MAX);
  const step_t c1 = {"c1", "w1", "wide", 4, t + 1, PLAIN, NULL};
  fold_all(f, f->m, &c1, 1);
  char name[TLY_BUCKET_NAME_MAX];
  const char *labels[3] = {"properties." KEY(1), "properties." KEY(2),
                           "properties." KEY(3)};
  const int64_t want[3] = {4, 4, 9};
  for (int i = 0; i < 3; i++)
    assert_int_equal(
        bucket_of(f->m, hour_of(t), group_name(name, "wide", labels[i], v[i]))
            .quantity,
        want[i]);
  assert_groups_sum(f->m, hour_of(t), "wide", labels[0]);
  assert_groups_sum(f->m, hour_of(t), "wide", labels[1]);
  assert_int_equal(groups_sum(f->m, hour_of(t), "wide", labels[2]).quantity,
                   9); /* and the feature 4: -5 beyond the groups */
}

static void encoding(void **state) {
  (void)state;
  tly_contribution_t c = {.occurred_at_ms = JAN1 + 5,
                          .cycle_start_ms = JAN1,
                          .quantity = 77,
                          .input_tokens = 3,
                          .output_tokens = 4,
                          .numerator = 123456789,
                          .counted = 1,
                          .feature = "ai_tokens",
                          .group_count = 2,
                          .groups = {"model" SEP "gpt-4o",
                                     "provider" SEP "other"}},
                     back;
  unsigned char bytes[TLY_CONTRIBUTION_MAX];
  size_t len = tly_contribution_encode(&c, bytes);
  assert_true(len <= TLY_CONTRIBUTION_MAX);
  assert_int_equal(tly_contribution_decode(bytes, len, &back), 0);
  assert_int_equal(back.group_count, 2);
  assert_string_equal(back.groups[0], c.groups[0]);
  assert_string_equal(back.groups[1], c.groups[1]);
  assert_int_equal(back.quantity, 77);
  assert_string_equal(back.feature, "ai_tokens");
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_contribution_decode(bytes, cut, &back), -1);
  /* A name without the separator, or with a NUL, is refused. */
  unsigned char bad[TLY_CONTRIBUTION_MAX];
  memcpy(bad, bytes, len);
  char *sep = memchr(bad, 0x1f, len);
  assert_non_null(sep);
  *sep = '_';
  assert_int_equal(tly_contribution_decode(bad, len, &back), -1);
  *sep = '\0';
  assert_int_equal(tly_contribution_decode(bad, len, &back), -1);
  /* More groups than a meter has is refused. */
  memcpy(bad, bytes, len);
  size_t count_at = len - (1 + strlen(c.groups[0])) - (1 + strlen(c.groups[1]));
  assert_int_equal(bad[count_at - 1], 2);
  bad[count_at - 1] = TLY_METER_GROUP_MAX + 1;
  assert_int_equal(tly_contribution_decode(bad, len, &back), -1);
  /* Trailing bytes are refused. */
  memcpy(bad, bytes, len);
  bad[len] = 0;
  assert_int_equal(tly_contribution_decode(bad, len + 1, &back), -1);
  /* Names are kept while the record fits TLY_CONTRIBUTION_MAX, each whole
   * or not at all. */
  tly_contribution_t wide = c;
  wide.group_count = 4;
  for (int i = 0; i < 3; i++) {
    memset(wide.groups[i], 'a' + i, 100);
    wide.groups[i][3] = 0x1f;
    wide.groups[i][100] = '\0';
  }
  strcpy(wide.groups[3], "model" SEP "m"); /* short: still fits */
  len = tly_contribution_encode(&wide, bytes);
  assert_true(len <= TLY_CONTRIBUTION_MAX);
  assert_int_equal(tly_contribution_decode(bytes, len, &back), 0);
  assert_int_equal(back.group_count, 3);
  assert_string_equal(back.groups[0], wide.groups[0]);
  assert_string_equal(back.groups[1], wide.groups[1]);
  assert_string_equal(back.groups[2], wide.groups[3]);
  /* A record longer than the bound is refused. */
  unsigned char longer[TLY_CONTRIBUTION_MAX + 1] = {0};
  memcpy(longer, bytes, len);
  assert_int_equal(
      tly_contribution_decode(longer, TLY_CONTRIBUTION_MAX + 1, &back), -1);
  /* Another version is refused. */
  bytes[8] = 3;
  assert_int_equal(tly_contribution_decode(bytes, len, &back), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(moves_the_originals_groups, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          another_model_stays_in_the_originals_group, setup, teardown),
      cmocka_unit_test_setup_teardown(overflow_goes_back_to_other, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(version_1_moves_the_feature_only, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(the_bound, setup, teardown),
      cmocka_unit_test(encoding),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
