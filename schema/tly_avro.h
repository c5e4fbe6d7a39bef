/*
 * tly_avro.h - Avro plumbing shared by the event codec (tly_codec.c) and
 * the alert codec (tly_alert.c). Internal to schema/: not a public API.
 * Owns avro-c plumbing; never does I/O.
 *
 * What is here: the pre-validation walk that makes avro-c safe on hostile
 * input (see tly_avro.c's header comment for why it exists), the Confluent
 * framing (magic byte 0, 4-byte big-endian schema id), a reusable framed
 * encode buffer, field lookup by name at codec creation, and small helpers
 * to copy strings and numbers in and out of avro-c values.
 */
#ifndef TLY_AVRO_H
#define TLY_AVRO_H

#include <avro.h>
#include <stddef.h>
#include <stdint.h>

/* Framing header: magic byte + 4-byte schema id. */
#define TLY_AVRO_HEADER_SIZE 5

/*
 * One node of a schema as the validator sees it, compiled once per codec.
 * path names the field for error messages ("subject.kind").
 */
typedef struct tly_avro_shape {
  avro_type_t type;
  char *path;
  size_t child_count; /* record fields, union branches, 1 for map/array */
  struct tly_avro_shape *children;
  int64_t symbol_count; /* enum */
  int64_t fixed_size;   /* fixed */
  int64_t min_size;     /* fewest bytes any value of this shape takes */
} tly_avro_shape_t;

/* Compiles schema into *root (zeroed by the caller). 0, or -1 with errstr;
 * free with tly_avro_shape_free() either way. */
int tly_avro_shape_compile(avro_schema_t schema, tly_avro_shape_t *root,
                           char *errstr, size_t errstr_size);
void tly_avro_shape_free(tly_avro_shape_t *root);

/*
 * Walks data (the Avro payload, after the frame header) against root: every
 * length, count, enum index and union branch in range, strings valid UTF-8
 * without NUL, nothing after the record. When counted_map is not NULL, the
 * entries of that map node (all its blocks) are counted into
 * *counted_entries, so a caller can find duplicate keys that avro-c merges.
 * 0, or -1 with errstr ("truncated Avro record: field 'x' ...").
 */
int tly_avro_validate(const tly_avro_shape_t *root, const unsigned char *data,
                      size_t len, const tly_avro_shape_t *counted_map,
                      size_t *counted_entries, char *errstr,
                      size_t errstr_size);

/* NULL when text[0..length) is strict UTF-8 without NUL, else the problem
 * ("is not valid UTF-8", "contains a NUL byte"). */
const char *tly_avro_utf8_problem(const unsigned char *text, size_t length);

/* The same for a C string (NULL counts as fine: callers check presence),
 * as "field '<field>': string <problem>". 0 or -1. */
int tly_avro_check_text(const char *text, const char *field, char *errstr,
                        size_t errstr_size);

/*
 * Checks the frame header of data/len against schema_id. 0, or -1 with
 * errstr (empty message, bad magic byte, truncated header, unknown id).
 */
int tly_avro_check_header(const unsigned char *data, size_t len,
                          int32_t schema_id, char *errstr, size_t errstr_size);

/* A framed encode buffer, reused between calls. */
typedef struct {
  unsigned char *bytes; /* header + Avro bytes of the last encode */
  size_t capacity;
  avro_writer_t writer;
} tly_avro_out_t;

int tly_avro_out_init(tly_avro_out_t *out, char *errstr, size_t errstr_size);
void tly_avro_out_free(tly_avro_out_t *out);
/* Writes header + value into out; *data and *len point into out->bytes. */
int tly_avro_out_write(tly_avro_out_t *out, int32_t schema_id,
                       avro_value_t *value, const void **data, size_t *len,
                       char *errstr, size_t errstr_size);

/* The index of record's field name, which must have type; its schema in
 * *child when child is not NULL. 0 or -1 with errstr. */
int tly_avro_layout_field(avro_schema_t record, const char *name,
                          avro_type_t type, size_t *index, avro_schema_t *child,
                          char *errstr, size_t errstr_size);
/* The branch of union_schema holding the record named record_name (or the
 * null branch when record_name is NULL). 0 or -1 with errstr. */
int tly_avro_layout_branch(avro_schema_t union_schema, const char *record_name,
                           int *branch, avro_schema_t *record, char *errstr,
                           size_t errstr_size);
/* Checks that enum_schema's symbols are exactly names[0..count). */
int tly_avro_check_symbols(avro_schema_t enum_schema, const char *enum_name,
                           const char *const *names, int count, char *errstr,
                           size_t errstr_size);

/* Field setters (NULL text is written as ""); 0 or avro-c's error. */
int tly_avro_set_string(avro_value_t *record, size_t index, const char *text);
int tly_avro_set_long(avro_value_t *record, size_t index, int64_t number);
int tly_avro_set_int(avro_value_t *record, size_t index, int32_t number);
/* Field getters; get_string mallocs a copy into *out. 0 or -1. */
int tly_avro_get_string(avro_value_t *record, size_t index, char **out);
int tly_avro_get_long(avro_value_t *record, size_t index, int64_t *out);
int tly_avro_get_int(avro_value_t *record, size_t index, int32_t *out);
/* Copies an avro-c string (size counts the NUL); NULL when out of memory. */
char *tly_avro_copy_text(const char *text, size_t size_with_nul);

/* printf into errstr; always returns -1. */
__attribute__((format(printf, 3, 4))) int
tly_avro_fail(char *errstr, size_t errstr_size, const char *fmt, ...);


/* What every tally codec holds: the schema, its validation shape, one
 * generic value reused by every read and encode, a memory reader and the
 * output buffer. */
typedef struct {
  avro_schema_t schema;
  avro_value_iface_t *iface;
  avro_value_t value;
  int value_ready;
  avro_reader_t reader;
  tly_avro_out_t out;
  tly_avro_shape_t root;
} tly_avro_base_t;

/* Sets base up from schema_json; `what` names the schema in errors ("the
 * envelope schema"). base must be zeroed; on failure it may be partly set
 * up and is freed with tly_avro_base_free(). 0 or -1 with errstr. */
int tly_avro_base_init(tly_avro_base_t *base, const char *schema_json,
                       const char *what, char *errstr, size_t errstr_size);
void tly_avro_base_free(tly_avro_base_t *base);

#endif
