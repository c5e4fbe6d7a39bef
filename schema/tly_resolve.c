/*
 * tly_resolve.c - writer schemas by id, resolved against a reader schema
 * (tly_resolve.h).
 *
 * Why translate (read through the resolver, then encode again in tally's
 * schema) rather than teach the codec's direct decoder every writer: the
 * direct decoder, its validation walk and the event's bounds are the one
 * gate every record goes through (tly_record.h); a record of another writer
 * schema reaches it as the same bytes tally's own producers would have
 * written, so nothing downstream has a second path to get wrong. The extra
 * read and write cost only records framed with another writer's id.
 */
#include "tly_resolve.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Schemas nest a handful of levels (tly_avro.c refuses more than 32). */
#define SEARCH_MAX_DEPTH 40
#define REASON_MAX 320

typedef struct {
  int32_t id;
  tly_resolve_kind_t kind; /* UNKNOWN: a free slot */
  uint64_t used;           /* for least-recently-used eviction */
  avro_schema_t writer;
  tly_avro_shape_t shape;
  const tly_avro_shape_t *counted; /* in shape, or NULL */
  avro_value_iface_t *iface;       /* the resolved writer */
  char reason[REASON_MAX];
} entry_t;

struct tly_resolver {
  avro_schema_t reader;
  char what[64];
  const char *const *counted_path;
  avro_reader_t input;
  uint64_t clock;
  entry_t entries[TLY_RESOLVE_MAX_IDS];
};

static void entry_free(entry_t *entry) {
  if (entry->iface)
    avro_value_iface_decref(entry->iface);
  if (entry->writer)
    avro_schema_decref(entry->writer);
  tly_avro_shape_free(&entry->shape);
  memset(entry, 0, sizeof(*entry));
}

tly_resolver_t *tly_resolver_new(avro_schema_t reader, const char *what,
                                 const char *const *counted_path) {
  static const char empty[1] = {0};
  tly_resolver_t *resolver = calloc(1, sizeof(*resolver));
  if (!resolver)
    return NULL;
  resolver->reader = reader;
  snprintf(resolver->what, sizeof(resolver->what), "%s", what);
  resolver->counted_path = counted_path;
  resolver->input = avro_reader_memory(empty, 0);
  if (!resolver->input) {
    free(resolver);
    return NULL;
  }
  return resolver;
}

void tly_resolver_destroy(tly_resolver_t *resolver) {
  if (!resolver)
    return;
  for (size_t i = 0; i < TLY_RESOLVE_MAX_IDS; i++)
    entry_free(&resolver->entries[i]);
  avro_reader_free(resolver->input);
  free(resolver);
}

static entry_t *find(tly_resolver_t *resolver, int32_t id) {
  for (size_t i = 0; i < TLY_RESOLVE_MAX_IDS; i++)
    if (resolver->entries[i].kind != TLY_RESOLVE_UNKNOWN &&
        resolver->entries[i].id == id)
      return &resolver->entries[i];
  return NULL;
}

/* The slot for id: its own, a free one, or the least recently used one
 * (forgotten). */
static entry_t *slot(tly_resolver_t *resolver, int32_t id) {
  entry_t *entry = find(resolver, id), *oldest = NULL;
  if (!entry)
    for (size_t i = 0; i < TLY_RESOLVE_MAX_IDS && !entry; i++) {
      entry_t *candidate = &resolver->entries[i];
      if (candidate->kind == TLY_RESOLVE_UNKNOWN)
        entry = candidate;
      else if (!oldest || candidate->used < oldest->used)
        oldest = candidate;
    }
  if (!entry)
    entry = oldest;
  entry_free(entry);
  entry->id = id;
  entry->used = ++resolver->clock;
  return entry;
}

tly_resolve_kind_t tly_resolver_lookup(tly_resolver_t *resolver, int32_t id,
                                       const char **reason) {
  entry_t *entry = resolver ? find(resolver, id) : NULL;
  if (!entry)
    return TLY_RESOLVE_UNKNOWN;
  entry->used = ++resolver->clock;
  if (reason)
    *reason = entry->reason;
  return entry->kind;
}

int tly_resolver_refuse(tly_resolver_t *resolver, int32_t id,
                        const char *reason) {
  entry_t *entry = slot(resolver, id);
  snprintf(entry->reason, sizeof(entry->reason), "%s", reason);
  entry->kind = TLY_RESOLVE_REFUSED;
  return 0;
}

/* ---- checks avro-c does not make -------------------------------------- */

