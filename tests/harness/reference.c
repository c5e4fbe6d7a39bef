/*
 * reference.c - the billing reference of the end-to-end tests (see
 * reference.h). Prices are chosen so the reference is plain integer
 * arithmetic: an API call costs 1,000 micros (1 credit); a token 1 micro
 * in, 2 out, no margin. All events fall in one cycle (November 2026), so
 * every expected alert follows from the final totals alone.
 */
#include "reference.h"

#include "harness.h"
#include "tally_producer.h"
#include "tly_alert.h"
#include "tly_codec.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define CYCLE_START 1793491200000LL /* 2026-11-01T00:00:00Z */
#define FIRST_EVENT 1794268800000LL /* 2026-11-10T00:00:00Z */
#define API_LIMIT 100
#define TOKEN_LIMIT 40000
#define CREDITS 150

static const int thresholds[] = {25, 50, 75, 90, 100};
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define THRESHOLDS 5

/* Prices chosen so the reference is plain integer arithmetic: an API call
 * costs 1,000 micros (1 credit); a token 1 micro in, 2 out (no margin). */
const char *th_reference_config_json =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"pricing\": {\"margin_bps\": 0, \"models\": {\"m\": "
    "   {\"input_per_mtok\": 1000000, \"output_per_mtok\": 2000000}}},"
    " \"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"user\": \"matrix\"},"
    " \"plans\": {\"matrix\": {\"credits\": 150,"
    "   \"limits\": {\"api_calls\": {\"limit\": 100, \"mode\": \"hard\"},"
    "              \"ai_tokens\": {\"limit\": 40000, \"mode\": \"soft\"}},"
    "   \"prices\": {\"api_calls\": {\"model\": \"graduated\", \"tiers\": "
    "     [{\"up_to\": null, \"unit_micros\": 1000}]}}}}}";

const char *th_reference_meters_config_json =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"pricing\": {\"margin_bps\": 0, \"models\": {\"m\": "
    "   {\"input_per_mtok\": 1000000, \"output_per_mtok\": 2000000}}},"
    " \"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"user\": \"matrix\"},"
    " \"meters\": {\"seats\": {\"aggregation\": \"unique_count\", "
    "                          \"property\": \"seat\"},"
    "              \"peak\": {\"aggregation\": \"max\"},"
    "              \"gauge\": {\"aggregation\": \"latest\"}},"
    " \"plans\": {\"matrix\": {\"credits\": 150,"
    "   \"limits\": {\"api_calls\": {\"limit\": 100, \"mode\": \"hard\"},"
    "              \"ai_tokens\": {\"limit\": 40000, \"mode\": \"soft\"}},"
    "   \"prices\": {\"api_calls\": {\"model\": \"graduated\", \"tiers\": "
    "     [{\"up_to\": null, \"unit_micros\": 1000}]}}}}}";

/* One metered event of subject s after the stream's event i (same time
 * plus 1 ms, so the subject's events stay in time order), into expected. */
static const char *const metered_features[] = {"seats", "peak", "gauge"};

/* *kind: which feature it was (1 + index in metered_features). */
static int send_metered(tally_producer_t *producer, th_stream_t *stream,
                        unsigned *seed, int i, int s, const char *id,
                        int64_t at_ms, unsigned char *kind, char *errstr,
                        size_t errstr_size) {
  char event_id[48], seat[16];
  th_expected_t *e = &stream->expected[s];
  tly_property_t property = {"seat", seat};
  tly_event_t event = {0};
  snprintf(event_id, sizeof(event_id), "x-%u-%d-m", stream->seed, i);
  event.event_id = event_id;
  event.occurred_at_ms = at_ms + 1;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = (char *)id;
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  int64_t quantity = rand_r(seed) % 1000;
  event.body.usage.quantity = quantity;
  int which = rand_r(seed) % 3;
  *kind = (unsigned char)(1 + which);
  switch (which) {
  case 0: {
    int v = rand_r(seed) % 40;
    snprintf(seat, sizeof(seat), "v%d", v);
    event.body.usage.feature = "seats";
    event.body.usage.property_count = 1;
    event.body.usage.properties = &property;
    e->seats |= 1ULL << v;
    break;
  }
  case 1:
    event.body.usage.feature = "peak";
    if (quantity > e->peak)
      e->peak = quantity;
    break;
  default:
    event.body.usage.feature = "gauge";
    e->gauge = quantity;
  }
  return tally_producer_send(producer, &event, NULL, errstr, errstr_size);
}

/* What the stream sent as event i, as it counts now (corrections change
 * it): its subject, feature (ai or api_calls), quantity and tokens. */
