/*
 * test_http_conn.c - one client cannot starve the HTTP port (issue 13,
 * finding 6), against a real `tally run` over real sockets:
 *   - 1,100 idle sockets from the same address as the prober (loopback)
 *     leave /healthz and authenticated routes answering within 2 s, again
 *     and again (the per-client cap closes the flooder's oldest idle
 *     sockets);
 *   - with no per-client cap, the connection cap closes the idle sockets
 *     of the client holding the most, not another client's (sources
 *     127.0.0.2 and 127.0.0.3: loopback is the whole of 127/8);
 *   - sockets dripping a header byte, or a body byte, twice a second (which
 *     restarts libmicrohttpd's idle timeout every time) are closed at the
 *     header and request deadlines, and /healthz answers meanwhile.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define IDLE_SOCKETS 1100
#define HEALTHZ_BOUND_MS 2000

static th_broker_t broker;
static char *dir;

/* A TCP connection to 127.0.0.1:port from source (NULL: any), or -1. */
static int connect_from(const char *source, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in addr = {.sin_family = AF_INET};
  if (source) {
    inet_pton(AF_INET, source, &addr.sin_addr);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr))) {
      close(fd);
      return -1;
    }
  }
  addr.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
    close(fd);
    return -1;
  }
  return fd;
}

/* 1 when the server closed fd (end of stream or reset), else 0. Anything
 * the server sent first (an answer) is read and dropped. */
static int closed_by_server(int fd) {
  char buffer[4096];
  for (;;) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n == 0)
      return 1;
    if (n < 0)
      return errno != EAGAIN && errno != EWOULDBLOCK;
  }
}

/* GET path over a fresh connection from source, with the harness's token;
 * the status when the answer's status line arrived within timeout_ms, -1
 * otherwise (connect, send, timeout or cut off). */
static int timed_get(const char *source, int port, const char *path,
                     int timeout_ms, int64_t *elapsed_ms) {
  int64_t start = th_now_ms();
  int status = -1;
  int fd = connect_from(source, port);
  if (fd < 0)
    return -1;
  char request[512];
  int len = snprintf(request, sizeof(request),
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                     "Bearer %s\r\nConnection: close\r\n\r\n",
                     path, th_api_key());
  if (send(fd, request, (size_t)len, MSG_NOSIGNAL) != len)
    goto done;
  char answer[64] = "";
  size_t have = 0;
  while (have < 12) {
    int left = timeout_ms - (int)(th_now_ms() - start);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (left <= 0 || poll(&pfd, 1, left) != 1)
      goto done;
    ssize_t n = recv(fd, answer + have, sizeof(answer) - 1 - have, 0);
    if (n <= 0)
      goto done;
    have += (size_t)n;
  }
  answer[have] = '\0';
  if (strncmp(answer, "HTTP/1.1 ", 9) == 0)
    status = atoi(answer + 9);
done:
  close(fd);
  if (elapsed_ms)
    *elapsed_ms = th_now_ms() - start;
  return status;
}

/* `tally run` with config (JSON) on a fresh state dir; 0 or -1. */
static int start_run(th_run_t *run, const char *name, const char *config) {
  char path[700], state[700];
  snprintf(path, sizeof(path), "%s/%s.json", dir, name);
  snprintf(state, sizeof(state), "%s/%s", dir, name);
  FILE *file = fopen(path, "w");
  if (!file)
    return -1;
  fputs(config, file);
  fclose(file);
  const char *extra[] = {"--config", path, NULL};
  if (th_run_start(run, broker.bootstrap, state, extra))
    return -1;
  /* /healthz answers once the port is bound. */
  for (int i = 0; i < 200; i++) {
    if (timed_get(NULL, run->port, "/healthz", 1000, NULL) == 200)
      return 0;
    th_sleep_ms(50);
  }
  return -1;
}

