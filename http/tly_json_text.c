/*
 * tly_json_text.c - compact JSON text as jansson writes it (see
 * tly_json_text.h).
 */
#include "tly_json_text.h"

#include "tly_request_subject.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

void tly_jt_init(tly_jt_t *jt, size_t initial) {
  memset(jt, 0, sizeof(*jt));
  jt->cap = initial ? initial : 512;
  jt->data = malloc(jt->cap);
  if (!jt->data)
    jt->failed = 1;
  else
    jt->data[0] = '\0';
}

/* Room for n more bytes and the NUL; 0, or -1 (failed). */
static int reserve(tly_jt_t *jt, size_t n) {
  if (jt->failed)
    return -1;
  if (jt->len + n + 1 <= jt->cap)
    return 0;
  size_t cap = jt->cap * 2;
  while (cap < jt->len + n + 1)
    cap *= 2;
  char *grown = realloc(jt->data, cap);
  if (!grown) {
    jt->failed = 1;
    return -1;
  }
  jt->data = grown;
  jt->cap = cap;
  return 0;
}

static void put(tly_jt_t *jt, const char *bytes, size_t n) {
  if (reserve(jt, n))
    return;
  memcpy(jt->data + jt->len, bytes, n);
  jt->len += n;
  jt->data[jt->len] = '\0';
}

/* Before a member: a comma unless it is its object's first. */
static void before_member(tly_jt_t *jt) {
  if (jt->first[jt->depth - 1])
    jt->first[jt->depth - 1] = 0;
  else
    put(jt, ",", 1);
}

void tly_jt_object_begin(tly_jt_t *jt) {
  if (jt->depth >= TLY_JT_DEPTH_MAX) {
    jt->failed = 1;
    return;
  }
  put(jt, "{", 1);
  jt->first[jt->depth++] = 1;
}

void tly_jt_object_end(tly_jt_t *jt) {
  if (jt->depth == 0) {
    jt->failed = 1;
    return;
  }
  jt->depth--;
  put(jt, "}", 1);
}

/* jansson's escaping: '"', '\\' and control characters; the rest of the
 * (well-formed UTF-8) bytes as they are. */
static void put_string_n(tly_jt_t *jt, const char *value, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  /* Most strings (keys, codes, plan and feature names) are printable
   * ASCII with nothing to escape: copied in one go. */
  const unsigned char *scan = (const unsigned char *)value;
  const unsigned char *end = scan + len;
  while (scan < end && *scan >= 0x20 && *scan < 0x80 && *scan != '"' &&
         *scan != '\\')
    scan++;
  if (scan == end) {
    size_t plain = len;
    if (reserve(jt, plain + 2))
      return;
    jt->data[jt->len] = '"';
    memcpy(jt->data + jt->len + 1, value, plain);
    jt->data[jt->len + 1 + plain] = '"';
    jt->len += plain + 2;
    jt->data[jt->len] = '\0';
    return;
  }
  if (!tly_req_utf8_valid(value, len)) {
    jt->failed = 1;
    return;
  }
  /* Worst case: every byte a 6-byte escape, and the quotes. */
  if (reserve(jt, len * 6 + 2))
    return;
  char *out = jt->data + jt->len;
  *out++ = '"';
  for (const unsigned char *p = (const unsigned char *)value;
       p < (const unsigned char *)value + len; p++) {
    unsigned char c = *p;
    if (c >= 0x20 && c != '"' && c != '\\') {
      *out++ = (char)c;
      continue;
    }
    *out++ = '\\';
    switch (c) {
    case '"':
    case '\\':
      *out++ = (char)c;
      break;
    case '\b':
      *out++ = 'b';
      break;
    case '\f':
      *out++ = 'f';
      break;
    case '\n':
      *out++ = 'n';
      break;
    case '\r':
      *out++ = 'r';
      break;
    case '\t':
      *out++ = 't';
      break;
    default:
      *out++ = 'u';
      *out++ = '0';
      *out++ = '0';
      *out++ = hex[c >> 4];
      *out++ = hex[c & 15];
    }
  }
  *out++ = '"';
  *out = '\0';
  jt->len = (size_t)(out - jt->data);
}

