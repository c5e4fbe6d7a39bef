/*
 * fuzz_stripe_webhook.c - libFuzzer target for the Stripe webhook intake
 * (http/tly_stripe_webhook.c): the Stripe-Signature header parser and
 * the mapping of Stripe event bodies to tally events. Anyone who can reach
 * the port can send these bytes (the route has no bearer token), so they
 * must never crash, leak or hang.
 *
 * Build and run: scripts/fuzz.sh [seconds].
 *
 * The first byte picks the mode: even, the rest is "header NUL body" and
 * goes through the whole parse as it arrives (almost always refused at the
 * signature); odd, the rest is a body that gets a valid signature first,
 * so the JSON reading and the mapping see every input. Invariants: an error
 * has a 4xx/5xx status and a code; a mapped event is valid by the shared
 * rule book and has an answer; an ignored delivery has one too.
 */
#include "tly_config.h"
#include "tly_stripe_webhook.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW_MS 1800000000000LL

static tly_config_t *config;

static void destroy_config(void) {
  tly_config_free(config);
  config = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  static const char text[] =
      "{\"stripe\": {\"webhook_secrets\": [\"whsec_fuzz\", \"whsec_two\"], "
      "\"prices\": {\"price_pro\": \"professional\", \"price_1\": "
      "\"starter\"}}}";
  config = tly_config_load_text(text, strlen(text), NULL, 0);
  if (!config)
    abort();
  atexit(destroy_config);
  return 0;
}

static void check(const char *header, const char *body, size_t len) {
  tly_event_t event;
  tly_stripe_webhook_info_t info;
  tly_req_error_t err;
  char errstr[256];
  tly_stripe_webhook_result_t result = tly_stripe_webhook_parse(
      config, header, body, len, NOW_MS, &event, &info, &err);
  if (result == TLY_STRIPE_WEBHOOK_ERROR) {
    if (err.status < 400 || err.status > 599 || !err.code[0])
      abort();
    return;
  }
  json_t *answer = tly_stripe_webhook_answer(
      result == TLY_STRIPE_WEBHOOK_EVENT ? &event : NULL, &info);
  if (!answer)
    abort();
  json_decref(answer);
  if (result == TLY_STRIPE_WEBHOOK_EVENT) {
    if (tly_event_validate(&event, errstr, sizeof(errstr)))
      abort();
    tly_event_clear(&event);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  /* A copy with a NUL after it: the parsers get C strings. */
  char *text = malloc(size);
  memcpy(text, data + 1, size - 1);
  text[size - 1] = '\0';
  if (data[0] & 1) {
    char header[128], hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
    tly_stripe_signature_compute("whsec_two", NOW_MS / 1000, text, size - 1,
                                 hex);
    snprintf(header, sizeof(header), "t=%lld,v1=%s", NOW_MS / 1000, hex);
    check(header, text, size - 1);
  } else {
    size_t header_len = strlen(text);
    const char *body = header_len < size - 1 ? text + header_len + 1 : "";
    check(text, body, header_len < size - 1 ? size - 2 - header_len : 0);
  }
  free(text);
  return 0;
}
