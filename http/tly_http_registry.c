/*
 * tly_http_registry.c - the Confluent Schema Registry's read API for
 * tally's own two schemas, on the HTTP port, so a Confluent deserializer
 * (or any client that fetches a writer schema by the id in a record's
 * framing) pointed at tally decodes tally.alerts and tally.usage with no
 * hand-copied .avsc.
 *
 *   GET /subjects                                ["tally.usage-value", ...]
 *   GET /subjects/{subject}/versions             [1]
 *   GET /subjects/{subject}/versions/{version}   {"subject", "version",
 *                                                 "id", "schema"}
 *   GET /schemas/ids/{id}                        {"schema"}
 *
 * Subjects follow Confluent's TopicNameStrategy ("<topic>-value") for the
 * topics configured; each has one version, 1 ("latest" and -1 name it too),
 * and the ids are the ones tally frames with: 1 and 2 without a registry,
 * the registry's with one (then this is a read-only mirror of what tally
 * registered there). Answers carry Confluent's content type
 * application/vnd.schemaregistry.v1+json (whose body is JSON, so a client
 * asking for application/json reads it as such), and errors both shapes:
 * Confluent's {"error_code": 40401, "message": ...}, which its clients
 * parse, and tally's {"error": {"code", "message", "field"}}.
 *
 * Auth: the bearer token, or basic auth with an API key as the password
 * (tly_auth_check_basic_or_bearer), checked by tly_http.c before these
 * handlers run. Never writes: POST and DELETE are not routes (405).
 */
#include "tly_http_internal.h"

#include "tly_alert.h"
#include "tly_codec.h"
#include "tly_topic_names.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REGISTRY_CONTENT_TYPE "application/vnd.schemaregistry.v1+json"

enum { SCHEMA_EVENT = 0, SCHEMA_ALERT = 1, SCHEMA_COUNT = 2 };

/* The schema text as a registry stores it: compact JSON. */
static char *compact(const char *schema_json) {
  json_error_t error;
  json_t *schema = json_loads(schema_json, 0, &error);
  char *text = schema ? json_dumps(schema, JSON_COMPACT) : NULL;
  json_decref(schema);
  return text;
}

int tly_http_registry_init(tly_http_t *http, char *errstr, size_t errstr_size) {
  const char *topics[SCHEMA_COUNT] = {
      http->conf.usage_topic ? http->conf.usage_topic : TLY_DEFAULT_USAGE_TOPIC,
      http->conf.alerts_topic ? http->conf.alerts_topic
                              : TLY_DEFAULT_ALERTS_TOPIC};
  const char *texts[SCHEMA_COUNT] = {tly_event_schema_json,
                                     tly_alert_schema_json};
  http->registry_id[SCHEMA_EVENT] = http->conf.event_schema_id
                                        ? http->conf.event_schema_id
                                        : TLY_CODEC_DEFAULT_SCHEMA_ID;
  http->registry_id[SCHEMA_ALERT] = http->conf.alert_schema_id
                                        ? http->conf.alert_schema_id
                                        : TLY_ALERT_SCHEMA_ID;
  for (int i = 0; i < SCHEMA_COUNT; i++) {
    snprintf(http->registry_subject[i], sizeof(http->registry_subject[i]),
             "%s-value", topics[i]);
    http->registry_schema[i] = compact(texts[i]);
    if (!http->registry_schema[i]) {
      snprintf(errstr, errstr_size, "http: cannot compact the %s schema",
               i == SCHEMA_EVENT ? "event" : "alert");
      return -1;
    }
  }
  return 0;
}

void tly_http_registry_free(tly_http_t *http) {
  for (int i = 0; i < SCHEMA_COUNT; i++) {
    free(http->registry_schema[i]);
    http->registry_schema[i] = NULL;
  }
}

/* ---- answers --------------------------------------------------------- */

static void respond(response_t *out, int status, json_t *body) {
  tly_http_respond_json(out, status, body);
  out->content_type = REGISTRY_CONTENT_TYPE;
}

/* Confluent's error (error_code, message) and tally's (error{...}). */
static void respond_error(response_t *out, int status, int error_code,
                          const char *code, const char *field,
                          const char *message) {
  respond(out, status,
          json_pack("{s:i,s:s,s:o}", "error_code", error_code, "message",
                    message, "error",
                    tly_http_error_json(code, message, field)));
}

