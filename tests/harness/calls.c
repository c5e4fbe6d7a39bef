/*
 * calls.c - a simple stream of api_calls events and its check, for tests
 * that need good events beside something else (dead letters, a hold):
 * th_produce_calls and th_check_calls (harness.h).
 */
#include "harness.h"

#include "tally_producer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

long long th_produce_calls(const char *bootstrap, int round, int count,
                           int subjects, long long *per_subject) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[32];
  long long total = 0;
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer)
    return -1;
  for (int i = 0; i < count; i++) {
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "good-%02d", i % subjects);
    snprintf(event_id, sizeof(event_id), "g-%d-%d", round, i);
    event.event_id = event_id;
    event.occurred_at_ms = TH_CALLS_AT_MS;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body.usage.feature = "api_calls";
    event.body.usage.unit = "call";
    event.body.usage.quantity = 1 + i % 7;
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      fprintf(stderr, "# th_produce_calls: %s\n", errstr);
      total = -1;
      break;
    }
    per_subject[i % subjects] += 1 + i % 7;
    total += 1 + i % 7;
  }
  if (tally_producer_flush(producer, 30000) && total >= 0)
    total = -1;
  tally_producer_destroy(producer);
  return total;
}

long long th_check_calls(int port, int subjects, const long long *per_subject) {
  long long sum = 0;
  for (int s = 0; s < subjects; s++) {
    char path[128], *body = NULL;
    long status = 0;
    snprintf(path, sizeof(path), "/v1/subjects/user:good-%02d/usage?at=%lld", s,
             (long long)TH_CALLS_AT_MS);
    if (th_http_get(port, path, &status, &body) || status != 200) {
      fprintf(stderr, "# th_check_calls: %s answered %ld\n", path, status);
      free(body);
      return -1;
    }
    json_t *json = json_loads(body, 0, NULL);
    free(body);
    json_t *row =
        json_object_get(json_object_get(json, "features"), "api_calls");
    long long quantity = json_integer_value(json_object_get(row, "quantity"));
    json_decref(json);
    if (quantity != per_subject[s]) {
      fprintf(stderr, "# th_check_calls: user:good-%02d has %lld, sent %lld\n",
              s, quantity, per_subject[s]);
      return -1;
    }
    sum += quantity;
  }
  return sum;
}
