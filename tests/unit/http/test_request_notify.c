/*
 * test_request_notify.c - the notifications routes' pure parsing
 * (tly_request_notify.h): the read body's ids (1..100, each 1..639 bytes,
 * repeats once, nothing but "ids"), ?unread=, and the read mark's event id
 * (deterministic, so marking twice is one event); plus the dashboard's
 * files as compiled in (tly_ui.h): every file found with a known content
 * type, nothing else, and a CSP with nothing inline or foreign.
 */
#include "tly_event.h"
#include "tly_request_notify.h"
#include "tly_ui.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static int parse(const char *body, tly_req_read_ids_t *ids,
                 tly_req_error_t *err) {
  return tly_req_parse_read_ids(body, strlen(body), ids, err);
}

static void test_read_ids(void **state) {
  (void)state;
  tly_req_read_ids_t ids;
  tly_req_error_t err;
  assert_int_equal(parse("{\"ids\": [\"a\", \"b\", \"a\"]}", &ids, &err), 0);
  assert_int_equal(ids.count, 2);
  assert_string_equal(ids.ids[0], "a");
  assert_string_equal(ids.ids[1], "b");
  tly_req_read_ids_clear(&ids);

  static const struct {
    const char *body, *code, *field;
  } bad[] = {{"", "bad_json", NULL},
             {"[]", "bad_json", NULL},
             {"{}", "bad_request", "ids"},
             {"{\"ids\": []}", "bad_request", "ids"},
             {"{\"ids\": \"a\"}", "bad_request", "ids"},
             {"{\"ids\": [1]}", "bad_request", "ids"},
             {"{\"ids\": [\"\"]}", "bad_request", "ids"},
             {"{\"ids\": [\"a\\u0000b\"]}", "bad_json", NULL},
             {"{\"ids\": [\"a\"], \"x\": 1}", "unknown_field", "x"},
             {"{\"ids\": [\"a\"], \"ids\": [\"b\"]}", "bad_json", NULL}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(&err, 0, sizeof(err));
    if (parse(bad[i].body, &ids, &err) != -1)
      fail_msg("%s: accepted", bad[i].body);
    assert_int_equal(err.status, 400);
    if (strcmp(err.code, bad[i].code))
      fail_msg("%s: %s, wanted %s", bad[i].body, err.code, bad[i].code);
    if (bad[i].field)
      assert_string_equal(err.field, bad[i].field);
    assert_int_equal(ids.count, 0);
    assert_null(ids.ids);
  }

  /* 100 ids of 639 bytes: taken; 101 ids, or one of 640 bytes: not. */
  size_t size = 200 * (TLY_NOTIFICATION_ID_MAX + 8);
  char *body = malloc(size), *id = malloc(TLY_NOTIFICATION_ID_MAX + 2);
  for (int extra = 0; extra < 2; extra++) {
    size_t n = (size_t)snprintf(body, size, "{\"ids\": [");
    for (int i = 0; i < 100 + extra; i++) {
      memset(id, 'x', TLY_NOTIFICATION_ID_MAX);
      char number[16];
      snprintf(number, sizeof(number), "%07d", i);
      memcpy(id, number, 7); /* distinct ids, each 639 bytes */
      id[TLY_NOTIFICATION_ID_MAX] = '\0';
      n += (size_t)snprintf(body + n, size - n, "%s\"%s\"", i ? "," : "", id);
    }
    snprintf(body + n, size - n, "]}");
    assert_int_equal(parse(body, &ids, &err), extra ? -1 : 0);
    if (!extra) {
      assert_int_equal(ids.count, 100);
      assert_int_equal(strlen(ids.ids[99]), TLY_NOTIFICATION_ID_MAX);
      tly_req_read_ids_clear(&ids);
    }
  }
  memset(id, 'y', TLY_NOTIFICATION_ID_MAX + 1);
  id[TLY_NOTIFICATION_ID_MAX + 1] = '\0';
  snprintf(body, size, "{\"ids\": [\"%s\"]}", id);
  assert_int_equal(parse(body, &ids, &err), -1);
  assert_string_equal(err.field, "ids");
  free(body);
  free(id);
}

static void test_unread_and_event_id(void **state) {
  (void)state;
  tly_req_error_t err;
  int unread = -1;
  assert_int_equal(tly_req_parse_unread(NULL, &unread, &err), 0);
  assert_int_equal(unread, 0);
  assert_int_equal(tly_req_parse_unread("1", &unread, &err), 0);
  assert_int_equal(unread, 1);
  assert_int_equal(tly_req_parse_unread("true", &unread, &err), 0);
  assert_int_equal(unread, 1);
  assert_int_equal(tly_req_parse_unread("false", &unread, &err), 0);
  assert_int_equal(unread, 0);
  assert_int_equal(tly_req_parse_unread("yes", &unread, &err), -1);
  assert_string_equal(err.field, "unread");

  char a[TLY_REQ_READ_EVENT_ID_SIZE], b[TLY_REQ_READ_EVENT_ID_SIZE],
      c[TLY_REQ_READ_EVENT_ID_SIZE];
  tly_req_read_event_id("limit_warning:user:a:1:api_calls:25", a);
  tly_req_read_event_id("limit_warning:user:a:1:api_calls:25", b);
  tly_req_read_event_id("limit_warning:user:a:1:api_calls:50", c);
  assert_string_equal(a, b);
  assert_string_not_equal(a, c);
  assert_int_equal(strlen(a), TLY_REQ_READ_EVENT_ID_SIZE - 1);
  assert_int_equal(strncmp(a, "notification_read:", 18), 0);
  assert_true(strlen(a) <= TLY_EVENT_ID_MAX);
}

static void test_ui_files(void **state) {
  (void)state;
  static const char *const names[] = {"index.html", "app.js", "app.css",
                                      "favicon.svg"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    const tly_ui_file_t *file = tly_ui_find(names[i], strlen(names[i]));
    if (!file)
      fail_msg("%s is not compiled in", names[i]);
    assert_true(file->size > 0);
    assert_int_equal(file->data[file->size], 0); /* NUL after the bytes */
    assert_string_not_equal(tly_ui_content_type(file->name),
                            "application/octet-stream");
  }
  assert_null(tly_ui_find("index.htm", 9));
  assert_null(tly_ui_find("../ui/app.js", 12));
  assert_null(tly_ui_find("", 0));
  assert_string_equal(tly_ui_content_type("x.bin"), "application/octet-stream");
  assert_null(strstr(tly_ui_csp, "unsafe"));
  assert_null(strstr(tly_ui_csp, "*"));
  assert_non_null(strstr(tly_ui_csp, "frame-ancestors 'none'"));
  int has_csp = 0;
  for (size_t i = 0; tly_ui_headers[i]; i += 2)
    has_csp |= strcmp(tly_ui_headers[i], "Content-Security-Policy") == 0 &&
               tly_ui_headers[i + 1] == tly_ui_csp;
  assert_true(has_csp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_ids),
      cmocka_unit_test(test_unread_and_event_id),
      cmocka_unit_test(test_ui_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
