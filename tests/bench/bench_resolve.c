/*
 * bench_resolve.c - the cost of decoding a record by schema id
 * (tly_codec_decode_view), printed, never asserted:
 *   - framed with the codec's own id: the direct decode, the ceiling;
 *   - a registry's id for tally's own schema: the same decode;
 *   - a registry's id for an evolved writer schema (a field added with a
 *     default): read through avro-c's resolved writer, encoded again in
 *     tally's schema, then the direct decode (schema/tly_resolve.h).
 * Usage: bench_resolve [RECORDS] (default 300000 per case).
 */
#include "tly_codec.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int records = argc > 1 ? atoi(argv[1]) : 300000;
  char errstr[512];
  tly_codec_t *encoder = tly_codec_new(1, errstr, sizeof(errstr));
  tly_codec_t *decoder = tly_codec_new(1, errstr, sizeof(errstr));
  if (!encoder || !decoder || records <= 0) {
    fprintf(stderr, "bench_resolve: %s\n", errstr);
    return 1;
  }
  tly_property_t properties[2] = {{"region", "eu"}, {"team", "core"}};
  tly_event_t event = {0};
  event.event_id = "evt-123456";
  event.occurred_at_ms = 1796393589000;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = "u-42";
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.quantity = 5;
  event.body.usage.unit = "call";
  event.body.usage.properties = properties;
  event.body.usage.property_count = 2;
  const void *bytes = NULL;
  size_t len = 0;
  if (tly_codec_encode(encoder, &event, &bytes, &len, errstr, sizeof(errstr)))
    return 1;
  unsigned char own[512], same[512], evolved[512];
  memcpy(own, bytes, len);
  memcpy(same, bytes, len);
  same[4] = 7;
  memcpy(evolved, bytes, len);
  evolved[4] = 9;
  /* The added field is UsageRecorded's last: its bytes end the record. */
  memcpy(evolved + len,
         "\x0e"
         "eu-west",
         8);

  json_t *schema = json_loads(tly_event_schema_json, 0, NULL);
  json_t *body = json_object_get(
      json_array_get(json_object_get(schema, "fields"), 3), "type");
  json_array_append_new(json_object_get(json_array_get(body, 0), "fields"),
                        json_pack("{s:s,s:s,s:s}", "name", "region", "type",
                                  "string", "default", "eu"));
  char *evolved_schema = json_dumps(schema, JSON_COMPACT);
  json_decref(schema);
  if (tly_codec_add_writer_schema(decoder, 7, tly_event_schema_json,
                                  strlen(tly_event_schema_json), errstr,
                                  sizeof(errstr)) ||
      tly_codec_add_writer_schema(decoder, 9, evolved_schema,
                                  strlen(evolved_schema), errstr,
                                  sizeof(errstr))) {
    fprintf(stderr, "bench_resolve: %s\n", errstr);
    return 1;
  }
  struct {
    const char *name;
    const unsigned char *bytes;
    size_t len;
  } cases[] = {{"own id (direct, the ceiling)", own, len},
               {"registry id, tally's schema", same, len},
               {"registry id, evolved (resolved)", evolved, len + 8}};
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    tly_event_t view;
    double start = now_s();
    for (int i = 0; i < records; i++)
      if (tly_codec_decode_view(decoder, cases[c].bytes, cases[c].len, &view,
                                errstr, sizeof(errstr))) {
        fprintf(stderr, "bench_resolve: %s\n", errstr);
        return 1;
      }
    double seconds = now_s() - start;
    printf("%-34s %6.2f M records/s (%5.0f ns a record)\n", cases[c].name,
           records / seconds / 1e6, seconds / records * 1e9);
  }
  free(evolved_schema);
  tly_codec_destroy(encoder);
  tly_codec_destroy(decoder);
  return 0;
}
