/*
 * tly_codec.c - the envelope's Avro binary encoding with Confluent framing,
 * built on avro-c's value interface.
 *
 * A framed message is [0][schema id, 4 bytes big-endian][Avro binary]. The
 * codec owns one generic avro value, one memory reader and one memory writer
 * and reuses them for every call: creating them per message costs more than
 * the decoding itself.
 *
 * Why decoding walks the bytes twice
 * ----------------------------------
 * avro-c 1.11.1 trusts its input. Its read_string()/read_bytes() read a
 * length and malloc(length + 1) before checking that the bytes exist
 * (measured: a 6-byte message claiming a 100 MB string gets a 100 MB
 * allocation, then a read error), and negative lengths are not refused:
 * they become size_t-sized requests (under ASan or libFuzzer, an abort).
 * Block counts of maps and arrays are trusted the same way (INT64_MIN is
 * even negated, which is undefined), enum indexes are not range-checked
 * (measured: index 7 of a 3-symbol enum decodes "fine") and the memory
 * reader cannot tell how much it consumed, so trailing bytes would pass
 * unseen.
 *
 * So before avro-c sees a message, validate_record() walks it against a
 * small tree compiled from the schema at tly_codec_new() (shape_t): every
 * varint at most 10 bytes and within 64 bits, every string/bytes length
 * non-negative and within the bytes left, every map/array block small
 * enough that its entries could fit in the bytes left, enum indexes and
 * union branches in range, strings valid UTF-8 without NUL bytes (the event
 * holds C strings), and the record ending exactly at the end of the input.
 * Only then does avro_value_read() run, on input in which every allocation
 * it makes is bounded by the input's size.
 *
 * The alternative, a custom allocator (avro_set_allocator) that refuses big
 * requests during a decode, was rejected: the allocator is process-wide
 * (it would need a thread-local "decoding" flag and would also see every
 * other avro-c user in the process), a refused allocation still leaves
 * avro-c's error string (a process-wide buffer) as the only explanation,
 * and it does nothing against out-of-range enums, duplicate map keys or
 * trailing bytes. The walk costs one cheap pass over bytes that are
 * already in cache (about 10% of a decode, measured with perf).
 *
 * Threads: one codec per thread (see tly_codec.h). Beyond that, avro-c
 * 1.11.1 keeps avro_strerror()'s text in one process-wide buffer (no
 * thread-local storage), so under concurrency that text may be another
 * thread's. Our own messages never depend on it except after an avro-c
 * failure that the walk leaves possible only through memory exhaustion.
 */
#include "tly_codec.h"

#include <avro.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The Avro spec's maximum: 10 bytes carry 70 bits, enough for 64. */
#define VARINT_MAX_BYTES 10
/* Schemas nest a handful of levels; anything deeper is a mistake. */
#define SHAPE_MAX_DEPTH 32
/* Initial encode buffer; grows on demand and is kept between calls. */
#define ENCODE_INITIAL_CAPACITY 512

/*
 * One node of the schema as the validator sees it. Built once per codec.
 * path names the field for error messages ("subject.kind").
 */
typedef struct shape {
  avro_type_t type;
  char *path;
  size_t child_count; /* record fields, union branches, 1 for map/array */
  struct shape *children;
  int64_t symbol_count; /* enum */
  int64_t fixed_size;   /* fixed */
  int64_t min_size;     /* fewest bytes any value of this shape takes */
} shape_t;

/* Positions of the fields the codec reads and writes, resolved by name at
 * tly_codec_new() so a schema edit that moves a field is caught there. */
typedef struct {
  size_t event_id, occurred_at, subject, body;
  size_t subject_kind, subject_id;
  int usage_branch; /* body union discriminant of UsageRecorded */
  size_t feature, quantity, unit, ai, properties;
  int ai_null_branch, ai_record_branch;
  size_t provider, model, input_tokens, output_tokens;
} layout_t;

struct tly_codec {
  int32_t schema_id;
  avro_schema_t schema;
  avro_value_iface_t *iface;
  avro_value_t value; /* reused: reset by every read and every encode */
  int value_ready;
  avro_reader_t reader;
  avro_writer_t writer;
  unsigned char *out; /* header + Avro bytes of the last encode */
  size_t out_capacity;
  shape_t root;
  const shape_t *properties_shape;
  layout_t layout;
};

/* State of one validation walk over a message. */
typedef struct {
  const unsigned char *pos;
  const unsigned char *end;
  size_t total;
  /* Entries seen in the properties map: avro-c merges duplicate keys, so
   * comparing its map size with this count is how duplicates are found. */
  const shape_t *counted_map;
  size_t counted_entries;
  char *errstr;
  size_t errstr_size;
} walk_t;

