/*
 * tly_topic_names.h - the default names of the Kafka topics tally reads and
 * writes: part of the wire contract, like the schemas. Every layer that
 * names a topic (the client library, the processor, membership, the table
 * of expected topics in cluster/tly_topics.c) takes its default from here,
 * so a renamed default renames it everywhere. Names only: no I/O.
 */
#ifndef TLY_TOPIC_NAMES_H
#define TLY_TOPIC_NAMES_H

#define TLY_DEFAULT_USAGE_TOPIC "tally.usage"         /* input */
#define TLY_DEFAULT_DLQ_TOPIC "tally.usage.dlq"       /* dead letters */
#define TLY_DEFAULT_ALERTS_TOPIC "tally.alerts"       /* alerts */
#define TLY_DEFAULT_CHANGELOG_TOPIC "tally.changelog" /* state changelog */
#define TLY_DEFAULT_MEMBERS_TOPIC "tally.members"     /* membership */

#endif
