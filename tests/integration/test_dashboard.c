/*
 * test_dashboard.c - the dashboard (/ui/) against a real `tally run` on
 * the embedded broker:
 *
 * - its routes and headers over a real socket: /ui redirects to /ui/, the
 *   page and its files come from the binary with their content types, a
 *   strict Content-Security-Policy (scripts and styles from the origin
 *   only, no 'unsafe-inline', frame-ancestors 'none'), nosniff,
 *   Referrer-Policy, no cookie; the page itself needs no key, the JSON
 *   routes it calls do; the served HTML holds no inline script, style or
 *   event handler (the CSP would block them);
 * - the page in headless Chromium (Debian's chromium, from
 *   scripts/install-deps.sh), driven over the DevTools protocol by
 *   tests/integration/python/dashboard_check.py: sign-in (a wrong key
 *   refused), the customer view's numbers against the JSON API, the admin
 *   view against /metrics and /readyz, panels of routes this build lacks
 *   shown as "not available", no console error or CSP violation, no page
 *   wider than the window; screenshots of each view at laptop and phone
 *   width under the build directory (ui-screenshots/).
 */
#include "harness.h"

#include <curl/curl.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define PARTITIONS 4
#define DAY_MS 86400000LL
#define SUBJECT "user:ui-alice"
#define CHROMIUM "/usr/bin/chromium"

static th_broker_t broker;
static th_run_t run;
static char *dir;

static const char config_json[] =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"pricing\": {\"margin_bps\": 2000, \"models\": {"
    "   \"gpt-4o\": {\"input_per_mtok\": 2500000, \"output_per_mtok\": "
    "10000000},"
    "   \"claude-sonnet\": {\"input_per_mtok\": 3000000, \"output_per_mtok\": "
    "15000000}}},"
    " \"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"anonymous\": \"team\", \"user\": \"team\", "
    "\"api_key\": \"team\"},"
    " \"plans\": {\"team\": {\"credits\": 5000, \"base_price_micros\": "
    "49000000,"
    "   \"limits\": {\"api_calls\": {\"limit\": 1000, \"mode\": \"hard\"},"
    "              \"ai_tokens\": {\"limit\": 2000000, \"mode\": \"soft\"},"
    "              \"storage_bytes\": {\"unlimited\": true}},"
    "   \"prices\": {\"api_calls\": {\"model\": \"graduated\", \"tiers\": ["
    "       {\"up_to\": 500, \"unit_micros\": 0}, {\"up_to\": null, "
    "\"unit_micros\": 2000}]}}}}}";

/* ---- HTTP with headers -------------------------------------------------- */

typedef struct {
  char *data;
  size_t len;
} buf_t;

static size_t collect(char *ptr, size_t size, size_t n, void *opaque) {
  buf_t *buf = opaque;
  char *grown = realloc(buf->data, buf->len + size * n + 1);
  assert_non_null(grown);
  memcpy(grown + buf->len, ptr, size * n);
  buf->len += size * n;
  grown[buf->len] = '\0';
  buf->data = grown;
  return size * n;
}

typedef struct {
  long status;
  char *headers; /* the whole header block, lower-cased names kept as sent */
  char *body;
} answer_t;

/* method path, with an Authorization header when auth. */
static answer_t fetch(const char *method, const char *path, const char *auth) {
  CURL *curl = curl_easy_init();
  buf_t head = {calloc(1, 1), 0}, body = {calloc(1, 1), 0};
  char url[1024], header[256];
  struct curl_slist *list = NULL;
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", run.port, path);
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &head);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 20000L);
  if (auth) {
    snprintf(header, sizeof(header), "Authorization: %s", auth);
    list = curl_slist_append(list, header);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  }
  CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK)
    fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
  answer_t answer = {0, head.data, body.data};
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &answer.status);
  curl_slist_free_all(list);
  curl_easy_cleanup(curl);
  return answer;
}

static void answer_free(answer_t *answer) {
  free(answer->headers);
  free(answer->body);
}

