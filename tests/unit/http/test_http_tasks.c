/*
 * test_http_tasks.c - the HTTP port's tasks (tly_http_tasks.h), the
 * threads that keep Stripe calls and analytics scans off the HTTP threads:
 *  - a task runs on a thread that is not the caller's, done is called
 *    exactly once, after the answer and status are set, and the answer is
 *    taken once;
 *  - at most max run at once: one more is refused (done never called, the
 *    argument freed) while the others run, and accepted again once one
 *    finished;
 *  - close waits for the tasks in flight and refuses new ones;
 *  - the in-flight count (the analytics scans' gauge) counts running ones.
 * The tasks block on a gate the test opens.
 */
#include "tly_http_tasks.h"

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  int open;    /* the tasks may finish */
  int started; /* tasks that entered run */
  int done;    /* done calls */
  int freed;   /* arguments freed */
  pthread_t caller;
  int ran_elsewhere; /* every run was on another thread */
} gate_t;

static gate_t gate;

static void gate_reset(void) {
  pthread_mutex_init(&gate.lock, NULL);
  pthread_cond_init(&gate.changed, NULL);
  gate.open = gate.started = gate.done = gate.freed = 0;
  gate.caller = pthread_self();
  gate.ran_elsewhere = 1;
}

static void gate_fini(void) {
  pthread_cond_destroy(&gate.changed);
  pthread_mutex_destroy(&gate.lock);
}

static void gate_open(void) {
  pthread_mutex_lock(&gate.lock);
  gate.open = 1;
  pthread_cond_broadcast(&gate.changed);
  pthread_mutex_unlock(&gate.lock);
}

/* Waits until *counter reaches n. */
static void wait_for(int *counter, int n) {
  pthread_mutex_lock(&gate.lock);
  while (*counter < n)
    pthread_cond_wait(&gate.changed, &gate.lock);
  pthread_mutex_unlock(&gate.lock);
}

static json_t *run(void *arg, int *status) {
  pthread_mutex_lock(&gate.lock);
  if (pthread_equal(pthread_self(), gate.caller))
    gate.ran_elsewhere = 0;
  gate.started++;
  pthread_cond_broadcast(&gate.changed);
  while (!gate.open)
    pthread_cond_wait(&gate.changed, &gate.lock);
  pthread_mutex_unlock(&gate.lock);
  *status = 201;
  return json_pack("{s:i}", "n", *(int *)arg);
}

static void free_arg(void *arg) {
  pthread_mutex_lock(&gate.lock);
  gate.freed++;
  pthread_mutex_unlock(&gate.lock);
  free(arg);
}

static void done(void *opaque) {
  atomic_int *calls = opaque;
  atomic_fetch_add(calls, 1);
  pthread_mutex_lock(&gate.lock);
  gate.done++;
  pthread_cond_broadcast(&gate.changed);
  pthread_mutex_unlock(&gate.lock);
}

static int *number(int n) {
  int *arg = malloc(sizeof(*arg));
  assert_non_null(arg);
  *arg = n;
  return arg;
}

/* A fresh gate, tasks of at most 4, and one task started with n. */
static tly_http_tasks_t *start_one(int n, atomic_int *calls,
                                   tly_http_task_t **task) {
  gate_reset();
  tly_http_tasks_t *tasks = tly_http_tasks_new(4);
  assert_non_null(tasks);
  assert_int_equal(
      tly_http_tasks_start(tasks, run, number(n), free_arg, done, calls, task),
      0);
  return tasks;
}

static void test_runs_elsewhere_done_once(void **state) {
  (void)state;
  atomic_int calls = 0;
  tly_http_task_t *task = NULL;
  tly_http_tasks_t *tasks = start_one(7, &calls, &task);
  assert_non_null(task);
  wait_for(&gate.started, 1);
  assert_int_equal(atomic_load(&calls), 0); /* still running */
  gate_open();
  wait_for(&gate.done, 1);
  tly_http_tasks_close(tasks); /* the task's thread has let go */
  assert_int_equal(atomic_load(&calls), 1);
  assert_true(gate.ran_elsewhere);
  int status = 0;
  json_t *answer = tly_http_task_answer(task, &status);
  assert_int_equal(status, 201);
  assert_int_equal(json_integer_value(json_object_get(answer, "n")), 7);
  json_decref(answer);
  assert_null(tly_http_task_answer(task, &status)); /* taken */
  assert_int_equal(gate.freed, 0);
  tly_http_task_free(task);
  assert_int_equal(gate.freed, 1);
  tly_http_tasks_destroy(tasks);
  gate_fini();
}

