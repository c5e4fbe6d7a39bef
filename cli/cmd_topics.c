/*
 * cmd_topics.c - `tally topics`: the Kafka topics tally expects, one a line:
 * name, partitions ("input": as many as the usage topic), cleanup policy,
 * other configs (name=value,... or "-") and role, whitespace-separated so a
 * shell `read name partitions policy configs role` loop can create them.
 * compose/compose.yaml's topic-init service creates exactly these, and
 * test_compose holds the two together.
 */
#include "cli.h"

#include "tly_topics.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

int cmd_topics(int argc, char **argv) {
  static const struct option options[] = {
      {"partitions", required_argument, NULL, 'p'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  int opt, input_partitions = 0;
  int64_t number;

  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
    case 'p':
      if (cli_parse_int("topics", "partitions", optarg, 1, 100000, NULL,
                        &number))
        return 2;
      input_partitions = (int)number;
      break;
    case 'h':
      printf("usage: tally topics [--partitions N]\n"
             "  prints name, partitions, cleanup policy, other configs "
             "(name=value,... or -)\n"
             "  and role of every topic tally expects;\n"
             "  --partitions N prints N instead of \"input\" (as many as the "
             "usage topic)\n");
      return 0;
    default:
      return 2;
    }
  }
  for (size_t i = 0; i < tly_topic_count; i++) {
    const tly_topic_spec_t *topic = &tly_topics[i];
    char partitions[16] = "input";
    if (topic->partitions != TLY_TOPIC_PARTITIONS_INPUT)
      snprintf(partitions, sizeof(partitions), "%d", topic->partitions);
    else if (input_partitions)
      snprintf(partitions, sizeof(partitions), "%d", input_partitions);
    printf("%-16s %-5s %-7s %-52s %s\n", topic->name, partitions,
           topic->cleanup_policy, topic->configs ? topic->configs : "-",
           topic->role);
  }
  return 0;
}