typedef struct {
  unsigned short subject;
  unsigned char ai, counted;
  unsigned char metered; /* with meters: 1 + the metered feature sent after
                            it (metered_features), or 0 */
  int32_t quantity, in, out;
} sent_event_t;

/* The values thresholds are checked against only rise to a peak: a
 * correction that lowers one fires nothing, and re-arms nothing. */
static void note_peaks(th_expected_t *e) {
  if (e->api_calls > e->peak_api_calls)
    e->peak_api_calls = e->api_calls;
  if (e->tokens > e->peak_tokens)
    e->peak_tokens = e->tokens;
  if (e->cost_micros > e->peak_cost_micros)
    e->peak_cost_micros = e->cost_micros;
}

/* The corrections' own state between two of them. */
typedef struct {
  unsigned seed;
  int last_fix;    /* the stream index after which the last applied
                      correction was sent, or -1 */
  int last_fixed;  /* the event it corrected */
  int last_fix_ai; /* its feature */
  int last_fix_subject;
} fixes_t;

/* The correction sent after event i (th_stream_t.correct_every), folded
 * into expected exactly as tly_corrections.c defines it: the original's
 * quantity and tokens become the correction's (api_calls at 1,000 micros a
 * call; tokens at 1 micro in, 2 out), quantity 0 without tokens retracts
 * it (events - 1), a later correction of the same original replaces the
 * previous one's values. */
static int send_correction(tally_producer_t *producer, th_stream_t *stream,
                           fixes_t *fixes, sent_event_t *sent, int i,
                           char *errstr, size_t errstr_size) {
  char event_id[48], corrects[48], id[32];
  tly_event_t event = {0};
  int r = (int)(rand_r(&fixes->seed) % 10), s, ai;
  const char *feature = NULL;
  int refused = r == 0 || (r == 1 && fixes->last_fix >= 0) ||
                (r == 3 && stream->meters && sent[i - i % 2].metered);
  if (refused && r == 3) { /* a metered event: max, latest, unique_count */
    int j = i - i % 2;     /* an event followed by a metered one */
    s = sent[j].subject;
    ai = 0;
    feature = metered_features[sent[j].metered - 1];
    snprintf(corrects, sizeof(corrects), "x-%u-%d-m", stream->seed, j);
  } else if (refused && r == 0) { /* an id never sent */
    s = sent[i].subject;
    ai = 0;
    snprintf(corrects, sizeof(corrects), "x-%u-nope-%d", stream->seed, i);
  } else if (refused) { /* a correction's id: not correctable */
    s = fixes->last_fix_subject;
    ai = fixes->last_fix_ai;
    snprintf(corrects, sizeof(corrects), "x-%u-%d-c", stream->seed,
             fixes->last_fix);
  } else {
    int j = r == 2 && fixes->last_fixed >= 0
                ? fixes->last_fixed /* again: the latest wins */
                : (int)(rand_r(&fixes->seed) % (unsigned)(i + 1));
    sent_event_t *o = &sent[j];
    s = o->subject;
    ai = o->ai;
    snprintf(corrects, sizeof(corrects), "x-%u-%d", stream->seed, j);
    int retract = rand_r(&fixes->seed) % 4 == 0;
    int32_t q = 0, in = 0, out = 0;
    if (!retract && !ai)
      q = (int32_t)(rand_r(&fixes->seed) % 4); /* 0: a retraction too */
    if (!retract && ai) {
      in = 100 + (int32_t)(rand_r(&fixes->seed) % 600);
      out = (int32_t)(rand_r(&fixes->seed) % 400);
      q = in + out;
      event.body.usage.has_ai = 1;
      event.body.usage.ai = (tly_ai_usage_t){"p", "m", in, out};
    }
    th_expected_t *e = &stream->expected[s];
    int counted = q != 0 || in != 0 || out != 0;
    if (ai) {
      e->tokens += q - o->quantity;
      e->input += in - o->in;
      e->output += out - o->out;
      e->cost_micros += (in - o->in) + 2 * (out - o->out);
      e->ai_events += counted - o->counted;
    } else {
      e->api_calls += q - o->quantity;
      e->cost_micros += 1000LL * (q - o->quantity);
      e->api_events += counted - o->counted;
    }
    note_peaks(e);
    *o = (sent_event_t){
        o->subject, o->ai, (unsigned char)counted, o->metered, q, in, out};
    event.body.usage.quantity = q;
    fixes->last_fix = i;
    fixes->last_fixed = j;
    fixes->last_fix_ai = ai;
    fixes->last_fix_subject = s;
  }
  if (refused) {
    event.body.usage.quantity = 1; /* would count, were it applied */
    stream->refused[i] = feature ? TH_REFUSED_AGGREGATION : TH_REFUSED_UNKNOWN;
  }
  snprintf(id, sizeof(id), "m%04d", s);
  snprintf(event_id, sizeof(event_id), "x-%u-%d-%c", stream->seed, i,
           refused ? 'r' : 'c');
  event.event_id = event_id;
  event.occurred_at_ms = FIRST_EVENT + (int64_t)i * 97 + 2;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = id;
  event.body_kind = TLY_BODY_USAGE_CORRECTED;
  event.body.usage.feature = (char *)(feature ? feature
                                      : ai    ? "ai_tokens"
                                              : "api_calls");
  event.body.usage.unit = "";
  event.body.usage.corrects = corrects;
  if (refused)
    stream->corrections_refused++;
  else
    stream->corrections_applied++;
  return tally_producer_send(producer, &event, NULL, errstr, errstr_size);
}