/* The value of header name (case-insensitive) in out, or NULL. */
static const char *header_value(const answer_t *answer, const char *name,
                                char *out, size_t size) {
  size_t len = strlen(name);
  for (const char *line = answer->headers; line && *line;) {
    const char *end = strstr(line, "\r\n");
    if (!end)
      break;
    if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
      const char *value = line + len + 1;
      while (*value == ' ')
        value++;
      snprintf(out, size, "%.*s", (int)(end - value), value);
      return out;
    }
    line = end + 2;
  }
  return NULL;
}

static void assert_ui_headers(const answer_t *answer, const char *what) {
  char value[1024];
  const char *csp =
      header_value(answer, "Content-Security-Policy", value, sizeof(value));
  if (!csp)
    fail_msg("%s: no Content-Security-Policy", what);
  static const char *const wanted[] = {
      "default-src 'none'", "script-src 'self'",      "style-src 'self'",
      "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
      "form-action 'self'"};
  for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++)
    if (!strstr(csp, wanted[i]))
      fail_msg("%s: CSP lacks %s: %s", what, wanted[i], csp);
  if (strstr(csp, "unsafe-inline") || strstr(csp, "unsafe-eval") ||
      strstr(csp, "*"))
    fail_msg("%s: CSP allows more than the origin: %s", what, csp);
  assert_non_null(
      header_value(answer, "X-Content-Type-Options", value, sizeof(value)));
  assert_string_equal(value, "nosniff");
  assert_non_null(
      header_value(answer, "Referrer-Policy", value, sizeof(value)));
  assert_string_equal(value, "no-referrer");
  assert_non_null(
      header_value(answer, "X-Frame-Options", value, sizeof(value)));
  assert_string_equal(value, "DENY");
  assert_null(header_value(answer, "Set-Cookie", value, sizeof(value)));
}

/* ---- setup: usage over a few days, crossing thresholds ----------------- */

static void post_events(const char *body) {
  long status;
  char *text = NULL;
  assert_int_equal(th_http_request(run.port, "POST", "/v1/events",
                                   TH_AUTH_DEFAULT, body, strlen(body), NULL,
                                   &status, &text),
                   0);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, text);
  free(text);
}

static long long usage_quantity(const char *feature) {
  long status;
  char *text = NULL;
  long long quantity = -1;
  if (th_http_get(run.port, "/v1/subjects/" SUBJECT "/usage", &status, &text) ==
          0 &&
      status == 200) {
    json_t *json = json_loads(text, 0, NULL);
    json_t *entry = json_object_get(json_object_get(json, "features"), feature);
    if (entry)
      quantity = json_integer_value(json_object_get(entry, "quantity"));
    json_decref(json);
  }
  free(text);
  return quantity;
}

