/*
 * tly_avro.c - Avro plumbing shared by the event and alert codecs: the
 * pre-validation walk, the Confluent framing, the framed encode buffer and
 * small value helpers. See tly_avro.h for the API.
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
 * So before avro-c sees a message, tly_avro_validate() walks it against a
 * small tree compiled from the schema when a codec is created
 * (tly_avro_shape_t): every
 * varint at most 10 bytes and within 64 bits, every string/bytes length
 * non-negative and within the bytes left, every map/array block small
 * enough that its entries could fit in the bytes left, enum indexes and
 * union branches in range, strings valid UTF-8 without NUL bytes (events
 * and alerts hold C strings), and the record ending exactly at the end of the
 * input. Only then does avro_value_read() run, on input in which every
 * allocation it makes is bounded by the input's size.
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
 * The walk knows nothing of events or alerts: it is driven by the schema
 * alone, so every codec built on it gets the same guarantees.
 */
#include "tly_avro.h"

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

/* State of one validation walk over a message. */
typedef struct {
  const unsigned char *pos;
  const unsigned char *end;
  size_t total;
  /* Entries seen in one map: avro-c merges duplicate keys, so comparing
   * its map size with this count is how duplicates are found. */
  const tly_avro_shape_t *counted_map;
  size_t counted_entries;
  char *errstr;
  size_t errstr_size;
} walk_t;

int tly_avro_fail(char *errstr, size_t errstr_size, const char *fmt, ...) {
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

static void shape_free(tly_avro_shape_t *shape) {
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
                         tly_avro_shape_t *shape, char *errstr,
                         size_t errstr_size);

/* Children of records (field paths) and unions/maps/arrays (own path). */
static int shape_compile_children(avro_schema_t schema, const char *path,
                                  int depth, tly_avro_shape_t *shape,
                                  char *errstr, size_t errstr_size) {
  shape->children = calloc(shape->child_count ? shape->child_count : 1,
                           sizeof(*shape->children));
  if (!shape->children)
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory compiling the schema");
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
      return tly_avro_fail(errstr, errstr_size,
                           "out of memory compiling the schema");
    rc = shape_compile(child, child_path, depth + 1, &shape->children[i],
                       errstr, errstr_size);
    free(child_path);
    if (rc)
      return -1;
  }
  return 0;
}

static int shape_compile(avro_schema_t schema, const char *path, int depth,
                         tly_avro_shape_t *shape, char *errstr,
                         size_t errstr_size) {
  if (!schema)
    return tly_avro_fail(errstr, errstr_size, "schema: missing type at '%s'",
                         path);
  if (depth > SHAPE_MAX_DEPTH)
    return tly_avro_fail(errstr, errstr_size,
                         "schema: nested deeper than %d at '%s'",
                         SHAPE_MAX_DEPTH, path);
  shape->type = avro_typeof(schema);
  shape->path = strdup(path);
  if (!shape->path)
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory compiling the schema");

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
      return tly_avro_fail(
          errstr, errstr_size,
          "schema: array '%s' of zero-size items is not supported", path);
    return 0;
  case AVRO_LINK:
  default:
    return tly_avro_fail(
        errstr, errstr_size,
        "schema: type at '%s' (recursive or unknown) is not supported", path);
  }
}

int tly_avro_shape_compile(avro_schema_t schema, tly_avro_shape_t *root,
                           char *errstr, size_t errstr_size) {
  return shape_compile(schema, "", 0, root, errstr, errstr_size);
}

void tly_avro_shape_free(tly_avro_shape_t *root) { shape_free(root); }

/* ------------------------------------------------------------------ */
/* Validation walk                                                     */
/* ------------------------------------------------------------------ */