void *th_stream_main(void *arg) {
  th_stream_t *stream = arg;
  tally_producer_conf_t conf = {.brokers = stream->bootstrap,
                                .kafka_properties = stream->kafka_properties};
  char errstr[512], id[32], event_id[32];
  unsigned seed = stream->seed;
  th_expected_t *expected = stream->expected;
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    snprintf(stream->error, sizeof(stream->error), "producer: %s", errstr);
    atomic_store(&stream->done, 1);
    return NULL;
  }
  int64_t started = th_now_ms();
  int sent = 0;
  unsigned duplicate_seed = seed ^ 0x5bd1e995u;
  int duplicates = 0;
  unsigned short *subject_of =
      stream->duplicate_every
          ? calloc((size_t)stream->events, sizeof(*subject_of))
          : NULL;
  sent_event_t *sent_events =
      stream->correct_every
          ? calloc((size_t)stream->events, sizeof(*sent_events))
          : NULL;
  fixes_t fixes = {seed ^ 0x2545f491u, -1, -1, 0, 0};
  if (stream->correct_every)
    stream->refused = calloc((size_t)stream->events, 1);
  if ((stream->duplicate_every && !subject_of) ||
      (stream->correct_every && (!sent_events || !stream->refused))) {
    free(sent_events);
    free(subject_of);
    snprintf(stream->error, sizeof(stream->error), "out of memory");
    tally_producer_destroy(producer);
    atomic_store(&stream->done, 1);
    return NULL;
  }
  for (int i = 0; i < stream->events; i++) {
    if (i == stream->hold_from && i > 0 && atomic_load(&stream->hold)) {
      int64_t held = th_now_ms();
      while (atomic_load(&stream->hold) && th_now_ms() - held < 300000)
        tally_producer_poll(producer, 20);
      started += th_now_ms() - held; /* then at the same pace */
    }
    int s = rand_r(&seed) % stream->subjects;
    if (subject_of)
      subject_of[i] = (unsigned short)s;
    if (subject_of && i > 0 && i % stream->duplicate_every == 0) {
      /* An earlier event's id and subject again, at its own time; its
       * body would change the totals if it were counted. */
      int j = (int)(rand_r(&duplicate_seed) % (unsigned)i);
      tly_event_t again = {0};
      snprintf(id, sizeof(id), "m%04d", subject_of[j]);
      snprintf(event_id, sizeof(event_id), "x-%u-%d", stream->seed, j);
      again.event_id = event_id;
      again.occurred_at_ms = FIRST_EVENT + (int64_t)j * 97;
      again.subject_kind = TLY_SUBJECT_USER;
      again.subject_id = id;
      again.body_kind = TLY_BODY_USAGE_RECORDED;
      again.body.usage.feature = "api_calls";
      again.body.usage.quantity = 1;
      if (tally_producer_send(producer, &again, NULL, errstr, sizeof(errstr))) {
        snprintf(stream->error, sizeof(stream->error), "send duplicate: %s",
                 errstr);
        break;
      }
      duplicates++;
      sent++;
    }
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "m%04d", s);
    snprintf(event_id, sizeof(event_id), "x-%u-%d", stream->seed, i);
    event.event_id = event_id;
    /* ~97 ms apart: 200,000 events span about five hours, so the hourly
     * usage buckets move from the subject record to their own keys while
     * the processor is being killed. */
    event.occurred_at_ms = FIRST_EVENT + (int64_t)i * 97;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    if (rand_r(&seed) % 2) {
      event.body.usage.feature = "api_calls";
      event.body.usage.quantity = 1 + rand_r(&seed) % 3;
      expected[s].api_calls += event.body.usage.quantity;
      expected[s].cost_micros += 1000 * event.body.usage.quantity;
      expected[s].api_events++;
    } else {
      int64_t in = 100 + rand_r(&seed) % 600, out = rand_r(&seed) % 400;
      event.body.usage.feature = "ai_tokens";
      event.body.usage.has_ai = 1;
      event.body.usage.ai = (tly_ai_usage_t){"p", "m", in, out};
      event.body.usage.quantity = in + out;
      expected[s].tokens += in + out;
      expected[s].input += in;
      expected[s].output += out;
      expected[s].cost_micros += in + 2 * out;
      expected[s].ai_events++;
    }
    note_peaks(&expected[s]);
    if (sent_events)
      sent_events[i] =
          (sent_event_t){(unsigned short)s,
                         event.body.usage.has_ai,
                         1,
                         0,
                         (int32_t)event.body.usage.quantity,
                         (int32_t)event.body.usage.ai.input_tokens,
                         (int32_t)event.body.usage.ai.output_tokens};
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      snprintf(stream->error, sizeof(stream->error), "send %d: %s", i, errstr);
      break;
    }
    sent++;
    if (stream->meters && i % 2 == 0) {
      unsigned char kind = 0;
      if (send_metered(producer, stream, &seed, i, s, id, event.occurred_at_ms,
                       &kind, errstr, sizeof(errstr))) {
        snprintf(stream->error, sizeof(stream->error), "send %d-m: %s", i,
                 errstr);
        break;
      }
      if (sent_events)
        sent_events[i].metered = kind;
      sent++;
    }
    if (sent_events && i % stream->correct_every == stream->correct_every - 1) {
      if (send_correction(producer, stream, &fixes, sent_events, i, errstr,
                          sizeof(errstr))) {
        snprintf(stream->error, sizeof(stream->error), "send %d-c: %s", i,
                 errstr);
        break;
      }
      sent++;
    }
    int64_t due = started + (int64_t)i * 1000 / stream->events_per_second;
    int64_t wait = due - th_now_ms();
    tally_producer_poll(producer, wait > 0 ? (int)wait : 0);
  }
  tally_producer_stats_t stats;
  if (tally_producer_flush(producer, 60000))
    snprintf(stream->error, sizeof(stream->error), "flush timed out");
  tally_producer_stats(producer, &stats);
  if (stats.failed || stats.delivered != (uint64_t)sent)
    snprintf(stream->error, sizeof(stream->error),
             "%llu delivered, %llu failed of %d (and %d duplicates)",
             (unsigned long long)stats.delivered,
             (unsigned long long)stats.failed, sent - duplicates, duplicates);
  stream->duplicates_sent = duplicates;
  free(subject_of);
  free(sent_events);
  tally_producer_destroy(producer);
  atomic_store(&stream->done, 1);
  return NULL;
}

