/*
 * tly_http_conn.c - the HTTP port's connection guard (see tly_http_conn.h):
 * a table of connections with per-client counts and each client's awaiting
 * connections oldest first, the caps applied when a connection opens, the
 * deadlines applied by a reaper thread, and the libmicrohttpd glue.
 */
#include "tly_http_conn.h"

#include "tly_files.h"
#include "tly_log.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* The smallest connection cap the open-file limit may lower it to. */
#define MIN_CONNECTIONS 16
#define CLIENT_KEY_MAX 16
#define CLIENT_BUCKETS 1024

typedef struct client client_t;

struct tly_conn {
  tly_conn_table_t *table;
  client_t *client;
  int fd;
  tly_conn_phase_t phase;
  int closed_by_guard;
  int64_t ready_ms;        /* awaiting since: accept or the previous answer */
  int64_t phase_ms;        /* in this phase since */
  tly_conn_t *prev, *next; /* every connection */
  /* In its client's list of evictable connections of its phase (awaiting
   * or body), oldest first; in_list: that list's index, -1: none. */
  tly_conn_t *list_prev, *list_next;
  int in_list;
};

/* The phases whose connections may be closed to make room, in the order
 * they are chosen: first a connection that has sent nothing of a request
 * (or an incomplete header), then one whose body is still arriving. A
 * suspended request or an answer being read is never cut for a newcomer. */
enum { LIST_AWAITING = 0, LIST_BODY, LISTS };

struct client {
  unsigned char key[CLIENT_KEY_MAX];
  size_t key_len;
  size_t live; /* connections not closed by the guard */
  size_t refs; /* connections in the table, closed ones included */
  tly_conn_t *list_head[LISTS], *list_tail[LISTS]; /* oldest first */
  client_t *next_in_bucket;
};

struct tly_conn_table {
  pthread_mutex_t lock;
  tly_conn_limits_t limits;
  tly_conn_close_fn close_fn;
  void *opaque;
  tly_conn_t *head;
  size_t live;
  client_t *buckets[CLIENT_BUCKETS];
  uint64_t closed[TLY_CONN_CLOSED_REASONS];
};

const char *tly_conn_closed_reason_name(tly_conn_closed_reason_t reason) {
  static const char *const names[TLY_CONN_CLOSED_REASONS] = {
      "header_deadline", "body_deadline", "answer_deadline", "client_limit",
      "connection_limit"};
  return (unsigned)reason < TLY_CONN_CLOSED_REASONS ? names[reason] : "";
}

/* ---- the table ---------------------------------------------------------- */

tly_conn_table_t *tly_conn_table_new(const tly_conn_limits_t *limits,
                                     tly_conn_close_fn close_fn, void *opaque) {
  tly_conn_table_t *table = calloc(1, sizeof(*table));
  if (!table)
    return NULL;
  pthread_mutex_init(&table->lock, NULL);
  table->limits = *limits;
  table->close_fn = close_fn;
  table->opaque = opaque;
  return table;
}

void tly_conn_table_free(tly_conn_table_t *table) {
  if (!table)
    return;
  for (tly_conn_t *conn = table->head, *next; conn; conn = next) {
    next = conn->next;
    free(conn);
  }
  for (size_t b = 0; b < CLIENT_BUCKETS; b++)
    for (client_t *client = table->buckets[b], *next; client; client = next) {
      next = client->next_in_bucket;
      free(client);
    }
  pthread_mutex_destroy(&table->lock);
  free(table);
}

static size_t client_bucket(const void *key, size_t len) {
  const unsigned char *bytes = key;
  uint32_t hash = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++)
    hash = (hash ^ bytes[i]) * 16777619u;
  return hash % CLIENT_BUCKETS;
}

