/*
 * tly_request_subject.h - subjects as the HTTP port takes them from client
 * bytes, pure: the {subject} path segment's percent-decoding (the port
 * routes on the raw path, so a subject may hold a '/' sent as %2F), UTF-8
 * checks (every answer is JSON, which carries only UTF-8), and the one
 * bound every subject the port accepts, from a path or from an event body,
 * obeys: UTF-8 without NUL, at most TLY_REQ_SUBJECT_MAX bytes written as
 * "kind:id". So whatever POST /v1/events accepts, a path can read back.
 */
#ifndef TLY_REQUEST_SUBJECT_H
#define TLY_REQUEST_SUBJECT_H

#include "tly_request.h"

#include <stddef.h>

/* Percent-decodes the raw path segment segment[0..len) (RFC 3986: "%2F"
 * is "/", "%3A" ":"; '+' and everything else stay as they are) into out,
 * NUL-terminated. The port routes on the raw path, so a subject holding
 * '/', '?', '%' or '#' is reachable as
 * /v1/subjects/user%3Aa%2Fb/usage. 0, or -1 (400, field "subject") for a
 * '%' not followed by two hex digits, a NUL byte ("%00"), or a result of
 * out_size bytes or more. */
int tly_req_decode_segment(const char *segment, size_t len, char *out,
                           size_t out_size, tly_req_error_t *err);

/* 1 when text[0..len) is well-formed UTF-8 (no overlong forms, surrogates
 * or code points past U+10FFFF), else 0. */
int tly_req_utf8_valid(const char *text, size_t len);
/* Replaces every byte of text that is not part of a well-formed UTF-8
 * sequence with '?', in place. */
void tly_req_utf8_sanitize(char *text);

/* The subject bound for a parsed subject (kind, id): UTF-8, at most
 * TLY_REQ_SUBJECT_MAX bytes as "kind:id". 0, or -1 (400 bad_subject naming
 * field). */
int tly_req_check_subject(tly_subject_kind_t kind, const char *id,
                          const char *field, tly_req_error_t *err);

#endif
