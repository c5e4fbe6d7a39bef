/*
 * test_cli_habits.c - the `tally` binary behaves as kcat and
 * kafka-console-producer users expect (issue 16, point 5), on real
 * processes:
 *   - `tally --version`, `tally -V` and `tally version` print the version
 *     and the commit;
 *   - `tally emit FILE...` reads the files in order ("-" is stdin); a file
 *     that cannot be read stops it before anything is sent;
 *   - an unreachable broker (a closed loopback port) makes `emit` fail
 *     within --timeout with one line on stderr, from a file or from an
 *     idle stdin;
 *   - Ctrl-C or SIGTERM during `emit` waits a bounded time for the events
 *     already sent, then prints delivered / not delivered; exit 0 only if
 *     all were delivered;
 *   - `tally dev` removes the /tmp/tally-dev-* dir it made, unless --keep;
 *     a --state-dir given to it stays.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define EVENT_FMT                                                              \
  "{\"event_id\": \"%s-%d\", \"subject\": \"user:habit-%d\", \"feature\": "    \
  "\"api_calls\", \"quantity\": 1}\n"

static void write_events(const char *path, const char *tag, int count) {
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  for (int i = 0; i < count; i++)
    fprintf(file, EVENT_FMT, tag, i, i);
  fclose(file);
}

static long long usage_records(const char *bootstrap, int partitions) {
  int64_t marks[16];
  long long sum = 0;
  assert_int_equal(
      th_high_watermarks(bootstrap, "tally.usage", partitions, marks), 0);
  for (int i = 0; i < partitions; i++)
    sum += marks[i];
  return sum;
}

/* A loopback port nobody listens on (bound, then closed). */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(addr);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

/* Runs tally (args after the binary) to its end with stdin from a file
 * (NULL: /dev/null); exit code, stdout and stderr (malloc'd). */
static int tally(const char *dir, const char *const *args, const char *input,
                 char **out, char **err) {
  char out_path[600], err_path[600];
  char *argv[32];
  int argc = 0;
  snprintf(out_path, sizeof(out_path), "%s/out", dir);
  snprintf(err_path, sizeof(err_path), "%s/err", dir);
  unlink(out_path);
  unlink(err_path);
  argv[argc++] = (char *)th_tally_bin();
  for (size_t i = 0; args[i] && argc < 31; i++)
    argv[argc++] = (char *)args[i];
  argv[argc] = NULL;
  int rc = th_wait_exit(th_spawn(argv, input, out_path, err_path), 60000);
  *out = th_read_file(out_path);
  *err = th_read_file(err_path);
  if (!*out)
    *out = strdup("");
  if (!*err)
    *err = strdup("");
  return rc;
}

/* ------------------------------------------------------------------------ */

/* Whether git knows the source tree (0: no git, or not a checkout). */
static int git_tree(void) {
  char command[700];
  snprintf(command, sizeof(command),
           "git -C '%s' rev-parse --git-dir >/dev/null 2>&1", TALLY_SOURCE_DIR);
  return system(command) == 0;
}

/* Whether commit (hex, 7 to 40 characters) is a commit of the source
 * tree's repository. */
static int git_has_commit(const char *commit) {
  char command[800];
  size_t len = strspn(commit, "0123456789abcdef");
  if (len < 7 || len > 40)
    return 0;
  snprintf(command, sizeof(command),
           "git -C '%s' cat-file -e '%.*s^{commit}' 2>/dev/null",
           TALLY_SOURCE_DIR, (int)len, commit);
  return system(command) == 0;
}

