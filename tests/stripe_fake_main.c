/*
 * stripe_fake_main.c - tests/stripe_fake: the Stripe-shaped test server
 * (tests/harness/stripe_fake.h) as its own process, so that tests can kill
 * tally while the fake keeps its ledger.
 *
 *   stripe_fake --secret-key sk_test_... [--port N] [--port-file FILE]
 *
 * Listens on 127.0.0.1 only, writes the bound port to FILE once it listens,
 * runs until SIGTERM or SIGINT.
 */
#include "stripe_fake.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  const char *secret_key = NULL, *port_file = NULL;
  long port = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--secret-key") == 0)
      secret_key = argv[i + 1];
    else if (strcmp(argv[i], "--port") == 0)
      port = strtol(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--port-file") == 0)
      port_file = argv[i + 1];
  }
  if (!secret_key || port < 0 || port > 65535) {
    fprintf(stderr, "usage: stripe_fake --secret-key KEY [--port N] "
                    "[--port-file FILE]\n");
    return 2;
  }
  /* Block the stop signals before any thread starts, then wait for one. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);

  char errstr[256];
  sf_server_t *server =
      sf_start(secret_key, (uint16_t)port, errstr, sizeof(errstr));
  if (!server) {
    fprintf(stderr, "stripe_fake: %s\n", errstr);
    return 1;
  }
  printf("stripe_fake: http://127.0.0.1:%u\n", (unsigned)sf_port(server));
  fflush(stdout);
  if (port_file) {
    /* Written whole, then renamed: a reader never sees half a number. */
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
    FILE *file = fopen(tmp, "w");
    if (!file || fprintf(file, "%u\n", (unsigned)sf_port(server)) < 0 ||
        fclose(file) != 0 || rename(tmp, port_file) != 0) {
      fprintf(stderr, "stripe_fake: cannot write %s\n", port_file);
      sf_stop(server);
      return 1;
    }
  }
  int signal_number;
  sigwait(&stop, &signal_number);
  sf_stop(server);
  return 0;
}