/* A subject's total on the HTTP port against the reference; a mismatch
 * names the subject and the figure. */
static void expect_total(int subject, const char *what, long long got,
                         long long want) {
  if (got != want)
    fail_msg("subject m%04d: %s is %lld, the reference says %lld", subject,
             what, got, want);
}

/* The alert ids the reference expects, as keys of a JSON object. */
static void expect_threshold_alerts(json_t *ids, int s, const char *feature,
                                    long long used, long long limit) {
  for (int t = 0; t < THRESHOLDS; t++) {
    if (used * 100 < limit * thresholds[t])
      continue;
    char alert_id[256];
    snprintf(alert_id, sizeof(alert_id), "%s:user:m%04d:%lld:%s:%d",
             thresholds[t] >= 100 ? "limit_exceeded" : "limit_warning", s,
             CYCLE_START, feature, thresholds[t]);
    json_object_set_new(ids, alert_id, json_integer(0));
  }
}

typedef struct {
  tly_alert_codec_t *codec;
  void (*visit)(void *opaque, const tly_alert_t *alert);
  void *opaque;
} alert_reader_t;

/* Where each copy of an alert sits: "partition@offset, produced at T ms"
 * per alert id, so a duplicate names when (and so by whom, with the
 * instances' logs) each copy was sent. */
static json_t *alert_copies;

