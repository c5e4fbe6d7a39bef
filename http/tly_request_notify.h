/*
 * tly_request_notify.h - the notifications routes' requests, as pure
 * functions (no socket, no store), like tly_request.h whose errors they
 * share:
 *
 *   GET  /v1/subjects/{subject}/notifications?unread=1&limit=N
 *   POST /v1/subjects/{subject}/notifications/read {"ids": ["<alert_id>"]}
 *
 * A notification is an alert of the subject (GET .../alerts) with its read
 * state (tly_read_marks.h, folded from NotificationRead events).
 */
#ifndef TLY_REQUEST_NOTIFY_H
#define TLY_REQUEST_NOTIFY_H

#include "tly_request.h"

#include <stddef.h>

/* Ids in one POST: 1 .. 100, each 1 .. TLY_NOTIFICATION_ID_MAX bytes. */
#define TLY_REQ_READ_IDS_MAX 100

typedef struct {
  size_t count;
  char **ids; /* malloc'd, each malloc'd; repeated ids given once */
} tly_req_read_ids_t;

/* The POST body: {"ids": [...]} and nothing else: 1 .. 100 strings, each
 * 1 .. TLY_NOTIFICATION_ID_MAX bytes of UTF-8 without NUL. 0, or -1 with a
 * 400 naming the field ("ids"). */
int tly_req_parse_read_ids(const char *body, size_t len,
                           tly_req_read_ids_t *out, tly_req_error_t *err);
void tly_req_read_ids_clear(tly_req_read_ids_t *ids);

/* ?unread=: absent, "0" or "false": every notification; "1" or "true":
 * the unread ones. 0, or -1 (400, field "unread"). */
int tly_req_parse_unread(const char *text, int *unread, tly_req_error_t *err);

/* The event id of the read mark of alert_id: "notification_read:" and the
 * hex SHA-256 of the id (so marking an alert twice is one event, deduped
 * like any other). out holds at least 83 bytes. */
#define TLY_REQ_READ_EVENT_ID_SIZE 83
void tly_req_read_event_id(const char *alert_id,
                           char out[TLY_REQ_READ_EVENT_ID_SIZE]);

#endif
