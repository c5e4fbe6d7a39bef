/*
 * tly_request_groups.c - answers by dimension and the analytics answers
 * (tly_request_groups.h). Pure: no I/O, no clock.
 */
#include "tly_request_groups.h"

#include "tly_dims.h"
#include "tly_sat.h"

#include <stdlib.h>
#include <string.h>

#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL

int tly_req_parse_group_by(const char *text, int allow_plan, char *label,
                           tly_req_error_t *err) {
  tly_dimension_t dim;
  label[0] = '\0';
  if (!text)
    return 0;
  if (allow_plan && strcmp(text, "plan") == 0) {
    strcpy(label, "plan");
    return 0;
  }
  if (tly_dims_parse_label(text, &dim))
    return tly_req_fail(
        err, 400, "bad_request", "group_by",
        "query parameter 'group_by': must be \"model\", \"provider\", %s"
        "\"properties.<key>\" (a key of 1 to %d bytes)",
        allow_plan ? "\"plan\", " : "", TLY_DIM_KEY_MAX);
  tly_dims_label(&dim, label);
  return 0;
}

/* ---- sums by (day or feature, value) ---------------------------------- */

static void add_figures(tly_bucket_t *a, const tly_bucket_t *b) {
  a->quantity = tly_add_saturating(a->quantity, b->quantity);
  a->input_tokens = tly_add_saturating(a->input_tokens, b->input_tokens);
  a->output_tokens = tly_add_saturating(a->output_tokens, b->output_tokens);
  a->event_count = tly_add_saturating(a->event_count, b->event_count);
  a->cost_micros = tly_add_saturating(a->cost_micros, b->cost_micros);
}

static void sub_figures(tly_bucket_t *a, const tly_bucket_t *b) {
  a->quantity = tly_add_saturating(a->quantity, -b->quantity);
  a->input_tokens = tly_add_saturating(a->input_tokens, -b->input_tokens);
  a->output_tokens = tly_add_saturating(a->output_tokens, -b->output_tokens);
  a->event_count = tly_add_saturating(a->event_count, -b->event_count);
  a->cost_micros = tly_add_saturating(a->cost_micros, -b->cost_micros);
}

static int figures_zero(const tly_bucket_t *a) {
  return !a->quantity && !a->input_tokens && !a->output_tokens &&
         !a->event_count && !a->cost_micros;
}

static int compare_hour_name(const void *a, const void *b) {
  const tly_subject_bucket_t *x = *(const tly_subject_bucket_t *const *)a;
  const tly_subject_bucket_t *y = *(const tly_subject_bucket_t *const *)b;
  if (x->hour != y->hour)
    return x->hour < y->hour ? -1 : 1;
  return strcmp(x->feature, y->feature);
}

/* Visits, for every feature bucket (hour, feature) of the buckets that
 * keep() accepts, each group of label (value, figures) and the remainder
 * in "none". visit returns non-zero to stop (failure). Sorted by (hour,
 * name): a feature's groups follow it (0x1f sorts before any name byte). */
typedef int (*group_visit_fn)(void *opaque, const tly_subject_bucket_t *feature,
                              const char *value, const tly_bucket_t *figures);

