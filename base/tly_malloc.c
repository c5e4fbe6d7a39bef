/*
 * tly_malloc.c - glibc's malloc with transparent huge pages (see
 * tly_malloc.h).
 */
#define _GNU_SOURCE /* setenv */
#include "tly_malloc.h"

#include "tly_sanitize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__ /* (defined by the headers above) */
#include <malloc.h>
#endif

#define HUGETLB_NAME "glibc.malloc.hugetlb"
#define HUGETLB_SETTING HUGETLB_NAME "=1"

int tly_malloc_tunables(const char *current, char *out, size_t out_size) {
  if (current && strstr(current, HUGETLB_NAME))
    return 0;
  int n = current && *current
              ? snprintf(out, out_size, "%s:%s", current, HUGETLB_SETTING)
              : snprintf(out, out_size, "%s", HUGETLB_SETTING);
  return n > 0 && (size_t)n < out_size;
}

int tly_malloc_hugepages_on(void) {
#if TLY_ADDRESS_SANITIZER
  return 0;
#else
  const char *tunables = getenv("GLIBC_TUNABLES");
  const char *at = tunables ? strstr(tunables, HUGETLB_NAME "=") : NULL;
  if (!at)
    return 0;
  at += strlen(HUGETLB_NAME "=");
  return (*at == '1' || *at == '2') && (at[1] == '\0' || at[1] == ':');
#endif
}

#if !TLY_ADDRESS_SANITIZER
/* Transparent huge pages are on (always or madvise) in the kernel. */
static int thp_enabled(void) {
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f)
    return 0;
  char line[128] = "";
  int on = fgets(line, sizeof(line), f) && !strstr(line, "[never]");
  fclose(f);
  return on;
}
#endif

void tly_malloc_hugepages(char **argv) {
#if TLY_ADDRESS_SANITIZER
  (void)argv;
#else
  const char *opt_out = getenv("TALLY_MALLOC_HUGEPAGES");
  if (opt_out && !strcmp(opt_out, "0"))
    return;
  const char *preload = getenv("LD_PRELOAD");
  if (preload && strstr(preload, "vgpreload"))
    return;
  const char *current = getenv("GLIBC_TUNABLES");
  char value[4096];
  if (!tly_malloc_tunables(current, value, sizeof(value)) || !thp_enabled())
    return;
  /* The binary's own path, so the process keeps its name (ps, pgrep):
   * executing /proc/self/exe would name it "exe". */
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0 || n >= (ssize_t)sizeof(self) - 1)
    return;
  self[n] = '\0';
  char *saved = current ? strdup(current) : NULL;
  if (current && !saved)
    return;
  if (setenv("GLIBC_TUNABLES", value, 1) == 0)
    execv(self, argv);
  /* Not executed: run on as we are, the environment as it was. */
  if (saved)
    setenv("GLIBC_TUNABLES", saved, 1);
  else
    unsetenv("GLIBC_TUNABLES");
  free(saved);
#endif
}

static int arena_cap;

int tly_malloc_arena_cap(void) { return arena_cap; }

int tly_malloc_arenas(void) {
#if TLY_ADDRESS_SANITIZER || !defined(__GLIBC__)
  return 0;
#else
  const char *tunables = getenv("GLIBC_TUNABLES");
  if (getenv("MALLOC_ARENA_MAX") ||
      (tunables && strstr(tunables, "glibc.malloc.arena_max")))
    return 0;
  if (mallopt(M_ARENA_MAX, TLY_MALLOC_ARENAS) == 1)
    arena_cap = TLY_MALLOC_ARENAS;
  return arena_cap;
#endif
}