static client_t *client_get(tly_conn_table_t *table, const void *key,
                            size_t len) {
  if (len > CLIENT_KEY_MAX)
    len = CLIENT_KEY_MAX;
  size_t b = client_bucket(key, len);
  for (client_t *client = table->buckets[b]; client;
       client = client->next_in_bucket)
    if (client->key_len == len && memcmp(client->key, key, len) == 0)
      return client;
  client_t *client = calloc(1, sizeof(*client));
  if (!client)
    return NULL;
  if (len)
    memcpy(client->key, key, len);
  client->key_len = len;
  client->next_in_bucket = table->buckets[b];
  table->buckets[b] = client;
  return client;
}

static void client_release(tly_conn_table_t *table, client_t *client) {
  if (--client->refs)
    return;
  client_t **link =
      &table->buckets[client_bucket(client->key, client->key_len)];
  while (*link != client)
    link = &(*link)->next_in_bucket;
  *link = client->next_in_bucket;
  free(client);
}

static int list_of(tly_conn_phase_t phase) {
  return phase == TLY_CONN_AWAITING ? LIST_AWAITING
         : phase == TLY_CONN_BODY   ? LIST_BODY
                                    : -1;
}

static void list_remove(tly_conn_t *conn) {
  client_t *client = conn->client;
  int list = conn->in_list;
  if (list < 0)
    return;
  if (conn->list_prev)
    conn->list_prev->list_next = conn->list_next;
  else
    client->list_head[list] = conn->list_next;
  if (conn->list_next)
    conn->list_next->list_prev = conn->list_prev;
  else
    client->list_tail[list] = conn->list_prev;
  conn->list_prev = conn->list_next = NULL;
  conn->in_list = -1;
}

/* Puts conn at the tail of its phase's list (if any): the newest. */
static void list_append(tly_conn_t *conn) {
  client_t *client = conn->client;
  int list = list_of(conn->phase);
  list_remove(conn);
  if (list < 0 || conn->closed_by_guard)
    return;
  conn->list_prev = client->list_tail[list];
  conn->list_next = NULL;
  if (client->list_tail[list])
    client->list_tail[list]->list_next = conn;
  else
    client->list_head[list] = conn;
  client->list_tail[list] = conn;
  conn->in_list = list;
}

/* Closes conn: it no longer counts, and its socket is shut down. */
static void close_conn(tly_conn_table_t *table, tly_conn_t *conn,
                       tly_conn_closed_reason_t reason) {
  if (conn->closed_by_guard)
    return;
  list_remove(conn);
  conn->closed_by_guard = 1;
  conn->client->live--;
  table->live--;
  table->closed[reason]++;
  table->close_fn(table->opaque, conn->fd, reason);
}

/* The client's oldest connection in list other than except, or NULL. */
static tly_conn_t *oldest_in(const client_t *client, int list,
                             const tly_conn_t *except) {
  for (tly_conn_t *conn = client->list_head[list]; conn; conn = conn->list_next)
    if (conn != except)
      return conn;
  return NULL;
}

/* For the per-client cap: the client's oldest awaiting connection other
 * than except, else its oldest one still sending a body, else NULL. */
static tly_conn_t *client_victim(const client_t *client,
                                 const tly_conn_t *except) {
  for (int list = 0; list < LISTS; list++) {
    tly_conn_t *victim = oldest_in(client, list, except);
    if (victim)
      return victim;
  }
  return NULL;
}

/* For the connection cap: the oldest awaiting connection (other than
 * except) of the client with the most connections, ties going to the
 * client whose candidate is older; when no client has one, the same for
 * connections still sending a body; else NULL. */
static tly_conn_t *cap_victim(const tly_conn_table_t *table,
                              const tly_conn_t *except) {
  for (int list = 0; list < LISTS; list++) {
    const client_t *best = NULL;
    tly_conn_t *victim = NULL;
    for (size_t b = 0; b < CLIENT_BUCKETS; b++)
      for (const client_t *client = table->buckets[b]; client;
           client = client->next_in_bucket) {
        tly_conn_t *candidate = oldest_in(client, list, except);
        if (!candidate)
          continue;
        if (!best || client->live > best->live ||
            (client->live == best->live &&
             candidate->phase_ms < victim->phase_ms)) {
          best = client;
          victim = candidate;
        }
      }
    if (victim)
      return victim;
  }
  return NULL;
}