static int visit_groups(const tly_subject_bucket_t *buckets, size_t count,
                        const char *label,
                        int (*keep)(void *opaque,
                                    const tly_subject_bucket_t *bucket),
                        group_visit_fn visit, void *opaque) {
  const tly_subject_bucket_t **sorted =
      malloc((count ? count : 1) * sizeof(*sorted));
  if (!sorted)
    return -1;
  size_t n = 0;
  for (size_t i = 0; i < count; i++)
    if (buckets[i].totals.event_count && keep(opaque, &buckets[i]))
      sorted[n++] = &buckets[i];
  qsort(sorted, n, sizeof(*sorted), compare_hour_name);
  size_t label_len = strlen(label);
  int failed = 0;
  for (size_t i = 0; i < n && !failed;) {
    const tly_subject_bucket_t *feature = sorted[i++];
    size_t feature_len, part_len;
    const char *part, *value;
    if (tly_dims_split(feature->feature, &feature_len, &part, &part_len,
                       &value))
      continue; /* a group whose feature bucket is not here */
    tly_bucket_t rest = feature->totals;
    size_t name_len = strlen(feature->feature);
    for (; i < n && sorted[i]->hour == feature->hour &&
           tly_dims_split(sorted[i]->feature, &feature_len, &part, &part_len,
                          &value) &&
           feature_len == name_len &&
           memcmp(sorted[i]->feature, feature->feature, name_len) == 0;
         i++) {
      if (part_len != label_len || memcmp(part, label, label_len) != 0)
        continue;
      sub_figures(&rest, &sorted[i]->totals);
      failed = failed || visit(opaque, feature, value, &sorted[i]->totals);
    }
    if (!failed && !figures_zero(&rest))
      failed = visit(opaque, feature, TLY_DIM_NONE, &rest);
  }
  free(sorted);
  return failed ? -1 : 0;
}

static json_t *figures_json(const char *value, const tly_bucket_t *f) {
  return json_pack(
      "{s:s,s:I,s:I,s:I,s:I,s:I}", "value", value, "quantity",
      (json_int_t)f->quantity, "input_tokens", (json_int_t)f->input_tokens,
      "output_tokens", (json_int_t)f->output_tokens, "events",
      (json_int_t)f->event_count, "cost_micros", (json_int_t)f->cost_micros);
}

/* Adds figures to the group value of a "groups" list (kept sorted). */
static int add_to_list(json_t *list, const char *value,
                       const tly_bucket_t *figures) {
  size_t at = json_array_size(list);
  for (size_t i = 0; i < json_array_size(list); i++) {
    json_t *item = json_array_get(list, i);
    int cmp = strcmp(json_string_value(json_object_get(item, "value")), value);
    if (cmp == 0) {
      static const char *const keys[] = {
          "quantity", "input_tokens", "output_tokens", "events", "cost_micros"};
      const int64_t add[] = {figures->quantity, figures->input_tokens,
                             figures->output_tokens, figures->event_count,
                             figures->cost_micros};
      for (size_t k = 0; k < 5; k++) {
        json_t *number = json_object_get(item, keys[k]);
        json_integer_set(
            number, tly_add_saturating(json_integer_value(number), add[k]));
      }
      return 0;
    }
    if (cmp > 0) {
      at = i;
      break;
    }
  }
  json_t *item = figures_json(value, figures);
  return !item || json_array_insert_new(list, at, item);
}

/* The "groups" list of a feature entry, made empty when absent. */
static json_t *groups_of(json_t *entry) {
  json_t *list = json_object_get(entry, "groups");
  if (!list) {
    list = json_array();
    if (!list || json_object_set_new(entry, "groups", list))
      return NULL;
  }
  return list;
}

typedef struct {
  json_t *answer;
  int64_t start_ms, end_ms; /* usage: the cycle */
} groups_target_t;

static int keep_any(void *opaque, const tly_subject_bucket_t *bucket) {
  (void)opaque, (void)bucket;
  return 1;
}

static int day_visit(void *opaque, const tly_subject_bucket_t *feature,
                     const char *value, const tly_bucket_t *figures) {
  groups_target_t *target = opaque;
  char date[16];
  tly_req_format_day(tly_req_day_of_hour(feature->hour), date);
  json_t *days = json_object_get(target->answer, "days");
  for (size_t d = 0; d < json_array_size(days); d++) {
    json_t *day = json_array_get(days, d);
    if (strcmp(json_string_value(json_object_get(day, "date")), date) != 0)
      continue;
    json_t *entry =
        json_object_get(json_object_get(day, "features"), feature->feature);
    if (!entry)
      return 0; /* a day outside the answer */
    json_t *list = groups_of(entry);
    return !list || add_to_list(list, value, figures);
  }
  return 0;
}

