/*
 * tly_outbox.c - the byte format of an outbox entry:
 *   [u16 topic_len][topic][u32 key_len][key][u32 value_len][value]
 *   [u16 header_count] then per header [u16 name_len][name][u32 len][value]
 *   and, when header_count has its top bit (PLACED) set, the placement:
 *   [i32 partition][i64 timestamp_ms][i64 scan_from]
 * All integers big-endian. Private to tally (entries live only in RocksDB).
 * Entries written before the placement existed decode unchanged.
 */
#include "tly_outbox.h"

#include "tly_store.h"

#include <stdlib.h>
#include <string.h>

#define PLACED 0x8000u
#define PLACEMENT_LEN (4 + 8 + 8)

typedef struct {
  char *buf;
  size_t len;
} writer_t;

static void put_u16(writer_t *w, size_t v) {
  w->buf[w->len++] = (char)((v >> 8) & 0xff);
  w->buf[w->len++] = (char)(v & 0xff);
}

static void put_u32(writer_t *w, size_t v) {
  tly_put_be32((unsigned char *)w->buf + w->len, (uint32_t)v);
  w->len += 4;
}

static void put_u64(writer_t *w, uint64_t v) {
  tly_put_be64((unsigned char *)w->buf + w->len, v);
  w->len += 8;
}

static void put_bytes(writer_t *w, const void *data, size_t len) {
  if (len)
    memcpy(w->buf + w->len, data, len);
  w->len += len;
}

int tly_outbox_encode(const tly_outbox_record_t *record, char **out,
                      size_t *out_len) {
  size_t size = 2 + record->topic_len + 4 + record->key_len + 4 +
                record->value_len + 2;
  if (record->topic_len > 0xffff || record->key_len > 0xffffffffu ||
      record->value_len > 0xffffffffu ||
      record->header_count > TLY_OUTBOX_MAX_HEADERS)
    return -1;
  for (size_t i = 0; i < record->header_count; i++)
    size += 2 + strlen(record->headers[i].name) + 4 +
            record->headers[i].value_len;
  if (record->partitioned)
    size += PLACEMENT_LEN;
  writer_t w = {malloc(size), 0};
  if (!w.buf)
    return -1;
  put_u16(&w, record->topic_len);
  put_bytes(&w, record->topic, record->topic_len);
  put_u32(&w, record->key_len);
  put_bytes(&w, record->key, record->key_len);
  put_u32(&w, record->value_len);
  put_bytes(&w, record->value, record->value_len);
  put_u16(&w, record->header_count | (record->partitioned ? PLACED : 0));
  for (size_t i = 0; i < record->header_count; i++) {
    size_t name_len = strlen(record->headers[i].name);
    put_u16(&w, name_len);
    put_bytes(&w, record->headers[i].name, name_len);
    put_u32(&w, record->headers[i].value_len);
    put_bytes(&w, record->headers[i].value, record->headers[i].value_len);
  }
  if (record->partitioned) {
    put_u32(&w, (uint32_t)record->partition);
    put_u64(&w, (uint64_t)record->timestamp_ms);
    put_u64(&w, (uint64_t)record->scan_from);
  }
  *out = w.buf;
  *out_len = w.len;
  return 0;
}

typedef struct {
  const char *data;
  size_t len, pos;
} reader_t;

static int take(reader_t *r, size_t n, const char **out) {
  if (r->len - r->pos < n)
    return -1;
  *out = r->data + r->pos;
  r->pos += n;
  return 0;
}

static int take_u16(reader_t *r, size_t *v) {
  const char *p;
  if (take(r, 2, &p))
    return -1;
  *v = ((size_t)(unsigned char)p[0] << 8) | (unsigned char)p[1];
  return 0;
}

static int take_u32(reader_t *r, size_t *v) {
  const char *p;
  if (take(r, 4, &p))
    return -1;
  *v = tly_get_be32((const unsigned char *)p);
  return 0;
}

static int take_u64(reader_t *r, uint64_t *v) {
  const char *p;
  if (take(r, 8, &p))
    return -1;
  *v = tly_get_be64((const unsigned char *)p);
  return 0;
}

int tly_outbox_decode(const char *data, size_t len,
                      tly_outbox_record_t *record) {
  reader_t r = {data, len, 0};
  memset(record, 0, sizeof(*record));
  record->scan_from = -1;
  if (take_u16(&r, &record->topic_len) ||
      take(&r, record->topic_len, &record->topic) ||
      take_u32(&r, &record->key_len) ||
      take(&r, record->key_len, &record->key) ||
      take_u32(&r, &record->value_len) ||
      take(&r, record->value_len, &record->value) ||
      take_u16(&r, &record->header_count))
    return -1;
  record->partitioned = (record->header_count & PLACED) != 0;
  record->header_count &= ~(size_t)PLACED;
  if (record->header_count > TLY_OUTBOX_MAX_HEADERS)
    return -1;
  for (size_t i = 0; i < record->header_count; i++) {
    if (take_u16(&r, &record->header_name_len[i]) ||
        take(&r, record->header_name_len[i], &record->headers[i].name) ||
        take_u32(&r, &record->headers[i].value_len) ||
        take(&r, record->headers[i].value_len, &record->headers[i].value))
      return -1;
  }
  if (record->partitioned) {
    size_t partition;
    uint64_t timestamp, scan_from;
    if (take_u32(&r, &partition) || take_u64(&r, &timestamp) ||
        take_u64(&r, &scan_from))
      return -1;
    record->partition = (int32_t)(uint32_t)partition;
    record->timestamp_ms = (int64_t)timestamp;
    record->scan_from = (int64_t)scan_from;
  }
  return r.pos == len ? 0 : -1;
}