static int group_setup(void **state) {
  (void)state;
  char state_dir[600], config[600];
  dir = th_mkdtemp("dashboard");
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(config, sizeof(config), "%s/tally.json", dir);
  FILE *file = fopen(config, "w");
  if (!file || fputs(config_json, file) < 0 || fclose(file))
    return -1;
  if (th_broker_start(&broker, PARTITIONS))
    return -1;
  const char *const extra[] = {"--config", config, NULL};
  if (th_run_start(&run, broker.bootstrap, state_dir, extra))
    return -1;
  /* Six days of usage, oldest first (the newest within the dedupe
   * window): api calls past 25, 50 and 75 % of the hard limit, tokens of
   * two models, storage. */
  struct timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  int64_t now = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
  long long calls = 0;
  char body[4096];
  for (int day = 5; day >= 0; day--) {
    int64_t at = now - day * DAY_MS - 60000;
    int n = 0;
    long long day_calls = 40 + 25 * (5 - day);
    calls += day_calls;
    n += snprintf(
        body + n, sizeof(body) - (size_t)n,
        "[{\"event_id\": \"ui-calls-%d\", \"occurred_at\": %lld, "
        "\"subject\": \"" SUBJECT "\", \"feature\": \"api_calls\", "
        "\"quantity\": %lld},"
        "{\"event_id\": \"ui-gpt-%d\", \"occurred_at\": %lld, "
        "\"subject\": \"" SUBJECT "\", \"feature\": \"ai_tokens\", "
        "\"quantity\": %d, \"ai\": {\"provider\": \"openai\", \"model\": "
        "\"gpt-4o\", \"input_tokens\": %d, \"output_tokens\": %d}},"
        "{\"event_id\": \"ui-claude-%d\", \"occurred_at\": %lld, "
        "\"subject\": \"" SUBJECT "\", \"feature\": \"ai_tokens\", "
        "\"quantity\": %d, \"ai\": {\"provider\": \"anthropic\", \"model\": "
        "\"claude-sonnet\", \"input_tokens\": %d, \"output_tokens\": %d}},"
        "{\"event_id\": \"ui-storage-%d\", \"occurred_at\": %lld, "
        "\"subject\": \"" SUBJECT "\", \"feature\": \"storage_bytes\", "
        "\"quantity\": %d}]",
        day, (long long)at, day_calls, day, (long long)at + 1000,
        60000 + 12000 * day, 50000 + 10000 * day, 10000 + 2000 * day, day,
        (long long)at + 2000, 30000, 25000, 5000, day, (long long)at + 3000,
        1048576 * (day + 1));
    post_events(body);
  }
  /* Folded (the last event of the last batch counts last). */
  int64_t deadline = th_now_ms() + 30000;
  while (th_now_ms() < deadline && usage_quantity("storage_bytes") < 0)
    th_sleep_ms(100);
  if (th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", PARTITIONS,
                        30000))
    return -1;
  return calls > 0 ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  th_stop(run.pid);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
  return 0;
}

/* ---- the routes ---------------------------------------------------------- */

static void test_ui_routes_and_headers(void **state) {
  (void)state;
  char value[256];
  answer_t answer = fetch("GET", "/ui", NULL);
  assert_int_equal(answer.status, 308);
  assert_non_null(header_value(&answer, "Location", value, sizeof(value)));
  assert_string_equal(value, "/ui/");
  answer_free(&answer);

  /* The page needs no key (it holds no data) and carries the headers. */
  answer = fetch("GET", "/ui/", NULL);
  assert_int_equal(answer.status, 200);
  assert_non_null(header_value(&answer, "Content-Type", value, sizeof(value)));
  assert_string_equal(value, "text/html; charset=utf-8");
  assert_ui_headers(&answer, "GET /ui/");
  assert_non_null(strstr(answer.body, "<script src=\"app.js\""));
  answer_free(&answer);

  static const struct {
    const char *path, *type;
  } files[] = {{"/ui/app.js", "text/javascript; charset=utf-8"},
               {"/ui/app.css", "text/css; charset=utf-8"},
               {"/ui/favicon.svg", "image/svg+xml"},
               {"/ui/index.html", "text/html; charset=utf-8"}};
  for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    answer = fetch("GET", files[i].path, NULL);
    if (answer.status != 200)
      fail_msg("GET %s: %ld", files[i].path, answer.status);
    assert_non_null(
        header_value(&answer, "Content-Type", value, sizeof(value)));
    assert_string_equal(value, files[i].type);
    assert_ui_headers(&answer, files[i].path);
    assert_true(answer.body[0] != '\0');
    answer_free(&answer);
  }

  /* Nothing else is served: no file, no directory, no other method. */
  static const char *const missing[] = {"/ui/nope.js", "/ui/..%2Fui.c",
                                        "/ui/app.js/x", "/ui/%2e%2e"};
  for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++) {
    answer = fetch("GET", missing[i], NULL);
    if (answer.status != 404)
      fail_msg("GET %s: %ld, not 404", missing[i], answer.status);
    json_t *json = json_loads(answer.body, 0, NULL);
    assert_non_null(json_object_get(json, "error"));
    json_decref(json);
    answer_free(&answer);
  }
  answer = fetch("POST", "/ui/", NULL);
  assert_int_equal(answer.status, 405);
  answer_free(&answer);

  /* The JSON routes the page calls still need the key. */
  answer = fetch("GET", "/v1/subjects/" SUBJECT "/usage", NULL);
  assert_int_equal(answer.status, 401);
  answer_free(&answer);
  answer = fetch("GET", "/v1/subjects/" SUBJECT "/usage", "Bearer tly_wrong");
  assert_int_equal(answer.status, 401);
  answer_free(&answer);
  char auth[256];
  snprintf(auth, sizeof(auth), "Bearer %s", th_api_key());
  answer = fetch("GET", "/v1/subjects/" SUBJECT "/usage", auth);
  assert_int_equal(answer.status, 200);
  json_t *usage = json_loads(answer.body, 0, NULL);
  /* The portal button's switch: no Stripe customer linked here. */
  assert_true(json_is_false(json_object_get(usage, "billing_linked")));
  json_decref(usage);
  answer_free(&answer);
}

