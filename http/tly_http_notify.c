/*
 * tly_http_notify.c - notifications with read state (issue 18):
 *
 *   GET  /v1/subjects/{subject}/notifications?unread=1&limit=N
 *        the subject's alerts (those /alerts answers: kept
 *        retention.alerts_days), newest first, each with "read", and the
 *        count still unread;
 *   POST /v1/subjects/{subject}/notifications/read {"ids": [...]}
 *        marks them read: one NotificationRead event per alert not read
 *        yet, produced to the usage topic keyed by the subject and folded
 *        into the subject record's read marks (tly_read_marks.h) like any
 *        other event, so the marks survive crashes and partition moves.
 *        202 once Kafka acknowledged every mark; the GET shows them after
 *        the commit that folds them. An id that is no alert of the subject
 *        is 404 notification_not_found (nothing is produced).
 *
 * Both are owner-only (tly_http.c sends them to the partition's owner):
 * read state is the subject's state. Never writes state itself.
 */
#include "tly_http_internal.h"

#include "tly_alert.h"
#include "tly_log.h"
#include "tly_read_marks.h"
#include "tly_request.h"
#include "tly_request_notify.h"
#include "tly_state.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the subject's alerts ----------------------------------------------- */

/* The subject's state and its kept alerts (oldest first) in *list; 1, or 0
 * when out holds the answer (an error, or 404 for an unknown subject). */
static int load_notes(tly_http_t *http, request_t *req,
                      tly_req_subject_t *subject, tly_subject_state_t *state,
                      json_t **list, response_t *out) {
  tly_req_error_t err;
  char errstr[512];
  *list = NULL;
  if (tly_req_parse_subject(req->subject, subject, &err)) {
    tly_http_respond_req_error(out, &err);
    return 0;
  }
  int found = tly_http_find_subject(http, req, subject, state, out);
  if (found == 0) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message), "no usage recorded for subject %s",
             subject->key);
    tly_http_respond_error(out, 404, "not_found", message);
  }
  if (found <= 0)
    return 0;
  tly_http_alert_scan_t scan = {http, INT64_MIN, json_array(), 0};
  if (!scan.list ||
      tly_state_history(http->conf.store, state->partition, subject->kind,
                        subject->id, TLY_HISTORY_ALERT,
                        tly_http_history_horizon(http, state->partition),
                        tly_http_visit_alert, &scan, errstr, sizeof(errstr)) ||
      scan.failed) {
    json_decref(scan.list);
    tly_http_respond_error(out, 500, "store_error",
                           scan.failed ? "out of memory or a corrupt stored "
                                         "alert"
                                       : errstr);
    return 0;
  }
  *list = scan.list;
  return 1;
}

static int note_is_read(const tly_read_marks_t *marks, const json_t *alert) {
  const char *id = json_string_value(json_object_get(alert, "alert_id"));
  return id && tly_read_marks_is_read(marks, tly_read_mark_hash(id, strlen(id)),
                                      json_integer_value(json_object_get(
                                          alert, "occurred_at_ms")));
}

/* ---- GET .../notifications ---------------------------------------------- */

