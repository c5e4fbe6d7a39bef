/*
 * reference.h - the billing reference the end-to-end tests check against:
 * a plan whose limits and credits a stream of usage crosses at every
 * threshold, the stream itself (produced through the client library), and
 * the checks that the processor's committed usage, credits and alerts
 * equal what this plain arithmetic expects, each alert exactly once.
 */
#ifndef TALLY_REFERENCE_H
#define TALLY_REFERENCE_H

#include "tly_alert.h"

#include <pthread.h>
#include <stdatomic.h>

/* Write this as the processor's --config. */
extern const char *th_reference_config_json;
/* The same with meters: seats (unique_count of property "seat"), peak
 * (max) and gauge (latest), unpriced and unlimited. */
extern const char *th_reference_meters_config_json;

typedef struct {
  long long api_calls, tokens, input, output, cost_micros;
  /* With meters (th_stream_t.meters): unique_count "seats" (bit v: value
   * "v<v>" sent this cycle), max "peak", latest "gauge". */
  unsigned long long seats;
  long long peak, gauge;
  /* With corrections (th_stream_t.correct_every): events counted per
   * feature (a retraction takes one away), and the highest value each
   * threshold was checked against in fold order (a correction can lower a
   * value, but an alert already fired stays). */
  long long api_events, ai_events;
  long long peak_api_calls, peak_tokens, peak_cost_micros;
} th_expected_t;

#define TH_REFUSED_UNKNOWN 1     /* an id never sent, or a correction's */
#define TH_REFUSED_AGGREGATION 2 /* a max, latest or unique_count event */

typedef struct {
  const char *bootstrap;
  int events, subjects, events_per_second;
  unsigned seed;
  th_expected_t *expected; /* subjects entries, zeroed */
  /* Optional: extra librdkafka properties for the stream's producer,
   * "name=value", NULL-terminated. */
  const char *const *kafka_properties;
  /* Optional: after every Nth event, the same event id (and subject) of
   * a random earlier event again, which the processor must refuse as a
   * duplicate (not in expected). 0: none. */
  int duplicate_every;
  int duplicates_sent; /* set when done */
  /* With meters: every other event is followed by one of the metered
   * features of th_reference_meters_config_json (seats, peak, gauge). */
  int meters;
  /* Optional: after every Nth event (N > 0), a usage_corrected event of
   * that event's subject (tly_corrections.h): mostly amending or
   * retracting an earlier event of the subject's (api_calls 0-3 calls, AI
   * tokens anew; a quarter retract), some a second time (the latest
   * wins), folded into expected as the product defines; one in ten names
   * an id never sent and one in ten the id of an earlier correction (not
   * correctable): both must be dead-lettered and count nothing
   * (th_verify_corrections_dlq). */
  int correct_every;
  int corrections_applied, corrections_refused; /* set when done */
  /* Per event i of the stream: TH_REFUSED_* when the correction sent after
   * it was to be refused, else 0. malloc'd by the stream (with
   * correct_every); free it. With meters, one in ten corrects a metered
   * event (seats, peak, gauge): refused, their aggregation keeps no
   * contributions. */
  unsigned char *refused;
  /* Extra copies of alerts the check accepts: the outputs the instances
   * reported at risk (tally_outputs_at_risk_total, README "Known gaps").
   * 0: every alert exactly once. A missing alert always fails. */
  long long max_duplicate_alerts;
  /* Optional: before event hold_from (> 0) the stream waits while hold is
   * set (at most 5 minutes), then goes on at its pace: a test that needs
   * records still arriving at some step releases the rest there, however
   * slow the machine was to reach it. */
  int hold_from;
  atomic_int hold;
  atomic_int done;
  char error[1024]; /* set by the stream thread on failure */
} th_stream_t;

/* pthread entry: produces the stream, filling expected. */
void *th_stream_main(void *stream);

/* Writes the reference config to dir/config.json; returns the path
 * (malloc'd). */
char *th_reference_config_file(const char *dir);
char *th_reference_meters_config_file(const char *dir);

/* Asserts (cmocka) that every subject's usage, cost and credits on the
 * HTTP port equal the reference, and that the alerts topic holds exactly
 * the expected alerts, each once. */
void th_verify_reference(int port, const char *bootstrap,
                         const th_stream_t *stream);
/* The same with several instances: port_of(opaque, s) names the HTTP port
 * to ask about subject s (the instance that owns its partition). */
void th_verify_reference_routed(int (*port_of)(void *opaque, int subject),
                                void *opaque, const char *bootstrap,
                                const th_stream_t *stream);

/* Asserts that the dead-letter topic holds each correction the stream
 * sent to be refused exactly once, with its reason, and no other record
 * of the stream. */
void th_verify_corrections_dlq(const char *bootstrap,
                               const th_stream_t *stream);

/* Asserts that the usage topic holds every event the stream sent, by
 * event id (duplicates from producer retries are fine), naming the first
 * one missing: an event lost on the way to Kafka is told apart from one
 * the processor failed to count. */
void th_verify_stream_in_topic(const char *bootstrap, int partitions,
                               const th_stream_t *stream);

/* The crash matrices' kill loop (harness.h's th_run_t): until min_kills
 * runs were killed and the stream is done, each run is let fold
 * something (once the stream is done: become ready, there may be nothing
 * left to fold), then is SIGKILLed at a random moment within 1.2 s; every
 * third run instead kills itself after 1-5 alert acks
 * (TALLY_FAULT_KILL_AFTER_ACKS: between Kafka's acknowledgement and the
 * outbox delete), or is killed after 4 s. Each is restarted on state_dir
 * with extra; the loop ends with a run that can finish, the stream joined
 * from *producer. Asserts a run never exits by itself otherwise. Returns
 * the kills; *self_kills: runs that died by their own hand. */
struct th_run;
int th_crash_loop(struct th_run *run, th_stream_t *stream, pthread_t producer,
                  const char *state_dir, const char *const *extra,
                  int min_kills, unsigned *seed, int *self_kills);

/* Reads the whole alerts topic (to the end of every partition, which it
 * asserts), decoding every alert (an undecodable one fails the test) and
 * passing it to visit. Returns the number of alerts. */
int th_read_alerts(const char *bootstrap,
                   void (*visit)(void *opaque, const tly_alert_t *alert),
                   void *opaque);

#endif
