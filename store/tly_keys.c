/*
 * tly_keys.c - builds the state keys documented in tly_keys.h.
 */
#include "tly_keys.h"

#include "tly_store.h"

#include <string.h>

/* [p][kind:id]; returns the length or 0. */
static size_t subject_part(int32_t partition, tly_subject_kind_t kind,
                           const char *id, char *out, size_t out_size) {
  if (out_size < 5)
    return 0;
  size_t len = tly_subject_key(kind, id, out + 4, out_size - 4);
  if (!len || len >= out_size - 4)
    return 0;
  tly_put_be32((unsigned char *)out, (uint32_t)partition);
  return 4 + len;
}

size_t tly_key_account(int32_t partition, tly_subject_kind_t kind,
                       const char *id, char *out, size_t out_size) {
  return subject_part(partition, kind, id, out, out_size);
}

size_t tly_key_contribution(int32_t partition, tly_subject_kind_t kind,
                            const char *id, const char *event_id, char *out,
                            size_t out_size) {
  size_t len = subject_part(partition, kind, id, out, out_size);
  size_t id_len = strlen(event_id);
  if (!len || len + 1 + id_len > out_size)
    return 0;
  out[len] = '\0';
  memcpy(out + len + 1, event_id, id_len);
  return len + 1 + id_len;
}

/* [p][8 bytes BE][kind:id]: the layout of cycle ends and report marks. */
static size_t partition_number_subject(int32_t partition, int64_t number,
                                       tly_subject_kind_t kind, const char *id,
                                       char *out, size_t out_size) {
  if (out_size < 13)
    return 0;
  size_t len = tly_subject_key(kind, id, out + 12, out_size - 12);
  if (!len || len >= out_size - 12)
    return 0;
  tly_put_be32((unsigned char *)out, (uint32_t)partition);
  tly_put_be64((unsigned char *)out + 4, (uint64_t)number);
  return 12 + len;
}

size_t tly_key_cycle_end(int32_t partition, int64_t cycle_end_ms,
                         tly_subject_kind_t kind, const char *id, char *out,
                         size_t out_size) {
  return partition_number_subject(partition, cycle_end_ms, kind, id, out,
                                  out_size);
}

size_t tly_key_report_mark(int32_t partition, int64_t seq,
                           tly_subject_kind_t kind, const char *id, char *out,
                           size_t out_size) {
  return partition_number_subject(partition, seq, kind, id, out, out_size);
}

size_t tly_key_report_cursor(int32_t partition, tly_subject_kind_t kind,
                             const char *id, const char *event_name,
                             int64_t window_start_ms, char *out,
                             size_t out_size) {
  size_t len = subject_part(partition, kind, id, out, out_size);
  size_t name_len = strlen(event_name);
  if (!len || len + 1 + name_len + 1 + 8 > out_size)
    return 0;
  out[len++] = '\0';
  memcpy(out + len, event_name, name_len);
  len += name_len;
  out[len++] = '\0';
  tly_put_be64((unsigned char *)out + len, (uint64_t)window_start_ms);
  return len + 8;
}

size_t tly_key_history(int32_t partition, tly_subject_kind_t kind,
                       const char *id, char tag, char *out, size_t out_size) {
  size_t len = subject_part(partition, kind, id, out, out_size);
  if (!len || len + 2 > out_size)
    return 0;
  out[len] = '\0';
  out[len + 1] = tag;
  return len + 2;
}

size_t tly_key_expiry(const char *usage_key, size_t usage_len,
                      int64_t expires_at_ms, char *out, size_t out_size) {
  if (usage_len < 4 || usage_len + 12 > out_size)
    return 0;
  memcpy(out, usage_key, 4);
  tly_put_be64((unsigned char *)out + 4, (uint64_t)expires_at_ms);
  memcpy(out + 12, usage_key, usage_len);
  return usage_len + 12;
}

size_t tly_key_expiry_blob(int32_t partition, int64_t blob_offset,
                           int64_t check_at_ms, char *out, size_t out_size) {
  if (out_size < TLY_KEY_EXPIRY_BLOB_LEN)
    return 0;
  tly_put_be32((unsigned char *)out, (uint32_t)partition);
  tly_put_be64((unsigned char *)out + 4, (uint64_t)check_at_ms);
  tly_put_be32((unsigned char *)out + 12, (uint32_t)partition);
  out[16] = '\0';
  tly_put_be64((unsigned char *)out + 17, (uint64_t)blob_offset);
  return TLY_KEY_EXPIRY_BLOB_LEN;
}

int tly_key_expiry_is_blob(const char *key, size_t key_len,
                           int64_t *blob_offset) {
  if (key_len != TLY_KEY_EXPIRY_BLOB_LEN || key[16] != '\0')
    return 0;
  *blob_offset = (int64_t)tly_get_be64((const unsigned char *)key + 17);
  return 1;
}

size_t tly_key_dedupe_id(int32_t partition, const char *id, size_t id_len,
                         char *out, size_t out_size) {
  if (out_size < 4 || id_len > out_size - 4)
    return 0;
  tly_put_be32((unsigned char *)out, (uint32_t)partition);
  memcpy(out + 4, id, id_len);
  return 4 + id_len;
}