/* What the CSP would block never ships: no inline script, no style
 * attribute or element, no on* handler, nothing from another origin. */
static void test_ui_files_need_no_inline_code(void **state) {
  (void)state;
  answer_t answer = fetch("GET", "/ui/", NULL);
  assert_int_equal(answer.status, 200);
  const char *html = answer.body;
  for (const char *p = strstr(html, "<script"); p; p = strstr(p + 1, "<script"))
    if (strncmp(p, "<script src=\"", 13) != 0)
      fail_msg("inline script in index.html: %.60s", p);
  assert_null(strstr(html, "style="));
  assert_null(strstr(html, "<style"));
  assert_null(strstr(html, " onclick"));
  assert_null(strstr(html, " onload"));
  assert_null(strstr(html, "http://"));
  assert_null(strstr(html, "https://"));
  answer_free(&answer);
  answer = fetch("GET", "/ui/app.js", NULL);
  assert_null(strstr(answer.body, "innerHTML"));
  assert_null(strstr(answer.body, "eval("));
  assert_null(strstr(answer.body, "setAttribute('style'"));
  assert_null(strstr(answer.body, "localStorage"));
  assert_null(strstr(answer.body, "document.cookie"));
  answer_free(&answer);
}

/* ---- the page in Chromium ------------------------------------------------ */

static void test_dashboard_in_chromium(void **state) {
  (void)state;
  if (access(CHROMIUM, X_OK) != 0)
    fail_msg(CHROMIUM " is missing: scripts/install-deps.sh installs the "
                      "Debian package chromium");
  char base[64], out_path[600], err_path[600];
  snprintf(base, sizeof(base), "http://127.0.0.1:%d", run.port);
  snprintf(out_path, sizeof(out_path), "%s/check.out", dir);
  snprintf(err_path, sizeof(err_path), "%s/check.err", dir);
  char *argv[] = {"/usr/bin/python3",
                  TALLY_SOURCE_DIR
                  "/tests/integration/python/dashboard_check.py",
                  base,
                  (char *)th_api_key(),
                  SUBJECT,
                  TALLY_BINARY_DIR "/ui-screenshots",
                  CHROMIUM,
                  NULL};
  pid_t pid = th_spawn(argv, NULL, out_path, err_path);
  int rc = th_wait_exit(pid, 240000);
  char *out = th_read_file(out_path);
  char *err = th_read_file(err_path);
  printf("# %s\n", out ? out : "");
  if (rc != 0)
    fail_msg("dashboard_check.py exited %d:\n%s", rc, err ? err : "");
  assert_non_null(strstr(out, "\"ok\": true"));
  free(out);
  free(err);
  static const char *const shots[] = {"customer-laptop", "customer-phone",
                                      "admin-laptop", "admin-phone"};
  for (size_t i = 0; i < sizeof(shots) / sizeof(shots[0]); i++) {
    char path[600];
    snprintf(path, sizeof(path), TALLY_BINARY_DIR "/ui-screenshots/%s.png",
             shots[i]);
    char *png = th_read_file(path);
    if (!png || memcmp(png, "\x89PNG", 4) != 0)
      fail_msg("no screenshot %s", path);
    free(png);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ui_routes_and_headers),
      cmocka_unit_test(test_ui_files_need_no_inline_code),
      cmocka_unit_test(test_dashboard_in_chromium),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
