/*
 * tly_mem_view.c - a plain in-memory tly_billing_view_t for unit tests
 * (tly_mem_view.h).
 */
#include "tly_mem_view.h"

#include "tly_dims.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Copies id into out (size bytes); an id that does not fit fails the test. */
static void copy_id(char *out, size_t size, const char *id) {
  assert_true(strlen(id) < size);
  strcpy(out, id);
}

tly_mem_subject_t *tly_mem_subject(tly_mem_view_t *m, const char *id) {
  for (size_t i = 0; i < m->subject_count; i++)
    if (!strcmp(m->subjects[i].id, id))
      return &m->subjects[i];
  assert_true(m->subject_count < TLY_MEM_SUBJECTS);
  tly_mem_subject_t *s = &m->subjects[m->subject_count++];
  copy_id(s->id, sizeof(s->id), id);
  return s;
}

tly_billing_row_t *tly_mem_row_find(tly_mem_view_t *m, const char *subject,
                                    int64_t cycle, const char *feature) {
  for (size_t i = 0; i < m->row_count; i++)
    if (m->rows[i].cycle == cycle && !strcmp(m->rows[i].feature, feature) &&
        !strcmp(m->rows[i].subject, subject))
      return &m->rows[i].row;
  return NULL;
}

tly_mem_bucket_t *tly_mem_bucket_find(tly_mem_view_t *m, const char *subject,
                                      int32_t hour, const char *name) {
  for (size_t i = 0; i < m->bucket_count; i++)
    if (m->buckets[i].hour == hour && !strcmp(m->buckets[i].name, name) &&
        !strcmp(m->buckets[i].subject, subject))
      return &m->buckets[i];
  return NULL;
}

tly_mem_contribution_t *tly_mem_contribution_find(tly_mem_view_t *m,
                                                  const char *subject,
                                                  const char *event_id) {
  for (size_t i = 0; i < m->contribution_count; i++)
    if (!strcmp(m->contributions[i].event_id, event_id) &&
        !strcmp(m->contributions[i].subject, subject))
      return &m->contributions[i];
  return NULL;
}

/* ---- the view's callbacks ---------------------------------------------- */

static tly_account_t *mem_account(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id) {
  (void)kind;
  return &tly_mem_subject(view->opaque, id)->account;
}

static tly_billing_row_t *mem_row(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id,
                                  int64_t cycle, const char *feature) {
  tly_mem_view_t *m = view->opaque;
  (void)kind;
  tly_billing_row_t *found = tly_mem_row_find(m, id, cycle, feature);
  if (found)
    return found;
  assert_true(m->row_count < TLY_MEM_ROWS);
  tly_mem_row_t *row = &m->rows[m->row_count++];
  copy_id(row->subject, sizeof(row->subject), id);
  row->cycle = cycle;
  copy_id(row->feature, sizeof(row->feature), feature);
  return &row->row;
}

static tly_bucket_t *mem_bucket(tly_billing_view_t *view,
                                tly_subject_kind_t kind, const char *id,
                                int32_t hour, const char *name) {
  tly_mem_view_t *m = view->opaque;
  (void)kind;
  tly_mem_bucket_t *found = tly_mem_bucket_find(m, id, hour, name);
  if (found)
    return &found->bucket;
  assert_true(m->bucket_count < TLY_MEM_BUCKETS);
  found = &m->buckets[m->bucket_count++];
  copy_id(found->subject, sizeof(found->subject), id);
  found->hour = hour;
  copy_id(found->name, sizeof(found->name), name);
  return &found->bucket;
}

/* As tly_proc_view_group_bucket decides: name's own when used or while
 * fewer than max used ones of the prefix, else the prefix's "other". */
static tly_bucket_t *mem_group_bucket(tly_billing_view_t *view,
                                      tly_subject_kind_t kind, const char *id,
                                      int32_t hour, char *name,
                                      size_t prefix_len, long max) {
  tly_mem_view_t *m = view->opaque;
  long used = 0;
  tly_mem_bucket_t *found = NULL;
  for (size_t i = 0; i < m->bucket_count; i++) {
    tly_mem_bucket_t *b = &m->buckets[i];
    if (b->hour != hour || strcmp(b->subject, id) ||
        strncmp(b->name, name, prefix_len))
      continue;
    if (!strcmp(b->name, name))
      found = b;
    used += b->bucket.event_count != 0;
  }
  if ((!found || !found->bucket.event_count) && used >= max)
    strcpy(name + prefix_len, TLY_DIM_OTHER);
  return mem_bucket(view, kind, id, hour, name);
}