/* Every feature entry gets a groups list (empty when none). */
static int ensure_groups(json_t *features) {
  const char *name;
  json_t *entry;
  json_object_foreach(features, name, entry) if (!groups_of(entry)) return -1;
  return 0;
}

int tly_req_daily_add_groups(json_t *daily, const char *label,
                             const tly_subject_bucket_t *buckets,
                             size_t count) {
  groups_target_t target = {.answer = daily};
  if (visit_groups(buckets, count, label, keep_any, day_visit, &target))
    return -1;
  json_t *days = json_object_get(daily, "days");
  for (size_t d = 0; d < json_array_size(days); d++)
    if (ensure_groups(json_object_get(json_array_get(days, d), "features")))
      return -1;
  return json_object_set_new(daily, "group_by", json_string(label));
}

static int keep_in_cycle(void *opaque, const tly_subject_bucket_t *bucket) {
  const groups_target_t *target = opaque;
  int64_t start = (int64_t)bucket->hour * HOUR_MS;
  return start + HOUR_MS > target->start_ms && start < target->end_ms;
}

static int usage_visit(void *opaque, const tly_subject_bucket_t *feature,
                       const char *value, const tly_bucket_t *figures) {
  groups_target_t *target = opaque;
  json_t *entry = json_object_get(json_object_get(target->answer, "features"),
                                  feature->feature);
  if (!entry)
    return 0;
  json_t *list = groups_of(entry);
  return !list || add_to_list(list, value, figures);
}

int tly_req_usage_add_groups(json_t *usage, const char *label,
                             const tly_subject_bucket_t *buckets, size_t count,
                             int64_t start_ms, int64_t end_ms) {
  groups_target_t target = {
      .answer = usage, .start_ms = start_ms, .end_ms = end_ms};
  if (visit_groups(buckets, count, label, keep_in_cycle, usage_visit,
                   &target) ||
      ensure_groups(json_object_get(usage, "features")))
    return -1;
  return json_object_set_new(usage, "group_by", json_string(label));
}

/* ---- analytics --------------------------------------------------------- */

int tly_req_parse_analytics(const tly_config_t *config,
                            tly_analytics_kind_t kind, const char *feature,
                            const char *by, const char *group_by,
                            const char *from, const char *to, const char *limit,
                            int64_t now_ms, tly_analytics_query_t *out,
                            tly_req_error_t *err) {
  memset(out, 0, sizeof(*out));
  out->kind = kind;
  out->limit = TLY_ANALYTICS_LIMIT_DEFAULT;
  out->by_cost = 1;
  if (feature && *feature) {
    if (strlen(feature) >= sizeof(out->feature) || strchr(feature, TLY_DIM_SEP))
      return tly_req_fail(err, 400, "bad_request", "feature",
                          "query parameter 'feature': at most %d bytes",
                          (int)sizeof(out->feature) - 1);
    strcpy(out->feature, feature);
  }
  if (kind == TLY_ANALYTICS_TOP) {
    if (by && strcmp(by, "quantity") == 0)
      out->by_cost = 0;
    else if (by && strcmp(by, "cost") != 0)
      return tly_req_fail(err, 400, "bad_request", "by",
                          "query parameter 'by': must be \"cost\" or "
                          "\"quantity\"");
    if (limit) {
      char *end = NULL;
      long long n = strtoll(limit, &end, 10);
      if (!*limit || *end || n < 1 || n > TLY_ANALYTICS_LIMIT_MAX)
        return tly_req_fail(err, 400, "bad_request", "limit",
                            "query parameter 'limit': must be 1 to %d",
                            TLY_ANALYTICS_LIMIT_MAX);
      out->limit = (size_t)n;
    }
  } else {
    if (!group_by)
      return tly_req_fail(err, 400, "bad_request", "group_by",
                          "query parameter 'group_by': required");
    if (tly_req_parse_group_by(group_by, 1, out->group_by, err))
      return -1;
  }
  int64_t start, end;
  tly_billing_month_cycle(config->cycle_anchor_ms, now_ms, &start, &end);
  out->from_ms = start;
  out->to_ms = end;
  if (from && tly_req_parse_date(from, &out->from_ms))
    return tly_req_fail(err, 400, "bad_date", "from",
                        "query parameter 'from': must be a date YYYY-MM-DD");
  if (to) {
    if (tly_req_parse_date(to, &out->to_ms))
      return tly_req_fail(err, 400, "bad_date", "to",
                          "query parameter 'to': must be a date YYYY-MM-DD");
    out->to_ms += DAY_MS; /* the day is included */
  }
  if (out->to_ms <= out->from_ms)
    return tly_req_fail(err, 400, "bad_date", "to",
                        "query parameter 'to': must not be before 'from'");
  if ((out->to_ms - out->from_ms) / DAY_MS > TLY_REQ_DAILY_MAX_DAYS)
    return tly_req_fail(err, 400, "bad_date", "to",
                        "the range is longer than %d days",
                        TLY_REQ_DAILY_MAX_DAYS);
  return 0;
}