tly_conn_t *tly_conn_open(tly_conn_table_t *table, int fd, const void *client,
                          size_t client_len, int64_t now_ms) {
  tly_conn_t *conn = calloc(1, sizeof(*conn));
  if (!conn)
    return NULL;
  pthread_mutex_lock(&table->lock);
  conn->client = client_get(table, client, client_len);
  if (!conn->client) {
    pthread_mutex_unlock(&table->lock);
    free(conn);
    return NULL;
  }
  conn->table = table;
  conn->in_list = -1;
  conn->fd = fd;
  conn->phase = TLY_CONN_AWAITING;
  conn->ready_ms = conn->phase_ms = now_ms;
  conn->next = table->head;
  if (table->head)
    table->head->prev = conn;
  table->head = conn;
  conn->client->refs++;
  conn->client->live++;
  table->live++;
  list_append(conn);

  const tly_conn_limits_t *limits = &table->limits;
  if (limits->max_per_client > 0 &&
      conn->client->live > (size_t)limits->max_per_client) {
    tly_conn_t *victim = client_victim(conn->client, conn);
    close_conn(table, victim ? victim : conn, TLY_CONN_CLOSED_CLIENT_LIMIT);
  }
  if (table->live > (size_t)limits->max_connections) {
    tly_conn_t *victim = cap_victim(table, conn);
    close_conn(table, victim ? victim : conn, TLY_CONN_CLOSED_CONNECTION_LIMIT);
  }
  pthread_mutex_unlock(&table->lock);
  return conn;
}

void tly_conn_closed(tly_conn_table_t *table, tly_conn_t *conn) {
  if (!conn)
    return;
  pthread_mutex_lock(&table->lock);
  if (!conn->closed_by_guard) {
    list_remove(conn);
    conn->client->live--;
    table->live--;
  }
  if (conn->prev)
    conn->prev->next = conn->next;
  else
    table->head = conn->next;
  if (conn->next)
    conn->next->prev = conn->prev;
  client_release(table, conn->client);
  pthread_mutex_unlock(&table->lock);
  free(conn);
}

void tly_conn_phase(tly_conn_table_t *table, tly_conn_t *conn,
                    tly_conn_phase_t phase, int64_t now_ms) {
  if (!conn)
    return;
  pthread_mutex_lock(&table->lock);
  conn->phase = phase;
  conn->phase_ms = now_ms;
  /* Awaiting again (keep-alive): a new request may come, its deadline runs
   * from now. */
  if (phase == TLY_CONN_AWAITING)
    conn->ready_ms = now_ms;
  list_append(conn); /* the newest of its phase */
  pthread_mutex_unlock(&table->lock);
}

/* The deadline of conn and the reason it closes at it; 0 when none. */
static int deadline_of(const tly_conn_limits_t *limits, const tly_conn_t *conn,
                       int64_t *deadline, tly_conn_closed_reason_t *reason) {
  switch (conn->phase) {
  case TLY_CONN_AWAITING:
    *deadline = conn->ready_ms + limits->header_timeout_ms;
    *reason = TLY_CONN_CLOSED_HEADER_DEADLINE;
    return 1;
  case TLY_CONN_BODY:
    *deadline = conn->ready_ms + limits->request_timeout_ms;
    *reason = TLY_CONN_CLOSED_BODY_DEADLINE;
    return 1;
  case TLY_CONN_ANSWERING:
    *deadline = conn->phase_ms + limits->request_timeout_ms;
    *reason = TLY_CONN_CLOSED_ANSWER_DEADLINE;
    return 1;
  case TLY_CONN_WAITING:
    break;
  }
  return 0;
}

size_t tly_conn_expire(tly_conn_table_t *table, int64_t now_ms) {
  size_t count = 0;
  pthread_mutex_lock(&table->lock);
  for (tly_conn_t *conn = table->head; conn; conn = conn->next) {
    int64_t deadline;
    tly_conn_closed_reason_t reason;
    if (conn->closed_by_guard ||
        !deadline_of(&table->limits, conn, &deadline, &reason) ||
        now_ms < deadline)
      continue;
    close_conn(table, conn, reason);
    count++;
  }
  pthread_mutex_unlock(&table->lock);
  return count;
}