__attribute__((format(printf, 3, 4))) static int
fail(char *errstr, size_t errstr_size, const char *fmt, ...) {
  va_list ap;
  if (errstr && errstr_size) {
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static size_t walk_left(const walk_t *walk) {
  return (size_t)(walk->end - walk->pos);
}

/* ------------------------------------------------------------------ */
/* Schema compilation                                                  */
/* ------------------------------------------------------------------ */

static void shape_free(shape_t *shape) {
  for (size_t i = 0; i < shape->child_count && shape->children; i++)
    shape_free(&shape->children[i]);
  free(shape->children);
  free(shape->path);
  memset(shape, 0, sizeof(*shape));
}

static char *path_join(const char *parent, const char *name) {
  size_t parent_len = strlen(parent), name_len = strlen(name);
  char *path = malloc(parent_len + name_len + 2);
  if (!path)
    return NULL;
  if (parent_len) {
    memcpy(path, parent, parent_len);
    path[parent_len] = '.';
    memcpy(path + parent_len + 1, name, name_len + 1);
  } else {
    memcpy(path, name, name_len + 1);
  }
  return path;
}

static int shape_compile(avro_schema_t schema, const char *path, int depth,
                         shape_t *shape, char *errstr, size_t errstr_size);

/* Children of records (field paths) and unions/maps/arrays (own path). */
static int shape_compile_children(avro_schema_t schema, const char *path,
                                  int depth, shape_t *shape, char *errstr,
                                  size_t errstr_size) {
  shape->children = calloc(shape->child_count ? shape->child_count : 1,
                           sizeof(*shape->children));
  if (!shape->children)
    return fail(errstr, errstr_size, "out of memory compiling the schema");
  for (size_t i = 0; i < shape->child_count; i++) {
    avro_schema_t child = NULL;
    char *child_path = NULL;
    int rc;

    switch (shape->type) {
    case AVRO_RECORD:
      child = avro_schema_record_field_get_by_index(schema, (int)i);
      child_path =
          path_join(path, avro_schema_record_field_name(schema, (int)i));
      break;
    case AVRO_UNION:
      child = avro_schema_union_branch(schema, (int)i);
      child_path = strdup(path);
      break;
    case AVRO_MAP:
      child = avro_schema_map_values(schema);
      child_path = path_join(path, "*");
      break;
    case AVRO_ARRAY:
      child = avro_schema_array_items(schema);
      child_path = path_join(path, "*");
      break;
    default:
      break;
    }
    if (!child_path)
      return fail(errstr, errstr_size, "out of memory compiling the schema");
    rc = shape_compile(child, child_path, depth + 1, &shape->children[i],
                       errstr, errstr_size);
    free(child_path);
    if (rc)
      return -1;
  }
  return 0;
}

static int shape_compile(avro_schema_t schema, const char *path, int depth,
                         shape_t *shape, char *errstr, size_t errstr_size) {
  if (!schema)
    return fail(errstr, errstr_size, "schema: missing type at '%s'", path);
  if (depth > SHAPE_MAX_DEPTH)
    return fail(errstr, errstr_size, "schema: nested deeper than %d at '%s'",
                SHAPE_MAX_DEPTH, path);
  shape->type = avro_typeof(schema);
  shape->path = strdup(path);
  if (!shape->path)
    return fail(errstr, errstr_size, "out of memory compiling the schema");

  switch (shape->type) {
  case AVRO_NULL:
    shape->min_size = 0;
    return 0;
  case AVRO_BOOLEAN:
  case AVRO_INT32:
  case AVRO_INT64:
  case AVRO_STRING:
  case AVRO_BYTES:
    shape->min_size = 1;
    return 0;
  case AVRO_FLOAT:
    shape->min_size = 4;
    return 0;
  case AVRO_DOUBLE:
    shape->min_size = 8;
    return 0;
  case AVRO_FIXED:
    shape->fixed_size = avro_schema_fixed_size(schema);
    shape->min_size = shape->fixed_size;
    return 0;
  case AVRO_ENUM:
    shape->symbol_count = avro_schema_enum_number_of_symbols(schema);
    shape->min_size = 1;
    return 0;
  case AVRO_RECORD:
    shape->child_count = avro_schema_record_size(schema);
    if (shape_compile_children(schema, path, depth, shape, errstr, errstr_size))
      return -1;
    for (size_t i = 0; i < shape->child_count; i++)
      shape->min_size += shape->children[i].min_size;
    return 0;
  case AVRO_UNION:
    shape->child_count = avro_schema_union_size(schema);
    shape->min_size = 1;
    return shape_compile_children(schema, path, depth, shape, errstr,
                                  errstr_size);
  case AVRO_MAP:
  case AVRO_ARRAY:
    shape->child_count = 1;
    shape->min_size = 1;
    if (shape_compile_children(schema, path, depth, shape, errstr, errstr_size))
      return -1;
    /* The block-count bound below relies on every entry costing at least
     * one byte; an array of nulls would let 10 bytes claim 2^62 entries. */
    if (shape->type == AVRO_ARRAY && shape->children[0].min_size < 1)
      return fail(errstr, errstr_size,
                  "schema: array '%s' of zero-size items is not supported",
                  path);
    return 0;
  case AVRO_LINK:
  default:
    return fail(errstr, errstr_size,
                "schema: type at '%s' (recursive or unknown) is not supported",
                path);
  }
}

/* ------------------------------------------------------------------ */
/* Validation walk                                                     */
/* ------------------------------------------------------------------ */

static int walk_long(walk_t *walk, const shape_t *shape, int64_t *out) {
  uint64_t value = 0;
  for (int i = 0; i < VARINT_MAX_BYTES; i++) {
    uint8_t byte;
    if (walk->pos >= walk->end)
      return fail(walk->errstr, walk->errstr_size,
                  "truncated Avro record: field '%s' ends inside a varint",
                  shape->path);
    byte = *walk->pos++;
    /* The 10th byte may only carry bit 63. */
    if (i == VARINT_MAX_BYTES - 1 && (byte & 0xFE))
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': varint overflows 64 bits",
                  shape->path);
    value |= (uint64_t)(byte & 0x7F) << (7 * i);
    if (!(byte & 0x80)) {
      /* Zigzag decoding, done on unsigned to stay defined. */
      *out = (int64_t)((value >> 1) ^ (~(value & 1) + 1));
      return 0;
    }
  }
  return fail(walk->errstr, walk->errstr_size,
              "corrupt Avro record: field '%s': varint longer than %d bytes",
              shape->path, VARINT_MAX_BYTES);
}

/* A length prefix (string, bytes): >= 0 and no more than the bytes left. */
static int walk_length(walk_t *walk, const shape_t *shape, const char *what,
                       size_t *out) {
  int64_t length;
  if (walk_long(walk, shape, &length))
    return -1;
  if (length < 0)
    return fail(walk->errstr, walk->errstr_size,
                "corrupt Avro record: field '%s': negative %s length %" PRId64,
                shape->path, what, length);
  if ((uint64_t)length > walk_left(walk))
    return fail(walk->errstr, walk->errstr_size,
                "truncated Avro record: field '%s': %s length %" PRId64
                " but only %zu bytes left",
                shape->path, what, length, walk_left(walk));
  *out = (size_t)length;
  return 0;
}

/*
 * Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
 * U+10FFFF. NUL is refused separately because the event holds C strings and
 * a NUL would silently cut the value short.
 */
static const char *utf8_problem(const unsigned char *text, size_t length) {
  size_t i = 0;
  while (i < length) {
    unsigned char c = text[i];
    size_t extra;
    uint32_t codepoint, minimum;

    if (c == 0)
      return "contains a NUL byte";
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) {
      extra = 1, codepoint = c & 0x1F, minimum = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2, codepoint = c & 0x0F, minimum = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3, codepoint = c & 0x07, minimum = 0x10000;
    } else {
      return "is not valid UTF-8";
    }
    if (length - i - 1 < extra)
      return "is not valid UTF-8";
    for (size_t k = 1; k <= extra; k++) {
      unsigned char next = text[i + k];
      if ((next & 0xC0) != 0x80)
        return "is not valid UTF-8";
      codepoint = (codepoint << 6) | (next & 0x3F);
    }
    if (codepoint < minimum || codepoint > 0x10FFFF ||
        (codepoint >= 0xD800 && codepoint <= 0xDFFF))
      return "is not valid UTF-8";
    i += extra + 1;
  }
  return NULL;
}

