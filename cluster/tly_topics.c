/*
 * tly_topics.c - the table of tly_topics.h, built from the topic defaults
 * every writer and reader uses (schema/tly_topic_names.h), so a renamed
 * default renames the expected topic too.
 */
#include "tly_topics.h"

#include "tly_topic_names.h"

const tly_topic_spec_t tly_topics[] = {
    /* The source of truth a new instance replays: kept for good. Its
     * records carry the broker's append time, so a writer cannot date an
     * event ahead (README "Event time"). */
    {TLY_DEFAULT_USAGE_TOPIC, TLY_TOPIC_PARTITIONS_INPUT, "delete",
     "retention.ms=-1,message.timestamp.type=LogAppendTime",
     "input: usage, plan, billing and tick events, keyed by subject"},
    /* Dead letters and alerts are only appended and read by id after a
     * crash, so any partition count works; these match the embedded
     * broker's. A dead letter is a billable event not yet counted: kept
     * until someone deals with it, never expired by Kafka's default 7 days. */
    {TLY_DEFAULT_DLQ_TOPIC, 1, "delete", "retention.ms=-1",
     "dead letters: records that could not be decoded or folded, unchanged"},
    {TLY_DEFAULT_ALERTS_TOPIC, 4, "delete", NULL,
     "alerts: limit warnings, limits exceeded, cycle ends, payment events"},
    {TLY_DEFAULT_CHANGELOG_TOPIC, TLY_TOPIC_PARTITIONS_INPUT, "compact", NULL,
     "state changelog: partition p restores input partition p's state"},
    {TLY_DEFAULT_MEMBERS_TOPIC, 1, "compact", NULL,
     "members: each instance's HTTP address and assigned partitions"},
};

const size_t tly_topic_count = sizeof(tly_topics) / sizeof(tly_topics[0]);