/* The schema of subject, or -1 after a 404 (40401). */
static int find_subject(tly_http_t *http, const char *subject,
                        response_t *out) {
  for (int i = 0; i < SCHEMA_COUNT; i++)
    if (strcmp(subject, http->registry_subject[i]) == 0)
      return i;
  char message[TLY_REQ_SUBJECT_MAX + 64];
  snprintf(message, sizeof(message), "Subject '%s' not found.", subject);
  respond_error(out, 404, 40401, "subject_not_found", "subject", message);
  return -1;
}

void tly_http_handle_registry_subjects(tly_http_t *http, request_t *req,
                                       struct MHD_Connection *connection,
                                       response_t *out) {
  (void)req;
  (void)connection;
  respond(out, 200,
          json_pack("[s,s]", http->registry_subject[SCHEMA_EVENT],
                    http->registry_subject[SCHEMA_ALERT]));
}

void tly_http_handle_registry_versions(tly_http_t *http, request_t *req,
                                       struct MHD_Connection *connection,
                                       response_t *out) {
  (void)connection;
  if (find_subject(http, req->subject, out) >= 0)
    respond(out, 200, json_pack("[i]", 1));
}

/* The last path segment of the request target (before any query). */
static void last_segment(const request_t *req, char *out, size_t size) {
  const char *target = req->target ? req->target : "";
  size_t len = strcspn(target, "?#");
  const char *start = target + len;
  while (start > target && start[-1] != '/')
    start--;
  size_t segment_len = (size_t)(target + len - start);
  snprintf(out, size, "%.*s", (int)segment_len, start);
}

/* "latest", -1 or 1: 1 (the only version); another integer: 0 (no such
 * version); anything else: -1. */
static int parse_version(const char *text) {
  if (strcmp(text, "latest") == 0 || strcmp(text, "-1") == 0)
    return 1;
  if (!*text || strlen(text) > 10)
    return -1;
  for (const char *p = text; *p; p++)
    if (*p < '0' || *p > '9')
      return -1;
  return strtol(text, NULL, 10) == 1 ? 1 : 0;
}

void tly_http_handle_registry_version(tly_http_t *http, request_t *req,
                                      struct MHD_Connection *connection,
                                      response_t *out) {
  (void)connection;
  char version[64], message[256];
  int schema = find_subject(http, req->subject, out);
  if (schema < 0)
    return;
  last_segment(req, version, sizeof(version));
  switch (parse_version(version)) {
  case 1:
    respond(out, 200,
            json_pack("{s:s,s:i,s:i,s:s}", "subject",
                      http->registry_subject[schema], "version", 1, "id",
                      (json_int_t)http->registry_id[schema], "schema",
                      http->registry_schema[schema]));
    return;
  case 0:
    snprintf(message, sizeof(message), "Version %s not found.", version);
    respond_error(out, 404, 40402, "version_not_found", "version", message);
    return;
  default:
    snprintf(message, sizeof(message),
             "The specified version '%.40s' is not a valid version id. "
             "Allowed values are between [1, 2^31-1] and the string "
             "\"latest\"",
             version);
    respond_error(out, 422, 42202, "bad_version", "version", message);
  }
}

void tly_http_handle_registry_schema(tly_http_t *http, request_t *req,
                                     struct MHD_Connection *connection,
                                     response_t *out) {
  (void)connection;
  char message[128];
  const char *text = req->subject; /* the {id} segment */
  int digits = *text && strlen(text) <= 10;
  for (const char *p = text; *p && digits; p++)
    digits = *p >= '0' && *p <= '9';
  int64_t id = digits ? strtoll(text, NULL, 10) : -1;
  for (int i = 0; i < SCHEMA_COUNT && id >= 0; i++)
    if (id == http->registry_id[i]) {
      respond(out, 200, json_pack("{s:s}", "schema", http->registry_schema[i]));
      return;
    }
  snprintf(message, sizeof(message), "Schema %.20s not found", text);
  respond_error(out, 404, 40403, "schema_not_found", "id", message);
}