static int walk_string(walk_t *walk, const shape_t *shape, const char *what) {
  size_t length;
  const char *problem;
  if (walk_length(walk, shape, what, &length))
    return -1;
  problem = utf8_problem(walk->pos, length);
  if (problem)
    return fail(walk->errstr, walk->errstr_size,
                "invalid Avro record: field '%s': %s %s", shape->path, what,
                problem);
  walk->pos += length;
  return 0;
}

static int walk_fixed_bytes(walk_t *walk, const shape_t *shape, int64_t count) {
  if ((uint64_t)count > walk_left(walk))
    return fail(walk->errstr, walk->errstr_size,
                "truncated Avro record: field '%s' needs %" PRId64
                " bytes, only %zu left",
                shape->path, count, walk_left(walk));
  walk->pos += count;
  return 0;
}

static int walk_value(walk_t *walk, const shape_t *shape);

/*
 * Maps and arrays come in blocks: a count, then (when the count is
 * negative) the block's byte size, then the entries; a zero count ends.
 * A count that cannot fit in the bytes left is refused before avro-c would
 * start appending entries for it.
 */
static int walk_blocks(walk_t *walk, const shape_t *shape) {
  const shape_t *item = &shape->children[0];
  int is_map = shape->type == AVRO_MAP;
  int64_t entry_min = is_map ? 1 + item->min_size : item->min_size;

  for (;;) {
    int64_t count, block_size = -1;
    const unsigned char *block_start;

    if (walk_long(walk, shape, &count))
      return -1;
    if (count == 0)
      return 0;
    if (count < 0) {
      if (count == INT64_MIN)
        return fail(walk->errstr, walk->errstr_size,
                    "corrupt Avro record: field '%s': block count out of "
                    "range",
                    shape->path);
      count = -count;
      if (walk_long(walk, shape, &block_size))
        return -1;
      if (block_size < 0 || (uint64_t)block_size > walk_left(walk))
        return fail(walk->errstr, walk->errstr_size,
                    "corrupt Avro record: field '%s': block size %" PRId64
                    " with %zu bytes left",
                    shape->path, block_size, walk_left(walk));
    }
    if ((uint64_t)count > walk_left(walk) / (uint64_t)entry_min)
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': block of %" PRId64
                  " entries cannot fit in the %zu bytes left",
                  shape->path, count, walk_left(walk));
    block_start = walk->pos;
    for (int64_t i = 0; i < count; i++) {
      if (is_map && walk_string(walk, shape, "map key"))
        return -1;
      if (walk_value(walk, item))
        return -1;
    }
    if (shape == walk->counted_map)
      walk->counted_entries += (size_t)count;
    if (block_size >= 0 && walk->pos - block_start != block_size)
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': block size %" PRId64
                  " but its entries took %td bytes",
                  shape->path, block_size, walk->pos - block_start);
  }
}