static int mem_seen(tly_billing_view_t *view, const char *event_id,
                    int64_t occurred_at, int record) {
  tly_mem_view_t *m = view->opaque;
  (void)occurred_at;
  for (size_t i = 0; i < m->seen_count; i++)
    if (!strcmp(m->seen[i], event_id))
      return record ? 0 : 1;
  if (record) {
    assert_true(m->seen_count < TLY_MEM_SEEN);
    copy_id(m->seen[m->seen_count++], TLY_MEM_ID_MAX, event_id);
  }
  return 0;
}

static tly_holds_t *mem_holds(tly_billing_view_t *view, tly_subject_kind_t kind,
                              const char *id) {
  (void)kind;
  return &tly_mem_subject(view->opaque, id)->holds;
}

static tly_distinct_sets_t *mem_distinct(tly_billing_view_t *view,
                                         tly_subject_kind_t kind,
                                         const char *id) {
  (void)kind;
  return &tly_mem_subject(view->opaque, id)->distinct;
}

/* Kept encoded, as the processor keeps them: the encoding is in the loop. */
static int mem_contribution(tly_billing_view_t *view, tly_subject_kind_t kind,
                            const char *id, const char *event_id,
                            tly_contribution_t *c, int write) {
  tly_mem_view_t *m = view->opaque;
  (void)kind;
  tly_mem_contribution_t *slot = tly_mem_contribution_find(m, id, event_id);
  if (!write) {
    if (!slot)
      return 0;
    assert_int_equal(tly_contribution_decode(slot->value, slot->len, c), 0);
    return 1;
  }
  if (!slot) {
    assert_true(m->contribution_count < TLY_MEM_CONTRIBUTIONS);
    slot = &m->contributions[m->contribution_count++];
    copy_id(slot->subject, sizeof(slot->subject), id);
    copy_id(slot->event_id, sizeof(slot->event_id), event_id);
  }
  slot->len = tly_contribution_encode(c, slot->value);
  assert_true(slot->len <= TLY_CONTRIBUTION_MAX);
  return 0;
}

tly_mem_view_t *tly_mem_view_new(unsigned with) {
  tly_mem_view_t *m = calloc(1, sizeof(*m));
  assert_non_null(m);
  m->view = (tly_billing_view_t){
      .opaque = m,
      .account = mem_account,
      .row = mem_row,
      .bucket = mem_bucket,
      .seen = mem_seen,
      .watermark_ms = &m->watermark,
      .group_bucket = with & TLY_MEM_WITH_NAMES ? mem_group_bucket : NULL,
      .holds = with & TLY_MEM_WITH_HOLDS ? mem_holds : NULL,
      .distinct = with & TLY_MEM_WITH_DISTINCT ? mem_distinct : NULL,
      .contribution =
          with & TLY_MEM_WITH_CONTRIBUTIONS ? mem_contribution : NULL};
  m->watermark = INT64_MIN;
  return m;
}

void tly_mem_view_free(tly_mem_view_t *m) {
  if (!m)
    return;
  for (size_t i = 0; i < m->subject_count; i++) {
    tly_holds_free(&m->subjects[i].holds);
    tly_distinct_sets_clear(&m->subjects[i].distinct);
  }
  free(m);
}

tly_mem_fixture_t *tly_mem_fixture_new(const char *config_json, unsigned with,
                                       int with_ref) {
  tly_mem_fixture_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  f->config = tly_config_load_text(config_json, strlen(config_json), f->errstr,
                                   sizeof(f->errstr));
  if (!f->config) {
    fprintf(stderr, "config: %s\n", f->errstr);
    free(f);
    return NULL;
  }
  f->billing = (tly_billing_t){f->config, 7 * 86400000LL};
  f->m = tly_mem_view_new(with);
  f->ref = with_ref ? tly_mem_view_new(with) : NULL;
  return f;
}

void tly_mem_fixture_free(tly_mem_fixture_t *f) {
  tly_alert_list_clear(&f->alerts);
  tly_mem_view_free(f->m);
  tly_mem_view_free(f->ref);
  tly_config_free(f->config);
  free(f);
}