static void decode_alert(void *opaque, const rd_kafka_message_t *msg) {
  alert_reader_t *reader = opaque;
  char errstr[512];
  tly_alert_t alert = {0};
  if (tly_alert_decode(reader->codec, msg->payload, msg->len, &alert, errstr,
                       sizeof(errstr)))
    fail_msg("undecodable alert: %s", errstr);
  if (alert_copies && alert.alert_id) {
    char where[96];
    rd_kafka_timestamp_type_t type;
    snprintf(where, sizeof(where), "%d@%lld, produced at %lld ms",
             (int)msg->partition, (long long)msg->offset,
             (long long)rd_kafka_message_timestamp(msg, &type));
    json_t *list = json_object_get(alert_copies, alert.alert_id);
    if (!list) {
      list = json_array();
      json_object_set_new(alert_copies, alert.alert_id, list);
    }
    json_array_append_new(list, json_string(where));
  }
  reader->visit(reader->opaque, &alert);
  tly_alert_clear(&alert);
}

int th_read_alerts(const char *bootstrap,
                   void (*visit)(void *opaque, const tly_alert_t *alert),
                   void *opaque) {
  char errstr[512];
  alert_reader_t reader = {tly_alert_codec_new(errstr, sizeof(errstr)), visit,
                           opaque};
  assert_non_null(reader.codec);
  int total =
      th_read_topic(bootstrap, "tally.alerts", 4, decode_alert, &reader);
  assert_true(total >= 0); /* every partition read to its end */
  tly_alert_codec_destroy(reader.codec);
  return total;
}

/* Counts each alert id in ids; an id the reference does not expect fails. */
static void count_expected(void *opaque, const tly_alert_t *alert) {
  json_t *count = json_object_get(opaque, alert->alert_id);
  if (!count)
    fail_msg("unexpected alert %s", alert->alert_id);
  json_integer_set(count, json_integer_value(count) + 1);
}

static char *config_file(const char *dir, const char *json) {
  char *path = malloc(600);
  snprintf(path, 600, "%s/config.json", dir);
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  fputs(json, file);
  fclose(file);
  return path;
}

char *th_reference_config_file(const char *dir) {
  return config_file(dir, th_reference_config_json);
}

char *th_reference_meters_config_file(const char *dir) {
  return config_file(dir, th_reference_meters_config_json);
}

/* The metered features' values on /usage and summed over the daily
 * answer's days (the hourly changes add up to the value). */
static void expect_meters(int s, const th_expected_t *e, json_t *features,
                          json_t *days) {
  static const char *const names[] = {"seats", "peak", "gauge"};
  long long want[3] = {__builtin_popcountll(e->seats), e->peak, e->gauge};
  for (int f = 0; f < 3; f++) {
    char what[64];
    long long summed = 0;
    expect_total(s, names[f],
                 json_integer_value(json_object_get(
                     json_object_get(features, names[f]), "quantity")),
                 want[f]);
    for (size_t d = 0; d < json_array_size(days); d++)
      summed += json_integer_value(json_object_get(
          json_object_get(json_object_get(json_array_get(days, d), "features"),
                          names[f]),
          "quantity"));
    snprintf(what, sizeof(what), "%s summed over days", names[f]);
    expect_total(s, what, summed, want[f]);
  }
}

static int same_port(void *opaque, int subject) {
  (void)subject;
  return *(const int *)opaque;
}

void th_verify_reference(int port, const char *bootstrap,
                         const th_stream_t *stream) {
  th_verify_reference_routed(same_port, &port, bootstrap, stream);
}