typedef struct {
  char *subject;
  int64_t quantity, cost_micros, events;
} top_row_t;

struct tly_analytics_acc {
  tly_analytics_query_t query;
  top_row_t *rows; /* top: subjects with events in range */
  size_t row_count, row_cap;
  tly_bucket_t total; /* breakdown */
  json_t *groups;     /* breakdown: sorted list of figures_json */
  const char *plan;   /* the subject being added */
  int failed;
};

tly_analytics_acc_t *tly_analytics_acc_new(const tly_analytics_query_t *query) {
  tly_analytics_acc_t *acc = calloc(1, sizeof(*acc));
  if (!acc)
    return NULL;
  acc->query = *query;
  acc->groups = json_array();
  if (!acc->groups) {
    free(acc);
    return NULL;
  }
  return acc;
}

void tly_analytics_acc_free(tly_analytics_acc_t *acc) {
  if (!acc)
    return;
  for (size_t i = 0; i < acc->row_count; i++)
    free(acc->rows[i].subject);
  free(acc->rows);
  json_decref(acc->groups);
  free(acc);
}

static int in_query(void *opaque, const tly_subject_bucket_t *bucket) {
  const tly_analytics_acc_t *acc = opaque;
  int64_t start = (int64_t)bucket->hour * HOUR_MS;
  if (start < acc->query.from_ms || start >= acc->query.to_ms)
    return 0;
  if (!acc->query.feature[0])
    return 1;
  size_t len = strlen(acc->query.feature);
  return strncmp(bucket->feature, acc->query.feature, len) == 0 &&
         (bucket->feature[len] == '\0' || bucket->feature[len] == TLY_DIM_SEP);
}

/* Adds to a group of the answer; past TLY_ANALYTICS_GROUPS_MAX values a
 * new one adds to "other". */
static int add_group(tly_analytics_acc_t *acc, const char *value,
                     const tly_bucket_t *figures) {
  if (json_array_size(acc->groups) >= TLY_ANALYTICS_GROUPS_MAX) {
    int known = 0;
    for (size_t i = 0; i < json_array_size(acc->groups) && !known; i++)
      known = strcmp(json_string_value(json_object_get(
                         json_array_get(acc->groups, i), "value")),
                     value) == 0;
    if (!known)
      value = TLY_DIM_OTHER;
  }
  return add_to_list(acc->groups, value, figures);
}

static int breakdown_visit(void *opaque, const tly_subject_bucket_t *feature,
                           const char *value, const tly_bucket_t *figures) {
  (void)feature;
  return add_group(opaque, value, figures);
}