static void test_version(void **state) {
  (void)state;
  char *dir = th_mkdtemp("habits-version");
  const char *spellings[] = {"--version", "-V", "version"};
  char expected[64];
  snprintf(expected, sizeof(expected), "tally %s (commit ",
           TALLY_PROJECT_VERSION);
  int in_git = git_tree();
  for (size_t i = 0; i < 3; i++) {
    const char *args[] = {spellings[i], NULL};
    char *out, *err;
    assert_int_equal(tally(dir, args, NULL, &out, &err), 0);
    printf("# tally %s: %s", spellings[i], out);
    if (strncmp(out, expected, strlen(expected)))
      fail_msg("tally %s: '%s', expected it to start with '%s'", spellings[i],
               out, expected);
    /* The commit built: one this repository has (a build made before a
     * later commit still names its own), "unknown" only outside git. */
    const char *commit = out + strlen(expected);
    if (in_git ? !git_has_commit(commit) : strncmp(commit, "unknown", 7))
      fail_msg("tally %s: commit '%s' is not a commit of %s", spellings[i],
               commit, TALLY_SOURCE_DIR);
    assert_non_null(strstr(out, "librdkafka "));
    free(out);
    free(err);
  }
  th_rmrf(dir);
  free(dir);
}

static void test_emit_reads_files(void **state) {
  (void)state;
  th_broker_t broker;
  assert_int_equal(th_broker_start(&broker, 2), 0);
  char *dir = th_mkdtemp("habits-files");
  char a[600], b[600], in[600], bad[600], missing[600];
  snprintf(a, sizeof(a), "%s/a.jsonl", dir);
  snprintf(b, sizeof(b), "%s/b.jsonl", dir);
  snprintf(in, sizeof(in), "%s/stdin.jsonl", dir);
  snprintf(bad, sizeof(bad), "%s/bad.jsonl", dir);
  snprintf(missing, sizeof(missing), "%s/nope.jsonl", dir);
  write_events(a, "a", 3);
  write_events(b, "b", 2);
  write_events(in, "in", 1);
  char *out, *err;

  /* A file that cannot be read stops emit before anything is sent, even
   * after a good one. */
  const char *with_missing[] = {"emit", "--brokers", broker.bootstrap,
                                a,      missing,     NULL};
  assert_int_equal(tally(dir, with_missing, NULL, &out, &err), 2);
  printf("# %s", err);
  assert_non_null(strstr(err, "nope.jsonl: No such file or directory"));
  free(out);
  free(err);
  const char *with_dir[] = {"emit", "--brokers", broker.bootstrap, dir, NULL};
  assert_int_equal(tally(dir, with_dir, NULL, &out, &err), 2);
  assert_non_null(strstr(err, "is a directory"));
  free(out);
  free(err);
  assert_int_equal(usage_records(broker.bootstrap, 2), 0);

  /* Files in order, "-" for stdin among them. */
  const char *files[] = {
      "emit", "--brokers", broker.bootstrap, "--quiet", a, "-", b, NULL};
  assert_int_equal(tally(dir, files, in, &out, &err), 0);
  printf("# %s", out);
  assert_non_null(strstr(out, "6 events delivered, 0 lines rejected, 0 not "
                              "delivered"));
  assert_int_equal(usage_records(broker.bootstrap, 2), 6);
  free(out);
  free(err);

  /* A bad line is named with its file. */
  FILE *file = fopen(bad, "w");
  assert_non_null(file);
  fprintf(file, EVENT_FMT, "bad", 0, 0);
  fputs("{\"event_id\": \"no-subject\"}\n", file);
  fclose(file);
  const char *with_bad[] = {"emit", "--brokers", broker.bootstrap, bad, NULL};
  assert_int_equal(tally(dir, with_bad, NULL, &out, &err), 1);
  printf("# %s", err);
  assert_non_null(strstr(err, "bad.jsonl line 2: "));
  assert_non_null(strstr(out, "1 events delivered, 1 lines rejected"));
  free(out);
  free(err);
  th_rmrf(dir);
  free(dir);
  th_broker_stop(&broker);
}

/* A FIFO as a child's stdin, held open by the test (so the child waits for
 * more input) until fifo_close. */
typedef struct {
  char path[600];
  int fd;
  pid_t pid;
} fifo_child_t;