static int walk_value(walk_t *walk, const shape_t *shape) {
  int64_t number;

  switch (shape->type) {
  case AVRO_NULL:
    return 0;
  case AVRO_BOOLEAN:
    if (walk_left(walk) < 1)
      return walk_fixed_bytes(walk, shape, 1);
    if (*walk->pos > 1)
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': boolean byte 0x%02x",
                  shape->path, *walk->pos);
    walk->pos++;
    return 0;
  case AVRO_INT32:
    if (walk_long(walk, shape, &number))
      return -1;
    if (number < INT32_MIN || number > INT32_MAX)
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': %" PRId64
                  " out of range for int",
                  shape->path, number);
    return 0;
  case AVRO_INT64:
    return walk_long(walk, shape, &number);
  case AVRO_FLOAT:
    return walk_fixed_bytes(walk, shape, 4);
  case AVRO_DOUBLE:
    return walk_fixed_bytes(walk, shape, 8);
  case AVRO_FIXED:
    return walk_fixed_bytes(walk, shape, shape->fixed_size);
  case AVRO_STRING:
    return walk_string(walk, shape, "string");
  case AVRO_BYTES: {
    size_t length;
    if (walk_length(walk, shape, "bytes", &length))
      return -1;
    walk->pos += length;
    return 0;
  }
  case AVRO_ENUM:
    if (walk_long(walk, shape, &number))
      return -1;
    if (number < 0 || number >= shape->symbol_count)
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': enum index %" PRId64
                  " out of range (%" PRId64 " symbols)",
                  shape->path, number, shape->symbol_count);
    return 0;
  case AVRO_UNION:
    if (walk_long(walk, shape, &number))
      return -1;
    if (number < 0 || (uint64_t)number >= shape->child_count)
      return fail(walk->errstr, walk->errstr_size,
                  "corrupt Avro record: field '%s': union branch %" PRId64
                  " out of range (%zu branches)",
                  shape->path, number, shape->child_count);
    return walk_value(walk, &shape->children[number]);
  case AVRO_RECORD:
    for (size_t i = 0; i < shape->child_count; i++)
      if (walk_value(walk, &shape->children[i]))
        return -1;
    return 0;
  case AVRO_MAP:
  case AVRO_ARRAY:
    return walk_blocks(walk, shape);
  default:
    return fail(walk->errstr, walk->errstr_size,
                "field '%s': unsupported Avro type %d", shape->path,
                (int)shape->type);
  }
}

