/*
 * tly_changelog.c - the state changelog's bundles (see tly_changelog.h;
 * the restore is consumers/tly_changelog_restore.c).
 *
 * A bundle, as stored in the outbox:
 *   magic "\xff\xfe" "CL1"   (an encoded output record starts with its
 *                             topic's length, which is never 0xfffe)
 *   [marker count, 4 BE] then per marker [partition 4][next offset 8]
 *                             [watermark 8]
 *   per state record [partition 4][kind 1][key length 4][key]
 *                    [value length 4][value]
 *                    (value length 0xffffffff and no value: a deletion)
 * The reflected offset of a state record is its partition's marker offset,
 * added when the bundle is expanded into Kafka records.
 */
#include "tly_changelog.h"

#include "tly_billing.h"
#include "tly_keys.h"
#include "tly_log.h"

#include <librdkafka/rdkafka.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char MAGIC[] = "\xff\xfe"
                            "CL1";
#define MAGIC_LEN 5
#define MARKER_LEN 20

/* ---- bundles --------------------------------------------------------- */

static int bundle_room(tly_changelog_bundle_t *bundle, size_t need) {
  if (bundle->len + need <= bundle->cap)
    return 0;
  size_t cap = bundle->cap ? bundle->cap : 65536;
  while (cap < bundle->len + need)
    cap *= 2;
  unsigned char *grown = realloc(bundle->data, cap);
  if (!grown) {
    bundle->out_of_memory = 1;
    return -1;
  }
  bundle->data = grown;
  bundle->cap = cap;
  return 0;
}

void tly_changelog_bundle_add(tly_changelog_bundle_t *bundle, int32_t partition,
                              char kind, const void *key, size_t key_len,
                              const void *value, size_t value_len) {
  if (bundle->out_of_memory || key_len > UINT32_MAX || value_len > UINT32_MAX ||
      bundle_room(bundle, 13 + key_len + value_len))
    return;
  unsigned char *at = bundle->data + bundle->len;
  tly_put_be32(at, (uint32_t)partition);
  at[4] = (unsigned char)kind;
  tly_put_be32(at + 5, (uint32_t)key_len);
  memcpy(at + 9, key, key_len);
  tly_put_be32(at + 9 + key_len, (uint32_t)value_len);
  if (value_len)
    memcpy(at + 13 + key_len, value, value_len);
  bundle->len += 13 + key_len + value_len;
  bundle->count++;
}

#define TOMBSTONE_LEN UINT32_MAX /* value length of a deletion */

void tly_changelog_bundle_delete(tly_changelog_bundle_t *bundle,
                                 int32_t partition, char kind, const void *key,
                                 size_t key_len) {
  if (bundle->out_of_memory || key_len > UINT32_MAX ||
      bundle_room(bundle, 13 + key_len))
    return;
  unsigned char *at = bundle->data + bundle->len;
  tly_put_be32(at, (uint32_t)partition);
  at[4] = (unsigned char)kind;
  tly_put_be32(at + 5, (uint32_t)key_len);
  memcpy(at + 9, key, key_len);
  tly_put_be32(at + 9 + key_len, TOMBSTONE_LEN);
  bundle->len += 13 + key_len;
  bundle->count++;
}

int tly_changelog_bundle_finish(tly_changelog_bundle_t *bundle,
                                const tly_changelog_marker_t *markers,
                                size_t count, char **out, size_t *out_len) {
  int failed = bundle->out_of_memory;
  size_t head = MAGIC_LEN + 4 + MARKER_LEN * count;
  unsigned char *data = failed ? NULL : malloc(head + bundle->len);
  if (data) {
    memcpy(data, MAGIC, MAGIC_LEN);
    tly_put_be32(data + MAGIC_LEN, (uint32_t)count);
    for (size_t i = 0; i < count; i++) {
      unsigned char *marker = data + MAGIC_LEN + 4 + MARKER_LEN * i;
      tly_put_be32(marker, (uint32_t)markers[i].partition);
      tly_put_be64(marker + 4, (uint64_t)markers[i].next_offset);
      tly_put_be64(marker + 12, (uint64_t)markers[i].watermark_ms);
    }
    if (bundle->len)
      memcpy(data + head, bundle->data, bundle->len);
  }
  *out = (char *)data;
  *out_len = head + bundle->len;
  bundle->len = 0;
  bundle->count = 0;
  bundle->out_of_memory = 0;
  return data ? 0 : -1;
}

