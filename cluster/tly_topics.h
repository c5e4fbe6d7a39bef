/*
 * tly_topics.h - the Kafka topics tally expects on a cluster: name, how many
 * partitions, which cleanup policy and what each is for. One table, so that
 * `tally topics`, the compose file's topic-init service (test_compose checks
 * it against `tally topics`) and an operator's own setup cannot drift apart.
 * The names are the defaults; `tally run` can be pointed at others.
 * Owns the table; never creates a topic itself (`tally topics` prints it,
 * compose creates them).
 */
#ifndef TLY_TOPICS_H
#define TLY_TOPICS_H

#include <stddef.h>

#include "tly_topic_names.h"

/* TLY_DEFAULT_CHANGELOG_TOPIC, compacted: one record per changed state row,
 * carrying the input offset it reflects, so a new instance restores a
 * partition from it and replays only the tail of the input. Partition p of
 * the changelog holds the state of input partition p, hence as many
 * partitions as the input. TLY_DEFAULT_MEMBERS_TOPIC, compacted, one
 * partition: each instance announces its HTTP address and assignment (keyed
 * by instance), so any instance can forward a query to the owner of the
 * subject's partition. */

/* A partitions value meaning "as many as the usage (input) topic". */
#define TLY_TOPIC_PARTITIONS_INPUT 0

typedef struct {
  const char *name;
  int partitions;             /* TLY_TOPIC_PARTITIONS_INPUT or a count */
  const char *cleanup_policy; /* "delete" or "compact" */
  /* Other topic configs the topic needs, "name=value" comma-separated
   * (kafka-topics --config each), or NULL. */
  const char *configs;
  const char *role; /* one line, for people */
} tly_topic_spec_t;

/* Every topic, the usage (input) topic first. */
extern const tly_topic_spec_t tly_topics[];
extern const size_t tly_topic_count;

#endif
