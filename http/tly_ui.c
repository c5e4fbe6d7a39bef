/*
 * tly_ui.c - the dashboard's files by name, their content types and the
 * security headers of /ui/ (see tly_ui.h). Pure.
 */
#include "tly_ui.h"

#include <string.h>

const char tly_ui_csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "manifest-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'";

const char *const tly_ui_headers[] = {
    "Content-Security-Policy", tly_ui_csp, "X-Content-Type-Options", "nosniff",
    "Referrer-Policy", "no-referrer", "X-Frame-Options", "DENY",
    "Cross-Origin-Opener-Policy", "same-origin", "Cross-Origin-Resource-Policy",
    "same-origin", "Permissions-Policy",
    "camera=(), microphone=(), geolocation=(), payment=()",
    /* Revalidated each time: a new binary serves new files at once. */
    "Cache-Control", "no-cache", NULL, NULL};

const tly_ui_file_t *tly_ui_find(const char *name, size_t len) {
  for (size_t i = 0; i < tly_ui_file_count; i++)
    if (strlen(tly_ui_files[i].name) == len &&
        memcmp(tly_ui_files[i].name, name, len) == 0)
      return &tly_ui_files[i];
  return NULL;
}

const char *tly_ui_content_type(const char *name) {
  static const struct {
    const char *ext, *type;
  } types[] = {
      {".html", "text/html; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".svg", "image/svg+xml"},
      {".json", "application/json"},
      {".png", "image/png"},
  };
  const char *dot = strrchr(name, '.');
  for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
    if (strcmp(dot, types[i].ext) == 0)
      return types[i].type;
  return "application/octet-stream";
}