void tly_http_handle_notifications(tly_http_t *http, request_t *req,
                                   struct MHD_Connection *connection,
                                   response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  int64_t limit;
  int unread_only;
  json_t *list = NULL;
  if (tly_req_parse_limit(MHD_lookup_connection_value(
                              connection, MHD_GET_ARGUMENT_KIND, "limit"),
                          &limit, &err) ||
      tly_req_parse_unread(MHD_lookup_connection_value(
                               connection, MHD_GET_ARGUMENT_KIND, "unread"),
                           &unread_only, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (!load_notes(http, req, &subject, &state, &list, out))
    goto done;
  json_t *notes = json_array();
  size_t total = json_array_size(list), unread = 0;
  for (size_t i = total; i > 0; i--) { /* newest first */
    json_t *alert = json_array_get(list, i - 1);
    int read = note_is_read(&state.read_marks, alert);
    unread += !read;
    json_object_set_new(alert, "read", json_boolean(read));
    if ((!unread_only || !read) && json_array_size(notes) < (size_t)limit)
      json_array_append(notes, alert);
  }
  tly_http_respond_json(
      out, 200,
      json_pack("{s:s,s:I,s:I,s:I,s:o}", "subject", subject.key,
                "retention_days",
                (json_int_t)http->conf.config->retention.alerts_days, "total",
                (json_int_t)total, "unread", (json_int_t)unread,
                "notifications", notes));
done:
  json_decref(list);
  tly_state_subject_clear(&state);
}

/* ---- POST .../notifications/read ---------------------------------------- */

typedef struct {
  char subject[TLY_REQ_SUBJECT_MAX + 16];
  json_t *marked;       /* the ids produced */
  json_t *already;      /* the ids read already */
  atomic_int failed;    /* delivery reports with an error */
  char error[256];      /* the first one's */
  pthread_mutex_t lock; /* error */
} read_call_t;

static void read_reported(void *opaque, int error, const char *errstr,
                          int32_t partition, int64_t offset) {
  read_call_t *call = opaque;
  (void)partition, (void)offset;
  if (!error)
    return;
  pthread_mutex_lock(&call->lock);
  if (!atomic_fetch_add(&call->failed, 1))
    snprintf(call->error, sizeof(call->error), "%s", errstr ? errstr : "");
  pthread_mutex_unlock(&call->lock);
}

static json_t *read_answer_json(read_call_t *call) {
  return json_pack("{s:s,s:O,s:O,s:b}", "subject", call->subject, "marked",
                   call->marked, "already_read", call->already, "pending",
                   json_array_size(call->marked) > 0);
}

static void read_answer(void *opaque, response_t *out) {
  read_call_t *call = opaque;
  if (atomic_load(&call->failed)) {
    char message[400];
    snprintf(message, sizeof(message),
             "%d read mark(s) were not acknowledged by Kafka (%s); retry",
             atomic_load(&call->failed), call->error);
    tly_http_respond_error(out, 503, "kafka_unavailable", message);
    return;
  }
  tly_http_respond_json(out, 202, read_answer_json(call));
}

static void read_free(void *opaque) {
  read_call_t *call = opaque;
  if (!call)
    return;
  json_decref(call->marked);
  json_decref(call->already);
  pthread_mutex_destroy(&call->lock);
  free(call);
}

/* The alert of list called id, or NULL. */
static json_t *find_alert(json_t *list, const char *id) {
  for (size_t i = 0; i < json_array_size(list); i++) {
    json_t *alert = json_array_get(list, i);
    const char *alert_id =
        json_string_value(json_object_get(alert, "alert_id"));
    if (alert_id && strcmp(alert_id, id) == 0)
      return alert;
  }
  return NULL;
}

void tly_http_handle_notifications_read(tly_http_t *http, request_t *req,
                                        struct MHD_Connection *connection,
                                        response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  tly_req_read_ids_t ids = {0};
  tly_req_events_t events = {0};
  json_t *list = NULL;
  read_call_t *call = NULL;
  if (tly_req_parse_read_ids(req->body, req->body_len, &ids, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (!tly_http_ingest_available(http, out) ||
      !load_notes(http, req, &subject, &state, &list, out))
    goto done;
  call = calloc(1, sizeof(*call));
  if (call)
    pthread_mutex_init(&call->lock, NULL);
  events.items = calloc(ids.count, sizeof(*events.items));
  if (!call || !events.items || !(call->marked = json_array()) ||
      !(call->already = json_array())) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    goto done;
  }
  snprintf(call->subject, sizeof(call->subject), "%s", subject.key);
  int64_t now_ms = tly_wall_ms();
  for (size_t i = 0; i < ids.count; i++) {
    json_t *alert = find_alert(list, ids.ids[i]);
    if (!alert) {
      char message[TLY_NOTIFICATION_ID_MAX + 96];
      snprintf(message, sizeof(message),
               "no notification %s for this subject (or it expired)",
               ids.ids[i]);
      tly_http_respond_json(
          out, 404,
          json_pack(
              "{s:o}", "error",
              tly_http_error_json("notification_not_found", message, "ids")));
      goto done;
    }
    if (note_is_read(&state.read_marks, alert)) {
      json_array_append_new(call->already, json_string(ids.ids[i]));
      continue;
    }
    tly_req_event_t *item = &events.items[events.count];
    char event_id[TLY_REQ_READ_EVENT_ID_SIZE];
    tly_req_read_event_id(ids.ids[i], event_id);
    item->event.event_id = strdup(event_id);
    item->event.occurred_at_ms = now_ms;
    item->event.subject_kind = subject.kind;
    item->event.subject_id = strdup(subject.id);
    item->event.body_kind = TLY_BODY_NOTIFICATION_READ;
    item->event.body.notification_read.alert_id = strdup(ids.ids[i]);
    item->event.body.notification_read.alert_at_ms =
        json_integer_value(json_object_get(alert, "occurred_at_ms"));
    item->ok = 1;
    events.count++;
    if (!item->event.event_id || !item->event.subject_id ||
        !item->event.body.notification_read.alert_id) {
      tly_http_respond_error(out, 500, "internal", "out of memory");
      goto done;
    }
    json_array_append_new(call->marked, json_string(ids.ids[i]));
  }
  if (!events.count) { /* every one was read already: nothing to send */
    tly_http_respond_json(out, 200, read_answer_json(call));
    goto done;
  }
  tly_http_produce_hooks_t hooks = {read_reported, read_answer, read_free,
                                    call};
  call = NULL; /* the ingest owns it now */
  tly_http_produce_many(http, req, connection, &events, &hooks, out);
done:
  read_free(call);
  tly_req_events_clear(&events);
  tly_req_read_ids_clear(&ids);
  json_decref(list);
  tly_state_subject_clear(&state);
}
