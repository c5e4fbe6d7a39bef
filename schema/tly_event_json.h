/*
 * tly_event_json.h - usage events as JSON (the `emit` CLI's input lines and,
 * later, the HTTP ingest body), validated into tly_event_t.
 * Owns the JSON shape of events; never does I/O, never reads a clock (the
 * caller passes now).
 *
 * Accepted object:
 *   {"event_id": "e-1",                      required, non-empty string
 *    "occurred_at": 1732300000000 | "2026-11-23T10:00:00Z", optional;
 *                                            default: the caller's now_ms
 *    "subject": "user:alice" | {"kind": "user", "id": "alice"}, required;
 *                                            a bare "alice" means user:alice
 *    "feature": "api_calls",                 required
 *    "quantity": 1,                          required integer >= 0
 *    "unit": "call",                         optional string
 *    "ai": {"provider": "openai", "model": "gpt-4o",
 *           "input_tokens": 10, "output_tokens": 5},     optional
 *    "properties": {"region": "eu"}}         optional, string values
 * Other event types name themselves with a top-level "type" (absent or
 * "usage_recorded": the object above). Each takes the envelope fields
 * (event_id, occurred_at, subject, type) and its own:
 *   "plan_assigned":         plan (required)
 *   "subscription_changed":  plan (required), stripe_subscription_id,
 *                            stripe_price_id, period_start, period_end
 *   "subscription_canceled": stripe_subscription_id, reason
 *   "invoice_paid":          invoice_id, amount_paid_micros (required),
 *                            period_start, period_end
 *   "payment_failed":        invoice_id, amount_due_micros (required),
 *                            attempt
 *   "customer_linked":       stripe_customer_id (required)
 * Times (period_*) take epoch milliseconds or RFC 3339, like occurred_at;
 * 0 or absent means unknown, and when both bounds are given the end must
 * be after the start. Every time lies in 1970-01-01 .. 9999-12-31
 * (tly_event_time.h); how far occurred_at may lie ahead of now is the
 * caller's check (tly_event_time_check), the reader reads no clock.
 * Amounts are integer micro-units >= 0. "tick" is refused: only the
 * processor writes ticks.
 * Unknown fields (for the given type) are rejected so typos do not pass
 * silently; the message names the field.
 */
#ifndef TLY_EVENT_JSON_H
#define TLY_EVENT_JSON_H

#include "tly_event.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Fills *event (zeroed or cleared by the caller, owned by the caller after)
 * from a parsed JSON object. Returns 0, or -1 with errstr naming the field
 * and the reason; *event is left cleared on error.
 */
int tly_event_from_json(const json_t *object, int64_t now_ms,
                        tly_event_t *event, char *errstr, size_t errstr_size);

/* Same, from text (one JSON line). */
int tly_event_from_json_text(const char *text, size_t len, int64_t now_ms,
                             tly_event_t *event, char *errstr,
                             size_t errstr_size);

/* Parses a subject string ("kind:id" or bare id = user). 0 or -1. The id is
 * malloc'd into *id_out. */
int tly_subject_parse(const char *text, tly_subject_kind_t *kind, char **id_out,
                      char *errstr, size_t errstr_size);

/*
 * The reverse: a new JSON object (*out, owned by the caller: json_decref)
 * in the shape tly_event_from_json() accepts, with "type" always present,
 * occurred_at in milliseconds and the subject as "kind:id" (a tick, which
 * the reader refuses, is written as {"type": "tick", ..., "partition"}).
 * Returns 0, or -1 (NULL argument, kind out of range, NULL subject id, a
 * string that is not UTF-8, out of memory) with *out NULL.
 */
int tly_event_to_json(const tly_event_t *event, json_t **out);

#endif
