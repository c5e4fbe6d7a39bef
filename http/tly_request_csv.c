/*
 * tly_request_csv.c - the daily and cycles answers as CSV (RFC 4180), for
 * a client whose Accept names text/csv. Made from the JSON answers of
 * tly_request.c, so both carry the same figures. Pure: no I/O.
 *
 * A field is quoted when it holds a comma, a quote, CR or LF (quotes
 * doubled), and also when it starts with = + - @ or a tab, so that a
 * spreadsheet never reads a feature name as a formula. Lines end in CRLF.
 */
#include "tly_request.h"
#include "tly_request_groups.h"

#include "tly_bytes.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An answer is at most this large (as the JSON answers). */
#define CSV_MAX (64u * 1024 * 1024)

typedef struct {
  char *text;
  size_t len, cap;
  int failed;
} csv_t;

static void put(csv_t *csv, const char *data, size_t n) {
  if (!csv->failed &&
      tly_text_append(&csv->text, &csv->len, &csv->cap, data, n, CSV_MAX))
    csv->failed = 1;
}

static void put_text(csv_t *csv, const char *text) {
  int quote = strpbrk(text, ",\"\r\n") != NULL ||
              (text[0] && strchr("=+-@\t", text[0]) != NULL);
  if (!quote) {
    put(csv, text, strlen(text));
    return;
  }
  put(csv, "\"", 1);
  for (const char *p = text; *p; p++) {
    put(csv, p, 1);
    if (*p == '"')
      put(csv, "\"", 1); /* doubled */
  }
  put(csv, "\"", 1);
}

static void put_int(csv_t *csv, json_int_t value) {
  char number[32];
  int n = snprintf(number, sizeof(number), "%" JSON_INTEGER_FORMAT, value);
  put(csv, number, (size_t)n);
}

static void put_member(csv_t *csv, const json_t *object, const char *key) {
  put(csv, ",", 1);
  put_int(csv, json_integer_value(json_object_get(object, key)));
}

/* The figures of one feature's usage entry, each after a comma. */
static void put_usage(csv_t *csv, const json_t *usage) {
  static const char *const keys[] = {"quantity", "input_tokens",
                                     "output_tokens", "events", "cost_micros"};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    put_member(csv, usage, keys[i]);
}

static char *finish(csv_t *csv) {
  if (csv->failed || !csv->text) {
    free(csv->text);
    return NULL;
  }
  return csv->text;
}

int tly_req_wants_csv(const char *accept) {
  if (!accept)
    return 0;
  for (const char *p = accept; *p; p++)
    if (strncasecmp(p, "text/csv", 8) == 0)
      return 1;
  return 0;
}

char *tly_req_daily_csv(const json_t *daily) {
  csv_t csv = {0};
  const json_t *days = json_object_get(daily, "days");
  const char *header = "date,feature,quantity,input_tokens,output_tokens,"
                       "events,cost_micros\r\n";
  put(&csv, header, strlen(header));
  for (size_t d = 0; d < json_array_size(days); d++) {
    const json_t *day = json_array_get(days, d);
    const char *date = json_string_value(json_object_get(day, "date"));
    const char *feature;
    json_t *usage;
    json_object_foreach((json_t *)json_object_get(day, "features"), feature,
                        usage) {
      put_text(&csv, date ? date : "");
      put(&csv, ",", 1);
      put_text(&csv, feature);
      put_usage(&csv, usage);
      put(&csv, "\r\n", 2);
    }
  }
  return finish(&csv);
}

char *tly_req_cycles_csv(const json_t *cycles) {
  csv_t csv = {0};
  const json_t *list = json_object_get(cycles, "cycles");
  const char *header = "start_ms,end_ms,final,feature,quantity,input_tokens,"
                       "output_tokens,events,cost_micros\r\n";
  put(&csv, header, strlen(header));
  for (size_t c = 0; c < json_array_size(list); c++) {
    const json_t *cycle = json_array_get(list, c);
    const char *feature;
    json_t *usage;
    json_object_foreach((json_t *)json_object_get(cycle, "features"), feature,
                        usage) {
      put_int(&csv, json_integer_value(json_object_get(cycle, "start_ms")));
      put_member(&csv, cycle, "end_ms");
      put(&csv,
          json_is_true(json_object_get(cycle, "final")) ? ",true," : ",false,",
          json_is_true(json_object_get(cycle, "final")) ? 6 : 7);
      put_text(&csv, feature);
      put_usage(&csv, usage);
      put(&csv, "\r\n", 2);
    }
  }
  return finish(&csv);
}

char *tly_req_daily_groups_csv(const json_t *daily) {
  csv_t csv = {0};
  const json_t *days = json_object_get(daily, "days");
  const char *header = "date,feature,group,quantity,input_tokens,"
                       "output_tokens,events,cost_micros\r\n";
  put(&csv, header, strlen(header));
  for (size_t d = 0; d < json_array_size(days); d++) {
    const json_t *day = json_array_get(days, d);
    const char *date = json_string_value(json_object_get(day, "date"));
    const char *feature;
    json_t *usage;
    json_object_foreach((json_t *)json_object_get(day, "features"), feature,
                        usage) {
      const json_t *groups = json_object_get(usage, "groups");
      for (size_t g = 0; g < json_array_size(groups); g++) {
        const json_t *group = json_array_get(groups, g);
        const char *value = json_string_value(json_object_get(group, "value"));
        put_text(&csv, date ? date : "");
        put(&csv, ",", 1);
        put_text(&csv, feature);
        put(&csv, ",", 1);
        put_text(&csv, value ? value : "");
        put_usage(&csv, group);
        put(&csv, "\r\n", 2);
      }
    }
  }
  return finish(&csv);
}

char *tly_req_analytics_csv(const json_t *answer) {
  csv_t csv = {0};
  const json_t *subjects = json_object_get(answer, "subjects");
  const json_t *list = subjects ? subjects : json_object_get(answer, "groups");
  const char *name = subjects ? "subject" : "value";
  put(&csv, name, strlen(name));
  put(&csv, ",quantity,cost_micros,events\r\n", 30);
  for (size_t i = 0; i < json_array_size(list); i++) {
    const json_t *item = json_array_get(list, i);
    const char *text = json_string_value(json_object_get(item, name));
    put_text(&csv, text ? text : "");
    put_member(&csv, item, "quantity");
    put_member(&csv, item, "cost_micros");
    put_member(&csv, item, "events");
    put(&csv, "\r\n", 2);
  }
  return finish(&csv);
}