int tly_analytics_acc_subject(tly_analytics_acc_t *acc, const char *subject,
                              const char *plan,
                              const tly_subject_bucket_t *buckets,
                              size_t count) {
  tly_bucket_t sum = {0};
  for (size_t i = 0; i < count; i++) {
    size_t a, b;
    const char *c, *d;
    if (buckets[i].totals.event_count && in_query(acc, &buckets[i]) &&
        !tly_dims_split(buckets[i].feature, &a, &c, &b, &d))
      add_figures(&sum, &buckets[i].totals);
  }
  if (!sum.event_count)
    return 0;
  if (acc->query.kind == TLY_ANALYTICS_BREAKDOWN) {
    add_figures(&acc->total, &sum);
    if (strcmp(acc->query.group_by, "plan") == 0)
      return add_group(acc, plan, &sum);
    return visit_groups(buckets, count, acc->query.group_by, in_query,
                        breakdown_visit, acc);
  }
  if (acc->row_count == acc->row_cap) {
    size_t cap = acc->row_cap ? acc->row_cap * 2 : 64;
    top_row_t *grown = realloc(acc->rows, cap * sizeof(*grown));
    if (!grown)
      return -1;
    acc->rows = grown;
    acc->row_cap = cap;
  }
  top_row_t *row = &acc->rows[acc->row_count];
  row->subject = strdup(subject);
  if (!row->subject)
    return -1;
  row->quantity = sum.quantity;
  row->cost_micros = sum.cost_micros;
  row->events = sum.event_count;
  acc->row_count++;
  return 0;
}

static int compare_top(const top_row_t *x, const top_row_t *y, int cost) {
  int64_t fx = cost ? x->cost_micros : x->quantity;
  int64_t fy = cost ? y->cost_micros : y->quantity;
  if (fx != fy)
    return fx > fy ? -1 : 1;
  return strcmp(x->subject, y->subject);
}
static int compare_by_cost(const void *a, const void *b) {
  return compare_top(a, b, 1);
}
static int compare_by_quantity(const void *a, const void *b) {
  return compare_top(a, b, 0);
}

static json_t *totals_json(const tly_bucket_t *f) {
  return json_pack("{s:I,s:I,s:I}", "quantity", (json_int_t)f->quantity,
                   "cost_micros", (json_int_t)f->cost_micros, "events",
                   (json_int_t)f->event_count);
}

static void sort_top(top_row_t *rows, size_t count, int cost) {
  qsort(rows, count, sizeof(*rows),
        cost ? compare_by_cost : compare_by_quantity);
}

static json_t *top_json(const top_row_t *rows, size_t count, size_t limit) {
  json_t *list = json_array();
  for (size_t i = 0; list && i < count && i < limit; i++) {
    json_t *item = json_pack("{s:s,s:I,s:I,s:I}", "subject", rows[i].subject,
                             "quantity", (json_int_t)rows[i].quantity,
                             "cost_micros", (json_int_t)rows[i].cost_micros,
                             "events", (json_int_t)rows[i].events);
    if (!item || json_array_append_new(list, item)) {
      json_decref(list);
      return NULL;
    }
  }
  return list;
}

static json_t *groups_json(json_t *groups) {
  json_t *list = json_array();
  for (size_t i = 0; list && i < json_array_size(groups); i++) {
    json_t *g = json_array_get(groups, i);
    json_t *item =
        json_pack("{s:O,s:O,s:O,s:O}", "value", json_object_get(g, "value"),
                  "quantity", json_object_get(g, "quantity"), "cost_micros",
                  json_object_get(g, "cost_micros"), "events",
                  json_object_get(g, "events"));
    if (!item || json_array_append_new(list, item)) {
      json_decref(list);
      return NULL;
    }
  }
  return list;
}

json_t *tly_analytics_acc_json(const tly_analytics_acc_t *acc, int complete) {
  if (acc->query.kind == TLY_ANALYTICS_TOP) {
    sort_top(acc->rows, acc->row_count, acc->query.by_cost);
    json_t *list = top_json(acc->rows, acc->row_count, acc->query.limit);
    return list ? json_pack("{s:b,s:o}", "complete", complete, "subjects", list)
                : NULL;
  }
  json_t *total = totals_json(&acc->total), *groups = groups_json(acc->groups);
  if (!total || !groups) {
    json_decref(total);
    json_decref(groups);
    return NULL;
  }
  return json_pack("{s:b,s:o,s:o}", "complete", complete, "total", total,
                   "groups", groups);
}