void tly_conn_stats(tly_conn_table_t *table, tly_conn_stats_t *out) {
  pthread_mutex_lock(&table->lock);
  out->open = table->live;
  memcpy(out->closed, table->closed, sizeof(out->closed));
  pthread_mutex_unlock(&table->lock);
}

int tly_conn_is_closed(tly_conn_table_t *table, const tly_conn_t *conn) {
  pthread_mutex_lock(&table->lock);
  int closed = conn->closed_by_guard;
  pthread_mutex_unlock(&table->lock);
  return closed;
}

/* ---- libmicrohttpd glue ------------------------------------------------ */

struct tly_http_guard {
  tly_conn_table_t *table;
  tly_conn_limits_t limits;
  pthread_t reaper;
  int reaper_started;
  int stopping;
  pthread_mutex_t lock; /* stopping and the condition */
  pthread_cond_t wake;
};

/* With the table's lock held, while the connection is in the table: its
 * descriptor is still its own (see the header). */
static void shutdown_socket(void *opaque, int fd,
                            tly_conn_closed_reason_t reason) {
  (void)opaque, (void)reason;
  shutdown(fd, SHUT_RDWR);
}

tly_http_guard_t *tly_http_guard_new(const tly_http_config_t *config,
                                     char *errstr, size_t errstr_size) {
  tly_http_guard_t *guard = calloc(1, sizeof(*guard));
  if (!guard) {
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  guard->limits =
      (tly_conn_limits_t){.max_connections = config->max_connections,
                          .max_per_client = config->max_connections_per_ip,
                          .header_timeout_ms = config->header_timeout_ms,
                          .request_timeout_ms = config->request_timeout_ms};
  /* Descriptors kept for everything but HTTP connections: RocksDB's open
   * table files, Kafka's sockets, the listening socket, epoll, logs
   * (tly_files.h). */
  uint64_t open_files = tly_files_raise_limit();
  uint64_t reserve = tly_files_reserved(open_files);
  if (open_files && open_files != UINT64_MAX) {
    int64_t budget = open_files > reserve + MIN_CONNECTIONS
                         ? (int64_t)(open_files - reserve)
                         : MIN_CONNECTIONS;
    if (guard->limits.max_connections > budget) {
      tly_log(TLY_LOG_WARN, "http",
              "http.max_connections %lld lowered to %lld: the process may "
              "open only %llu files (RLIMIT_NOFILE; %llu kept for the store "
              "and Kafka)",
              (long long)guard->limits.max_connections, (long long)budget,
              (unsigned long long)open_files, (unsigned long long)reserve);
      guard->limits.max_connections = budget;
    }
  }
  if (guard->limits.max_per_client > guard->limits.max_connections)
    guard->limits.max_per_client = guard->limits.max_connections;
  pthread_mutex_init(&guard->lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&guard->wake, &attr);
  pthread_condattr_destroy(&attr);
  guard->table = tly_conn_table_new(&guard->limits, shutdown_socket, guard);
  if (!guard->table) {
    snprintf(errstr, errstr_size, "out of memory");
    tly_http_guard_free(guard);
    return NULL;
  }
  return guard;
}

/* How often the reaper looks: a quarter of the shortest deadline, within
 * [50 ms, 1 s], so a connection is closed at most that long after its
 * deadline. */
static int64_t reaper_period_ms(const tly_conn_limits_t *limits) {
  int64_t shortest = limits->header_timeout_ms < limits->request_timeout_ms
                         ? limits->header_timeout_ms
                         : limits->request_timeout_ms;
  int64_t period = shortest / 4;
  return period < 50 ? 50 : period > 1000 ? 1000 : period;
}

static void *reaper_main(void *arg) {
  tly_http_guard_t *guard = arg;
  int64_t period = reaper_period_ms(&guard->limits);
  pthread_mutex_lock(&guard->lock);
  while (!guard->stopping) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(period / 1000);
    until.tv_nsec += (long)(period % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&guard->wake, &guard->lock, &until);
    if (guard->stopping)
      break;
    pthread_mutex_unlock(&guard->lock);
    tly_conn_expire(guard->table, tly_monotonic_ms());
    pthread_mutex_lock(&guard->lock);
  }
  pthread_mutex_unlock(&guard->lock);
  return NULL;
}

