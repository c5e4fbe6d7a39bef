/*
 * tly_partition_gate.h - what the Stripe usage emitter
 * (tly_stripe_emitter.h) needs to know of the partitions of this instance,
 * as callbacks: which are assigned here, and a hold on one while report
 * intents are made durable on its changelog.
 *
 * The emitter is a producer and must not depend on the processor that owns
 * the assignment (consumers -> producers, never back): the caller backs
 * the gate with whatever owns it (`tally run`: the processor, see
 * cli/cli_serve.c). The gate owns nothing and does no I/O of its own.
 * Every callback is called from the emitter's thread and must be
 * thread-safe against the owner's.
 */
#ifndef TLY_PARTITION_GATE_H
#define TLY_PARTITION_GATE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  void *opaque;
  /* Fills assigned with up to max of the partitions assigned here, in
   * ascending order, from one snapshot, and returns how many there are
   * (more than max: call again with room for them); SIZE_MAX when it
   * cannot tell now (out of memory). */
  size_t (*assigned)(void *opaque, int32_t *assigned, size_t max);
  /* 1 when the partition is assigned here, in assignment *generation (0:
   * any; set to the current one), and now held; 0 when not. A revocation
   * waits until every hold on the partition was released, so the
   * partition's next owner restores from a changelog that holds what was
   * produced under the holds. Release each hold promptly. */
  int (*hold)(void *opaque, int32_t partition, uint64_t *generation);
  void (*release)(void *opaque, int32_t partition);
} tly_partition_gate_t;

#endif
