/*
 * test_pipeline.c - the walking skeleton end to end, over real sockets:
 * `tally broker`, `tally run`, 100,000 JSON events piped through `tally
 * emit`, and the HTTP totals equal the sums this test computed from its own
 * input, to the unit. Also: emit's handling of bad lines, and the HTTP
 * port's answers for unknown subjects and routes.
 */
#include "harness.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 16
#define SUBJECTS 1000
#define FEATURES 3
#define EVENTS 100000

static const char *features[FEATURES] = {"api_calls", "ai_tokens",
                                         "storage_bytes"};

typedef struct {
  long long quantity, input_tokens, output_tokens, events;
} expected_t;

static expected_t expected[SUBJECTS][FEATURES];

static void subject_name(int i, char *out, size_t size) {
  if (i % 5 == 4) /* api keys are SHA-256 hex: 64 chars */
    snprintf(out, size, "api_key:%064x", i);
  else if (i % 5 == 3)
    snprintf(out, size, "anonymous:fp-%d", i);
  else
    snprintf(out, size, "user:u%04d", i);
}

/* Writes EVENTS lines and fills expected[][]. Deterministic (seeded). */
static void write_events(const char *path) {
  FILE *file = fopen(path, "w");
  unsigned seed = 20261123;
  assert_non_null(file);
  memset(expected, 0, sizeof(expected));
  for (int i = 0; i < EVENTS; i++) {
    int s = rand_r(&seed) % SUBJECTS;
    int f = rand_r(&seed) % FEATURES;
    char subject[128];
    subject_name(s, subject, sizeof(subject));
    expected_t *e = &expected[s][f];
    if (f == 1) {
      long long in = 1 + rand_r(&seed) % 5000, out = rand_r(&seed) % 2000;
      fprintf(file,
              "{\"event_id\":\"p-%d\",\"occurred_at\":%lld,\"subject\":\"%s\","
              "\"feature\":\"ai_tokens\",\"quantity\":%lld,\"unit\":\"token\","
              "\"ai\":{\"provider\":\"openai\",\"model\":\"gpt-4o\","
              "\"input_tokens\":%lld,\"output_tokens\":%lld}}\n",
              i, 1763800000000LL + i, subject, in + out, in, out);
      e->quantity += in + out;
      e->input_tokens += in;
      e->output_tokens += out;
    } else {
      long long q = f == 0 ? 1 : 1 + rand_r(&seed) % 1000000;
      fprintf(file,
              "{\"event_id\":\"p-%d\",\"occurred_at\":%lld,\"subject\":\"%s\","
              "\"feature\":\"%s\",\"quantity\":%lld,\"properties\":"
              "{\"region\":\"eu\"}}\n",
              i, 1763800000000LL + i, subject, features[f], q);
      e->quantity += q;
    }
    e->events++;
  }
  fclose(file);
}

static int run_emit(const char *bootstrap, const char *input,
                    const char *out_path, const char *err_path) {
  char *argv[] = {(char *)th_tally_bin(), "emit", "--brokers",
                  (char *)bootstrap, NULL};
  pid_t pid = th_spawn(argv, input, out_path, err_path);
  return th_wait_exit(pid, 120000);
}

static json_t *get_json(int port, const char *path, long *status) {
  char *body = NULL;
  json_error_t error;
  assert_int_equal(th_http_get(port, path, status, &body), 0);
  json_t *json = json_loads(body, 0, &error);
  if (!json)
    fail_msg("GET %s: not JSON: %s", path, body);
  free(body);
  return json;
}

