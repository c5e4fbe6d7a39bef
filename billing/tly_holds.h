/*
 * tly_holds.h - reservations held against a subject's quota: the holds'
 * type, their rules in the fold, and the sums every reader of them shares.
 * Owns what a hold is and when it counts; no I/O, no clock (every "now" is
 * an argument: the fold passes the record's time, readers their own).
 *
 * A hold is made by a ReservationHeld event, which the owner of the
 * subject's partition writes only once it decided that the quantity fits
 * the quota (http/tly_http_reserve.c); the fold records it unconditionally (the
 * decision was made, and a replay must decide the same). It ends when:
 *   - a usage event names it (properties[TLY_RESERVATION_PROPERTY]): the
 *     hold goes and the usage counts, in one fold step, whatever the usage's
 *     feature or quantity (more or less than held);
 *   - a ReservationReleased names it (DELETE .../reservations/{id});
 *   - its time passes: expires_at_ms (the hold event's occurred_at + its
 *     ttl_ms) at or before the fold's clock: the Kafka timestamp of the
 *     subject's next reservation event or settling usage event, or a
 *     tick's time (the cycle-end index also lists a subject's next hold
 *     expiry, see tly_subject_due_ms in tly_billing.h, so ticks reach it
 *     whether or not it sends anything). Usage without a reservation id
 *     leaves holds alone (it is the fold's hot path). Readers also leave
 *     out holds past expires_at by their own clock, so an expiry shows at
 *     once.
 * An id that names no open hold (unknown, settled, released, expired)
 * changes nothing: the usage still counts.
 *
 * Holds count against the limit of their feature in the quota pre-check
 * and in reservations (used + held + asked <= limit for a hard limit), and
 * against the plan's credits at the feature's tier prices. They fire no
 * thresholds and cost nothing: only settled usage does.
 */
#ifndef TLY_HOLDS_H
#define TLY_HOLDS_H

#include "tly_config.h"
#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

/* Open holds per subject, at most: the reservation route answers 409
 * too_many_reservations past it, and the fold rejects (dead-letters) a
 * hold beyond it, which only a foreign writer can produce. */
#define TLY_HOLDS_MAX 100

typedef struct {
  char id[TLY_RESERVATION_ID_MAX + 1];
  char feature[TLY_CONFIG_NAME_MAX];
  int64_t quantity;
  int64_t expires_at_ms;
} tly_hold_t;

/* A subject's open holds, oldest first (malloc'd items). */
typedef struct {
  tly_hold_t *items;
  size_t count, cap;
} tly_holds_t;

void tly_holds_free(tly_holds_t *holds);

/* The index of the hold named id, or -1. */
int tly_holds_find(const tly_hold_t *items, size_t count, const char *id);

/* Drops the holds whose expires_at_ms <= now_ms; the number dropped. */
size_t tly_holds_expire(tly_holds_t *holds, int64_t now_ms);

/* Sum of the quantities of feature's holds still open at now_ms
 * (expires_at_ms > now_ms), saturating at INT64_MAX. */
int64_t tly_holds_held(const tly_hold_t *items, size_t count,
                       const char *feature, int64_t now_ms);
/* How many holds are still open at now_ms. */
size_t tly_holds_open(const tly_hold_t *items, size_t count, int64_t now_ms);

/* The earliest expires_at_ms, INT64_MAX with none. */
int64_t tly_holds_next_expiry(const tly_hold_t *items, size_t count);

typedef enum {
  TLY_HOLDS_APPLIED = 0,
  TLY_HOLDS_REJECTED = 2, /* errstr says why; nothing changed */
  TLY_HOLDS_FAILED = -1   /* out of memory */
} tly_holds_result_t;

/* The holds' part of folding event (already applied otherwise) at the
 * fold's clock now_ms: expired holds go; a ReservationHeld adds its hold
 * (an id already open is left as it is), a ReservationReleased and a
 * settling usage event remove theirs. A hold beyond TLY_HOLDS_MAX is
 * rejected before anything changes. A usage event naming no open hold only
 * expires holds. */
tly_holds_result_t tly_holds_fold(tly_holds_t *holds, const tly_event_t *event,
                                  int64_t now_ms, char *errstr,
                                  size_t errstr_size);

#endif