static int walk_long(walk_t *walk, const tly_avro_shape_t *shape,
                     int64_t *out) {
  uint64_t value = 0;
  for (int i = 0; i < VARINT_MAX_BYTES; i++) {
    uint8_t byte;
    if (walk->pos >= walk->end)
      return tly_avro_fail(
          walk->errstr, walk->errstr_size,
          "truncated Avro record: field '%s' ends inside a varint",
          shape->path);
    byte = *walk->pos++;
    /* The 10th byte may only carry bit 63. */
    if (i == VARINT_MAX_BYTES - 1 && (byte & 0xFE))
      return tly_avro_fail(
          walk->errstr, walk->errstr_size,
          "corrupt Avro record: field '%s': varint overflows 64 bits",
          shape->path);
    value |= (uint64_t)(byte & 0x7F) << (7 * i);
    if (!(byte & 0x80)) {
      /* Zigzag decoding, done on unsigned to stay defined. */
      *out = (int64_t)((value >> 1) ^ (~(value & 1) + 1));
      return 0;
    }
  }
  return tly_avro_fail(
      walk->errstr, walk->errstr_size,
      "corrupt Avro record: field '%s': varint longer than %d bytes",
      shape->path, VARINT_MAX_BYTES);
}

/* A length prefix (string, bytes): >= 0 and no more than the bytes left. */
static int walk_length(walk_t *walk, const tly_avro_shape_t *shape,
                       const char *what, size_t *out) {
  int64_t length;
  if (walk_long(walk, shape, &length))
    return -1;
  if (length < 0)
    return tly_avro_fail(
        walk->errstr, walk->errstr_size,
        "corrupt Avro record: field '%s': negative %s length %" PRId64,
        shape->path, what, length);
  if ((uint64_t)length > walk_left(walk))
    return tly_avro_fail(walk->errstr, walk->errstr_size,
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
const char *tly_avro_utf8_problem(const unsigned char *text, size_t length) {
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

static int walk_string(walk_t *walk, const tly_avro_shape_t *shape,
                       const char *what) {
  size_t length = 0;
  const char *problem;
  if (walk_length(walk, shape, what, &length))
    return -1;
  problem = tly_avro_utf8_problem(walk->pos, length);
  if (problem)
    return tly_avro_fail(walk->errstr, walk->errstr_size,
                         "invalid Avro record: field '%s': %s %s", shape->path,
                         what, problem);
  walk->pos += length;
  return 0;
}

static int walk_fixed_bytes(walk_t *walk, const tly_avro_shape_t *shape,
                            int64_t count) {
  if ((uint64_t)count > walk_left(walk))
    return tly_avro_fail(walk->errstr, walk->errstr_size,
                         "truncated Avro record: field '%s' needs %" PRId64
                         " bytes, only %zu left",
                         shape->path, count, walk_left(walk));
  walk->pos += count;
  return 0;
}

static int walk_value(walk_t *walk, const tly_avro_shape_t *shape);

/*
 * Maps and arrays come in blocks: a count, then (when the count is
 * negative) the block's byte size, then the entries; a zero count ends.
 * A count that cannot fit in the bytes left is refused before avro-c would
 * start appending entries for it.
 */
static int walk_blocks(walk_t *walk, const tly_avro_shape_t *shape) {
  const tly_avro_shape_t *item = &shape->children[0];
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
        return tly_avro_fail(
            walk->errstr, walk->errstr_size,
            "corrupt Avro record: field '%s': block count out of "
            "range",
            shape->path);
      count = -count;
      if (walk_long(walk, shape, &block_size))
        return -1;
      if (block_size < 0 || (uint64_t)block_size > walk_left(walk))
        return tly_avro_fail(
            walk->errstr, walk->errstr_size,
            "corrupt Avro record: field '%s': block size %" PRId64
            " with %zu bytes left",
            shape->path, block_size, walk_left(walk));
    }
    if ((uint64_t)count > walk_left(walk) / (uint64_t)entry_min)
      return tly_avro_fail(walk->errstr, walk->errstr_size,
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
      return tly_avro_fail(
          walk->errstr, walk->errstr_size,
          "corrupt Avro record: field '%s': block size %" PRId64
          " but its entries took %td bytes",
          shape->path, block_size, walk->pos - block_start);
  }
}

static int walk_value(walk_t *walk, const tly_avro_shape_t *shape) {
  int64_t number;

  switch (shape->type) {
  case AVRO_NULL:
    return 0;
  case AVRO_BOOLEAN:
    if (walk_left(walk) < 1)
      return walk_fixed_bytes(walk, shape, 1);
    if (*walk->pos > 1)
      return tly_avro_fail(
          walk->errstr, walk->errstr_size,
          "corrupt Avro record: field '%s': boolean byte 0x%02x", shape->path,
          *walk->pos);
    walk->pos++;
    return 0;
  case AVRO_INT32:
    if (walk_long(walk, shape, &number))
      return -1;
    if (number < INT32_MIN || number > INT32_MAX)
      return tly_avro_fail(walk->errstr, walk->errstr_size,
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
    size_t length = 0;
    if (walk_length(walk, shape, "bytes", &length))
      return -1;
    walk->pos += length;
    return 0;
  }
  case AVRO_ENUM:
    if (walk_long(walk, shape, &number))
      return -1;
    if (number < 0 || number >= shape->symbol_count)
      return tly_avro_fail(
          walk->errstr, walk->errstr_size,
          "corrupt Avro record: field '%s': enum index %" PRId64
          " out of range (%" PRId64 " symbols)",
          shape->path, number, shape->symbol_count);
    return 0;
  case AVRO_UNION:
    if (walk_long(walk, shape, &number))
      return -1;
    if (number < 0 || (uint64_t)number >= shape->child_count)
      return tly_avro_fail(
          walk->errstr, walk->errstr_size,
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
    return tly_avro_fail(walk->errstr, walk->errstr_size,
                         "field '%s': unsupported Avro type %d", shape->path,
                         (int)shape->type);
  }
}

/* The whole Avro payload: one record, nothing after it. */

/* The whole Avro payload: one record, nothing after it. */
int tly_avro_validate(const tly_avro_shape_t *root, const unsigned char *data,
                      size_t len, const tly_avro_shape_t *counted_map,
                      size_t *counted_entries, char *errstr,
                      size_t errstr_size) {
  walk_t walk = {.pos = data,
                 .end = data + len,
                 .total = len,
                 .counted_map = counted_map,
                 .errstr = errstr,
                 .errstr_size = errstr_size};
  if (walk_value(&walk, root))
    return -1;
  if (walk.pos != walk.end)
    return tly_avro_fail(errstr, errstr_size,
                         "trailing bytes after the Avro record: %zu of %zu "
                         "bytes unread",
                         walk_left(&walk), walk.total);
  if (counted_entries)
    *counted_entries = walk.counted_entries;
  return 0;
}

int tly_avro_check_text(const char *text, const char *field, char *errstr,
                        size_t errstr_size) {
  const char *problem;
  if (!text)
    return 0;
  problem = tly_avro_utf8_problem((const unsigned char *)text, strlen(text));
  if (problem)
    return tly_avro_fail(errstr, errstr_size, "field '%s': string %s", field,
                         problem);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Framing and the encode buffer                                       */
/* ------------------------------------------------------------------ */

int tly_avro_check_header(const unsigned char *bytes, size_t len,
                          int32_t schema_id, char *errstr, size_t errstr_size) {
  uint32_t id;
  if (!bytes || len == 0)
    return tly_avro_fail(errstr, errstr_size,
                         "empty message: expected the %d-byte header (magic "
                         "byte 0, schema id) and an Avro record",
                         TLY_AVRO_HEADER_SIZE);
  if (bytes[0] != 0)
    return tly_avro_fail(
        errstr, errstr_size, "bad magic byte 0x%02x (expected 0)%s", bytes[0],
        bytes[0] == '{' ? "; this looks like JSON, not framed Avro" : "");
  if (len < TLY_AVRO_HEADER_SIZE)
    return tly_avro_fail(errstr, errstr_size,
                         "truncated header: %zu bytes, the framing needs %d",
                         len, TLY_AVRO_HEADER_SIZE);
  id = (uint32_t)bytes[1] << 24 | (uint32_t)bytes[2] << 16 |
       (uint32_t)bytes[3] << 8 | (uint32_t)bytes[4];
  if (id != (uint32_t)schema_id)
    return tly_avro_fail(errstr, errstr_size,
                         "unknown schema id %" PRIu32 " (this codec reads "
                         "schema id %" PRId32 ")",
                         id, schema_id);
  return 0;
}

int tly_avro_out_init(tly_avro_out_t *out, char *errstr, size_t errstr_size) {
  memset(out, 0, sizeof(*out));
  out->capacity = ENCODE_INITIAL_CAPACITY;
  out->bytes = calloc(1, out->capacity); /* calloc: the writer reads it */
  if (out->bytes)
    out->writer =
        avro_writer_memory((const char *)out->bytes, (int64_t)out->capacity);
  if (!out->bytes || !out->writer)
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory creating the codec buffers");
  return 0;
}

void tly_avro_out_free(tly_avro_out_t *out) {
  if (out->writer)
    avro_writer_free(out->writer);
  free(out->bytes);
  memset(out, 0, sizeof(*out));
}

static int reserve_output(tly_avro_out_t *out, size_t needed) {
  unsigned char *grown;
  size_t capacity = out->capacity;
  if (needed <= capacity)
    return 0;
  while (capacity < needed)
    capacity *= 2;
  grown = realloc(out->bytes, capacity);
  if (!grown)
    return -1;
  out->bytes = grown;
  out->capacity = capacity;
  return 0;
}

int tly_avro_out_write(tly_avro_out_t *out, int32_t schema_id,
                       avro_value_t *value, const void **data, size_t *len,
                       char *errstr, size_t errstr_size) {
  size_t avro_size = 0;
  uint32_t id = (uint32_t)schema_id;

  if (avro_value_sizeof(value, &avro_size))
    return tly_avro_fail(errstr, errstr_size, "Avro encode failed: %s",
                         avro_strerror());
  if (avro_size > SIZE_MAX - TLY_AVRO_HEADER_SIZE ||
      reserve_output(out, TLY_AVRO_HEADER_SIZE + avro_size))
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory for a %zu-byte encoded record",
                         avro_size);
  avro_writer_memory_set_dest(out->writer,
                              (const char *)out->bytes + TLY_AVRO_HEADER_SIZE,
                              (int64_t)avro_size);
  if (avro_value_write(out->writer, value))
    return tly_avro_fail(errstr, errstr_size, "Avro encode failed: %s",
                         avro_strerror());
  if (avro_writer_tell(out->writer) != (int64_t)avro_size)
    return tly_avro_fail(errstr, errstr_size,
                         "Avro encode wrote %" PRId64 " bytes, expected %zu",
                         avro_writer_tell(out->writer), avro_size);
  out->bytes[0] = 0;
  out->bytes[1] = (unsigned char)(id >> 24);
  out->bytes[2] = (unsigned char)(id >> 16);
  out->bytes[3] = (unsigned char)(id >> 8);
  out->bytes[4] = (unsigned char)id;
  *data = out->bytes;
  *len = TLY_AVRO_HEADER_SIZE + avro_size;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Layout: where fields sit in a schema                                */
/* ------------------------------------------------------------------ */

int tly_avro_layout_field(avro_schema_t record, const char *name,
                          avro_type_t type, size_t *index, avro_schema_t *child,
                          char *errstr, size_t errstr_size) {
  int position = avro_schema_record_field_get_index(record, name);
  avro_schema_t field;
  if (position < 0)
    return tly_avro_fail(errstr, errstr_size,
                         "schema: record %s has no field '%s'",
                         avro_schema_name(record), name);
  field = avro_schema_record_field_get_by_index(record, position);
  if (!field || avro_typeof(field) != type)
    return tly_avro_fail(errstr, errstr_size,
                         "schema: field '%s' of %s has an unexpected type",
                         name, avro_schema_name(record));
  *index = (size_t)position;
  if (child)
    *child = field;
  return 0;
}

/* The union branch holding the named record (or null when name is NULL). */
int tly_avro_layout_branch(avro_schema_t union_schema, const char *record_name,
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
  return tly_avro_fail(errstr, errstr_size, "schema: union has no %s branch",
                       record_name ? record_name : "null");
}

int tly_avro_check_symbols(avro_schema_t enum_schema, const char *enum_name,
                           const char *const *names, int count, char *errstr,
                           size_t errstr_size) {
  /* C enums are used as the Avro enum index directly, so the symbol order
   * must match; check it rather than trust it. */
  if (avro_schema_enum_number_of_symbols(enum_schema) != count)
    return tly_avro_fail(
        errstr, errstr_size, "schema: %s has %d symbols, expected %d",
        enum_name, avro_schema_enum_number_of_symbols(enum_schema), count);
  for (int i = 0; i < count; i++) {
    const char *symbol = avro_schema_enum_get(enum_schema, i);
    if (!symbol || strcmp(symbol, names[i]) != 0)
      return tly_avro_fail(errstr, errstr_size,
                           "schema: %s symbol %d is '%s', expected '%s'",
                           enum_name, i, symbol ? symbol : "(none)", names[i]);
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Value helpers                                                       */
/* ------------------------------------------------------------------ */

int tly_avro_set_string(avro_value_t *record, size_t index, const char *text) {
  avro_value_t field;
  if (!text)
    text = "";
  /* avro-c string sizes count the NUL terminator. */
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_set_string_len(&field, text, strlen(text) + 1);
}

int tly_avro_set_long(avro_value_t *record, size_t index, int64_t number) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_set_long(&field, number);
}

int tly_avro_set_int(avro_value_t *record, size_t index, int32_t number) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_set_int(&field, number);
}

char *tly_avro_copy_text(const char *text, size_t size_with_nul) {
  char *copy = malloc(size_with_nul ? size_with_nul : 1);
  if (!copy)
    return NULL;
  if (size_with_nul)
    memcpy(copy, text, size_with_nul - 1);
  copy[size_with_nul ? size_with_nul - 1 : 0] = '\0';
  return copy;
}

int tly_avro_get_string(avro_value_t *record, size_t index, char **out) {
  avro_value_t field;
  const char *text = NULL;
  size_t size = 0;
  if (avro_value_get_by_index(record, index, &field, NULL) ||
      avro_value_get_string(&field, &text, &size))
    return -1;
  *out = tly_avro_copy_text(text, size);
  return *out ? 0 : -1;
}

int tly_avro_get_long(avro_value_t *record, size_t index, int64_t *out) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_get_long(&field, out);
}

int tly_avro_get_int(avro_value_t *record, size_t index, int32_t *out) {
  avro_value_t field;
  return avro_value_get_by_index(record, index, &field, NULL) ||
         avro_value_get_int(&field, out);
}

int tly_avro_base_init(tly_avro_base_t *base, const char *schema_json,
                       const char *what, char *errstr, size_t errstr_size) {
  static const char empty[1] = {0};
  if (avro_schema_from_json_length(schema_json, strlen(schema_json),
                                   &base->schema)) {
    tly_avro_fail(errstr, errstr_size, "parsing %s: %s", what,
                  avro_strerror());
    return -1;
  }
  if (tly_avro_shape_compile(base->schema, &base->root, errstr, errstr_size))
    return -1;
  base->iface = avro_generic_class_from_schema(base->schema);
  if (!base->iface) {
    tly_avro_fail(errstr, errstr_size, "creating the Avro value class: %s",
                  avro_strerror());
    return -1;
  }
  if (avro_generic_value_new(base->iface, &base->value)) {
    tly_avro_fail(errstr, errstr_size, "creating the Avro value: %s",
                  avro_strerror());
    return -1;
  }
  base->value_ready = 1;
  if (tly_avro_out_init(&base->out, errstr, errstr_size))
    return -1;
  base->reader = avro_reader_memory(empty, 0);
  if (!base->reader) {
    tly_avro_fail(errstr, errstr_size, "out of memory creating the reader");
    return -1;
  }
  return 0;
}

void tly_avro_base_free(tly_avro_base_t *base) {
  if (base->value_ready)
    avro_value_decref(&base->value);
  if (base->iface)
    avro_value_iface_decref(base->iface);
  if (base->schema)
    avro_schema_decref(base->schema);
  if (base->reader)
    avro_reader_free(base->reader);
  tly_avro_out_free(&base->out);
  tly_avro_shape_free(&base->root);
}
