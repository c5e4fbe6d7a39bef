/*
 * tly_read_to_end.h - reading some partitions of a topic up to their log
 * ends as they were when asked, for the readers that must see every
 * record already acknowledged there (recovery and replay looking for the
 * outputs sent already, the tests reading what tally wrote).
 *
 * A reader configured with enable.partition.eof=true gets an EOF event
 * each time it catches up with a partition: again and again for one
 * another client keeps producing to. Counting EOFs as "partitions done"
 * stops the read early, before a slower partition's end. Here each
 * partition is done once: at the first record at or past its end as
 * asked, or at its first EOF at or past that end.
 *
 * Owns that loop; never creates the reader, never produces, never commits.
 */
#ifndef TLY_READ_TO_END_H
#define TLY_READ_TO_END_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*tly_read_visit_fn)(void *opaque, const rd_kafka_message_t *msg);

/*
 * Assigns reader (a consumer with enable.partition.eof=true and no
 * assignment) the partitions of from (topic and start offset each), reads
 * each up to its log end as queried now, calls visit for each record read
 * (a record past that end may be visited too), and unassigns. 0; or -1 with
 * errstr when an end cannot be asked or the read does not finish within
 * timeout_ms.
 */
int tly_read_to_end(rd_kafka_t *reader,
                    const rd_kafka_topic_partition_list_t *from,
                    int64_t timeout_ms, tly_read_visit_fn visit, void *opaque,
                    char *errstr, size_t errstr_size);

#endif
