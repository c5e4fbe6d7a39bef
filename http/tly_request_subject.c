/*
 * tly_request_subject.c - subjects as the HTTP port takes them from client
 * bytes: percent-decoding of the path segment, UTF-8 checks, the subject
 * bound (see tly_request_subject.h). Pure.
 */
#include "tly_request_subject.h"

#include "tly_sha256.h"

#include <stdint.h>
#include <string.h>

int tly_req_decode_segment(const char *segment, size_t len, char *out,
                           size_t out_size, tly_req_error_t *err) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char byte = (unsigned char)segment[i];
    if (byte == '%') {
      if (len - i < 3 || tly_hex_value(segment[i + 1]) < 0 ||
          tly_hex_value(segment[i + 2]) < 0)
        return tly_req_fail(err, 400, "bad_subject", "subject",
                            "subject: '%%' must be followed by two hex "
                            "digits (percent-encoding)");
      byte = (unsigned char)(tly_hex_value(segment[i + 1]) * 16 +
                             tly_hex_value(segment[i + 2]));
      i += 2;
    }
    if (byte == 0)
      return tly_req_fail(err, 400, "bad_subject", "subject",
                          "subject: must not contain NUL");
    if (n + 1 >= out_size)
      return tly_req_fail(err, 400, "bad_subject", "subject",
                          "subject: longer than %d bytes", TLY_REQ_SUBJECT_MAX);
    out[n++] = (char)byte;
  }
  out[n] = '\0';
  return 0;
}

/* The length of the well-formed UTF-8 sequence at text[0..len), 0 when
 * there is none. */
static size_t utf8_sequence(const unsigned char *p, size_t len) {
  unsigned char c = p[0];
  uint32_t code;
  size_t extra;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    extra = 1;
    code = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    extra = 2;
    code = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    extra = 3;
    code = c & 0x07;
  } else {
    return 0; /* a continuation byte first, an overlong lead, > U+10FFFF */
  }
  if (len <= extra)
    return 0;
  for (size_t k = 1; k <= extra; k++) {
    if ((p[k] & 0xc0) != 0x80)
      return 0;
    code = (code << 6) | (p[k] & 0x3f);
  }
  if ((extra == 2 && code < 0x800) || (extra == 3 && code < 0x10000) ||
      code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff))
    return 0; /* overlong, out of range, or a surrogate */
  return extra + 1;
}

int tly_req_utf8_valid(const char *text, size_t len) {
  const unsigned char *p = (const unsigned char *)text;
  for (size_t i = 0; i < len;) {
    size_t n = utf8_sequence(p + i, len - i);
    if (!n)
      return 0;
    i += n;
  }
  return 1;
}

void tly_req_utf8_sanitize(char *text) {
  unsigned char *p = (unsigned char *)text;
  size_t len = strlen(text);
  for (size_t i = 0; i < len;) {
    size_t n = utf8_sequence(p + i, len - i);
    if (n) {
      i += n;
    } else {
      p[i++] = '?';
    }
  }
}

int tly_req_check_subject(tly_subject_kind_t kind, const char *id,
                          const char *field, tly_req_error_t *err) {
  char key[TLY_REQ_SUBJECT_MAX + 16];
  size_t id_len = strlen(id);
  if (!tly_req_utf8_valid(id, id_len))
    return tly_req_fail(err, 400, "bad_subject", field,
                        "%s: not valid UTF-8 (percent-encode the UTF-8 "
                        "bytes of the id)",
                        field);
  if (id_len > TLY_SUBJECT_ID_MAX ||
      tly_subject_key(kind, id, key, sizeof(key)) > TLY_REQ_SUBJECT_MAX)
    return tly_req_fail(err, 400, "bad_subject", field,
                        "%s: its id is longer than %d bytes", field,
                        TLY_SUBJECT_ID_MAX);
  return 0;
}