int tly_changelog_bundle_filter(const char *bytes, size_t len,
                                int (*keep)(void *opaque, int32_t partition),
                                void *opaque, char **out, size_t *out_len) {
  const unsigned char *data = (const unsigned char *)bytes;
  *out = NULL;
  *out_len = 0;
  if (!tly_changelog_is_bundle(bytes, len))
    return -1;
  uint32_t count = tly_get_be32(data + MAGIC_LEN);
  size_t head = MAGIC_LEN + 4 + (size_t)MARKER_LEN * count;
  unsigned char *copy = head <= len ? malloc(len) : NULL;
  if (!copy)
    return -1;
  size_t at = MAGIC_LEN + 4;
  uint32_t kept = 0;
  for (uint32_t i = 0; i < count; i++) {
    const unsigned char *marker = data + MAGIC_LEN + 4 + MARKER_LEN * i;
    if (keep(opaque, (int32_t)tly_get_be32(marker))) {
      memcpy(copy + at, marker, MARKER_LEN);
      at += MARKER_LEN;
      kept++;
    }
  }
  memcpy(copy, MAGIC, MAGIC_LEN);
  tly_put_be32(copy + MAGIC_LEN, kept);
  for (size_t pos = head; pos < len;) {
    if (len - pos < 13)
      goto corrupt;
    uint32_t key_len = tly_get_be32(data + pos + 5);
    if (len - pos - 13 < key_len)
      goto corrupt;
    uint32_t value_len = tly_get_be32(data + pos + 9 + key_len);
    size_t size = 13 + (size_t)key_len +
                  (value_len == TOMBSTONE_LEN ? 0 : (size_t)value_len);
    if (len - pos < size)
      goto corrupt;
    if (keep(opaque, (int32_t)tly_get_be32(data + pos))) {
      memcpy(copy + at, data + pos, size);
      at += size;
    }
    pos += size;
  }
  *out = (char *)copy;
  *out_len = at;
  return 0;
corrupt:
  free(copy);
  return -1;
}

void tly_changelog_bundle_free(tly_changelog_bundle_t *bundle) {
  free(bundle->data);
  memset(bundle, 0, sizeof(*bundle));
}

int tly_changelog_is_bundle(const char *data, size_t len) {
  return len >= MAGIC_LEN + 4 && memcmp(data, MAGIC, MAGIC_LEN) == 0;
}

static int scratch_room(unsigned char **scratch, size_t *cap, size_t need) {
  if (need <= *cap)
    return 0;
  size_t grown_cap = *cap ? *cap : 4096;
  while (grown_cap < need)
    grown_cap *= 2;
  unsigned char *grown = realloc(*scratch, grown_cap);
  if (!grown)
    return -1;
  *scratch = grown;
  *cap = grown_cap;
  return 0;
}

/* The marker of partition in the bundle's table; NULL if none. */
static const unsigned char *find_marker(const unsigned char *data,
                                        uint32_t count, int32_t partition) {
  for (uint32_t i = 0; i < count; i++) {
    const unsigned char *marker = data + MAGIC_LEN + 4 + MARKER_LEN * i;
    if ((int32_t)tly_get_be32(marker) == partition)
      return marker;
  }
  return NULL;
}

int tly_changelog_bundle_next(const char *bytes, size_t len, size_t *cursor,
                              unsigned char **scratch, size_t *scratch_cap,
                              tly_changelog_record_t *record) {
  const unsigned char *data = (const unsigned char *)bytes;
  if (!tly_changelog_is_bundle(bytes, len))
    return -1;
  uint32_t count = tly_get_be32(data + MAGIC_LEN);
  size_t head = MAGIC_LEN + 4 + (size_t)MARKER_LEN * count;
  if (head > len)
    return -1;
  if (*cursor < head)
    *cursor = head;
  if (*cursor < len) { /* a state record */
    const unsigned char *at = data + *cursor;
    if (len - *cursor < 13)
      return -1;
    uint32_t key_len = tly_get_be32(at + 5);
    if (len - *cursor - 13 < key_len)
      return -1;
    uint32_t value_len = tly_get_be32(at + 9 + key_len);
    int tombstone = value_len == TOMBSTONE_LEN;
    if (tombstone)
      value_len = 0;
    if (len - *cursor - 13 - key_len < value_len)
      return -1;
    int32_t partition = (int32_t)tly_get_be32(at);
    const unsigned char *marker = find_marker(data, count, partition);
    if (!marker ||
        scratch_room(scratch, scratch_cap, 1 + key_len + 8 + value_len))
      return -1;
    unsigned char *key = *scratch, *value = *scratch + 1 + key_len;
    key[0] = at[4];
    memcpy(key + 1, at + 9, key_len);
    memcpy(value, marker + 4, 8);
    memcpy(value + 8, at + 13 + key_len, value_len);
    *record = (tly_changelog_record_t){partition,
                                       key,
                                       1 + key_len,
                                       tombstone ? NULL : value,
                                       tombstone ? 0 : 8 + value_len,
                                       (int64_t)tly_get_be64(marker + 4)};
    *cursor += 13 + key_len + value_len;
    return 1;
  }
  size_t index = *cursor - len; /* then the markers, in table order */
  if (index >= count)
    return 0;
  const unsigned char *marker = data + MAGIC_LEN + 4 + MARKER_LEN * index;
  if (scratch_room(scratch, scratch_cap, 1 + 16))
    return -1;
  (*scratch)[0] = TLY_CHANGELOG_MARKER;
  memcpy(*scratch + 1, marker + 4, 16);
  *record = (tly_changelog_record_t){(int32_t)tly_get_be32(marker),
                                     *scratch,
                                     1,
                                     *scratch + 1,
                                     16,
                                     (int64_t)tly_get_be64(marker + 4)};
  (*cursor)++;
  return 1;
}
