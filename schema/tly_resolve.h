/*
 * tly_resolve.h - writer schemas by schema id, resolved against one of
 * tally's reader schemas (Avro schema resolution, fields matched by name).
 * Internal to schema/: the event codec (tly_codec.c) uses it for records
 * framed with a schema id that is not its own. Owns the parsed writer
 * schemas and their resolvers; never does I/O (the schema text comes from
 * whoever asked a registry) and never decides what an event means.
 *
 * An id is one of:
 *   - SAME: the writer schema is tally's own (avro_schema_equal), so the
 *     codec decodes the payload directly, as for its own id;
 *   - TRANSLATE: a different but compatible writer schema (a field added,
 *     a body type tally does not know, fields in another order): the
 *     payload is walked against the writer's shape (the same hostile-input
 *     checks as tly_avro_validate), read through avro-c's resolved writer
 *     into a value of tally's schema, and encoded again in tally's schema,
 *     so the codec's own decode takes it from there;
 *   - REFUSED: the schema does not parse, is not compatible, or the
 *     registry said the id does not exist; every record framed with it is
 *     refused with the reason that was recorded.
 *
 * What avro-c 1.11 resolves (checked by tests/unit/schema/test_resolve.c):
 * writer-only fields are skipped, fields are matched by name, union
 * branches by record name (a branch tally lacks fails only for records that
 * use it), int is promoted to long. A reader field missing from the writer
 * is refused even when it has a default (avro-c does not fill defaults),
 * and so is an enum whose symbols are not tally's in tally's order (avro-c
 * would copy the index; checked here by name).
 *
 * Bounded: at most TLY_RESOLVE_MAX_IDS ids (the least recently used is
 * forgotten, and looked up again when seen), a schema text of at most
 * TLY_RESOLVE_SCHEMA_MAX bytes, a reason of at most 319 bytes.
 */
#ifndef TLY_RESOLVE_H
#define TLY_RESOLVE_H

#include "tly_avro.h"

#include <avro.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_RESOLVE_MAX_IDS 64
#define TLY_RESOLVE_SCHEMA_MAX (256 * 1024)

typedef enum {
  TLY_RESOLVE_UNKNOWN = 0,
  TLY_RESOLVE_SAME,
  TLY_RESOLVE_TRANSLATE,
  TLY_RESOLVE_REFUSED
} tly_resolve_kind_t;

typedef struct tly_resolver tly_resolver_t;

/*
 * A resolver for reader (not owned: it must outlive the resolver), named
 * `what` in reasons ("tally's event schema"). counted_path, when not NULL,
 * is a NULL-terminated list of names leading to a map whose entries are
 * counted in the writer's bytes (a record field by name, a union branch by
 * record name), so the caller can refuse duplicate keys that avro-c merges.
 * NULL when out of memory.
 */
tly_resolver_t *tly_resolver_new(avro_schema_t reader, const char *what,
                                 const char *const *counted_path);
void tly_resolver_destroy(tly_resolver_t *resolver);

/* What the resolver knows of id; with REFUSED, *reason (when not NULL)
 * points at the recorded reason (valid until the next add or refuse). */
tly_resolve_kind_t tly_resolver_lookup(tly_resolver_t *resolver, int32_t id,
                                       const char **reason);

/*
 * Adds the writer schema registered under id. Returns SAME or TRANSLATE,
 * or REFUSED with errstr (and the id is remembered as refused with that
 * reason: "schema id 9 is not compatible with tally's event schema: ...").
 * -1 only when out of memory (nothing remembered).
 */
int tly_resolver_add(tly_resolver_t *resolver, int32_t id,
                     const char *schema_json, size_t schema_len, char *errstr,
                     size_t errstr_size);

/* Remembers id as refused with reason. 0, or -1 when out of memory. */
int tly_resolver_refuse(tly_resolver_t *resolver, int32_t id,
                        const char *reason);

/*
 * For a TRANSLATE id: payload (the Avro bytes after the frame header) into
 * reader_value (a generic value of the reader schema), then encoded into
 * out framed with out_id (*data, *len point into out). *counted gets the
 * counted map's entries in the writer's bytes (0 when the record has
 * none; SIZE_MAX when the writer's schema has no such map). 0, or -1 with
 * errstr (truncated or corrupt bytes, a union branch the reader lacks, ...).
 */
int tly_resolver_translate(tly_resolver_t *resolver, int32_t id,
                           const unsigned char *payload, size_t len,
                           avro_value_t *reader_value, tly_avro_out_t *out,
                           int32_t out_id, const void **data, size_t *data_len,
                           size_t *counted, char *errstr, size_t errstr_size);

#endif