static void fifo_spawn(fifo_child_t *child, const char *dir,
                       const char *const *args, const char *lines) {
  char out_path[600], err_path[600];
  char *argv[32];
  int argc = 0;
  snprintf(child->path, sizeof(child->path), "%s/stdin.fifo", dir);
  snprintf(out_path, sizeof(out_path), "%s/out", dir);
  snprintf(err_path, sizeof(err_path), "%s/err", dir);
  unlink(child->path);
  unlink(out_path);
  unlink(err_path);
  assert_int_equal(mkfifo(child->path, 0600), 0);
  argv[argc++] = (char *)th_tally_bin();
  for (size_t i = 0; args[i] && argc < 31; i++)
    argv[argc++] = (char *)args[i];
  argv[argc] = NULL;
  child->pid = th_spawn(argv, child->path, out_path, err_path);
  child->fd = open(child->path, O_WRONLY); /* waits for the child's open */
  assert_true(child->fd >= 0);
  assert_int_equal(write(child->fd, lines, strlen(lines)),
                   (ssize_t)strlen(lines));
}

/* Waits until the child has read everything written to its FIFO (so it
 * runs, its signal handlers are in place, and the lines are being sent),
 * then a moment for it to send them. */
static void fifo_wait_read(const fifo_child_t *child) {
  int64_t deadline = th_now_ms() + 60000;
  int unread = 1;
  while (th_now_ms() < deadline &&
         (ioctl(child->fd, FIONREAD, &unread) != 0 || unread > 0))
    th_sleep_ms(50);
  assert_int_equal(unread, 0);
  th_sleep_ms(500);
}

static void read_outputs(const char *dir, char **out, char **err) {
  char path[600];
  snprintf(path, sizeof(path), "%s/out", dir);
  *out = th_read_file(path);
  snprintf(path, sizeof(path), "%s/err", dir);
  *err = th_read_file(path);
  if (!*out)
    *out = strdup("");
  if (!*err)
    *err = strdup("");
}

/* The lines of text that are not empty. */
static int count_lines(const char *text) {
  int lines = 0;
  for (const char *at = text; *at;) {
    size_t len = strcspn(at, "\n");
    lines += len > 0;
    at += len + (at[len] == '\n');
  }
  return lines;
}

static void test_emit_unreachable_broker(void **state) {
  (void)state;
  char *dir = th_mkdtemp("habits-unreachable");
  char brokers[64], events[600], expected[160];
  snprintf(brokers, sizeof(brokers), "127.0.0.1:%d", closed_port());
  snprintf(events, sizeof(events), "%s/events.jsonl", dir);
  snprintf(expected, sizeof(expected),
           "tally emit: no acknowledgement from Kafka at %s within 2 s",
           brokers);
  write_events(events, "u", 2);
  char *out, *err;

  /* From a file. */
  const char *args[] = {"emit", "--brokers", brokers, "--timeout",
                        "2",    events,      NULL};
  int64_t started = th_now_ms();
  int rc = tally(dir, args, NULL, &out, &err);
  printf("# file: exit %d after %lld ms: %s%s", rc,
         (long long)(th_now_ms() - started), err, out);
  assert_int_equal(rc, 1);
  assert_int_equal(count_lines(err), 1);
  assert_non_null(strstr(err, expected));
  assert_non_null(strstr(err, "Connection refused"));
  assert_non_null(strstr(out, "0 events delivered, 0 lines rejected, 2 not "
                              "delivered"));
  free(out);
  free(err);

  /* From a stdin that stays open and idle: emit does not wait for it. */
  const char *from_stdin[] = {"emit",      "--brokers", brokers,
                              "--timeout", "2",         NULL};
  char lines[400];
  snprintf(lines, sizeof(lines), EVENT_FMT EVENT_FMT, "s", 0, 0, "s", 1, 1);
  fifo_child_t child;
  started = th_now_ms();
  fifo_spawn(&child, dir, from_stdin, lines);
  rc = th_wait_exit(child.pid, 60000);
  close(child.fd);
  if (rc < 0)
    th_kill9(child.pid);
  read_outputs(dir, &out, &err);
  printf("# idle stdin: exit %d after %lld ms: %s%s", rc,
         (long long)(th_now_ms() - started), err, out);
  assert_int_equal(rc, 1);
  assert_int_equal(count_lines(err), 1);
  assert_non_null(strstr(err, expected));
  assert_non_null(strstr(out, "2 not delivered"));
  free(out);
  free(err);
  th_rmrf(dir);
  free(dir);
}

