/*
 * tly_http_ui.c - the dashboard's routes: GET /ui (a redirect to /ui/),
 * GET /ui/ (index.html) and GET /ui/{file}, answered from the files
 * compiled into the binary (tly_ui.h) with its security headers. Public:
 * the files hold no data; the page asks for an API key and sends it as a
 * bearer token to the JSON routes, which check it as for any client.
 * Never reads state, never produces.
 */
#include "tly_http_internal.h"
#include "tly_ui.h"

#include <string.h>

static void respond_file(response_t *out, const tly_ui_file_t *file) {
  out->status = 200;
  out->static_body = file->data;
  out->static_len = file->size;
  out->content_type = tly_ui_content_type(file->name);
  out->extra_headers = tly_ui_headers;
}

void tly_http_handle_ui_root(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  static const unsigned char moved[] = "/ui/\n";
  (void)http, (void)req, (void)connection;
  out->status = 308;
  out->static_body = moved;
  out->static_len = sizeof(moved) - 1;
  out->content_type = "text/plain; charset=utf-8";
  out->extra_headers = tly_ui_headers;
  out->location = "/ui/";
}

void tly_http_handle_ui_index(tly_http_t *http, request_t *req,
                              struct MHD_Connection *connection,
                              response_t *out) {
  (void)http, (void)req, (void)connection;
  const tly_ui_file_t *index = tly_ui_find("index.html", 10);
  if (!index) {
    tly_http_respond_error(out, 404, "not_found", "the dashboard is not built");
    return;
  }
  respond_file(out, index);
}

void tly_http_handle_ui_file(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  (void)http, (void)connection;
  /* The route decoded the last segment into req->subject. */
  const tly_ui_file_t *file = tly_ui_find(req->subject, strlen(req->subject));
  if (!file) {
    tly_http_respond_error(out, 404, "not_found", "no such dashboard file");
    return;
  }
  respond_file(out, file);
}