static int take_figures(const json_t *item, tly_bucket_t *f) {
  json_t *q = json_object_get(item, "quantity"),
         *c = json_object_get(item, "cost_micros"),
         *e = json_object_get(item, "events");
  if (!json_is_integer(q) || !json_is_integer(c) || !json_is_integer(e))
    return -1;
  memset(f, 0, sizeof(*f));
  f->quantity = json_integer_value(q);
  f->cost_micros = json_integer_value(c);
  f->event_count = json_integer_value(e);
  return 0;
}

json_t *tly_analytics_merge(const tly_analytics_query_t *query,
                            json_t *const *parts, size_t count,
                            tly_req_error_t *err) {
  tly_analytics_acc_t *acc = tly_analytics_acc_new(query);
  int complete = 1, bad = !acc;
  for (size_t p = 0; p < count && !bad; p++) {
    const json_t *part = parts[p];
    complete = complete && json_is_true(json_object_get(part, "complete"));
    const json_t *list = json_object_get(
        part, query->kind == TLY_ANALYTICS_TOP ? "subjects" : "groups");
    bad = !json_is_array(list);
    for (size_t i = 0; !bad && i < json_array_size(list); i++) {
      const json_t *item = json_array_get(list, i);
      tly_bucket_t f;
      const char *name = json_string_value(json_object_get(
          item, query->kind == TLY_ANALYTICS_TOP ? "subject" : "value"));
      bad = !name || take_figures(item, &f);
      if (bad)
        break;
      if (query->kind == TLY_ANALYTICS_BREAKDOWN) {
        bad = add_group(acc, name, &f);
        continue;
      }
      if (acc->row_count == acc->row_cap) {
        size_t cap = acc->row_cap ? acc->row_cap * 2 : 64;
        top_row_t *grown = realloc(acc->rows, cap * sizeof(*grown));
        bad = !grown;
        if (bad)
          break;
        acc->rows = grown;
        acc->row_cap = cap;
      }
      top_row_t *row = &acc->rows[acc->row_count];
      row->subject = strdup(name);
      bad = !row->subject;
      if (bad)
        break;
      row->quantity = f.quantity;
      row->cost_micros = f.cost_micros;
      row->events = f.event_count;
      acc->row_count++;
    }
    if (!bad && query->kind == TLY_ANALYTICS_BREAKDOWN) {
      tly_bucket_t f;
      bad = take_figures(json_object_get(part, "total"), &f);
      if (!bad)
        add_figures(&acc->total, &f);
    }
  }
  json_t *merged = bad ? NULL : tly_analytics_acc_json(acc, complete);
  tly_analytics_acc_free(acc);
  if (!merged) {
    tly_req_fail(err, 502, "bad_gateway", "",
                 "an instance's part of the answer was malformed");
    return NULL;
  }
  json_t *feature =
      query->feature[0] ? json_string(query->feature) : json_null();
  json_t *answer =
      query->kind == TLY_ANALYTICS_TOP
          ? json_pack("{s:o,s:s,s:I,s:I}", "feature", feature, "by",
                      query->by_cost ? "cost" : "quantity", "from_ms",
                      (json_int_t)query->from_ms, "to_ms",
                      (json_int_t)query->to_ms)
          : json_pack("{s:o,s:s,s:I,s:I}", "feature", feature, "group_by",
                      query->group_by, "from_ms", (json_int_t)query->from_ms,
                      "to_ms", (json_int_t)query->to_ms);
  if (!answer || json_object_update(answer, merged)) {
    json_decref(answer);
    json_decref(merged);
    tly_req_fail(err, 500, "internal", "", "out of memory");
    return NULL;
  }
  json_decref(merged);
  return answer;
}