static int setup(void **state) {
  (void)state;
  /* This process holds well over 1,100 sockets. */
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 &&
      limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  if (getrlimit(RLIMIT_NOFILE, &limit) || limit.rlim_cur < IDLE_SOCKETS + 200) {
    printf("# RLIMIT_NOFILE %llu is too low for this test\n",
           (unsigned long long)limit.rlim_cur);
    return -1;
  }
  dir = th_mkdtemp("http-conn");
  return th_broker_start(&broker, 2);
}

static int teardown(void **state) {
  (void)state;
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
  return 0;
}

static void close_all(int *fds, size_t count) {
  for (size_t i = 0; i < count; i++)
    if (fds[i] >= 0)
      close(fds[i]);
}

/* The check: 1,100 idle sockets from the prober's own address,
 * and /healthz still answers within the bound, every time; so does an
 * authenticated route. Default limits. */
static void test_idle_sockets_leave_healthz_answering(void **state) {
  (void)state;
  th_run_t run;
  assert_int_equal(start_run(&run, "idle", "{}"), 0);
  int *idle = malloc(IDLE_SOCKETS * sizeof(*idle));
  for (int i = 0; i < IDLE_SOCKETS; i++) {
    idle[i] = connect_from(NULL, run.port);
    assert_true(idle[i] >= 0);
  }
  for (int round = 0; round < 5; round++) {
    int64_t elapsed;
    int status =
        timed_get(NULL, run.port, "/healthz", HEALTHZ_BOUND_MS, &elapsed);
    printf("# /healthz with %d idle sockets open: %d in %lld ms\n",
           IDLE_SOCKETS, status, (long long)elapsed);
    assert_int_equal(status, 200);
    assert_int_equal(
        timed_get(NULL, run.port, "/v1/plans", HEALTHZ_BOUND_MS, NULL), 200);
    th_sleep_ms(200);
  }
  /* The flooder paid: most of its sockets were closed by the per-client
   * cap (256 by default), and the port counted them. */
  size_t closed = 0;
  for (int i = 0; i < IDLE_SOCKETS; i++)
    closed += (size_t)closed_by_server(idle[i]);
  printf("# %zu of %d idle sockets closed by the server\n", closed,
         IDLE_SOCKETS);
  assert_true(closed >= IDLE_SOCKETS - 256);
  assert_true(th_metric_labeled(run.port, "tally_http_connections_closed_total",
                                "{reason=\"client_limit\"}") >=
              IDLE_SOCKETS - 256);
  close_all(idle, IDLE_SOCKETS);
  free(idle);
  th_stop(run.pid);
}

/* No per-client cap: the connection cap (64) closes the idle sockets of
 * the client with the most connections, never the other client's. */
static void test_connection_cap_evicts_the_heaviest_client(void **state) {
  (void)state;
  th_run_t run;
  assert_int_equal(start_run(&run, "cap",
                             "{\"http\": {\"max_connections\": 64, "
                             "\"max_connections_per_ip\": 0}}"),
                   0);
  int quiet[8], flood[200];
  for (int i = 0; i < 8; i++) {
    quiet[i] = connect_from("127.0.0.3", run.port);
    assert_true(quiet[i] >= 0);
  }
  th_sleep_ms(100); /* the quiet client's sockets are the oldest */
  for (int i = 0; i < 200; i++) {
    flood[i] = connect_from("127.0.0.2", run.port);
    assert_true(flood[i] >= 0);
  }
  for (int round = 0; round < 3; round++)
    assert_int_equal(
        timed_get("127.0.0.4", run.port, "/healthz", HEALTHZ_BOUND_MS, NULL),
        200);
  th_sleep_ms(300); /* the closes reach this side */
  size_t quiet_closed = 0, flood_closed = 0;
  for (int i = 0; i < 8; i++)
    quiet_closed += (size_t)closed_by_server(quiet[i]);
  for (int i = 0; i < 200; i++)
    flood_closed += (size_t)closed_by_server(flood[i]);
  printf("# cap 64: flooder lost %zu of 200, the quiet client %zu of 8\n",
         flood_closed, quiet_closed);
  assert_int_equal(quiet_closed, 0);
  assert_true(flood_closed >= 200 - 64 + 8);
  close_all(quiet, 8);
  close_all(flood, 200);
  th_stop(run.pid);
}