static void test_emit_fold_query_100k(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("pipeline");
  char input[600], state_dir[600], out[600], err[600];

  snprintf(input, sizeof(input), "%s/events.jsonl", dir);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(out, sizeof(out), "%s/emit.out", dir);
  snprintf(err, sizeof(err), "%s/emit.err", dir);
  write_events(input);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);

  int rc = run_emit(broker.bootstrap, input, out, err);
  char *emit_out = th_read_file(out);
  assert_int_equal(rc, 0);
  assert_non_null(strstr(emit_out, "100000 events delivered"));
  free(emit_out);

  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 120000),
                   0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   EVENTS);

  for (int s = 0; s < SUBJECTS; s++) {
    char subject[128], path[256];
    long status;
    int any = 0;
    subject_name(s, subject, sizeof(subject));
    snprintf(path, sizeof(path), "/v1/subjects/%s/usage?at=1763800000000", subject);
    for (int f = 0; f < FEATURES; f++)
      any |= expected[s][f].events > 0;
    json_t *body = get_json(run.port, path, &status);
    if (!any) {
      assert_int_equal(status, 404);
      json_decref(body);
      continue;
    }
    assert_int_equal(status, 200);
    assert_string_equal(json_string_value(json_object_get(body, "subject")),
                        subject);
    json_t *got = json_object_get(body, "features");
    for (int f = 0; f < FEATURES; f++) {
      json_t *row = json_object_get(got, features[f]);
      expected_t *e = &expected[s][f];
      if (!e->events) {
        assert_null(row);
        continue;
      }
      assert_non_null(row);
      assert_int_equal(json_integer_value(json_object_get(row, "quantity")),
                       e->quantity);
      assert_int_equal(
          json_integer_value(json_object_get(row, "input_tokens")),
          e->input_tokens);
      assert_int_equal(
          json_integer_value(json_object_get(row, "output_tokens")),
          e->output_tokens);
      assert_int_equal(json_integer_value(json_object_get(row, "events")),
                       e->events);
    }
    json_decref(body);
  }

  /* The HTTP port's error answers are JSON too. */
  long status;
  json_t *body = get_json(run.port, "/v1/subjects/user:nobody/usage", &status);
  assert_int_equal(status, 404);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(body, "error"), "code")),
      "not_found");
  json_decref(body);
  body = get_json(run.port, "/v1/nothing-here", &status);
  assert_int_equal(status, 404);
  json_decref(body);
  body = get_json(run.port, "/healthz", &status);
  assert_int_equal(status, 200);
  json_decref(body);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/* Bad lines are reported by number with a reason; the good ones still go
 * out, and the exit code says something was rejected. */
static void test_emit_reports_bad_lines(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("emit-bad");
  char input[600], state_dir[600], out[600], err[600];
  snprintf(input, sizeof(input), "%s/events.jsonl", dir);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(out, sizeof(out), "%s/emit.out", dir);
  snprintf(err, sizeof(err), "%s/emit.err", dir);
  FILE *file = fopen(input, "w");
  fputs("{\"event_id\":\"b-1\",\"subject\":\"user:bad-lines\",\"feature\":"
        "\"api_calls\",\"quantity\":2}\n",
        file);
  fputs("{\"event_id\":\"b-2\",\"subject\":\"user:bad-lines\",\"feature\":"
        "\"api_calls\",\"quantity\":-1}\n",
        file);
  fputs("this is not json\n", file);
  fputs("\n", file);
  fputs("{\"event_id\":\"b-5\",\"subject\":\"user:bad-lines\",\"feature\":"
        "\"api_calls\",\"quantity\":3}\n",
        file);
  fputs("{\"subject\":\"user:bad-lines\",\"feature\":\"api_calls\","
        "\"quantity\":3}\n",
        file);
  fclose(file);

  assert_int_equal(th_broker_start(&broker, 4), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(run_emit(broker.bootstrap, input, out, err), 1);
  char *errors = th_read_file(err), *output = th_read_file(out);
  assert_non_null(strstr(errors, "line 2: "));
  assert_non_null(strstr(errors, "quantity"));
  assert_non_null(strstr(errors, "line 3: "));
  assert_null(strstr(errors, "line 4: "));
  assert_non_null(strstr(errors, "line 6: "));
  assert_non_null(strstr(errors, "event_id"));
  assert_non_null(strstr(output, "2 events delivered, 3 lines rejected"));
  free(errors);
  free(output);

  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 4, 60000),
      0);
  long status;
  json_t *body =
      get_json(run.port, "/v1/subjects/user:bad-lines/usage", &status);
  assert_int_equal(status, 200);
  json_t *row =
      json_object_get(json_object_get(body, "features"), "api_calls");
  assert_int_equal(json_integer_value(json_object_get(row, "quantity")), 5);
  assert_int_equal(json_integer_value(json_object_get(row, "events")), 2);
  json_decref(body);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_emit_fold_query_100k),
      cmocka_unit_test(test_emit_reports_bad_lines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
