/*
 * send_usage.c - the client library in one page: a service records that a
 * user spent AI tokens, and learns whether Kafka accepted it.
 *
 *   build/send_usage 127.0.0.1:9092 alice
 */
#include "tally_producer.h"

#include <stdio.h>

static void on_delivery(void *opaque, void *msg_opaque, int error,
                        const char *errstr) {
  (void)opaque, (void)msg_opaque;
  if (error)
    fprintf(stderr, "usage event lost: %s\n", errstr);
  else
    printf("usage event stored in Kafka\n");
}

int main(int argc, char **argv) {
  char errstr[512];
  if (argc != 3) {
    fprintf(stderr, "usage: %s BROKERS USER_ID\n", argv[0]);
    return 2;
  }
  tally_producer_conf_t conf = {.brokers = argv[1], .on_delivery = on_delivery};
  tally_producer_t *producer = tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    fprintf(stderr, "%s\n", errstr);
    return 1;
  }
  tly_event_t event = {
      .event_id = "req-7f3a",  /* unique per request: retries are deduplicated */
      .occurred_at_ms = 1763892000000,
      .subject_kind = TLY_SUBJECT_USER,
      .subject_id = argv[2],
      .body_kind = TLY_BODY_USAGE_RECORDED,
      .body.usage = {.feature = "ai_tokens",
                     .quantity = 1500,
                     .unit = "token",
                     .has_ai = 1,
                     .ai = {"openai", "gpt-4o", 1200, 300}},
  };
  if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)))
    fprintf(stderr, "rejected: %s\n", errstr);
  int rc = tally_producer_flush(producer, 10000);
  tally_producer_destroy(producer);
  return rc ? 1 : 0;
}
