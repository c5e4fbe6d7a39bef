/*
 * tly_http_tasks.h - work of the HTTP port on threads of its own: the
 * Stripe calls of the subscription, customer and invoice routes
 * (tly_http_subs.c) and of the billing portal (tly_stripe_portal.c), and
 * the analytics routes' scan of this instance's partitions
 * (tly_http_analytics.c).
 *
 * Such work may take seconds (Stripe calls with their retries, each
 * bounded by stripe.timeout_ms; a scan of up to TLY_ANALYTICS_SCAN_MAX
 * subjects), so it never runs on an HTTP thread, where it would hold up
 * every other connection of that thread (the port may have one thread
 * only, http.threads): the route suspends its connection, the task runs
 * on a detached thread, and done is called from there once the answer is
 * in; the port resumes the connection and takes the answer with
 * tly_http_task_answer. The in-flight count lets shutdown wait for every
 * task.
 */
#ifndef TLY_HTTP_TASKS_H
#define TLY_HTTP_TASKS_H

#include <jansson.h>
#include <stddef.h>

typedef struct tly_http_tasks tly_http_tasks_t;
typedef struct tly_http_task tly_http_task_t;

/* What a task runs: the answer (a new reference) and its HTTP status. */
typedef json_t *(*tly_http_task_fn)(void *arg, int *status);

/* max: tasks in flight at once, at most (at least 1); one more is refused
 * (the route answers 503), so a burst cannot start a thread per request
 * without bound. NULL on OOM. */
tly_http_tasks_t *tly_http_tasks_new(size_t max);

/* Runs run(arg) on a thread of its own, then done(opaque) exactly once
 * from that thread. arg is freed with free_arg (may be NULL) when the task
 * is freed. On 0, *task is the caller's (tly_http_task_free, once done
 * was called). -1 when closing or out of resources: done is never called
 * and arg is freed (also when max are in flight). */
int tly_http_tasks_start(tly_http_tasks_t *tasks, tly_http_task_fn run,
                         void *arg, void (*free_arg)(void *arg),
                         void (*done)(void *opaque), void *opaque,
                         tly_http_task_t **task);

/* The answer of a finished task (taken: the caller's), and its status. */
json_t *tly_http_task_answer(tly_http_task_t *task, int *status);
void tly_http_task_free(tly_http_task_t *task); /* NULL is fine */

/* Tasks running now (for metrics and tests). */
size_t tly_http_tasks_in_flight(tly_http_tasks_t *tasks);

/* Refuses new tasks and waits for those in flight. */
void tly_http_tasks_close(tly_http_tasks_t *tasks);
void tly_http_tasks_destroy(tly_http_tasks_t *tasks); /* closes first */

#endif
