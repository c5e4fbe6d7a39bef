/*
 * tly_json_text.h - compact JSON text written straight into a buffer, byte
 * for byte what jansson's json_dumps(value, JSON_COMPACT) writes for the
 * same values in the same order: no spaces, strings escaped as jansson
 * escapes them ('"', '\\' and control characters; "\u00XX" for those
 * without a short form; '/' and non-ASCII as they are), integers in
 * decimal.
 *
 * For the HTTP port's answers: the quota pre-check writes its text
 * directly (building a jansson tree and dumping it cost more than the rest
 * of the request), every other answer's jansson tree is dumped by
 * tly_jt_dump. Pure: no I/O. Never parses; jansson stays the one parser
 * and builder.
 *
 * A string that is not well-formed UTF-8 fails the text (jansson refuses
 * such a string too): tly_jt_finish then returns NULL and the caller falls
 * back to jansson, whose answer stays the reference.
 */
#ifndef TLY_JSON_TEXT_H
#define TLY_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of objects. */
#define TLY_JT_DEPTH_MAX 16

typedef struct {
  char *data; /* malloc'd, NUL-terminated */
  size_t len, cap;
  int failed; /* out of memory, bad UTF-8, too deep or unbalanced */
  int depth;
  unsigned char first[TLY_JT_DEPTH_MAX]; /* no member written yet */
} tly_jt_t;

/* Starts an empty text; initial: bytes to reserve (0: a default). */
void tly_jt_init(tly_jt_t *jt, size_t initial);

void tly_jt_object_begin(tly_jt_t *jt);
void tly_jt_object_end(tly_jt_t *jt);
/* A member's key, inside an object; its value follows. */
void tly_jt_key(tly_jt_t *jt, const char *key);
void tly_jt_string(tly_jt_t *jt, const char *value);
void tly_jt_int(tly_jt_t *jt, int64_t value);
void tly_jt_bool(tly_jt_t *jt, int value);
void tly_jt_null(tly_jt_t *jt);
/* Text written as it is: a piece of JSON the caller vouches for (keys,
 * punctuation). TLY_JT_LITERAL takes a string literal. Bypasses the
 * member bookkeeping: a text is written with these or with the calls
 * above, not both. */
void tly_jt_raw(tly_jt_t *jt, const char *text, size_t len);
#define TLY_JT_LITERAL(jt, literal)                                            \
  tly_jt_raw((jt), (literal), sizeof(literal) - 1)

/* The text (the caller frees it), or NULL when it failed (the buffer is
 * freed). */
char *tly_jt_finish(tly_jt_t *jt);

/* The compact text of a jansson tree (an object or an array), as
 * json_dumps(value, JSON_COMPACT) writes it, without its per-piece
 * callbacks and printf. NULL when the tree holds a real number (jansson's
 * format for those stays its own), a string that is not UTF-8, more than
 * TLY_JT_DEPTH_MAX levels, or memory ran out: the caller then uses
 * json_dumps. */
char *tly_jt_dump(json_t *value);

#endif