void th_verify_reference_routed(int (*port_of)(void *opaque, int subject),
                                void *opaque, const char *bootstrap,
                                const th_stream_t *stream) {
  json_t *ids = json_object();
  int expected_alerts = 0;
  for (int s = 0; s < stream->subjects; s++) {
    char path[128], *body;
    long status;
    const th_expected_t *e = &stream->expected[s];
    int port = port_of(opaque, s);
    snprintf(
        path, sizeof(path),
        "/v1/subjects/user:m%04d/usage?at=1794268800000&max_staleness_ms=0", s);
    assert_int_equal(th_http_get(port, path, &status, &body), 0);
    assert_int_equal(status, 200);
    json_t *json = json_loads(body, 0, NULL);
    free(body);
    json_t *features = json_object_get(json, "features");
    json_t *usage_features = json_incref(features);
    json_t *api = json_object_get(features, "api_calls");
    json_t *ai = json_object_get(features, "ai_tokens");
    expect_total(s, "api_calls",
                 json_integer_value(json_object_get(api, "quantity")),
                 e->api_calls);
    expect_total(s, "ai_tokens",
                 json_integer_value(json_object_get(ai, "quantity")),
                 e->tokens);
    expect_total(s, "input_tokens",
                 json_integer_value(json_object_get(ai, "input_tokens")),
                 e->input);
    expect_total(s, "output_tokens",
                 json_integer_value(json_object_get(ai, "output_tokens")),
                 e->output);
    expect_total(s, "cost_micros",
                 json_integer_value(json_object_get(json, "cost_micros")),
                 e->cost_micros);
    expect_total(s, "credits used",
                 json_integer_value(
                     json_object_get(json_object_get(json, "credits"), "used")),
                 e->cost_micros / 1000);
    if (stream->correct_every) { /* retractions take events away */
      expect_total(s, "api_calls events",
                   json_integer_value(json_object_get(api, "events")),
                   e->api_events);
      expect_total(s, "ai_tokens events",
                   json_integer_value(json_object_get(ai, "events")),
                   e->ai_events);
    }
    json_decref(json);
    /* The hourly buckets, summed per day, add up to the same totals. */
    snprintf(path, sizeof(path),
             "/v1/subjects/user:m%04d/usage/"
             "daily?from=2026-11-10&to=2026-11-11&max_staleness_ms=0&"
             "group_by=model",
             s);
    assert_int_equal(th_http_get(port, path, &status, &body), 0);
    assert_int_equal(status, 200);
    json = json_loads(body, 0, NULL);
    free(body);
    json_t *days = json_object_get(json, "days");
    int64_t day_calls = 0, day_tokens = 0, day_input = 0, day_cost = 0;
    int64_t model_tokens = 0, model_input = 0;
    for (size_t d = 0; d < json_array_size(days); d++) {
      json_t *day = json_array_get(days, d);
      features = json_object_get(day, "features");
      /* Grouped by model (tly_dims.h): every AI event names model "m", so
       * its group holds the feature's whole day; nothing in "none". */
      json_t *groups =
          json_object_get(json_object_get(features, "ai_tokens"), "groups");
      for (size_t g = 0; g < json_array_size(groups); g++) {
        json_t *group = json_array_get(groups, g);
        if (strcmp(json_string_value(json_object_get(group, "value")), "m"))
          fail_msg("subject %d: a group %s", s,
                   json_string_value(json_object_get(group, "value")));
        model_tokens += json_integer_value(json_object_get(group, "quantity"));
        model_input +=
            json_integer_value(json_object_get(group, "input_tokens"));
        if (json_integer_value(json_object_get(group, "events")) !=
            json_integer_value(json_object_get(
                json_object_get(features, "ai_tokens"), "events")))
          fail_msg("subject %d: model m's events differ from ai_tokens'", s);
      }
      day_calls += json_integer_value(
          json_object_get(json_object_get(features, "api_calls"), "quantity"));
      day_tokens += json_integer_value(
          json_object_get(json_object_get(features, "ai_tokens"), "quantity"));
      day_input += json_integer_value(json_object_get(
          json_object_get(features, "ai_tokens"), "input_tokens"));
      day_cost += json_integer_value(json_object_get(day, "cost_micros"));
    }
    expect_total(s, "api_calls summed over days", day_calls, e->api_calls);
    expect_total(s, "ai_tokens summed over days", day_tokens, e->tokens);
    expect_total(s, "input_tokens summed over days", day_input, e->input);
    expect_total(s, "cost_micros summed over days", day_cost, e->cost_micros);
    expect_total(s, "ai_tokens of model m summed over days", model_tokens,
                 e->tokens);
    expect_total(s, "input_tokens of model m summed over days", model_input,
                 e->input);
    if (stream->meters)
      expect_meters(s, e, usage_features, days);
    json_decref(usage_features);
    json_decref(json);
    size_t before = json_object_size(ids);
    /* Thresholds are crossed once, at the highest value reached. */
    expect_threshold_alerts(ids, s, "api_calls",
                            MAX(e->api_calls, e->peak_api_calls), API_LIMIT);
    expect_threshold_alerts(ids, s, "ai_tokens", MAX(e->tokens, e->peak_tokens),
                            TOKEN_LIMIT);
    expect_threshold_alerts(ids, s, "credits",
                            MAX(e->cost_micros, e->peak_cost_micros) / 1000,
                            CREDITS);
    expected_alerts += (int)(json_object_size(ids) - before);
  }
  printf("# %d alerts expected\n", expected_alerts);
  assert_true(expected_alerts > stream->subjects * 5); /* crosses a lot */

  alert_copies = json_object();
  int read = th_read_alerts(bootstrap, count_expected, ids);
  /* Each alert that is not there exactly once, named, before the total. */
  const char *id;
  json_t *count;
  int wrong = 0, missing = 0;
  long long extra = 0;
  json_object_foreach(ids, id, count) {
    long long seen = (long long)json_integer_value(count);
    missing += seen == 0;
    extra += seen > 1 ? seen - 1 : 0;
    if (seen != 1 && wrong++ < 40) {
      printf("# alert %s seen %lld times\n", id, seen);
      json_t *copies = json_object_get(alert_copies, id);
      for (size_t c = 0; c < json_array_size(copies); c++)
        printf("#   copy %zu: %s\n", c + 1,
               json_string_value(json_array_get(copies, c)));
    }
  }
  json_decref(alert_copies);
  alert_copies = NULL;
  if (extra)
    printf("# %lld extra alert copies; %lld outputs were at risk\n", extra,
           stream->max_duplicate_alerts);
  if (missing || extra > stream->max_duplicate_alerts)
    fail_msg("%d of %d expected alerts are not in the alerts topic exactly "
             "once (%d read, %d missing, %lld extra copies, %lld at risk)",
             wrong, expected_alerts, read, missing, extra,
             stream->max_duplicate_alerts);
  assert_int_equal(read, expected_alerts + extra);
  json_decref(ids);
}

