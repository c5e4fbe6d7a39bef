/*
 * test_cli_flags.c - a bad numeric flag stops startup of the real binary
 * (exit 2) with a message naming the flag, before any broker, port or
 * state dir is touched: negative, zero where meaningless, not a number,
 * trailing junk, overflow (issue 13, finding 7: `--batch-ms -1` and
 * `--tick-interval-ms -5` used to be accepted).
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
  const char *command; /* run, dev, broker, topics */
  const char *flag, *value;
} bad_flag_t;

static const bad_flag_t bad_flags[] = {
    {"run", "--batch-ms", "-1"},
    {"run", "--batch-ms", "0"},
    {"run", "--batch-ms", "100ms"},
    {"run", "--batch-events", "-5"},
    {"run", "--batch-events", "0"},
    {"run", "--batch-events", "99999999999999999999"},
    {"run", "--memory-budget", "1048575"},
    {"run", "--memory-budget", "1099511627777"},
    {"run", "--memory-budget", "1G"},
    {"run", "--memory-budget", "-1"},
    {"run", "--tick-interval-ms", "-5"},
    {"run", "--tick-interval-ms", "1e3"},
    {"run", "--tick-interval-ms", " 60000"},
    {"run", "--members-heartbeat-ms", "0"},
    {"run", "--members-heartbeat-ms", "-2000"},
    {"run", "--standby-replicas", "9"},
    {"run", "--standby-replicas", "-1"},
    {"run", "--standby-replicas", "1x"},
    {"run", "--http", "127.0.0.1:+80"},
    {"run", "--http", "127.0.0.1:65536"},
    /* Kafka's group.instance.id rule, and tally's bound of 127 bytes. */
    {"run", "--instance-id", "host:8080"},
    {"run", "--instance-id", ""},
    {"run", "--instance-id", ".."},
    {"run", "--instance-id", "tally a"},
    {"run", "--instance-id",
     "x123456789012345678901234567890123456789012345678901234567890123456789"
     "0123456789012345678901234567890123456789012345678901234567890"},
    {"dev", "--partitions", "5x"},
    {"dev", "--partitions", "0"},
    {"dev", "--demo-rate", "-1"},
    {"dev", "--demo-subjects", "1.5"},
    {"dev", "--memory-budget", "1048575"},
    {"dev", "--memory-budget", "1G"},
    {"broker", "--partitions", "4x"},
    {"broker", "--partitions", "-4"},
    {"topics", "--partitions", "-3"},
    {"topics", "--partitions", "2147483648"},
};

/* Runs tally with one bad flag; its exit code (-1: still running after
 * 10 s, then killed) and stderr. */
static int run_with_flag(const char *dir, const bad_flag_t *bad,
                         char **stderr_text) {
  char err[600], state[600];
  snprintf(err, sizeof(err), "%s/stderr", dir);
  snprintf(state, sizeof(state), "%s/state", dir);
  unlink(err);
  char *argv[16];
  int argc = 0;
  argv[argc++] = (char *)th_tally_bin();
  argv[argc++] = (char *)bad->command;
  if (strcmp(bad->command, "run") == 0) {
    /* Port 1 on loopback: nothing listens; startup must stop before. */
    argv[argc++] = "--brokers";
    argv[argc++] = "127.0.0.1:1";
    argv[argc++] = "--state-dir";
    argv[argc++] = state;
    argv[argc++] = "--no-auth";
  }
  if (strcmp(bad->command, "dev") == 0) {
    argv[argc++] = "--state-dir";
    argv[argc++] = state;
  }
  if (strcmp(bad->command, "run") == 0 || strcmp(bad->command, "dev") == 0) {
    if (strcmp(bad->flag, "--http") != 0) {
      argv[argc++] = "--http";
      argv[argc++] = "127.0.0.1:0";
    }
  }
  argv[argc++] = (char *)bad->flag;
  argv[argc++] = (char *)bad->value;
  argv[argc] = NULL;
  pid_t pid = th_spawn(argv, NULL, NULL, err);
  int rc = th_wait_exit(pid, 10000);
  if (rc < 0)
    th_kill9(pid);
  *stderr_text = th_read_file(err);
  return rc;
}

static void test_bad_numeric_flags_stop_startup(void **state) {
  (void)state;
  char *dir = th_mkdtemp("cli-flags");
  for (size_t i = 0; i < sizeof(bad_flags) / sizeof(bad_flags[0]); i++) {
    char *text = NULL;
    int rc = run_with_flag(dir, &bad_flags[i], &text);
    if (rc != 2 || !text || !strstr(text, bad_flags[i].flag))
      fail_msg("tally %s %s '%s': exit %d, stderr '%s'", bad_flags[i].command,
               bad_flags[i].flag, bad_flags[i].value, rc, text ? text : "");
    printf("# %s", text);
    free(text);
  }
  /* The state dir was never created: startup stopped first. */
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_not_equal(access(state_dir, F_OK), 0);
  th_rmrf(dir);
  free(dir);
}

/* Good values still pass (and a negative number is no option name). */
static void test_good_numeric_flags_pass(void **state) {
  (void)state;
  char *dir = th_mkdtemp("cli-flags-good");
  char out[600];
  snprintf(out, sizeof(out), "%s/stdout", dir);
  char *argv[] = {(char *)th_tally_bin(), "topics", "--partitions", "12", NULL};
  assert_int_equal(th_wait_exit(th_spawn(argv, NULL, out, NULL), 10000), 0);
  char *text = th_read_file(out);
  assert_non_null(text);
  assert_non_null(strstr(text, " 12 "));
  free(text);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_numeric_flags_stop_startup),
      cmocka_unit_test(test_good_numeric_flags_pass),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