/* The named type (record or enum) called name, anywhere in schema. */
static avro_schema_t find_named(avro_schema_t schema, avro_type_t type,
                                const char *name, int depth) {
  if (!schema || depth > SEARCH_MAX_DEPTH)
    return NULL;
  avro_type_t here = avro_typeof(schema);
  if (here == type && strcmp(avro_schema_name(schema), name) == 0)
    return schema;
  switch (here) {
  case AVRO_RECORD:
    for (size_t i = 0; i < avro_schema_record_size(schema); i++) {
      avro_schema_t found =
          find_named(avro_schema_record_field_get_by_index(schema, (int)i),
                     type, name, depth + 1);
      if (found)
        return found;
    }
    return NULL;
  case AVRO_UNION:
    for (size_t i = 0; i < avro_schema_union_size(schema); i++) {
      avro_schema_t found = find_named(avro_schema_union_branch(schema, (int)i),
                                       type, name, depth + 1);
      if (found)
        return found;
    }
    return NULL;
  case AVRO_MAP:
    return find_named(avro_schema_map_values(schema), type, name, depth + 1);
  case AVRO_ARRAY:
    return find_named(avro_schema_array_items(schema), type, name, depth + 1);
  default:
    return NULL;
  }
}

/* What avro-c lets through: it copies an enum's index from writer to
 * reader, so every symbol both have must sit at the same index; and it
 * accepts a union when one branch resolves. 0, or -1 with reason. */
static int check_enums(avro_schema_t writer, avro_schema_t reader, int depth,
                       char *reason, size_t reason_size) {
  if (!writer || depth > SEARCH_MAX_DEPTH)
    return 0;
  switch (avro_typeof(writer)) {
  case AVRO_ENUM: {
    avro_schema_t mine =
        find_named(reader, AVRO_ENUM, avro_schema_name(writer), 0);
    if (!mine)
      return 0; /* avro-c refuses it, naming it */
    int writer_count = avro_schema_enum_number_of_symbols(writer);
    int reader_count = avro_schema_enum_number_of_symbols(mine);
    for (int i = 0; i < writer_count && i < reader_count; i++) {
      const char *theirs = avro_schema_enum_get(writer, i);
      const char *ours = avro_schema_enum_get(mine, i);
      if (!theirs || !ours || strcmp(theirs, ours) != 0)
        return tly_avro_fail(reason, reason_size,
                             "enum %s: symbol %d is '%s' in the writer's "
                             "schema but '%s' in ours",
                             avro_schema_name(writer), i, theirs ? theirs : "?",
                             ours ? ours : "?");
    }
    return 0;
  }
  case AVRO_RECORD:
    for (size_t i = 0; i < avro_schema_record_size(writer); i++)
      if (check_enums(avro_schema_record_field_get_by_index(writer, (int)i),
                      reader, depth + 1, reason, reason_size))
        return -1;
    return 0;
  case AVRO_UNION:
    for (size_t i = 0; i < avro_schema_union_size(writer); i++) {
      avro_schema_t branch = avro_schema_union_branch(writer, (int)i);
      if (check_enums(branch, reader, depth + 1, reason, reason_size))
        return -1;
      /* avro-c accepts a union when any one branch resolves, and fails
       * only the records that use another; a branch we know by name that
       * does not resolve is an incompatible schema, said now. */
      avro_schema_t mine =
          is_avro_record(branch)
              ? find_named(reader, AVRO_RECORD, avro_schema_name(branch), 0)
              : NULL;
      if (!mine)
        continue;
      avro_value_iface_t *probe = avro_resolved_writer_new(branch, mine);
      if (!probe)
        return tly_avro_fail(reason, reason_size, "%s: %.150s",
                             avro_schema_name(branch), avro_strerror());
      avro_value_iface_decref(probe);
    }
    return 0;
  case AVRO_MAP:
    return check_enums(avro_schema_map_values(writer), reader, depth + 1,
                       reason, reason_size);
  case AVRO_ARRAY:
    return check_enums(avro_schema_array_items(writer), reader, depth + 1,
                       reason, reason_size);
  default:
    return 0;
  }
}

/* The shape at counted_path in the writer's compiled shape, or NULL. */
static const tly_avro_shape_t *counted_shape(avro_schema_t schema,
                                             const tly_avro_shape_t *shape,
                                             const char *const *path) {
  for (; path && *path; path++) {
    if (is_avro_record(schema)) {
      int index = avro_schema_record_field_get_index(schema, *path);
      if (index < 0 || (size_t)index >= shape->child_count)
        return NULL;
      schema = avro_schema_record_field_get_by_index(schema, index);
      shape = &shape->children[index];
      /* A union field: the next name picks the branch. */
      if (!is_avro_union(schema) || !path[1])
        continue;
      path++;
      size_t branches = avro_schema_union_size(schema);
      size_t found = branches;
      for (size_t i = 0; i < branches && found == branches; i++) {
        avro_schema_t branch = avro_schema_union_branch(schema, (int)i);
        if (is_avro_record(branch) &&
            strcmp(avro_schema_name(branch), *path) == 0)
          found = i;
      }
      if (found == branches || found >= shape->child_count)
        return NULL;
      schema = avro_schema_union_branch(schema, (int)found);
      shape = &shape->children[found];
    } else {
      return NULL;
    }
  }
  return shape->type == AVRO_MAP ? shape : NULL;
}