int tly_http_guard_start(tly_http_guard_t *guard, char *errstr,
                         size_t errstr_size) {
  if (pthread_create(&guard->reaper, NULL, reaper_main, guard)) {
    snprintf(errstr, errstr_size, "http: cannot start the connection reaper");
    return -1;
  }
  guard->reaper_started = 1;
  return 0;
}

void tly_http_guard_stop(tly_http_guard_t *guard) {
  if (!guard || !guard->reaper_started)
    return;
  pthread_mutex_lock(&guard->lock);
  guard->stopping = 1;
  pthread_cond_signal(&guard->wake);
  pthread_mutex_unlock(&guard->lock);
  pthread_join(guard->reaper, NULL);
  guard->reaper_started = 0;
}

void tly_http_guard_free(tly_http_guard_t *guard) {
  if (!guard)
    return;
  tly_http_guard_stop(guard);
  tly_conn_table_free(guard->table);
  pthread_cond_destroy(&guard->wake);
  pthread_mutex_destroy(&guard->lock);
  free(guard);
}

unsigned tly_http_guard_mhd_connection_limit(const tly_http_guard_t *guard,
                                             unsigned threads) {
  /* libmicrohttpd splits its limit evenly over the workers; each may hold
   * every connection (plus those being closed) before the guard's cap
   * bites. */
  uint64_t per_worker = (uint64_t)guard->limits.max_connections + 64;
  uint64_t limit = per_worker * (threads ? threads : 1);
  return limit > 0x7fffffffu ? 0x7fffffffu : (unsigned)limit;
}

unsigned tly_http_guard_mhd_timeout_s(const tly_http_guard_t *guard) {
  int64_t longest =
      guard->limits.header_timeout_ms > guard->limits.request_timeout_ms
          ? guard->limits.header_timeout_ms
          : guard->limits.request_timeout_ms;
  return (unsigned)((longest + 999) / 1000) + 1;
}

int64_t tly_http_guard_max_connections(const tly_http_guard_t *guard) {
  return guard->limits.max_connections;
}

void tly_http_guard_notify(void *cls, struct MHD_Connection *connection,
                           void **socket_context,
                           enum MHD_ConnectionNotificationCode code) {
  tly_http_guard_t *guard = cls;
  if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    tly_conn_closed(guard->table, *socket_context);
    *socket_context = NULL;
    return;
  }
  if (code != MHD_CONNECTION_NOTIFY_STARTED)
    return;
  const union MHD_ConnectionInfo *fd_info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
  const union MHD_ConnectionInfo *addr_info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (!fd_info)
    return;
  const void *key = NULL;
  size_t key_len = 0;
  const struct sockaddr *addr = addr_info ? addr_info->client_addr : NULL;
  if (addr && addr->sa_family == AF_INET) {
    key = &((const struct sockaddr_in *)(const void *)addr)->sin_addr;
    key_len = sizeof(struct in_addr);
  } else if (addr && addr->sa_family == AF_INET6) {
    key = &((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr;
    key_len = sizeof(struct in6_addr);
  }
  *socket_context = tly_conn_open(guard->table, fd_info->connect_fd, key,
                                  key_len, tly_monotonic_ms());
}

void tly_http_guard_phase(struct MHD_Connection *connection,
                          tly_conn_phase_t phase) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  tly_conn_t *conn = info ? info->socket_context : NULL;
  if (conn)
    tly_conn_phase(conn->table, conn, phase, tly_monotonic_ms());
}

void tly_http_guard_stats(tly_http_guard_t *guard, tly_conn_stats_t *out) {
  tly_conn_stats(guard->table, out);
}