static void test_at_most_max_in_flight(void **state) {
  (void)state;
  gate_reset();
  enum { MAX = 3 };
  tly_http_tasks_t *tasks = tly_http_tasks_new(MAX);
  assert_non_null(tasks);
  atomic_int calls = 0, refused_calls = 0;
  tly_http_task_t *running[MAX];
  for (int i = 0; i < MAX; i++)
    assert_int_equal(tly_http_tasks_start(tasks, run, number(i), free_arg, done,
                                          &calls, &running[i]),
                     0);
  wait_for(&gate.started, MAX);
  assert_int_equal(tly_http_tasks_in_flight(tasks), MAX);
  tly_http_task_t *refused = (tly_http_task_t *)&refused_calls; /* not NULL */
  assert_int_equal(tly_http_tasks_start(tasks, run, number(99), free_arg, done,
                                        &refused_calls, &refused),
                   -1);
  assert_null(refused);
  assert_int_equal(gate.freed, 1); /* the refused task's argument */
  gate_open();
  wait_for(&gate.done, MAX);
  tly_http_tasks_close(tasks);
  assert_int_equal(tly_http_tasks_in_flight(tasks), 0);
  assert_int_equal(atomic_load(&calls), MAX);
  assert_int_equal(atomic_load(&refused_calls), 0);
  for (int i = 0; i < MAX; i++)
    tly_http_task_free(running[i]);
  tly_http_tasks_destroy(tasks);

  /* Room again once a task finished (its thread counts itself out just
   * after done: retried for up to 10 s). */
  gate_reset();
  gate_open();
  tasks = tly_http_tasks_new(1);
  assert_non_null(tasks);
  calls = 0;
  for (int i = 0; i < 3; i++) {
    tly_http_task_t *task = NULL;
    int rc = -1;
    for (int tries = 0; rc && tries < 10000; tries++) {
      rc = tly_http_tasks_start(tasks, run, number(i), free_arg, done, &calls,
                                &task);
      if (rc)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    assert_int_equal(rc, 0);
    wait_for(&gate.done, i + 1);
    tly_http_task_free(task);
  }
  tly_http_tasks_destroy(tasks);
  assert_int_equal(atomic_load(&calls), 3);
  gate_fini();
}

typedef struct {
  tly_http_tasks_t *tasks;
  atomic_int closed;
} closer_t;

static void *closer_main(void *opaque) {
  closer_t *closer = opaque;
  tly_http_tasks_close(closer->tasks);
  atomic_store(&closer->closed, 1);
  return NULL;
}

static void test_close_waits_and_refuses(void **state) {
  (void)state;
  atomic_int calls = 0;
  tly_http_task_t *task = NULL;
  tly_http_tasks_t *tasks = start_one(1, &calls, &task);
  wait_for(&gate.started, 1);
  closer_t closer = {.tasks = tasks};
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, closer_main, &closer), 0);
  /* Close cannot return while the task blocks on the gate. */
  nanosleep(&(struct timespec){0, 50000000}, NULL);
  assert_int_equal(atomic_load(&closer.closed), 0);
  gate_open();
  pthread_join(thread, NULL);
  assert_int_equal(atomic_load(&closer.closed), 1);
  assert_int_equal(atomic_load(&calls), 1); /* done ran before close returned */
  tly_http_task_t *late = (tly_http_task_t *)&calls; /* not NULL */
  assert_int_equal(tly_http_tasks_start(tasks, run, number(3), free_arg, done,
                                        &calls, &late),
                   -1);
  assert_null(late);
  assert_int_equal(atomic_load(&calls), 1);
  tly_http_task_free(task);
  tly_http_task_free(late);
  tly_http_tasks_destroy(tasks);
  gate_fini();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_runs_elsewhere_done_once),
      cmocka_unit_test(test_at_most_max_in_flight),
      cmocka_unit_test(test_close_waits_and_refuses),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