/* ---- adding a writer schema ------------------------------------------- */

static int refuse(tly_resolver_t *resolver, entry_t *entry, const char *what,
                  char *errstr, size_t errstr_size) {
  int32_t id = entry->id;
  entry_free(entry);
  entry->id = id;
  entry->used = ++resolver->clock;
  entry->kind = TLY_RESOLVE_REFUSED;
  snprintf(entry->reason, sizeof(entry->reason), "%s", what);
  tly_avro_fail(errstr, errstr_size, "%s", entry->reason);
  return TLY_RESOLVE_REFUSED;
}

int tly_resolver_add(tly_resolver_t *resolver, int32_t id,
                     const char *schema_json, size_t schema_len, char *errstr,
                     size_t errstr_size) {
  char reason[REASON_MAX], detail[200];
  entry_t *entry = slot(resolver, id);

  if (schema_len > TLY_RESOLVE_SCHEMA_MAX) {
    snprintf(reason, sizeof(reason),
             "schema id %" PRId32 ": the writer's schema is %zu bytes, at "
             "most %d",
             id, schema_len, TLY_RESOLVE_SCHEMA_MAX);
    return refuse(resolver, entry, reason, errstr, errstr_size);
  }
  if (avro_schema_from_json_length(schema_json, schema_len, &entry->writer)) {
    entry->writer = NULL;
    snprintf(reason, sizeof(reason),
             "schema id %" PRId32 ": the writer's schema is not valid Avro: "
             "%.150s",
             id, avro_strerror());
    return refuse(resolver, entry, reason, errstr, errstr_size);
  }
  if (avro_schema_equal(entry->writer, resolver->reader)) {
    entry->kind = TLY_RESOLVE_SAME;
    return TLY_RESOLVE_SAME;
  }
  if (tly_avro_shape_compile(entry->writer, &entry->shape, detail,
                             sizeof(detail)) ||
      check_enums(entry->writer, resolver->reader, 0, detail, sizeof(detail))) {
    snprintf(reason, sizeof(reason),
             "schema id %" PRId32 " is not compatible with %s: %.120s", id,
             resolver->what, detail);
    return refuse(resolver, entry, reason, errstr, errstr_size);
  }
  entry->iface = avro_resolved_writer_new(entry->writer, resolver->reader);
  if (!entry->iface) {
    snprintf(reason, sizeof(reason),
             "schema id %" PRId32 " is not compatible with %s: %.150s", id,
             resolver->what, avro_strerror());
    return refuse(resolver, entry, reason, errstr, errstr_size);
  }
  entry->counted =
      counted_shape(entry->writer, &entry->shape, resolver->counted_path);
  entry->kind = TLY_RESOLVE_TRANSLATE;
  return TLY_RESOLVE_TRANSLATE;
}

/* ---- translating a record --------------------------------------------- */

int tly_resolver_translate(tly_resolver_t *resolver, int32_t id,
                           const unsigned char *payload, size_t len,
                           avro_value_t *reader_value, tly_avro_out_t *out,
                           int32_t out_id, const void **data, size_t *data_len,
                           size_t *counted, char *errstr, size_t errstr_size) {
  entry_t *entry = find(resolver, id);
  if (!entry || entry->kind != TLY_RESOLVE_TRANSLATE)
    return tly_avro_fail(errstr, errstr_size,
                         "schema id %" PRId32 " has no resolver", id);
  entry->used = ++resolver->clock;
  *counted = 0;
  /* The writer's bytes are as hostile as any: walked before avro-c. */
  if (tly_avro_validate(&entry->shape, payload, len, entry->counted, counted,
                        errstr, errstr_size))
    return -1;
  if (!entry->counted)
    *counted = SIZE_MAX; /* nothing to count: no check */
  /* A resolved value per record: avro-c's resolved maps and arrays keep
   * every entry's wrapper until the value is freed (a reset does not
   * shrink them), which made a reused value slower with every record. */
  avro_value_t resolved;
  if (avro_resolved_writer_new_value(entry->iface, &resolved))
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory reading schema id %" PRId32, id);
  avro_resolved_writer_set_dest(&resolved, reader_value);
  avro_reader_memory_set_source(resolver->input, (const char *)payload,
                                (int64_t)len);
  int rc = avro_value_reset(&resolved) ||
           avro_value_read(resolver->input, &resolved);
  avro_resolved_writer_clear_dest(&resolved);
  avro_value_decref(&resolved);
  if (rc)
    return tly_avro_fail(errstr, errstr_size,
                         "schema id %" PRId32 ": cannot read the record as "
                         "%s: %.150s",
                         id, resolver->what, avro_strerror());
  return tly_avro_out_write(out, out_id, reader_value, data, data_len, errstr,
                            errstr_size);
}
