/*
 * tly_alert.c - alerts the fold emits, as Avro (schema/tally_alert.avsc)
 * with Confluent framing under schema id TLY_ALERT_SCHEMA_ID.
 *
 * Built like the event codec (tly_codec.c) and on the same plumbing
 * (tly_avro.c): one reused avro value, reader and encode buffer per codec,
 * fields resolved by name when the codec is created, and decoding only
 * after tly_avro_validate() has walked the bytes, so that hostile or
 * truncated input cannot make avro-c allocate more than the input's size
 * or read past it. Alerts are read back by the emitter (from the outbox),
 * by recovery (from the alerts topic, to drop what Kafka already has) and
 * by any analytics consumer; all of them may meet bytes this process did
 * not write.
 *
 * Rules shared by encode and decode: non-empty alert_id, type and subject
 * in range (a customer subject, never system), threshold_percent, used,
 * credits_used and cost_micros >= 0, limit >= -1 (-1: unlimited), strings
 * valid UTF-8. Optional strings (plan, feature, detail) are "" rather than
 * NULL after decode.
 */
#include "tly_alert.h"
#include "tly_avro.h"

#include <avro.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const alert_type_names[TLY_ALERT__COUNT] = {
    [TLY_ALERT_LIMIT_WARNING] = "limit_warning",
    [TLY_ALERT_LIMIT_EXCEEDED] = "limit_exceeded",
    [TLY_ALERT_BILLING_CYCLE_END] = "billing_cycle_end",
    [TLY_ALERT_PAYMENT_FAILED] = "payment_failed",
    [TLY_ALERT_SUBSCRIPTION_CANCELED] = "subscription_canceled",
    [TLY_ALERT_STRIPE_REPORT_FAILED] = "stripe_report_failed",
};

typedef struct {
  size_t alert_id, type, subject, subject_kind, subject_id;
  size_t occurred_at, cycle_start, cycle_end, plan, feature;
  size_t threshold_percent, used, limit, hard, credits_used, cost_micros;
  size_t detail;
} alert_layout_t;

struct tly_alert_codec {
  tly_avro_base_t base; /* schema, shape, reused value, reader, output */
  alert_layout_t layout;
  int32_t schema_id; /* framed with; TLY_ALERT_SCHEMA_ID unless set */
};

const char *tly_alert_type_name(tly_alert_type_t type) {
  if ((int)type < 0 || type >= TLY_ALERT__COUNT)
    return NULL;
  return alert_type_names[type];
}

void tly_alert_clear(tly_alert_t *alert) {
  if (!alert)
    return;
  free(alert->alert_id);
  free(alert->subject_id);
  free(alert->plan);
  free(alert->feature);
  free(alert->detail);
  memset(alert, 0, sizeof(*alert));
}

/* ------------------------------------------------------------------ */
/* Rules                                                               */
/* ------------------------------------------------------------------ */

static int require_at_least(int64_t value, int64_t minimum, const char *field,
                            char *errstr, size_t errstr_size) {
  if (value >= minimum)
    return 0;
  return tly_avro_fail(errstr, errstr_size,
                       "field '%s': must be >= %" PRId64 " (got %" PRId64 ")",
                       field, minimum, value);
}

static int alert_validate(const tly_alert_t *alert, char *errstr,
                          size_t errstr_size) {
  char reason[256];

  if (!alert->alert_id || !*alert->alert_id)
    return tly_avro_fail(errstr, errstr_size,
                         "field 'alert_id': must be a non-empty string");
  if (!tly_alert_type_name(alert->type))
    return tly_avro_fail(errstr, errstr_size,
                         "field 'type': alert type %d is out of range",
                         (int)alert->type);
  if (tly_subject_validate(alert->subject_kind, alert->subject_id, reason,
                           sizeof(reason)))
    return tly_avro_fail(errstr, errstr_size, "field 'subject': %s", reason);
  /* Alerts are about customers; ticks only make them fire. */
  if (alert->subject_kind == TLY_SUBJECT_SYSTEM)
    return tly_avro_fail(errstr, errstr_size,
                         "field 'subject': alerts are never about the "
                         "system subject");
  if (require_at_least(alert->threshold_percent, 0, "threshold_percent", errstr,
                       errstr_size) ||
      require_at_least(alert->used, 0, "used", errstr, errstr_size) ||
      require_at_least(alert->limit, -1, "limit", errstr, errstr_size) ||
      require_at_least(alert->credits_used, 0, "credits_used", errstr,
                       errstr_size) ||
      require_at_least(alert->cost_micros, 0, "cost_micros", errstr,
                       errstr_size))
    return -1;
  return 0;
}

