/*
 * harness.h - what the integration tests share: real processes (`tally
 * broker`, `tally run`, `tally emit`), real sockets, files to wait on.
 * Everything binds to 127.0.0.1 and every wait has a deadline, so a broken
 * build fails a test instead of hanging CI.
 */
#ifndef TALLY_HARNESS_H
#define TALLY_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The tally binary under test ($TALLY_BIN, set by CTest). */
const char *th_tally_bin(void);

/* A fresh directory under $TMPDIR or /tmp; malloc'd path. */
char *th_mkdtemp(const char *tag);
/* rm -rf path (only under the temp dir). */
void th_rmrf(const char *path);

/* Starts argv[0] with stdin/stdout/stderr redirected to the given files
 * (NULL: /dev/null for stdin, inherit for the others). */
pid_t th_spawn(char *const argv[], const char *stdin_path,
               const char *stdout_path, const char *stderr_path);
/* Waits for pid; its exit code, 128+signal if killed, -1 on timeout. */
int th_wait_exit(pid_t pid, int timeout_ms);
/* SIGKILL and reap. */
void th_kill9(pid_t pid);
/* SIGTERM, wait up to 20 s, then SIGKILL. Returns the exit code. */
int th_stop(pid_t pid);

/* Waits until path exists and returns its contents (malloc'd, trailing
 * whitespace trimmed), or NULL on timeout. */
char *th_wait_file(const char *path, int timeout_ms);
/* Whole file, malloc'd (NULL if unreadable). */
char *th_read_file(const char *path);

typedef struct {
  pid_t pid;
  char dir[512];
  char bootstrap[256];
} th_broker_t;
/* `tally broker --partitions N`; 0 or -1. */
int th_broker_start(th_broker_t *broker, int partitions);
void th_broker_stop(th_broker_t *broker);

typedef struct th_run {
  pid_t pid;
  int port;
  char state_dir[512];
  char log_path[600];
} th_run_t;
/* `tally run` on state_dir, HTTP on a free port, logs to
 * state_dir/../run-N.log. extra: NULL-terminated extra arguments (may be NULL).
 * 0 or -1. */
int th_run_start(th_run_t *run, const char *bootstrap, const char *state_dir,
                 const char *const *extra);

/* Set in the environment of the next th_run_start() only ("NAME=value"),
 * e.g. the processor's fault injection; NULL for none. */
extern const char *th_run_env;

/* The cluster secret every `tally run` of th_run_start shares (in its
 * environment as TALLY_CLUSTER_SECRET): generated once per test process,
 * so instances of one test forward to each other. */
const char *th_cluster_secret(void);
/* 1: the next th_run_start() runs without a cluster secret (no
 * forwarding). Reset by th_run_start. */
extern int th_run_without_cluster_secret;

/* The API key the harness's `tally run` accepts: generated once per test
 * process; th_run_start passes its SHA-256 as --api-key-sha256. */
const char *th_api_key(void);
const char *th_api_key_sha256(void);

/* GET http://127.0.0.1:port/path with the harness's bearer token. 0 (with
 * status and malloc'd body) or -1. */
int th_http_get(int port, const char *path, long *status, char **body);

/* Any request: method, path, an Authorization header value (NULL: none;
 * TH_AUTH_DEFAULT: the harness's token), a body (NULL: none) of body_len
 * bytes, and extra "Name: value" headers (NULL-terminated, may be NULL).
 * 0 (with status and malloc'd body) or -1 (no answer: connection failed or
 * was cut off). */
#define TH_AUTH_DEFAULT ((const char *)1)
int th_http_request(int port, const char *method, const char *path,
                    const char *authorization, const char *body,
                    size_t body_len, const char *const *headers, long *status,
                    char **response);

/* Sum of every sample of a Prometheus metric (all label sets); -1 if the
 * port does not answer. */
long long th_metric_sum(int port, const char *name);
/* The value of name{partition="p"}, or -1. */
long long th_metric_partition(int port, const char *name, int partition);
/* The sample of name with exactly these labels ("{result=\"relayed\"}"). */
long long th_metric_labeled(int port, const char *name, const char *labels);

/* The high watermark of every partition of topic (array of partitions
 * entries). 0 or -1. */
int th_high_watermarks(const char *bootstrap, const char *topic, int partitions,
                       int64_t *out);

/* Reads partitions 0..partitions-1 of topic from their start to their end
 * (enable.partition.eof), calling visit for each record. The number of
 * records, or -1 when an end was not reached within 60 s. */
struct rd_kafka_message_s;
int th_read_topic(const char *bootstrap, const char *topic, int partitions,
                  void (*visit)(void *opaque,
                                const struct rd_kafka_message_s *msg),
                  void *opaque);
/* A record's last header of that name, as text in out; NULL if none. */
const char *th_header(const struct rd_kafka_message_s *msg, const char *name,
                      char *out, size_t size);

/* Waits until the processor on port has committed every partition of topic
 * up to its current high watermark. 0, or -1 on timeout. */
int th_wait_caught_up(int port, const char *bootstrap, const char *topic,
                      int partitions, int timeout_ms);

/* Waits until every output the processor committed was acknowledged by
 * Kafka (its outbox is empty). 0, or -1 on timeout. */
int th_wait_outbox_empty(int port, int timeout_ms);

/* An embedded broker inside the test process (so a test can inject
 * faults into it), with tally.usage (partitions), tally.usage.dlq (1) and
 * tally.alerts (4); its bootstrap address in bootstrap. NULL on failure. */
struct rd_kafka_mock_cluster_s;
struct rd_kafka_mock_cluster_s *th_mock_cluster_new(int partitions,
                                                    const char **bootstrap);
void th_mock_cluster_destroy(struct rd_kafka_mock_cluster_s *cluster);
int64_t th_now_ms(void);
void th_sleep_ms(int ms);

/* A simple stream of good events (calls.c): count api_calls events of
 * quantity 1 + i % 7 at TH_CALLS_AT_MS to user:good-NN (NN = i % subjects),
 * ids "g-<round>-<i>", through tally's producer, each subject's quantity
 * added to per_subject; the total quantity, or -1. th_check_calls: every
 * subject's api_calls quantity on port equals per_subject; their sum, or
 * -1 (saying which differs). */
#define TH_CALLS_AT_MS 1763800000000LL
long long th_produce_calls(const char *bootstrap, int round, int count,
                           int subjects, long long *per_subject);
long long th_check_calls(int port, int subjects, const long long *per_subject);

#endif