static void put_string(tly_jt_t *jt, const char *value) {
  put_string_n(jt, value, strlen(value));
}

void tly_jt_key(tly_jt_t *jt, const char *key) {
  if (jt->depth == 0) {
    jt->failed = 1;
    return;
  }
  before_member(jt);
  put_string(jt, key);
  put(jt, ":", 1);
}

void tly_jt_string(tly_jt_t *jt, const char *value) { put_string(jt, value); }

void tly_jt_int(tly_jt_t *jt, int64_t value) {
  char digits[24];
  size_t n = 0;
  /* As unsigned: INT64_MIN has no positive counterpart. */
  uint64_t magnitude =
      value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
  do {
    digits[sizeof(digits) - ++n] = (char)('0' + magnitude % 10);
    magnitude /= 10;
  } while (magnitude);
  if (value < 0)
    digits[sizeof(digits) - ++n] = '-';
  put(jt, digits + sizeof(digits) - n, n);
}

void tly_jt_bool(tly_jt_t *jt, int value) {
  if (value)
    put(jt, "true", 4);
  else
    put(jt, "false", 5);
}

void tly_jt_null(tly_jt_t *jt) { put(jt, "null", 4); }

void tly_jt_raw(tly_jt_t *jt, const char *text, size_t len) {
  put(jt, text, len);
}

char *tly_jt_finish(tly_jt_t *jt) {
  if (jt->failed || jt->depth != 0) {
    free(jt->data);
    jt->data = NULL;
    return NULL;
  }
  char *text = jt->data;
  jt->data = NULL;
  return text;
}

/* One value of a jansson tree, as jansson's dump writes it. */
static void put_value(tly_jt_t *jt, json_t *value, int depth) {
  if (jt->failed)
    return;
  if (depth > TLY_JT_DEPTH_MAX) {
    jt->failed = 1;
    return;
  }
  switch (json_typeof(value)) {
  case JSON_OBJECT: {
    put(jt, "{", 1);
    int first = 1;
    for (void *iter = json_object_iter(value); iter;
         iter = json_object_iter_next(value, iter)) {
      const char *key = json_object_iter_key(iter);
#if JANSSON_VERSION_HEX >= 0x020e00
      size_t key_len = json_object_iter_key_len(iter);
#else
      size_t key_len = strlen(key);
#endif
      if (!first)
        put(jt, ",", 1);
      first = 0;
      put_string_n(jt, key, key_len);
      put(jt, ":", 1);
      put_value(jt, json_object_iter_value(iter), depth + 1);
    }
    put(jt, "}", 1);
    break;
  }
  case JSON_ARRAY:
    put(jt, "[", 1);
    for (size_t i = 0; i < json_array_size(value); i++) {
      if (i)
        put(jt, ",", 1);
      put_value(jt, json_array_get(value, i), depth + 1);
    }
    put(jt, "]", 1);
    break;
  case JSON_STRING:
    put_string_n(jt, json_string_value(value), json_string_length(value));
    break;
  case JSON_INTEGER:
    tly_jt_int(jt, (int64_t)json_integer_value(value));
    break;
  case JSON_TRUE:
    put(jt, "true", 4);
    break;
  case JSON_FALSE:
    put(jt, "false", 5);
    break;
  case JSON_NULL:
    put(jt, "null", 4);
    break;
  case JSON_REAL: /* jansson's number format is its own: left to it */
  default:
    jt->failed = 1;
  }
}

char *tly_jt_dump(json_t *value) {
  /* json_dumps without JSON_ENCODE_ANY takes an object or an array only. */
  if (!value || (!json_is_object(value) && !json_is_array(value)))
    return NULL;
  tly_jt_t jt;
  tly_jt_init(&jt, 1024);
  put_value(&jt, value, 0);
  return tly_jt_finish(&jt);
}
