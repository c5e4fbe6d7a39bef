/*
 * tly_holds.c - reservations held against a subject's quota (see
 * tly_holds.h for the rules). Pure: the clock is always an argument.
 */
#include "tly_holds.h"

#include "tly_billing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tly_holds_free(tly_holds_t *holds) {
  if (!holds)
    return;
  free(holds->items);
  memset(holds, 0, sizeof(*holds));
}

int tly_holds_find(const tly_hold_t *items, size_t count, const char *id) {
  for (size_t i = 0; id && i < count; i++)
    if (strcmp(items[i].id, id) == 0)
      return (int)i;
  return -1;
}

/* Removes the hold at index, keeping the others' order. */
static void remove_at(tly_holds_t *holds, size_t index) {
  memmove(&holds->items[index], &holds->items[index + 1],
          (holds->count - index - 1) * sizeof(holds->items[0]));
  holds->count--;
}

size_t tly_holds_expire(tly_holds_t *holds, int64_t now_ms) {
  size_t kept = 0, dropped = 0;
  for (size_t i = 0; i < holds->count; i++) {
    if (holds->items[i].expires_at_ms <= now_ms) {
      dropped++;
      continue;
    }
    if (kept != i)
      holds->items[kept] = holds->items[i];
    kept++;
  }
  holds->count = kept;
  return dropped;
}

int64_t tly_holds_held(const tly_hold_t *items, size_t count,
                       const char *feature, int64_t now_ms) {
  int64_t held = 0;
  for (size_t i = 0; i < count; i++)
    if (items[i].expires_at_ms > now_ms &&
        strcmp(items[i].feature, feature) == 0 &&
        __builtin_add_overflow(held, items[i].quantity, &held))
      return INT64_MAX;
  return held;
}

size_t tly_holds_open(const tly_hold_t *items, size_t count, int64_t now_ms) {
  size_t open = 0;
  for (size_t i = 0; i < count; i++)
    open += items[i].expires_at_ms > now_ms;
  return open;
}

int64_t tly_holds_next_expiry(const tly_hold_t *items, size_t count) {
  int64_t next = INT64_MAX;
  for (size_t i = 0; i < count; i++)
    if (items[i].expires_at_ms < next)
      next = items[i].expires_at_ms;
  return next;
}

int64_t tly_subject_due_ms(const tly_account_t *account,
                           const tly_hold_t *items, size_t count) {
  int64_t next = tly_holds_next_expiry(items, count);
  return next < account->cycle.end_ms ? next : account->cycle.end_ms;
}

/* A ReservationHeld's hold: checked first, so a rejected one changes
 * nothing (not even the expiry of others). */
static tly_holds_result_t add_hold(tly_holds_t *holds, const tly_event_t *event,
                                   int64_t now_ms, char *errstr,
                                   size_t errstr_size) {
  const tly_reservation_held_t *held = &event->body.reservation_held;
  if (tly_holds_find(holds->items, holds->count, held->reservation_id) >= 0) {
    tly_holds_expire(holds, now_ms);
    return TLY_HOLDS_APPLIED; /* held already: the first one stands */
  }
  if (tly_holds_open(holds->items, holds->count, now_ms) >= TLY_HOLDS_MAX) {
    snprintf(errstr, errstr_size,
             "the subject has %d open reservations, at most %d (a reservation "
             "written past the owner's check)",
             TLY_HOLDS_MAX, TLY_HOLDS_MAX);
    return TLY_HOLDS_REJECTED;
  }
  if (strlen(held->feature) >= TLY_CONFIG_NAME_MAX ||
      strlen(held->reservation_id) > TLY_RESERVATION_ID_MAX) {
    snprintf(errstr, errstr_size, "reservation_id or feature too long");
    return TLY_HOLDS_REJECTED; /* tly_event_validate keeps this away */
  }
  tly_holds_expire(holds, now_ms);
  if (holds->count == holds->cap) {
    size_t cap = holds->cap ? holds->cap * 2 : 4;
    tly_hold_t *grown = realloc(holds->items, cap * sizeof(*grown));
    if (!grown)
      return TLY_HOLDS_FAILED;
    holds->items = grown;
    holds->cap = cap;
  }
  tly_hold_t *hold = &holds->items[holds->count++];
  memset(hold, 0, sizeof(*hold));
  snprintf(hold->id, sizeof(hold->id), "%s", held->reservation_id);
  snprintf(hold->feature, sizeof(hold->feature), "%s", held->feature);
  hold->quantity = held->quantity;
  /* Validation bounds occurred_at (year 9999) and ttl_ms (a day): no
   * overflow, yet saturate rather than trust that. */
  if (__builtin_add_overflow(event->occurred_at_ms, held->ttl_ms,
                             &hold->expires_at_ms))
    hold->expires_at_ms = INT64_MAX;
  return TLY_HOLDS_APPLIED;
}

/* Removes the hold named id, if open. */
static void end_hold(tly_holds_t *holds, const char *id) {
  int index = tly_holds_find(holds->items, holds->count, id);
  if (index >= 0)
    remove_at(holds, (size_t)index);
}

tly_holds_result_t tly_holds_fold(tly_holds_t *holds, const tly_event_t *event,
                                  int64_t now_ms, char *errstr,
                                  size_t errstr_size) {
  switch (event->body_kind) {
  case TLY_BODY_RESERVATION_HELD:
    return add_hold(holds, event, now_ms, errstr, errstr_size);
  case TLY_BODY_RESERVATION_RELEASED:
    end_hold(holds, event->body.reservation_released.reservation_id);
    break;
  case TLY_BODY_USAGE_RECORDED:
    end_hold(holds, tly_usage_reservation_id(&event->body.usage));
    break;
  default:
    break;
  }
  tly_holds_expire(holds, now_ms);
  return TLY_HOLDS_APPLIED;
}

/* Step 5: the subject's holds, once the event applied otherwise; a
 * rejected hold changes nothing. Without holds in the view, reservation
 * events are rejected and usage settles nothing. */
tly_fold_result_t tly_billing_fold_holds(tly_billing_view_t *view,
                                         const tly_event_t *event, char *errstr,
                                         size_t errstr_size) {
  int reservation = event->body_kind == TLY_BODY_RESERVATION_HELD ||
                    event->body_kind == TLY_BODY_RESERVATION_RELEASED;
  /* Usage without a reservation (nearly every event) leaves the holds to
   * ticks and to the subject's next reservation event: the fold's hot path
   * asks the view nothing more. */
  if (!reservation && (event->body_kind != TLY_BODY_USAGE_RECORDED ||
                       !tly_usage_reservation_id(&event->body.usage)))
    return TLY_FOLD_APPLIED;
  if (!view->holds) {
    if (!reservation)
      return TLY_FOLD_APPLIED;
    snprintf(errstr, errstr_size, "this state keeps no reservations");
    return TLY_FOLD_REJECTED;
  }
  tly_holds_t *holds =
      view->holds(view, event->subject_kind, event->subject_id);
  if (!holds)
    return TLY_FOLD_FAILED;
  int64_t now = view->record_ms > 0 ? view->record_ms : event->occurred_at_ms;
  switch (tly_holds_fold(holds, event, now, errstr, errstr_size)) {
  case TLY_HOLDS_APPLIED:
    return TLY_FOLD_APPLIED;
  case TLY_HOLDS_REJECTED:
    return TLY_FOLD_REJECTED;
  default:
    return TLY_FOLD_FAILED;
  }
}
