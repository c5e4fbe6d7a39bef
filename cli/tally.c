/*
 * tally.c - the `tally` binary: dispatches to one subcommand per file
 * (cmd_dev.c, cmd_run.c, cmd_broker.c, cmd_emit.c, cmd_topics.c) and prints
 * its version.
 */
#include "cli.h"

#include "tally_version.h"
#include "tly_malloc.h"
#include "tly_thread.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <string.h>

/* `tally --version`, `tally -V`, `tally version`: one line on stdout. */
static int cmd_version(int argc, char **argv) {
  (void)argc;
  (void)argv;
  printf("tally %s (commit %s, librdkafka %s)\n", TALLY_VERSION, TALLY_COMMIT,
         rd_kafka_version_str());
  return 0;
}

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} command_t;

static const command_t commands[] = {
    {"dev", cmd_dev,
     "embedded broker + processor + HTTP port in one process (--demo feeds "
     "it)"},
    {"run", cmd_run, "processor + HTTP port against a Kafka cluster"},
    {"broker", cmd_broker, "the embedded broker alone"},
    {"emit", cmd_emit, "JSON lines (files or stdin) -> usage events in Kafka"},
    {"topics", cmd_topics,
     "the Kafka topics tally expects (name, partitions, policy, configs)"},
    {"version", cmd_version, "version and commit (also --version, -V)"},
};

static void usage(FILE *out) {
  fprintf(out,
          "usage: tally <command> [options]   (tally <command> --help)\n\n");
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
    fprintf(out, "  %-7s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))
    return cmd_version(argc - 1, argv + 1);
  /* The long-running commands: malloc's large blocks on huge pages
   * (tly_malloc.h; may execute tally again, the same process). */
  if (!strcmp(argv[1], "dev") || !strcmp(argv[1], "run") ||
      !strcmp(argv[1], "broker")) {
    char errstr[256];
    if (strcmp(argv[1], "broker") &&
        tly_thread_helper_nice_check(errstr, sizeof(errstr))) {
      fprintf(stderr, "tally: %s\n", errstr);
      return 2;
    }
    tly_malloc_hugepages(argv);
    tly_malloc_arenas(); /* before any thread */
  }
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
    if (!strcmp(argv[1], commands[i].name))
      return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "tally: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
