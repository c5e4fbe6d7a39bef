/*
 * tly_request_notify.c - the notifications routes' requests (see
 * tly_request_notify.h). Pure.
 */
#include "tly_request_notify.h"

#include "tly_event.h"
#include "tly_sha256.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void tly_req_read_ids_clear(tly_req_read_ids_t *ids) {
  if (!ids)
    return;
  for (size_t i = 0; i < ids->count; i++)
    free(ids->ids[i]);
  free(ids->ids);
  memset(ids, 0, sizeof(*ids));
}

int tly_req_parse_read_ids(const char *body, size_t len,
                           tly_req_read_ids_t *out, tly_req_error_t *err) {
  json_error_t error;
  memset(out, 0, sizeof(*out));
  json_t *root =
      body ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &error) : NULL;
  int rc = -1;
  if (!json_is_object(root)) {
    tly_req_fail(err, 400, "bad_json", NULL,
                 "body must be a JSON object {\"ids\": [...]}");
    goto done;
  }
  const char *key;
  json_t *value;
  json_object_foreach(root, key, value) {
    if (strcmp(key, "ids") != 0) {
      tly_req_fail(err, 400, "unknown_field", key, "unknown field '%.64s'",
                   key);
      goto done;
    }
  }
  json_t *ids = json_object_get(root, "ids");
  size_t count = json_array_size(ids);
  if (!json_is_array(ids) || count == 0 || count > TLY_REQ_READ_IDS_MAX) {
    tly_req_fail(err, 400, "bad_request", "ids",
                 "field 'ids': must be an array of 1 to %d alert ids",
                 TLY_REQ_READ_IDS_MAX);
    goto done;
  }
  out->ids = calloc(count, sizeof(*out->ids));
  if (!out->ids) {
    tly_req_fail(err, 500, "internal", NULL, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < count; i++) {
    json_t *item = json_array_get(ids, i);
    size_t item_len = json_string_length(item);
    const char *text = json_string_value(item);
    if (!json_is_string(item) || item_len == 0 ||
        item_len > TLY_NOTIFICATION_ID_MAX || strlen(text) != item_len) {
      tly_req_fail(err, 400, "bad_request", "ids",
                   "field 'ids[%zu]': must be an alert id of 1 to %d bytes", i,
                   TLY_NOTIFICATION_ID_MAX);
      goto done;
    }
    int repeated = 0;
    for (size_t j = 0; j < out->count && !repeated; j++)
      repeated = strcmp(out->ids[j], text) == 0;
    if (repeated)
      continue;
    if (!(out->ids[out->count] = strdup(text))) {
      tly_req_fail(err, 500, "internal", NULL, "out of memory");
      goto done;
    }
    out->count++;
  }
  rc = 0;
done:
  json_decref(root);
  if (rc)
    tly_req_read_ids_clear(out);
  return rc;
}

int tly_req_parse_unread(const char *text, int *unread, tly_req_error_t *err) {
  *unread = 0;
  if (!text || strcmp(text, "0") == 0 || strcmp(text, "false") == 0)
    return 0;
  if (strcmp(text, "1") == 0 || strcmp(text, "true") == 0) {
    *unread = 1;
    return 0;
  }
  return tly_req_fail(err, 400, "bad_request", "unread",
                      "query parameter 'unread': must be 1, 0, true or false");
}

void tly_req_read_event_id(const char *alert_id,
                           char out[TLY_REQ_READ_EVENT_ID_SIZE]) {
  static const char prefix[] = "notification_read:";
  memcpy(out, prefix, sizeof(prefix) - 1);
  tly_sha256_hex(alert_id, strlen(alert_id), out + sizeof(prefix) - 1);
}
