/*
 * cli_properties.c - librdkafka properties for `run` and `emit` from three
 * sources, so a secret never has to be on the command line (where `ps`
 * shows it):
 *
 *   -F FILE        a Java-style properties file (kcat's convention):
 *                  name=value lines; blank lines and lines starting with
 *                  '#' or '!' are skipped; whitespace around the name and
 *                  before the value is dropped; no escapes, no continuation
 *                  lines (a line ending in '\' is refused)
 *   TALLY_KAFKA_*  environment variables: TALLY_KAFKA_SASL_PASSWORD ->
 *                  sasl.password (the rest lowercased, '_' -> '.'); so a
 *                  property whose name has '_' cannot be set this way
 *   -X name=value  on the command line
 *
 * For one name the later source wins (-F < environment < -X; within one
 * source the later entry). The winning values are checked with librdkafka
 * before anything starts; an error names the source (file and line, the
 * variable, or -X) and the property, never the value.
 */
#include "cli.h"

#include "tly_kafka_client.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

#define ENV_PREFIX "TALLY_KAFKA_"

int cli_properties_add(cli_properties_t *list, const char *property) {
  if (!strchr(property, '=') || property[0] == '=') {
    fprintf(stderr, "-X %.200s: expected name=value\n", property);
    return -1;
  }
  if (list->arg_count == CLI_MAX_PROPERTIES) {
    fprintf(stderr, "-X: at most %d properties\n", CLI_MAX_PROPERTIES);
    return -1;
  }
  list->args[list->arg_count++] = property;
  return 0;
}

int cli_properties_file(cli_properties_t *list, const char *path) {
  if (list->file) {
    fprintf(stderr, "-F %s: one properties file only (-F %s was given)\n", path,
            list->file);
    return -1;
  }
  list->file = path;
  return 0;
}

/* Sets name (name_len bytes) to value, replacing an earlier entry of that
 * name. 0, or -1 when full or out of memory (with a message). */
