/*
 * tly_alert.h - alerts the fold emits, and their Avro codec.
 * Owns the alert model and its bytes; never does I/O, never decides when
 * an alert fires (the fold does).
 *
 * Alerts go to the alerts topic (schema/tally_alert.avsc, Confluent framing
 * with schema id TLY_ALERT_SCHEMA_ID or the one a schema registry assigned,
 * keyed by subject "kind:id") through
 * the outbox. alert_id is deterministic: the same log gives the same ids on
 * every replay, which is how recovery recognises alerts Kafka already has.
 */
#ifndef TLY_ALERT_H
#define TLY_ALERT_H

#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_ALERT_SCHEMA_ID 2

typedef enum {
  TLY_ALERT_LIMIT_WARNING = 0,
  TLY_ALERT_LIMIT_EXCEEDED,
  TLY_ALERT_BILLING_CYCLE_END,
  TLY_ALERT_PAYMENT_FAILED,
  TLY_ALERT_SUBSCRIPTION_CANCELED,
  /* Not from the fold: the Stripe usage emitter could not report a delta
   * (Stripe refused it, or its window is beyond Stripe's 35 days). */
  TLY_ALERT_STRIPE_REPORT_FAILED,
  TLY_ALERT__COUNT
} tly_alert_type_t;

typedef struct {
  char *alert_id;
  tly_alert_type_t type;
  tly_subject_kind_t subject_kind;
  char *subject_id;
  int64_t occurred_at_ms; /* event time of the event that caused it */
  int64_t cycle_start_ms;
  int64_t cycle_end_ms;
  char *plan;
  char *feature;             /* "" when not about one feature; "credits" for
                                the plan's credit quota */
  int32_t threshold_percent; /* 0 when not a threshold alert */
  int64_t used;              /* units (or credits) used in the cycle */
  int64_t limit;             /* -1 when unlimited / not applicable */
  int hard;                  /* the limit blocks */
  int64_t credits_used;      /* in the cycle */
  int64_t cost_micros;       /* in the cycle, base price excluded */
  char *detail;              /* free text, may be "" */
} tly_alert_t;

/* "limit_warning", ...; NULL when out of range. */
const char *tly_alert_type_name(tly_alert_type_t type);
/* Frees the strings and zeroes the alert. */
void tly_alert_clear(tly_alert_t *alert);

typedef struct tly_alert_codec tly_alert_codec_t;
extern const char tly_alert_schema_json[];

tly_alert_codec_t *tly_alert_codec_new(char *errstr, size_t errstr_size);
void tly_alert_codec_destroy(tly_alert_codec_t *codec);
/* The schema id encode frames with (a registry's; default
 * TLY_ALERT_SCHEMA_ID). Decode accepts any id: it reads only tally's own
 * alerts, whose schema is this one whatever id framed them. */
void tly_alert_codec_set_schema_id(tly_alert_codec_t *codec, int32_t id);
/* Framed encoding into a buffer owned by the codec (valid until the next
 * call). 0 or -1 with errstr. */
int tly_alert_encode(tly_alert_codec_t *codec, const tly_alert_t *alert,
                     const void **out, size_t *out_len, char *errstr,
                     size_t errstr_size);
/* Decodes a framed alert into *alert (zeroed; caller clears). 0 or -1. */
int tly_alert_decode(tly_alert_codec_t *codec, const void *data, size_t len,
                     tly_alert_t *alert, char *errstr, size_t errstr_size);

#endif