/* The whole Avro payload: one record, nothing after it. */
static int validate_record(tly_codec_t *codec, const unsigned char *data,
                           size_t len, size_t *map_entries, char *errstr,
                           size_t errstr_size) {
  walk_t walk = {.pos = data,
                 .end = data + len,
                 .total = len,
                 .counted_map = codec->properties_shape,
                 .errstr = errstr,
                 .errstr_size = errstr_size};
  if (walk_value(&walk, &codec->root))
    return -1;
  if (walk.pos != walk.end)
    return fail(errstr, errstr_size,
                "trailing bytes after the Avro record: %zu of %zu bytes "
                "unread",
                walk_left(&walk), walk.total);
  *map_entries = walk.counted_entries;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Layout: where our fields sit in the schema                          */
/* ------------------------------------------------------------------ */

static int layout_field(avro_schema_t record, const char *name,
                        avro_type_t type, size_t *index, avro_schema_t *child,
                        char *errstr, size_t errstr_size) {
  int position = avro_schema_record_field_get_index(record, name);
  avro_schema_t field;
  if (position < 0)
    return fail(errstr, errstr_size, "schema: record %s has no field '%s'",
                avro_schema_name(record), name);
  field = avro_schema_record_field_get_by_index(record, position);
  if (!field || avro_typeof(field) != type)
    return fail(errstr, errstr_size,
                "schema: field '%s' of %s has an unexpected type", name,
                avro_schema_name(record));
  *index = (size_t)position;
  if (child)
    *child = field;
  return 0;
}

/* The union branch holding the named record (or null when name is NULL). */
static int layout_branch(avro_schema_t union_schema, const char *record_name,
                         int *branch, avro_schema_t *record, char *errstr,
                         size_t errstr_size) {
  size_t count = avro_schema_union_size(union_schema);
  for (size_t i = 0; i < count; i++) {
    avro_schema_t candidate = avro_schema_union_branch(union_schema, (int)i);
    int match = record_name
                    ? is_avro_record(candidate) &&
                          strcmp(avro_schema_name(candidate), record_name) == 0
                    : is_avro_null(candidate);
    if (match) {
      *branch = (int)i;
      if (record)
        *record = candidate;
      return 0;
    }
  }
  return fail(errstr, errstr_size, "schema: union has no %s branch",
              record_name ? record_name : "null");
}

static int layout_resolve(tly_codec_t *codec, char *errstr,
                          size_t errstr_size) {
  layout_t *l = &codec->layout;
  avro_schema_t subject = NULL, kind = NULL, body = NULL, usage = NULL;
  avro_schema_t ai = NULL, ai_record = NULL, properties = NULL;

  if (!is_avro_record(codec->schema))
    return fail(errstr, errstr_size, "schema: envelope is not a record");
  if (layout_field(codec->schema, "event_id", AVRO_STRING, &l->event_id, NULL,
                   errstr, errstr_size) ||
      layout_field(codec->schema, "occurred_at", AVRO_INT64, &l->occurred_at,
                   NULL, errstr, errstr_size) ||
      layout_field(codec->schema, "subject", AVRO_RECORD, &l->subject, &subject,
                   errstr, errstr_size) ||
      layout_field(codec->schema, "body", AVRO_UNION, &l->body, &body, errstr,
                   errstr_size) ||
      layout_field(subject, "kind", AVRO_ENUM, &l->subject_kind, &kind, errstr,
                   errstr_size) ||
      layout_field(subject, "id", AVRO_STRING, &l->subject_id, NULL, errstr,
                   errstr_size) ||
      layout_branch(body, "UsageRecorded", &l->usage_branch, &usage, errstr,
                    errstr_size) ||
      layout_field(usage, "feature", AVRO_STRING, &l->feature, NULL, errstr,
                   errstr_size) ||
      layout_field(usage, "quantity", AVRO_INT64, &l->quantity, NULL, errstr,
                   errstr_size) ||
      layout_field(usage, "unit", AVRO_STRING, &l->unit, NULL, errstr,
                   errstr_size) ||
      layout_field(usage, "ai", AVRO_UNION, &l->ai, &ai, errstr, errstr_size) ||
      layout_branch(ai, NULL, &l->ai_null_branch, NULL, errstr, errstr_size) ||
      layout_branch(ai, "AiUsage", &l->ai_record_branch, &ai_record, errstr,
                    errstr_size) ||
      layout_field(ai_record, "provider", AVRO_STRING, &l->provider, NULL,
                   errstr, errstr_size) ||
      layout_field(ai_record, "model", AVRO_STRING, &l->model, NULL, errstr,
                   errstr_size) ||
      layout_field(ai_record, "input_tokens", AVRO_INT64, &l->input_tokens,
                   NULL, errstr, errstr_size) ||
      layout_field(ai_record, "output_tokens", AVRO_INT64, &l->output_tokens,
                   NULL, errstr, errstr_size) ||
      layout_field(usage, "properties", AVRO_MAP, &l->properties, &properties,
                   errstr, errstr_size))
    return -1;
  if (!is_avro_string(avro_schema_map_values(properties)))
    return fail(errstr, errstr_size,
                "schema: properties values are not strings");

  /* tly_subject_kind_t is used as the enum index directly, so the symbol
   * order must match; check it rather than trust it. */
  if (avro_schema_enum_number_of_symbols(kind) != TLY_SUBJECT__COUNT)
    return fail(errstr, errstr_size,
                "schema: SubjectKind has %d symbols, expected %d",
                avro_schema_enum_number_of_symbols(kind), TLY_SUBJECT__COUNT);
  for (int i = 0; i < TLY_SUBJECT__COUNT; i++) {
    const char *symbol = avro_schema_enum_get(kind, i);
    if (!symbol ||
        strcmp(symbol, tly_subject_kind_name((tly_subject_kind_t)i)) != 0)
      return fail(errstr, errstr_size,
                  "schema: SubjectKind symbol %d is '%s', expected '%s'", i,
                  symbol ? symbol : "(none)",
                  tly_subject_kind_name((tly_subject_kind_t)i));
  }

  /* The validator's shape for body.properties, for duplicate-key counting. */
  codec->properties_shape = &codec->root.children[l->body]
                                 .children[l->usage_branch]
                                 .children[l->properties];
  return 0;
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                           */
/* ------------------------------------------------------------------ */

tly_codec_t *tly_codec_new(int32_t schema_id, char *errstr,
                           size_t errstr_size) {
  tly_codec_t *codec;
  static const char empty[1] = {0};

  if (schema_id < 0) {
    fail(errstr, errstr_size, "schema id %" PRId32 " is negative", schema_id);
    return NULL;
  }
  codec = calloc(1, sizeof(*codec));
  if (!codec) {
    fail(errstr, errstr_size, "out of memory");
    return NULL;
  }
  codec->schema_id = schema_id;

  if (avro_schema_from_json_length(tly_event_schema_json,
                                   strlen(tly_event_schema_json),
                                   &codec->schema)) {
    fail(errstr, errstr_size, "parsing the envelope schema: %s",
         avro_strerror());
    goto fail;
  }
  if (shape_compile(codec->schema, "", 0, &codec->root, errstr, errstr_size) ||
      layout_resolve(codec, errstr, errstr_size))
    goto fail;

  codec->iface = avro_generic_class_from_schema(codec->schema);
  if (!codec->iface) {
    fail(errstr, errstr_size, "creating the Avro value class: %s",
         avro_strerror());
    goto fail;
  }
  if (avro_generic_value_new(codec->iface, &codec->value)) {
    fail(errstr, errstr_size, "creating the Avro value: %s", avro_strerror());
    goto fail;
  }
  codec->value_ready = 1;

  codec->out_capacity = ENCODE_INITIAL_CAPACITY;
  codec->out = malloc(codec->out_capacity);
  codec->reader = avro_reader_memory(empty, 0);
  codec->writer = avro_writer_memory((const char *)codec->out,
                                     (int64_t)codec->out_capacity);
  if (!codec->out || !codec->reader || !codec->writer) {
    fail(errstr, errstr_size, "out of memory creating the codec buffers");
    goto fail;
  }
  return codec;

fail:
  tly_codec_destroy(codec);
  return NULL;
}

void tly_codec_destroy(tly_codec_t *codec) {
  if (!codec)
    return;
  if (codec->value_ready)
    avro_value_decref(&codec->value);
  if (codec->iface)
    avro_value_iface_decref(codec->iface);
  if (codec->schema)
    avro_schema_decref(codec->schema);
  if (codec->reader)
    avro_reader_free(codec->reader);
  if (codec->writer)
    avro_writer_free(codec->writer);
  shape_free(&codec->root);
  free(codec->out);
  free(codec);
}

/* ------------------------------------------------------------------ */
/* Encode                                                              */
/* ------------------------------------------------------------------ */

static int set_string(avro_value_t *record, size_t index, const char *text) {
  avro_value_t field;
  /* avro-c string sizes count the NUL terminator. */
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_set_string_len(&field, text, strlen(text) + 1);
}

static int set_long(avro_value_t *record, size_t index, int64_t number) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_set_long(&field, number);
}

/* Fills the reused avro value from a validated event. 0 or avro-c's error. */
static int fill_value(tly_codec_t *codec, const tly_event_t *event) {
  const layout_t *l = &codec->layout;
  const tly_usage_recorded_t *usage = &event->body.usage;
  avro_value_t *root = &codec->value;
  avro_value_t subject, kind, body, record, ai, ai_record, properties;

  if (avro_value_reset(root) ||
      set_string(root, l->event_id, event->event_id) ||
      set_long(root, l->occurred_at, event->occurred_at_ms) ||
      avro_value_get_by_index(root, l->subject, &subject, NULL) ||
      avro_value_get_by_index(&subject, l->subject_kind, &kind, NULL) ||
      avro_value_set_enum(&kind, (int)event->subject_kind) ||
      set_string(&subject, l->subject_id, event->subject_id) ||
      avro_value_get_by_index(root, l->body, &body, NULL) ||
      avro_value_set_branch(&body, l->usage_branch, &record) ||
      set_string(&record, l->feature, usage->feature) ||
      set_long(&record, l->quantity, usage->quantity) ||
      set_string(&record, l->unit, usage->unit ? usage->unit : "") ||
      avro_value_get_by_index(&record, l->ai, &ai, NULL))
    return -1;

  if (usage->has_ai) {
    if (avro_value_set_branch(&ai, l->ai_record_branch, &ai_record) ||
        set_string(&ai_record, l->provider, usage->ai.provider) ||
        set_string(&ai_record, l->model, usage->ai.model) ||
        set_long(&ai_record, l->input_tokens, usage->ai.input_tokens) ||
        set_long(&ai_record, l->output_tokens, usage->ai.output_tokens))
      return -1;
  } else {
    avro_value_t null_branch;
    if (avro_value_set_branch(&ai, l->ai_null_branch, &null_branch) ||
        avro_value_set_null(&null_branch))
      return -1;
  }

  if (avro_value_get_by_index(&record, l->properties, &properties, NULL))
    return -1;
  for (size_t i = 0; i < usage->property_count; i++) {
    const tly_property_t *property = &usage->properties[i];
    avro_value_t entry;
    if (avro_value_add(&properties, property->key, &entry, NULL, NULL) ||
        avro_value_set_string_len(&entry, property->value,
                                  strlen(property->value) + 1))
      return -1;
  }
  return 0;
}

/* Encode refuses what decode would refuse: a producer must not be able to
 * write an event that every consumer then dead-letters. */
static int check_text(const char *text, const char *field, char *errstr,
                      size_t errstr_size) {
  const char *problem;
  if (!text)
    return 0;
  problem = utf8_problem((const unsigned char *)text, strlen(text));
  if (problem)
    return fail(errstr, errstr_size, "field '%s': string %s", field, problem);
  return 0;
}

static int check_event_text(const tly_event_t *event, char *errstr,
                            size_t errstr_size) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  if (check_text(event->event_id, "event_id", errstr, errstr_size) ||
      check_text(event->subject_id, "subject.id", errstr, errstr_size) ||
      check_text(usage->feature, "feature", errstr, errstr_size) ||
      check_text(usage->unit, "unit", errstr, errstr_size))
    return -1;
  if (usage->has_ai &&
      (check_text(usage->ai.provider, "ai.provider", errstr, errstr_size) ||
       check_text(usage->ai.model, "ai.model", errstr, errstr_size)))
    return -1;
  for (size_t i = 0; i < usage->property_count; i++)
    if (check_text(usage->properties[i].key, "properties (key)", errstr,
                   errstr_size) ||
        check_text(usage->properties[i].value, "properties (value)", errstr,
                   errstr_size))
      return -1;
  return 0;
}