static int alert_check_text(const tly_alert_t *alert, char *errstr,
                            size_t errstr_size) {
  return tly_avro_check_text(alert->alert_id, "alert_id", errstr,
                             errstr_size) ||
         tly_avro_check_text(alert->subject_id, "subject.id", errstr,
                             errstr_size) ||
         tly_avro_check_text(alert->plan, "plan", errstr, errstr_size) ||
         tly_avro_check_text(alert->feature, "feature", errstr, errstr_size) ||
         tly_avro_check_text(alert->detail, "detail", errstr, errstr_size);
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                           */
/* ------------------------------------------------------------------ */

static int layout_resolve(tly_alert_codec_t *codec, char *errstr,
                          size_t errstr_size) {
  alert_layout_t *l = &codec->layout;
  avro_schema_t root = codec->base.schema, type = NULL, subject = NULL;
  avro_schema_t kind = NULL;
  const char *kind_names[TLY_SUBJECT__COUNT];

  if (!is_avro_record(root))
    return tly_avro_fail(errstr, errstr_size, "schema: alert is not a record");
  if (tly_avro_layout_field(root, "alert_id", AVRO_STRING, &l->alert_id, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(root, "type", AVRO_ENUM, &l->type, &type, errstr,
                            errstr_size) ||
      tly_avro_layout_field(root, "subject", AVRO_RECORD, &l->subject, &subject,
                            errstr, errstr_size) ||
      tly_avro_layout_field(subject, "kind", AVRO_ENUM, &l->subject_kind, &kind,
                            errstr, errstr_size) ||
      tly_avro_layout_field(subject, "id", AVRO_STRING, &l->subject_id, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(root, "occurred_at", AVRO_INT64, &l->occurred_at,
                            NULL, errstr, errstr_size) ||
      tly_avro_layout_field(root, "cycle_start", AVRO_INT64, &l->cycle_start,
                            NULL, errstr, errstr_size) ||
      tly_avro_layout_field(root, "cycle_end", AVRO_INT64, &l->cycle_end, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(root, "plan", AVRO_STRING, &l->plan, NULL, errstr,
                            errstr_size) ||
      tly_avro_layout_field(root, "feature", AVRO_STRING, &l->feature, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(root, "threshold_percent", AVRO_INT32,
                            &l->threshold_percent, NULL, errstr, errstr_size) ||
      tly_avro_layout_field(root, "used", AVRO_INT64, &l->used, NULL, errstr,
                            errstr_size) ||
      tly_avro_layout_field(root, "limit", AVRO_INT64, &l->limit, NULL, errstr,
                            errstr_size) ||
      tly_avro_layout_field(root, "hard", AVRO_BOOLEAN, &l->hard, NULL, errstr,
                            errstr_size) ||
      tly_avro_layout_field(root, "credits_used", AVRO_INT64, &l->credits_used,
                            NULL, errstr, errstr_size) ||
      tly_avro_layout_field(root, "cost_micros", AVRO_INT64, &l->cost_micros,
                            NULL, errstr, errstr_size) ||
      tly_avro_layout_field(root, "detail", AVRO_STRING, &l->detail, NULL,
                            errstr, errstr_size))
    return -1;
  /* Both C enums are used as Avro enum indexes directly. */
  for (int i = 0; i < TLY_SUBJECT__COUNT; i++)
    kind_names[i] = tly_subject_kind_name((tly_subject_kind_t)i);
  if (tly_avro_check_symbols(type, "AlertType", alert_type_names,
                             TLY_ALERT__COUNT, errstr, errstr_size) ||
      tly_avro_check_symbols(kind, "SubjectKind", kind_names,
                             TLY_SUBJECT__COUNT, errstr, errstr_size))
    return -1;
  return 0;
}

tly_alert_codec_t *tly_alert_codec_new(char *errstr, size_t errstr_size) {
  tly_alert_codec_t *codec = calloc(1, sizeof(*codec));

  if (!codec) {
    tly_avro_fail(errstr, errstr_size, "out of memory");
    return NULL;
  }
  codec->schema_id = TLY_ALERT_SCHEMA_ID;
  if (tly_avro_base_init(&codec->base, tly_alert_schema_json,
                         "the alert schema", errstr, errstr_size) ||
      layout_resolve(codec, errstr, errstr_size))
    goto fail;
  return codec;

fail:
  tly_alert_codec_destroy(codec);
  return NULL;
}

void tly_alert_codec_set_schema_id(tly_alert_codec_t *codec, int32_t id) {
  codec->schema_id = id;
}

void tly_alert_codec_destroy(tly_alert_codec_t *codec) {
  if (!codec)
    return;
  tly_avro_base_free(&codec->base);
  free(codec);
}

/* ------------------------------------------------------------------ */
/* Encode                                                              */
/* ------------------------------------------------------------------ */

static int set_enum(avro_value_t *record, size_t index, int symbol) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_set_enum(&field, symbol);
}

static int fill_value(tly_alert_codec_t *codec, const tly_alert_t *alert) {
  const alert_layout_t *l = &codec->layout;
  avro_value_t *root = &codec->base.value;
  avro_value_t subject, hard;

  return avro_value_reset(root) ||
         tly_avro_set_string(root, l->alert_id, alert->alert_id) ||
         set_enum(root, l->type, (int)alert->type) ||
         avro_value_get_by_index(root, l->subject, &subject, NULL) ||
         set_enum(&subject, l->subject_kind, (int)alert->subject_kind) ||
         tly_avro_set_string(&subject, l->subject_id, alert->subject_id) ||
         tly_avro_set_long(root, l->occurred_at, alert->occurred_at_ms) ||
         tly_avro_set_long(root, l->cycle_start, alert->cycle_start_ms) ||
         tly_avro_set_long(root, l->cycle_end, alert->cycle_end_ms) ||
         tly_avro_set_string(root, l->plan, alert->plan) ||
         tly_avro_set_string(root, l->feature, alert->feature) ||
         tly_avro_set_int(root, l->threshold_percent,
                          alert->threshold_percent) ||
         tly_avro_set_long(root, l->used, alert->used) ||
         tly_avro_set_long(root, l->limit, alert->limit) ||
         avro_value_get_by_index(root, l->hard, &hard, NULL) ||
         avro_value_set_boolean(&hard, alert->hard ? 1 : 0) ||
         tly_avro_set_long(root, l->credits_used, alert->credits_used) ||
         tly_avro_set_long(root, l->cost_micros, alert->cost_micros) ||
         tly_avro_set_string(root, l->detail, alert->detail);
}

int tly_alert_encode(tly_alert_codec_t *codec, const tly_alert_t *alert,
                     const void **out, size_t *out_len, char *errstr,
                     size_t errstr_size) {
  if (!codec || !alert || !out || !out_len)
    return tly_avro_fail(errstr, errstr_size, "encode: missing argument");
  if (alert_validate(alert, errstr, errstr_size) ||
      alert_check_text(alert, errstr, errstr_size))
    return -1;
  if (fill_value(codec, alert))
    return tly_avro_fail(errstr, errstr_size, "Avro encode failed: %s",
                         avro_strerror());
  return tly_avro_out_write(&codec->base.out, codec->schema_id,
                            &codec->base.value, out, out_len, errstr,
                            errstr_size);
}

/* ------------------------------------------------------------------ */
/* Decode                                                              */
/* ------------------------------------------------------------------ */

static int get_enum(avro_value_t *record, size_t index, int *out) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_get_enum(&field, out);
}

static int extract_alert(tly_alert_codec_t *codec, tly_alert_t *alert) {
  const alert_layout_t *l = &codec->layout;
  avro_value_t *root = &codec->base.value;
  avro_value_t subject, hard;
  int type = 0, kind = 0, hard_value = 0;

  if (tly_avro_get_string(root, l->alert_id, &alert->alert_id) ||
      get_enum(root, l->type, &type) ||
      avro_value_get_by_index(root, l->subject, &subject, NULL) ||
      get_enum(&subject, l->subject_kind, &kind) ||
      tly_avro_get_string(&subject, l->subject_id, &alert->subject_id) ||
      tly_avro_get_long(root, l->occurred_at, &alert->occurred_at_ms) ||
      tly_avro_get_long(root, l->cycle_start, &alert->cycle_start_ms) ||
      tly_avro_get_long(root, l->cycle_end, &alert->cycle_end_ms) ||
      tly_avro_get_string(root, l->plan, &alert->plan) ||
      tly_avro_get_string(root, l->feature, &alert->feature) ||
      tly_avro_get_int(root, l->threshold_percent, &alert->threshold_percent) ||
      tly_avro_get_long(root, l->used, &alert->used) ||
      tly_avro_get_long(root, l->limit, &alert->limit) ||
      avro_value_get_by_index(root, l->hard, &hard, NULL) ||
      avro_value_get_boolean(&hard, &hard_value) ||
      tly_avro_get_long(root, l->credits_used, &alert->credits_used) ||
      tly_avro_get_long(root, l->cost_micros, &alert->cost_micros) ||
      tly_avro_get_string(root, l->detail, &alert->detail))
    return -1;
  /* The walk range-checked both enums; the casts are safe. */
  alert->type = (tly_alert_type_t)type;
  alert->subject_kind = (tly_subject_kind_t)kind;
  alert->hard = hard_value ? 1 : 0;
  return 0;
}

int tly_alert_decode(tly_alert_codec_t *codec, const void *data, size_t len,
                     tly_alert_t *alert, char *errstr, size_t errstr_size) {
  const unsigned char *bytes = data;
  char reason[256];

  if (!codec || !alert)
    return tly_avro_fail(errstr, errstr_size, "decode: missing argument");
  tly_alert_clear(alert);
  /* Any id: only tally's own alerts are decoded (its history), and every
   * id tally ever framed them with (2, or a registry's) names this one
   * schema. */
  int32_t id =
      len >= TLY_AVRO_HEADER_SIZE && bytes
          ? (int32_t)((uint32_t)bytes[1] << 24 | (uint32_t)bytes[2] << 16 |
                      (uint32_t)bytes[3] << 8 | (uint32_t)bytes[4])
          : codec->schema_id;
  if (tly_avro_check_header(bytes, len, id, errstr, errstr_size))
    return -1;
  bytes += TLY_AVRO_HEADER_SIZE;
  len -= TLY_AVRO_HEADER_SIZE;
  if (tly_avro_validate(&codec->base.root, bytes, len, NULL, NULL, errstr,
                        errstr_size))
    return -1;
  avro_reader_memory_set_source(codec->base.reader, (const char *)bytes,
                                (int64_t)len);
  if (avro_value_read(codec->base.reader, &codec->base.value)) {
    tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                  avro_strerror());
    goto fail;
  }
  if (extract_alert(codec, alert)) {
    /* After a successful walk only memory exhaustion lands here. */
    tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                  avro_strerror());
    goto fail;
  }
  if (alert_validate(alert, reason, sizeof(reason))) {
    tly_avro_fail(errstr, errstr_size, "invalid alert: %s", reason);
    goto fail;
  }
  return 0;

fail:
  tly_alert_clear(alert);
  return -1;
}
