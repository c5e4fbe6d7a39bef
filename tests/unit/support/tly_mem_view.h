/*
 * tly_mem_view.h - a plain in-memory tly_billing_view_t for unit tests.
 *
 * The fold's state (tly_billing.h) in fixed arrays, found by linear search:
 * subjects (by id: the account, the open holds, the distinct values), rows
 * by (subject, cycle, feature), buckets by (subject, hour, name: a feature
 * or a group, tly_dims.h), contributions by (subject, event id), kept
 * encoded as the processor keeps them, and the folded event ids. The
 * superset of what the billing unit tests need; the optional tables are
 * switched on per view (TLY_MEM_WITH_*), so a test can also fold through a
 * view that lacks one. The subject's kind is not part of any key (the tests
 * use one kind). A table that runs full fails the test (cmocka), never
 * overwrites. Test code only: it is linked into the unit tests, never into
 * tally.
 */
#ifndef TLY_MEM_VIEW_H
#define TLY_MEM_VIEW_H

#include "tly_billing.h"
#include "tly_corrections.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_MEM_SUBJECTS 4
#define TLY_MEM_ROWS 64
#define TLY_MEM_BUCKETS 512
#define TLY_MEM_CONTRIBUTIONS 256
#define TLY_MEM_SEEN 4096
#define TLY_MEM_ID_MAX 64 /* a subject or event id with its NUL */

/* The optional parts of the view (bits for tly_mem_view_new). */
enum {
  TLY_MEM_WITH_NAMES = 1,         /* group_bucket: dimensions' groups */
  TLY_MEM_WITH_HOLDS = 2,         /* holds: reservations */
  TLY_MEM_WITH_DISTINCT = 4,      /* distinct: unique_count's values */
  TLY_MEM_WITH_CONTRIBUTIONS = 8, /* contribution: usage_corrected */
};

typedef struct {
  char id[TLY_MEM_ID_MAX];
  tly_account_t account;
  tly_holds_t holds;
  tly_distinct_sets_t distinct;
} tly_mem_subject_t;

typedef struct {
  char subject[TLY_MEM_ID_MAX];
  int64_t cycle;
  char feature[TLY_CONFIG_NAME_MAX];
  tly_billing_row_t row;
} tly_mem_row_t;

typedef struct {
  char subject[TLY_MEM_ID_MAX];
  int32_t hour;
  char name[TLY_BUCKET_NAME_MAX];
  tly_bucket_t bucket;
} tly_mem_bucket_t;

typedef struct {
  char subject[TLY_MEM_ID_MAX];
  char event_id[TLY_MEM_ID_MAX];
  unsigned char value[TLY_CONTRIBUTION_MAX];
  size_t len;
} tly_mem_contribution_t;

typedef struct {
  tly_billing_view_t view; /* what the fold is given: &m->view */
  tly_mem_subject_t subjects[TLY_MEM_SUBJECTS];
  size_t subject_count;
  tly_mem_row_t rows[TLY_MEM_ROWS];
  size_t row_count;
  tly_mem_bucket_t buckets[TLY_MEM_BUCKETS];
  size_t bucket_count;
  tly_mem_contribution_t contributions[TLY_MEM_CONTRIBUTIONS];
  size_t contribution_count;
  char seen[TLY_MEM_SEEN][TLY_MEM_ID_MAX];
  size_t seen_count;
  int64_t watermark;
} tly_mem_view_t;

/* An empty view (watermark INT64_MIN) with the optional parts in with. */
tly_mem_view_t *tly_mem_view_new(unsigned with);
/* Frees the view and the subjects' holds and distinct values; NULL is fine. */
void tly_mem_view_free(tly_mem_view_t *m);

/* The subject of id, added (zeroed) when absent. */
tly_mem_subject_t *tly_mem_subject(tly_mem_view_t *m, const char *id);
/* The row, bucket or contribution of the subject, or NULL when absent. */
tly_billing_row_t *tly_mem_row_find(tly_mem_view_t *m, const char *subject,
                                    int64_t cycle, const char *feature);
tly_mem_bucket_t *tly_mem_bucket_find(tly_mem_view_t *m, const char *subject,
                                      int32_t hour, const char *name);
tly_mem_contribution_t *tly_mem_contribution_find(tly_mem_view_t *m,
                                                  const char *subject,
                                                  const char *event_id);

/* What a billing unit test folds with: the configuration loaded from JSON
 * text, a 7-day dedupe window, a view with the optional parts in with (and
 * a second one, ref, for tests that fold a reference stream beside it), the
 * alerts of the folds, an error buffer and a counter for event ids. */
typedef struct {
  tly_config_t *config;
  tly_billing_t billing;
  tly_mem_view_t *m, *ref;
  tly_alert_list_t alerts;
  char errstr[512];
  int counter;
} tly_mem_fixture_t;

/* NULL (the configuration's error printed) when config_json is refused. */
tly_mem_fixture_t *tly_mem_fixture_new(const char *config_json, unsigned with,
                                       int with_ref);
void tly_mem_fixture_free(tly_mem_fixture_t *f);

#endif