static int reserve_output(tly_codec_t *codec, size_t needed) {
  unsigned char *grown;
  size_t capacity = codec->out_capacity;
  if (needed <= capacity)
    return 0;
  while (capacity < needed)
    capacity *= 2;
  grown = realloc(codec->out, capacity);
  if (!grown)
    return -1;
  codec->out = grown;
  codec->out_capacity = capacity;
  return 0;
}

int tly_codec_encode(tly_codec_t *codec, const tly_event_t *event,
                     const void **out, size_t *out_len, char *errstr,
                     size_t errstr_size) {
  size_t avro_size = 0;
  uint32_t id;

  if (!codec || !event || !out || !out_len)
    return fail(errstr, errstr_size, "encode: missing argument");
  if (tly_event_validate(event, errstr, errstr_size) ||
      check_event_text(event, errstr, errstr_size))
    return -1;
  if (fill_value(codec, event) || avro_value_sizeof(&codec->value, &avro_size))
    return fail(errstr, errstr_size, "Avro encode failed: %s", avro_strerror());
  if (avro_size > SIZE_MAX - TLY_CODEC_HEADER_SIZE ||
      reserve_output(codec, TLY_CODEC_HEADER_SIZE + avro_size))
    return fail(errstr, errstr_size,
                "out of memory for a %zu-byte encoded event", avro_size);

  avro_writer_memory_set_dest(codec->writer,
                              (const char *)codec->out + TLY_CODEC_HEADER_SIZE,
                              (int64_t)avro_size);
  if (avro_value_write(codec->writer, &codec->value))
    return fail(errstr, errstr_size, "Avro encode failed: %s", avro_strerror());
  if (avro_writer_tell(codec->writer) != (int64_t)avro_size)
    return fail(errstr, errstr_size,
                "Avro encode wrote %" PRId64 " bytes, expected %zu",
                avro_writer_tell(codec->writer), avro_size);

  id = (uint32_t)codec->schema_id;
  codec->out[0] = 0;
  codec->out[1] = (unsigned char)(id >> 24);
  codec->out[2] = (unsigned char)(id >> 16);
  codec->out[3] = (unsigned char)(id >> 8);
  codec->out[4] = (unsigned char)id;
  *out = codec->out;
  *out_len = TLY_CODEC_HEADER_SIZE + avro_size;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Decode                                                              */
/* ------------------------------------------------------------------ */

static char *copy_text(const char *text, size_t size_with_nul) {
  char *copy = malloc(size_with_nul ? size_with_nul : 1);
  if (!copy)
    return NULL;
  if (size_with_nul)
    memcpy(copy, text, size_with_nul - 1);
  copy[size_with_nul ? size_with_nul - 1 : 0] = '\0';
  return copy;
}

/* Copies a string field out of a record: 0, or -1 (avro-c error or OOM). */
static int get_string(avro_value_t *record, size_t index, char **out) {
  avro_value_t field;
  const char *text = NULL;
  size_t size = 0;
  if (avro_value_get_by_index(record, index, &field, NULL) ||
      avro_value_get_string(&field, &text, &size))
    return -1;
  *out = copy_text(text, size);
  return *out ? 0 : -1;
}

static int get_long(avro_value_t *record, size_t index, int64_t *out) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_get_long(&field, out);
}