static void test_emit_interrupted(void **state) {
  (void)state;
  th_broker_t broker;
  assert_int_equal(th_broker_start(&broker, 2), 0);
  char *dir = th_mkdtemp("habits-interrupt");
  char lines[600], brokers[64];
  snprintf(lines, sizeof(lines), EVENT_FMT EVENT_FMT EVENT_FMT, "i", 0, 0, "i",
           1, 1, "i", 2, 2);
  fifo_child_t child;
  char *out, *err;

  /* Everything delivered, then Ctrl-C: a summary, exit 0. */
  const char *reachable[] = {"emit", "--brokers", broker.bootstrap, NULL};
  fifo_spawn(&child, dir, reachable, lines);
  int64_t deadline = th_now_ms() + 30000;
  while (usage_records(broker.bootstrap, 2) < 3 && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_int_equal(usage_records(broker.bootstrap, 2), 3);
  kill(child.pid, SIGINT);
  int rc = th_wait_exit(child.pid, 30000);
  close(child.fd);
  read_outputs(dir, &out, &err);
  printf("# delivered, SIGINT: exit %d: %s", rc, out);
  assert_int_equal(rc, 0);
  assert_non_null(strstr(out, "3 events delivered, 0 lines rejected, 0 not "
                              "delivered (interrupted)"));
  free(out);
  free(err);

  /* Nothing can be delivered (a closed port, --timeout far away): SIGTERM
   * waits at most 10 s for the events sent, then gives up on them. */
  snprintf(brokers, sizeof(brokers), "127.0.0.1:%d", closed_port());
  const char *unreachable[] = {"emit",      "--brokers", brokers,
                               "--timeout", "300",       NULL};
  fifo_spawn(&child, dir, unreachable, lines);
  fifo_wait_read(&child);
  int64_t signalled = th_now_ms();
  kill(child.pid, SIGTERM);
  rc = th_wait_exit(child.pid, 60000);
  close(child.fd);
  if (rc < 0)
    th_kill9(child.pid);
  read_outputs(dir, &out, &err);
  printf("# undeliverable, SIGTERM: exit %d after %lld ms: %s%s", rc,
         (long long)(th_now_ms() - signalled), err, out);
  assert_int_equal(rc, 1);
  assert_non_null(strstr(err, "interrupted; waiting up to 10 s"));
  assert_non_null(strstr(out, "0 events delivered, 0 lines rejected, 3 not "
                              "delivered (interrupted)"));
  free(out);
  free(err);

  /* A second signal stops the wait at once. */
  fifo_spawn(&child, dir, unreachable, lines);
  fifo_wait_read(&child);
  kill(child.pid, SIGINT);
  th_sleep_ms(500);
  kill(child.pid, SIGINT);
  rc = th_wait_exit(child.pid, 60000);
  close(child.fd);
  if (rc < 0)
    th_kill9(child.pid);
  read_outputs(dir, &out, &err);
  printf("# undeliverable, SIGINT twice: exit %d: %s", rc, out);
  assert_int_equal(rc, 1);
  assert_non_null(strstr(out, "3 not delivered (interrupted)"));
  free(out);
  free(err);
  th_rmrf(dir);
  free(dir);
  th_broker_stop(&broker);
}

/* Waits until path holds needle; the line after needle (up to its end) in
 * value. 0 or -1 on timeout. */
static int wait_for_line(const char *path, const char *needle, char *value,
                         size_t size, int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  for (;;) {
    char *text = th_read_file(path);
    const char *at = text ? strstr(text, needle) : NULL;
    if (at && strchr(at, '\n')) {
      at += strlen(needle);
      at += strspn(at, " ");
      snprintf(value, size, "%.*s", (int)strcspn(at, " \n"), at);
      free(text);
      return 0;
    }
    free(text);
    if (th_now_ms() > deadline)
      return -1;
    th_sleep_ms(100);
  }
}

/* `tally dev` with extra arguments; its state dir in state_dir once it
 * serves, then SIGTERM. Its exit code; stdout in *out. */
static int run_dev(const char *dir, const char *const *extra, char *state_dir,
                   size_t size, char **out) {
  char out_path[600], err_path[600];
  char *argv[16];
  int argc = 0;
  snprintf(out_path, sizeof(out_path), "%s/dev.out", dir);
  snprintf(err_path, sizeof(err_path), "%s/dev.err", dir);
  unlink(out_path);
  argv[argc++] = (char *)th_tally_bin();
  argv[argc++] = "dev";
  argv[argc++] = "--http";
  argv[argc++] = "127.0.0.1:0";
  argv[argc++] = "--partitions";
  argv[argc++] = "2";
  for (size_t i = 0; extra && extra[i]; i++)
    argv[argc++] = (char *)extra[i];
  argv[argc] = NULL;
  pid_t pid = th_spawn(argv, NULL, out_path, err_path);
  if (wait_for_line(out_path, "tally: state", state_dir, size, 60000)) {
    th_kill9(pid);
    fail_msg("tally dev did not start: %s", th_read_file(err_path));
  }
  struct stat st;
  assert_int_equal(stat(state_dir, &st), 0); /* there while it runs */
  assert_true(S_ISDIR(st.st_mode));
  int rc = th_stop(pid);
  *out = th_read_file(out_path);
  return rc;
}

static void test_dev_removes_its_dir(void **state) {
  (void)state;
  char *dir = th_mkdtemp("habits-dev");
  char state_dir[600], own[600];
  char *out;

  assert_int_equal(run_dev(dir, NULL, state_dir, sizeof(state_dir), &out), 0);
  printf("# dev: %s: %s\n", state_dir,
         access(state_dir, F_OK) ? "removed" : "left");
  assert_non_null(strstr(state_dir, "/tmp/tally-dev-"));
  assert_int_not_equal(access(state_dir, F_OK), 0);
  assert_int_equal(errno, ENOENT);
  assert_non_null(strstr(out, "tally: removed /tmp/tally-dev-"));
  free(out);

  const char *keep[] = {"--keep", NULL};
  assert_int_equal(run_dev(dir, keep, state_dir, sizeof(state_dir), &out), 0);
  assert_int_equal(access(state_dir, F_OK), 0); /* kept */
  assert_null(strstr(out, "removed"));
  free(out);
  th_rmrf(state_dir);

  /* dev takes run's --memory-budget (20 MiB: RocksDB and the processor
   * sized from it) and serves with it. */
  const char *budget[] = {"--memory-budget", "20971520", NULL};
  assert_int_equal(run_dev(dir, budget, state_dir, sizeof(state_dir), &out), 0);
  free(out);

  snprintf(own, sizeof(own), "%s/own-state", dir);
  const char *given[] = {"--state-dir", own, NULL};
  assert_int_equal(run_dev(dir, given, state_dir, sizeof(state_dir), &out), 0);
  assert_string_equal(state_dir, own);
  assert_int_equal(access(own, F_OK), 0); /* the user's: never removed */
  free(out);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_emit_reads_files),
      cmocka_unit_test(test_emit_unreachable_broker),
      cmocka_unit_test(test_emit_interrupted),
      cmocka_unit_test(test_dev_removes_its_dir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