typedef struct {
  const th_stream_t *stream;
  tly_codec_t *codec;
  unsigned char *seen; /* per event of the stream */
  char prefix[32];     /* its event ids: "x-<seed>-" */
} stream_reader_t;

/* Decodes a record of a stream's topic (what names it in a failure) and
 * reads the number in its event id "<prefix><number><suffix>": 1 and *i,
 * *suffix (past the digits), or 0 when the id is not the stream's. */
static int stream_event_number(tly_codec_t *codec, const char *prefix,
                               const rd_kafka_message_t *msg, const char *what,
                               tly_event_t *event, long *i,
                               const char **suffix) {
  char errstr[512];
  if (tly_codec_decode_view(codec, msg->payload, msg->len, event, errstr,
                            sizeof(errstr)))
    fail_msg("undecodable %s at %d@%lld: %s", what, (int)msg->partition,
             (long long)msg->offset, errstr);
  size_t prefix_len = strlen(prefix);
  if (strncmp(event->event_id, prefix, prefix_len))
    return 0; /* not this stream's */
  char *end = NULL;
  *i = strtol(event->event_id + prefix_len, &end, 10);
  *suffix = end;
  return 1;
}

static void mark_event(void *opaque, const rd_kafka_message_t *msg) {
  stream_reader_t *reader = opaque;
  tly_event_t event;
  long i;
  const char *end;
  if (!stream_event_number(reader->codec, reader->prefix, msg, "usage record",
                           &event, &i, &end))
    return;
  if (*end) /* a metered event's or a correction's id: not the stream's */
    return;
  if (i >= 0 && i < reader->stream->events)
    reader->seen[i] = 1;
}

void th_verify_stream_in_topic(const char *bootstrap, int partitions,
                               const th_stream_t *stream) {
  char errstr[512];
  stream_reader_t reader = {
      stream,
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr)),
      calloc((size_t)stream->events, 1), ""};
  assert_non_null(reader.codec);
  assert_non_null(reader.seen);
  snprintf(reader.prefix, sizeof(reader.prefix), "x-%u-", stream->seed);
  int records = th_read_topic(bootstrap, TALLY_DEFAULT_USAGE_TOPIC, partitions,
                              mark_event, &reader);
  assert_true(records >= stream->events); /* every partition read to its end */
  for (int i = 0; i < stream->events; i++)
    if (!reader.seen[i])
      fail_msg("event %s%d was acknowledged to the producer but is not in "
               "%s: lost before the processor could see it",
               reader.prefix, i, TALLY_DEFAULT_USAGE_TOPIC);
  tly_codec_destroy(reader.codec);
  free(reader.seen);
}

typedef struct {
  const th_stream_t *stream;
  tly_codec_t *codec;
  int *copies; /* per event of the stream: its refused correction's */
  char prefix[32];
  int others;
} dlq_reader_t;