/* Slow drips: a header byte, or (after whole headers) a body byte, every
 * 500 ms. libmicrohttpd's idle timeout restarts with each byte; the
 * deadlines (2 s for headers, 3 s for the request) do not. */
static void test_slow_drip_is_closed_at_the_deadline(void **state) {
  (void)state;
  th_run_t run;
  assert_int_equal(start_run(&run, "drip",
                             "{\"http\": {\"header_timeout_ms\": 2000, "
                             "\"request_timeout_ms\": 3000}}"),
                   0);
  enum { HEADER_DRIPS = 5, BODY_DRIPS = 3 };
  int header_fd[HEADER_DRIPS], body_fd[BODY_DRIPS];
  int64_t header_closed[HEADER_DRIPS], body_closed[BODY_DRIPS];
  static const char header_text[] =
      "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: "
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
  char body_headers[512];
  int body_headers_len = snprintf(
      body_headers, sizeof(body_headers),
      "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
      "%s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
      th_api_key());
  int64_t start = th_now_ms();
  for (int i = 0; i < HEADER_DRIPS; i++) {
    header_fd[i] = connect_from(NULL, run.port);
    assert_true(header_fd[i] >= 0);
    header_closed[i] = -1;
  }
  for (int i = 0; i < BODY_DRIPS; i++) {
    body_fd[i] = connect_from(NULL, run.port);
    assert_true(body_fd[i] >= 0);
    assert_int_equal(
        send(body_fd[i], body_headers, (size_t)body_headers_len, MSG_NOSIGNAL),
        body_headers_len);
    body_closed[i] = -1;
  }
  /* Drip for up to 8 s (both deadlines plus slack); the byte sent never
   * completes a request (the header text is longer than 16 bytes). */
  for (int tick = 0; tick < 16; tick++) {
    int64_t now = th_now_ms() - start;
    for (int i = 0; i < HEADER_DRIPS; i++)
      if (header_closed[i] < 0) {
        if (closed_by_server(header_fd[i]))
          header_closed[i] = now;
        else
          send(header_fd[i], &header_text[tick], 1, MSG_NOSIGNAL);
      }
    for (int i = 0; i < BODY_DRIPS; i++)
      if (body_closed[i] < 0) {
        if (closed_by_server(body_fd[i]))
          body_closed[i] = now;
        else
          send(body_fd[i], "[", 1, MSG_NOSIGNAL);
      }
    assert_int_equal(
        timed_get(NULL, run.port, "/healthz", HEALTHZ_BOUND_MS, NULL), 200);
    th_sleep_ms(500);
  }
  for (int i = 0; i < HEADER_DRIPS; i++) {
    printf("# header drip %d closed after %lld ms\n", i,
           (long long)header_closed[i]);
    assert_true(header_closed[i] >= 1500 && header_closed[i] <= 5000);
  }
  for (int i = 0; i < BODY_DRIPS; i++) {
    printf("# body drip %d closed after %lld ms\n", i,
           (long long)body_closed[i]);
    assert_true(body_closed[i] >= 2500 && body_closed[i] <= 6500);
  }
  assert_true(th_metric_labeled(run.port, "tally_http_connections_closed_total",
                                "{reason=\"header_deadline\"}") >=
              HEADER_DRIPS);
  assert_true(th_metric_labeled(run.port, "tally_http_connections_closed_total",
                                "{reason=\"body_deadline\"}") >= BODY_DRIPS);
  close_all(header_fd, HEADER_DRIPS);
  close_all(body_fd, BODY_DRIPS);
  th_stop(run.pid);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idle_sockets_leave_healthz_answering),
      cmocka_unit_test(test_connection_cap_evicts_the_heaviest_client),
      cmocka_unit_test(test_slow_drip_is_closed_at_the_deadline),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