static int extract_properties(avro_value_t *map, size_t expected,
                              tly_usage_recorded_t *usage, char *errstr,
                              size_t errstr_size) {
  size_t count = 0;
  if (avro_value_get_size(map, &count))
    return fail(errstr, errstr_size, "Avro decode failed: %s", avro_strerror());
  if (count != expected)
    return fail(errstr, errstr_size,
                "invalid Avro record: field 'body.properties': %zu entries "
                "but only %zu distinct keys (duplicate map key)",
                expected, count);
  if (!count)
    return 0;
  usage->properties = calloc(count, sizeof(*usage->properties));
  if (!usage->properties)
    return fail(errstr, errstr_size, "out of memory for %zu properties", count);
  for (size_t i = 0; i < count; i++) {
    avro_value_t entry;
    const char *key = NULL, *text = NULL;
    size_t size = 0;
    tly_property_t *property = &usage->properties[i];

    if (avro_value_get_by_index(map, i, &entry, &key) ||
        avro_value_get_string(&entry, &text, &size))
      return fail(errstr, errstr_size, "Avro decode failed: %s",
                  avro_strerror());
    /* Counted before the copies so tly_event_clear() frees partial work. */
    usage->property_count = i + 1;
    property->key = strdup(key);
    property->value = copy_text(text, size);
    if (!property->key || !property->value)
      return fail(errstr, errstr_size, "out of memory copying properties");
  }
  return 0;
}

