/*
 * tly_ui.h - the dashboard's files (/ui/), compiled into the binary from
 * ui/ by cmake/embed_ui.cmake, and what the port answers them with: the
 * file by name, its content type and the security headers every /ui/
 * answer carries (a strict Content-Security-Policy: scripts and styles
 * from this origin only, nothing inline, no framing).
 *
 * Pure lookups over constant data: no I/O, no allocation. The page signs
 * in with an API key it keeps in memory or sessionStorage and calls the
 * JSON API with it as a bearer token; nothing here ever sees a key.
 */
#ifndef TLY_UI_H
#define TLY_UI_H

#include <stddef.h>

typedef struct {
  const char *name; /* "index.html", "app.js": no directories */
  const unsigned char *data;
  size_t size;
} tly_ui_file_t;

/* Defined in the build tree (generated/tly_ui_embed.c), sorted by name. */
extern const tly_ui_file_t tly_ui_files[];
extern const size_t tly_ui_file_count;

/* The file called name (len bytes, not NUL-terminated), or NULL. */
const tly_ui_file_t *tly_ui_find(const char *name, size_t len);

/* The content type of a file name, by its extension
 * ("application/octet-stream" for one not known). */
const char *tly_ui_content_type(const char *name);

/* The headers of every /ui/ answer, NULL-terminated pairs of name and
 * value. */
extern const char *const tly_ui_headers[];

/* The Content-Security-Policy alone (also in tly_ui_headers). */
extern const char tly_ui_csp[];

#endif