static int set(cli_properties_t *list, const char *command, const char *name,
               size_t name_len, const char *value, size_t value_len,
               const char *origin) {
  char *item = malloc(name_len + 1 + value_len + 1);
  char *where = strdup(origin);
  size_t i;
  if (!item || !where) {
    free(item);
    free(where);
    fprintf(stderr, "tally %s: out of memory\n", command);
    return -1;
  }
  memcpy(item, name, name_len);
  item[name_len] = '=';
  memcpy(item + name_len + 1, value, value_len);
  item[name_len + 1 + value_len] = '\0';
  for (i = 0; i < list->count; i++)
    if (!strncmp(list->items[i], item, name_len + 1))
      break;
  if (i == CLI_MAX_PROPERTIES) {
    fprintf(stderr, "tally %s: %s: more than %d Kafka properties\n", command,
            origin, CLI_MAX_PROPERTIES);
    free(item);
    free(where);
    return -1;
  }
  if (i == list->count) {
    list->count++;
  } else {
    free(list->items[i]);
    free(list->origins[i]);
  }
  list->items[i] = item;
  list->origins[i] = where;
  list->items[list->count] = NULL;
  return 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\f'; }

/* One line of the properties file (without its '\n'). 0, or -1 after a
 * message naming the file and the line. */
static int file_line(cli_properties_t *list, const char *command,
                     const char *path, unsigned line_no, const char *line,
                     size_t len) {
  char origin[CLI_ORIGIN_MAX];
  if (len && line[len - 1] == '\r')
    len--;
  while (len && is_blank(*line)) {
    line++;
    len--;
  }
  if (!len || *line == '#' || *line == '!')
    return 0;
  snprintf(origin, sizeof(origin), "-F %.300s line %u", path, line_no);
  if (memchr(line, '\0', len)) {
    fprintf(stderr, "tally %s: %s: contains a NUL byte\n", command, origin);
    return -1;
  }
  if (line[len - 1] == '\\') {
    fprintf(stderr,
            "tally %s: %s: ends in '\\' (continuation lines are not "
            "supported)\n",
            command, origin);
    return -1;
  }
  const char *eq = memchr(line, '=', len);
  size_t name_len = eq ? (size_t)(eq - line) : 0;
  while (name_len && is_blank(line[name_len - 1]))
    name_len--;
  if (!eq || !name_len) {
    fprintf(stderr, "tally %s: %s: expected name=value\n", command, origin);
    return -1;
  }
  const char *value = eq + 1;
  size_t value_len = len - (size_t)(value - line);
  while (value_len && is_blank(*value)) {
    value++;
    value_len--;
  }
  return set(list, command, line, name_len, value, value_len, origin);
}

static int read_file(cli_properties_t *list, const char *command) {
  const char *path = list->file;
  FILE *file = fopen(path, "r");
  char *text = NULL;
  size_t len = 0;
  int rc = -1;
  if (!file) {
    fprintf(stderr, "tally %s: -F %s: %s\n", command, path, strerror(errno));
    return -1;
  }
  text = malloc(CLI_PROPERTIES_FILE_MAX + 1);
  if (!text) {
    fprintf(stderr, "tally %s: out of memory\n", command);
    goto done;
  }
  len = fread(text, 1, CLI_PROPERTIES_FILE_MAX + 1, file);
  if (ferror(file)) {
    fprintf(stderr, "tally %s: -F %s: %s\n", command, path, strerror(errno));
    goto done;
  }
  if (len > CLI_PROPERTIES_FILE_MAX) {
    fprintf(stderr, "tally %s: -F %s: larger than %d bytes\n", command, path,
            CLI_PROPERTIES_FILE_MAX);
    goto done;
  }
  unsigned line_no = 0;
  for (size_t start = 0; start < len;) {
    const char *newline = memchr(text + start, '\n', len - start);
    size_t end = newline ? (size_t)(newline - text) : len;
    line_no++;
    if (end - start > CLI_PROPERTIES_LINE_MAX) {
      fprintf(stderr, "tally %s: -F %s line %u: longer than %d bytes\n",
              command, path, line_no, CLI_PROPERTIES_LINE_MAX);
      goto done;
    }
    if (file_line(list, command, path, line_no, text + start, end - start))
      goto done;
    start = end + 1;
  }
  rc = 0;
done:
  free(text);
  fclose(file);
  return rc;
}

static int read_environment(cli_properties_t *list, const char *command) {
  const size_t prefix_len = sizeof(ENV_PREFIX) - 1;
  for (char **env = environ; env && *env; env++) {
    const char *var = *env;
    if (strncmp(var, ENV_PREFIX, prefix_len))
      continue;
    const char *eq = strchr(var, '=');
    const char *rest = var + prefix_len;
    size_t rest_len = eq ? (size_t)(eq - rest) : 0;
    char name[256], origin[CLI_ORIGIN_MAX];
    snprintf(origin, sizeof(origin), "environment %.*s",
             (int)(eq ? eq - var : 200), var);
    int ok = eq && rest_len > 0 && rest_len < sizeof(name) && rest[0] != '_' &&
             rest[rest_len - 1] != '_';
    for (size_t i = 0; ok && i < rest_len; i++) {
      char c = rest[i];
      ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c == '_' && rest[i + 1] != '_');
      name[i] = c == '_' ? '.' : (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    if (!ok) {
      fprintf(stderr,
              "tally %s: %s: expected " ENV_PREFIX
              "NAME with NAME in A-Z 0-9 and single '_' (the librdkafka "
              "property lowercased, '.' as '_')\n",
              command, origin);
      return -1;
    }
    if (set(list, command, name, rest_len, eq + 1, strlen(eq + 1), origin))
      return -1;
  }
  return 0;
}

/* librdkafka's message with every occurrence of the value replaced: the
 * value may be a secret. */
static void redact(char *text, size_t size, const char *value) {
  static const char hidden[] = "(value not shown)";
  size_t value_len = strlen(value), len = 0;
  char out[512];
  for (const char *p = text; *p && len + 1 < sizeof(out);) {
    if (value_len && !strncmp(p, value, value_len)) {
      len += (size_t)snprintf(out + len, sizeof(out) - len, "%s", hidden);
      len = len < sizeof(out) ? len : sizeof(out) - 1;
      p += value_len;
    } else {
      out[len++] = *p++;
    }
  }
  out[len] = '\0';
  snprintf(text, size, "%s", out);
}

/* Checks each winning property with librdkafka (a fresh config). */
static int check(cli_properties_t *list, const char *command) {
  int rc = 0;
  for (size_t i = 0; i < list->count && !rc; i++) {
    const char *item = list->items[i];
    const char *eq = strchr(item, '=');
    char name[256], kafka_err[512];
    snprintf(name, sizeof(name), "%.*s", (int)(eq - item), item);
    if (!strcmp(name, "partitioner")) {
      fprintf(stderr,
              "tally %s: %s: partitioner: tally always partitions by "
              "murmur2 (" TLY_KAFKA_PARTITIONER
              "), where a subject's state lives\n",
              command, list->origins[i]);
      return -1;
    }
    rd_kafka_conf_t *scratch = rd_kafka_conf_new();
    if (rd_kafka_conf_set(scratch, name, eq + 1, kafka_err,
                          sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
      redact(kafka_err, sizeof(kafka_err), eq + 1);
      fprintf(stderr, "tally %s: %s: %s: %s\n", command, list->origins[i], name,
              kafka_err);
      rc = -1;
    }
    rd_kafka_conf_destroy(scratch);
  }
  return rc;
}

int cli_properties_finish(cli_properties_t *list, const char *command) {
  if (list->file && read_file(list, command))
    return -1;
  if (read_environment(list, command))
    return -1;
  for (size_t i = 0; i < list->arg_count; i++) {
    const char *eq = strchr(list->args[i], '=');
    if (set(list, command, list->args[i], (size_t)(eq - list->args[i]), eq + 1,
            strlen(eq + 1), "-X"))
      return -1;
  }
  return check(list, command);
}

const char *cli_properties_get(const cli_properties_t *list, const char *name) {
  size_t name_len = strlen(name);
  for (size_t i = 0; i < list->count; i++)
    if (!strncmp(list->items[i], name, name_len) &&
        list->items[i][name_len] == '=')
      return list->items[i] + name_len + 1;
  return NULL;
}

void cli_properties_free(cli_properties_t *list) {
  for (size_t i = 0; i < list->count; i++) {
    /* The values may be secrets: not left in freed memory. */
    volatile char *item = list->items[i];
    for (size_t j = 0; item[j]; j++)
      item[j] = 0;
    free(list->items[i]);
    free(list->origins[i]);
  }
  list->count = 0;
  list->items[0] = NULL;
}