/* Copies the decoded avro value into *event. */
static int extract_event(tly_codec_t *codec, size_t property_entries,
                         tly_event_t *event, char *errstr, size_t errstr_size) {
  const layout_t *l = &codec->layout;
  avro_value_t *root = &codec->value;
  avro_value_t subject, kind, body, record, ai, ai_record, properties;
  tly_usage_recorded_t *usage = &event->body.usage;
  int kind_index = 0, branch = -1;

  if (get_string(root, l->event_id, &event->event_id) ||
      get_long(root, l->occurred_at, &event->occurred_at_ms) ||
      avro_value_get_by_index(root, l->subject, &subject, NULL) ||
      avro_value_get_by_index(&subject, l->subject_kind, &kind, NULL) ||
      avro_value_get_enum(&kind, &kind_index) ||
      get_string(&subject, l->subject_id, &event->subject_id) ||
      avro_value_get_by_index(root, l->body, &body, NULL) ||
      avro_value_get_discriminant(&body, &branch))
    goto avro_error;
  /* Range already checked by the walk; kept as a cheap second guard. */
  if (kind_index < 0 || kind_index >= TLY_SUBJECT__COUNT)
    return fail(errstr, errstr_size,
                "corrupt Avro record: field 'subject.kind': enum index %d",
                kind_index);
  event->subject_kind = (tly_subject_kind_t)kind_index;
  if (branch != l->usage_branch)
    return fail(errstr, errstr_size, "unsupported event body: union branch %d",
                branch);
  event->body_kind = TLY_BODY_USAGE_RECORDED;

  if (avro_value_get_current_branch(&body, &record) ||
      get_string(&record, l->feature, &usage->feature) ||
      get_long(&record, l->quantity, &usage->quantity) ||
      get_string(&record, l->unit, &usage->unit) ||
      avro_value_get_by_index(&record, l->ai, &ai, NULL) ||
      avro_value_get_discriminant(&ai, &branch))
    goto avro_error;
  if (branch == l->ai_record_branch) {
    usage->has_ai = 1;
    if (avro_value_get_current_branch(&ai, &ai_record) ||
        get_string(&ai_record, l->provider, &usage->ai.provider) ||
        get_string(&ai_record, l->model, &usage->ai.model) ||
        get_long(&ai_record, l->input_tokens, &usage->ai.input_tokens) ||
        get_long(&ai_record, l->output_tokens, &usage->ai.output_tokens))
      goto avro_error;
  }
  if (avro_value_get_by_index(&record, l->properties, &properties, NULL))
    goto avro_error;
  return extract_properties(&properties, property_entries, usage, errstr,
                            errstr_size);

avro_error:
  /* After a successful walk only memory exhaustion lands here. */
  return fail(errstr, errstr_size, "Avro decode failed: %s", avro_strerror());
}

int tly_codec_decode(tly_codec_t *codec, const void *data, size_t len,
                     tly_event_t *event, char *errstr, size_t errstr_size) {
  const unsigned char *bytes = data;
  size_t property_entries = 0;
  uint32_t id;
  char reason[256];

  if (!codec || !event)
    return fail(errstr, errstr_size, "decode: missing argument");
  tly_event_clear(event);
  if (!bytes || len == 0)
    return fail(errstr, errstr_size,
                "empty message: expected the %d-byte header (magic byte 0, "
                "schema id) and an Avro record",
                TLY_CODEC_HEADER_SIZE);
  if (bytes[0] != 0)
    return fail(
        errstr, errstr_size, "bad magic byte 0x%02x (expected 0)%s", bytes[0],
        bytes[0] == '{' ? "; this looks like JSON, not framed Avro" : "");
  if (len < TLY_CODEC_HEADER_SIZE)
    return fail(errstr, errstr_size,
                "truncated header: %zu bytes, the framing needs %d", len,
                TLY_CODEC_HEADER_SIZE);
  id = (uint32_t)bytes[1] << 24 | (uint32_t)bytes[2] << 16 |
       (uint32_t)bytes[3] << 8 | (uint32_t)bytes[4];
  if (id != (uint32_t)codec->schema_id)
    return fail(errstr, errstr_size,
                "unknown schema id %" PRIu32 " (this codec reads schema id "
                "%" PRId32 ")",
                id, codec->schema_id);

  bytes += TLY_CODEC_HEADER_SIZE;
  len -= TLY_CODEC_HEADER_SIZE;
  if (validate_record(codec, bytes, len, &property_entries, errstr,
                      errstr_size))
    return -1;

  avro_reader_memory_set_source(codec->reader, (const char *)bytes,
                                (int64_t)len);
  if (avro_value_read(codec->reader, &codec->value))
    return fail(errstr, errstr_size, "Avro decode failed: %s", avro_strerror());
  if (extract_event(codec, property_entries, event, errstr, errstr_size))
    goto fail;
  if (tly_event_validate(event, reason, sizeof(reason))) {
    fail(errstr, errstr_size, "invalid event: %s", reason);
    goto fail;
  }
  return 0;

fail:
  tly_event_clear(event);
  return -1;
}