static void mark_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  dlq_reader_t *reader = opaque;
  char error[1024], want[160];
  tly_event_t event;
  long i;
  const char *end;
  if (!stream_event_number(reader->codec, reader->prefix, msg, "dead letter",
                           &event, &i, &end))
    return;
  if (strcmp(end, "-r") || i < 0 || i >= reader->stream->events ||
      !reader->stream->refused[i]) {
    if (reader->others++ < 10)
      printf("# unexpected dead letter %s: %s\n", event.event_id,
             th_header(msg, "tally.error", error, sizeof(error))
                 ? error
                 : "(no reason)");
    return;
  }
  if (reader->stream->refused[i] == TH_REFUSED_AGGREGATION)
    snprintf(want, sizeof(want),
             "feature '%s' aggregates with %s: only sum and count events can "
             "be corrected",
             event.body.usage.feature,
             !strcmp(event.body.usage.feature, "seats")  ? "unique_count"
             : !strcmp(event.body.usage.feature, "peak") ? "max"
                                                         : "latest");
  else
    snprintf(want, sizeof(want), "corrects '%s': no usage event of subject ",
             event.body.usage.corrects);
  if (!th_header(msg, "tally.error", error, sizeof(error)) ||
      !strstr(error, want))
    fail_msg("dead letter %s: reason '%s', expected '%s...'", event.event_id,
             error, want);
  reader->copies[i]++;
}

void th_verify_corrections_dlq(const char *bootstrap,
                               const th_stream_t *stream) {
  char errstr[512];
  dlq_reader_t reader = {
      stream,
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr)),
      calloc((size_t)stream->events, sizeof(int)), "", 0};
  assert_non_null(reader.codec);
  assert_non_null(reader.copies);
  assert_non_null(stream->refused);
  snprintf(reader.prefix, sizeof(reader.prefix), "x-%u-", stream->seed);
  assert_true(th_read_topic(bootstrap, "tally.usage.dlq", 1, mark_dead_letter,
                            &reader) >= 0);
  int wrong = 0, refused = 0, metered = 0;
  for (int i = 0; i < stream->events; i++) {
    int want = stream->refused[i] != 0;
    refused += want;
    metered += stream->refused[i] == TH_REFUSED_AGGREGATION;
    if (reader.copies[i] != want && wrong++ < 10)
      printf("# correction x-%u-%d-r: %d dead letters, %d expected\n",
             stream->seed, i, reader.copies[i], want);
  }
  if (stream->meters) /* of max, latest and unique_count features */
    assert_true(metered > 0);
  printf("# %d of the refused corrections of metered features\n", metered);
  printf("# %d corrections applied, %d refused\n", stream->corrections_applied,
         stream->corrections_refused);
  assert_int_equal(refused, stream->corrections_refused);
  if (wrong || reader.others)
    fail_msg("%d refused corrections not dead-lettered exactly once, %d other "
             "dead letters of the stream",
             wrong, reader.others);
  tly_codec_destroy(reader.codec);
  free(reader.copies);
}

int th_crash_loop(th_run_t *run, th_stream_t *stream, pthread_t producer,
                  const char *state_dir, const char *const *extra,
                  int min_kills, unsigned *seed, int *self_kills) {
  char env[64];
  int kills = 0;
  *self_kills = 0;
  while (kills < min_kills || !atomic_load(&stream->done)) {
    int64_t deadline = th_now_ms() + 60000;
    int rc = -1;
    while (rc < 0 && th_now_ms() < deadline) {
      if (th_metric_sum(run->port, "tally_events_folded_total") > 0 ||
          (atomic_load(&stream->done) &&
           th_metric_sum(run->port, "tally_ready") > 0))
        break;
      rc = th_wait_exit(run->pid, 20);
    }
    /* Every third run dies by its own hand after a few alert acks, between
     * Kafka's acknowledgement and the outbox delete; the others are killed
     * from outside at a random moment. */
    if (rc < 0)
      rc = th_wait_exit(run->pid,
                        kills % 3 == 2 ? 4000 : (int)(rand_r(seed) % 1200));
    if (rc == 128 + 9) {
      (*self_kills)++;
    } else {
      assert_int_equal(rc, -1); /* still running: it must not exit alone */
      th_kill9(run->pid);
    }
    kills++;
    if (kills % 3 == 2) {
      snprintf(env, sizeof(env), "TALLY_FAULT_KILL_AFTER_ACKS=%u",
               1 + rand_r(seed) % 5);
      th_run_env = env;
    }
    assert_int_equal(th_run_start(run, stream->bootstrap, state_dir, extra), 0);
  }
  /* The last run must be able to finish: if it was started to die after
   * an ack, let it (or kill it) and start a clean one. */
  if (kills % 3 == 2) {
    if (th_wait_exit(run->pid, 4000) < 0)
      th_kill9(run->pid);
    assert_int_equal(th_run_start(run, stream->bootstrap, state_dir, extra), 0);
  }
  pthread_join(producer, NULL);
  if (stream->error[0])
    fail_msg("%s", stream->error);
  return kills;
}
