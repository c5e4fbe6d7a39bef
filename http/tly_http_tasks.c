/*
 * tly_http_tasks.c - the HTTP port's tasks on detached threads (see
 * tly_http_tasks.h). Subscription changes and analytics queries are rare
 * next to the port's reads, so a thread each is simpler than a pool.
 */
#include "tly_http_tasks.h"

#include <pthread.h>
#include <stdlib.h>

struct tly_http_tasks {
  pthread_mutex_t lock;
  pthread_cond_t idle;
  size_t in_flight, max;
  int closing;
};

struct tly_http_task {
  tly_http_tasks_t *tasks;
  tly_http_task_fn run;
  void *arg;
  void (*free_arg)(void *arg);
  void (*done)(void *opaque);
  void *opaque;
  json_t *answer;
  int status;
};

tly_http_tasks_t *tly_http_tasks_new(size_t max) {
  tly_http_tasks_t *tasks = calloc(1, sizeof(*tasks));
  if (!tasks)
    return NULL;
  tasks->max = max ? max : 1;
  pthread_mutex_init(&tasks->lock, NULL);
  pthread_cond_init(&tasks->idle, NULL);
  return tasks;
}

static void *task_main(void *opaque) {
  tly_http_task_t *task = opaque;
  tly_http_tasks_t *tasks = task->tasks;
  task->status = 500;
  task->answer = task->run(task->arg, &task->status);
  /* The task belongs to the caller from here on: not touched again. */
  task->done(task->opaque);
  pthread_mutex_lock(&tasks->lock);
  if (--tasks->in_flight == 0)
    pthread_cond_broadcast(&tasks->idle);
  pthread_mutex_unlock(&tasks->lock);
  return NULL;
}

int tly_http_tasks_start(tly_http_tasks_t *tasks, tly_http_task_fn run,
                         void *arg, void (*free_arg)(void *arg),
                         void (*done)(void *opaque), void *opaque,
                         tly_http_task_t **out) {
  tly_http_task_t *task = calloc(1, sizeof(*task));
  pthread_attr_t attr;
  pthread_t thread;
  *out = NULL;
  if (!task) {
    if (free_arg)
      free_arg(arg);
    return -1;
  }
  *task = (tly_http_task_t){tasks, run, arg, free_arg, done, opaque, NULL, 0};
  *out = task;
  int rc = -1;
  pthread_mutex_lock(&tasks->lock);
  if (!tasks->closing && tasks->in_flight < tasks->max &&
      pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    tasks->in_flight++;
    rc = pthread_create(&thread, &attr, task_main, task) == 0 ? 0 : -1;
    if (rc)
      tasks->in_flight--;
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&tasks->lock);
  if (rc) {
    tly_http_task_free(task);
    *out = NULL;
  }
  return rc;
}

json_t *tly_http_task_answer(tly_http_task_t *task, int *status) {
  json_t *answer = task->answer;
  task->answer = NULL;
  *status = task->status;
  return answer;
}

void tly_http_task_free(tly_http_task_t *task) {
  if (!task)
    return;
  if (task->free_arg)
    task->free_arg(task->arg);
  json_decref(task->answer);
  free(task);
}

size_t tly_http_tasks_in_flight(tly_http_tasks_t *tasks) {
  pthread_mutex_lock(&tasks->lock);
  size_t in_flight = tasks->in_flight;
  pthread_mutex_unlock(&tasks->lock);
  return in_flight;
}

void tly_http_tasks_close(tly_http_tasks_t *tasks) {
  if (!tasks)
    return;
  pthread_mutex_lock(&tasks->lock);
  tasks->closing = 1;
  while (tasks->in_flight)
    pthread_cond_wait(&tasks->idle, &tasks->lock);
  pthread_mutex_unlock(&tasks->lock);
}

void tly_http_tasks_destroy(tly_http_tasks_t *tasks) {
  if (!tasks)
    return;
  tly_http_tasks_close(tasks);
  pthread_cond_destroy(&tasks->idle);
  pthread_mutex_destroy(&tasks->lock);
  free(tasks);
}
