/*
 * test_config_files.c - a bad config file stops `tally run` at startup with
 * a non-zero exit and a message naming the field and the reason, before it
 * touches Kafka or the state dir; a good one starts.
 */
#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct {
  const char *json;
  const char *message; /* expected in stderr */
} bad_config_t;

static const bad_config_t bad_configs[] = {
    {"{\"plans\": {\"pro\": {\"credits\": \"lots\"}}}", "plans.pro.credits"},
    {"{\"plans\": {\"pro\": {\"credits\": 10, \"limits\": {\"api_calls\": "
     "{\"limit\": 5, \"mode\": \"sometimes\"}}}}}",
     "plans.pro.limits.api_calls.mode"},
    {"{\"pricing\": {\"models\": {\"gpt-4o\": {\"input_per_mtok\": 2.5, "
     "\"output_per_mtok\": 10}}}}",
     "pricing.models.gpt-4o.input_per_mtok"},
    {"{\"thresholds\": [50, 25]}", "thresholds[1]"},
    {"{\"retention\": {\"daily_days\": -5}}", "retention.daily_days"},
    {"{\"cycles\": {\"anchor\": \"yesterday\"}}", "cycles.anchor"},
    {"{\"plans\": {\"pro\": {\"credits\": 1, \"limts\": {}}}}", "plans.pro.limts"},
    {"{\"default_plans\": {\"user\": \"gold\"}}", "default_plans.user"},
    {"{\"credits\": {\"micros_per_credit\": 0}}", "credits.micros_per_credit"},
    {"{\"stripe\": {\"prices\": {\"price_1\": \"gold\"}}}",
     "stripe.prices.price_1: no plan named 'gold'"},
    {"{\"stripe\": {\"secret_key_env\": \"TALLY_TEST_UNSET_VARIABLE\"}}",
     "stripe.secret_key_env: environment variable TALLY_TEST_UNSET_VARIABLE"},
    {"{\"stripe\": {\"webhook_secrets\": [\"sk_live_oops\"]}}",
     "stripe.webhook_secrets[0]"},
    {"{\"plans\": ", "line 1"},
    {"{\"http\": {\"max_connections_per_ip\": -1}}",
     "http.max_connections_per_ip"},
    {"{\"http\": {\"header_timeout_ms\": 20000, \"request_timeout_ms\": "
     "10000}}",
     "http.request_timeout_ms: must be at least http.header_timeout_ms"},
};

static int run_with_config(const char *dir, const char *json, char **stderr_text) {
  char config[600], err[600], state[600];
  snprintf(config, sizeof(config), "%s/config.json", dir);
  snprintf(err, sizeof(err), "%s/stderr", dir);
  snprintf(state, sizeof(state), "%s/state", dir);
  unlink(err);
  FILE *file = fopen(config, "w");
  fputs(json, file);
  fclose(file);
  /* Port 1 on loopback: nothing listens there, and a bad config must stop
   * startup before any connection is tried. */
  char *argv[] = {(char *)th_tally_bin(), "run", "--brokers", "127.0.0.1:1",
                  "--state-dir", state, "--http", "127.0.0.1:0", "--config",
                  config, NULL};
  pid_t pid = th_spawn(argv, NULL, NULL, err);
  int rc = th_wait_exit(pid, 10000);
  if (rc < 0)
    th_kill9(pid);
  *stderr_text = th_read_file(err);
  return rc;
}

static void test_bad_config_names_the_field(void **state) {
  (void)state;
  char *dir = th_mkdtemp("config");
  for (size_t i = 0; i < sizeof(bad_configs) / sizeof(bad_configs[0]); i++) {
    char *text = NULL;
    int rc = run_with_config(dir, bad_configs[i].json, &text);
    if (rc != 2 || !text || !strstr(text, bad_configs[i].message))
      fail_msg("config %zu: exit %d, stderr '%s', expected '%s'", i, rc,
               text ? text : "", bad_configs[i].message);
    printf("# %s", text);
    free(text);
  }
  /* The state dir was never created: startup stopped first. */
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_not_equal(access(state_dir, F_OK), 0);

  char missing[600];
  snprintf(missing, sizeof(missing), "%s/nope.json", dir);
  char *argv[] = {(char *)th_tally_bin(), "run", "--brokers", "127.0.0.1:1",
                  "--state-dir", state_dir, "--config", missing, NULL};
  char err[600];
  snprintf(err, sizeof(err), "%s/stderr-missing", dir);
  assert_int_equal(th_wait_exit(th_spawn(argv, NULL, NULL, err), 10000), 2);
  char *text = th_read_file(err);
  assert_non_null(strstr(text, "nope.json"));
  free(text);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_config_names_the_field),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
