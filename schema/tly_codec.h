/*
 * tly_codec.h - Avro binary <-> tly_event_t, with the Confluent wire framing.
 *
 * A framed message is: magic byte 0, the schema id as 4 bytes big-endian,
 * then the Avro binary encoding of the envelope (schema/tally_event.avsc,
 * compiled into the binary). Built on avro-c. Decoding never trusts its
 * input: truncated, corrupted or oversized bytes give an error, never a
 * crash and never an allocation larger than the input justifies.
 *
 * A codec is not thread-safe; use one per thread.
 */
#ifndef TLY_CODEC_H
#define TLY_CODEC_H

#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_CODEC_DEFAULT_SCHEMA_ID 1
/* Framing header: magic byte + 4-byte schema id. */
#define TLY_CODEC_HEADER_SIZE 5

typedef struct tly_codec tly_codec_t;

/* The envelope schema JSON compiled into the binary (NUL-terminated). */
extern const char tly_event_schema_json[];

/*
 * Creates a codec for the envelope schema registered under schema_id.
 * Returns NULL and fills errstr on failure. Free with tly_codec_destroy().
 */
tly_codec_t *tly_codec_new(int32_t schema_id, char *errstr, size_t errstr_size);
void tly_codec_destroy(tly_codec_t *codec);

/*
 * Encodes event (framed). On success returns 0 and sets *out / *out_len to a
 * buffer owned by the codec, valid until the next call on this codec; copy it
 * if you need it longer. Returns -1 and fills errstr when the event is not
 * valid (missing event_id, subject id or feature, negative quantity, ...).
 */
int tly_codec_encode(tly_codec_t *codec, const tly_event_t *event,
                     const void **out, size_t *out_len, char *errstr,
                     size_t errstr_size);

/*
 * Decodes a framed message into *event (which must be zeroed or cleared; the
 * caller owns the result and frees it with tly_event_clear()). Returns 0, or
 * -1 with errstr saying why (bad magic byte, unknown schema id, truncated or
 * corrupt Avro, trailing bytes, invalid field). On error *event is left
 * cleared.
 */
int tly_codec_decode(tly_codec_t *codec, const void *data, size_t len,
                     tly_event_t *event, char *errstr, size_t errstr_size);

/*
 * The same decode (same messages accepted, same errors) without copies:
 * the event's strings and properties point into memory the codec owns,
 * valid until the next decode on this codec. Do not tly_event_clear() such
 * an event; just drop it. About four times cheaper: what the processor
 * uses for each record it folds.
 */
int tly_codec_decode_view(tly_codec_t *codec, const void *data, size_t len,
                          tly_event_t *event, char *errstr, size_t errstr_size);

/* ---- schema ids: the registry's view ---------------------------------
 *
 * Records framed with the codec's own id decode directly. A record framed
 * with another id decodes once the writer schema registered under that id
 * was added (a schema registry has it; the codec never asks one itself):
 * tally's schema under another id decodes directly too, a compatible one
 * (an added field, an extra body type, other field order) is resolved
 * against tally's schema by field name (tly_resolve.h says what avro-c
 * resolves), and an incompatible one is refused with the reason, as is an
 * id marked refused. At most TLY_RESOLVE_MAX_IDS (64) other ids are kept;
 * the least recently used is forgotten and must be added again. */

/* The schema id of a Confluent-framed message, or -1 when data is not
 * framed (shorter than the header, or a magic byte other than 0). */
int64_t tly_codec_frame_id(const void *data, size_t len);
/* The id the codec frames with (and decodes directly). */
int32_t tly_codec_schema_id(const tly_codec_t *codec);
/* 1 when a record framed with id decodes or is refused for a recorded
 * reason; 0 when id is unknown (ask the registry, then add or refuse). */
int tly_codec_knows_id(tly_codec_t *codec, int32_t id);
/* Adds the writer schema registered under id: 0 when its records decode,
 * -1 with errstr when they are refused (the schema does not parse, or is
 * not compatible with tally's: the reason is remembered for id). */
int tly_codec_add_writer_schema(tly_codec_t *codec, int32_t id,
                                const char *schema_json, size_t schema_len,
                                char *errstr, size_t errstr_size);
/* Refuses records framed with id, with reason (e.g. the registry answered
 * that the id does not exist). 0 or -1. */
int tly_codec_refuse_id(tly_codec_t *codec, int32_t id, const char *reason);

#endif
