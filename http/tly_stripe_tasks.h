/*
 * tly_stripe_tasks.h - Stripe calls of the HTTP port on threads of their
 * own (the subscription, customer and invoice routes, tly_http_subs.c).
 *
 * A task may take several Stripe calls with their retries (each bounded by
 * stripe.timeout_ms), so it never runs on an HTTP thread: the route
 * suspends its connection, the task runs on a detached thread, and done is
 * called from there once the answer is in; the port resumes the
 * connection and takes the answer with tly_stripe_task_answer. The
 * in-flight count lets shutdown wait for every task (like the billing
 * portal's calls, tly_stripe_portal.h).
 */
#ifndef TLY_STRIPE_TASKS_H
#define TLY_STRIPE_TASKS_H

#include <jansson.h>
#include <stddef.h>

/* Tasks in flight at once, at most: one more is refused (the route
 * answers 503 stripe_unavailable), so a burst cannot start a thread per
 * request without bound. */
#define TLY_STRIPE_TASKS_MAX 64

typedef struct tly_stripe_tasks tly_stripe_tasks_t;
typedef struct tly_stripe_task tly_stripe_task_t;

/* What a task runs: the answer (a new reference) and its HTTP status. */
typedef json_t *(*tly_stripe_task_fn)(void *arg, int *status);

tly_stripe_tasks_t *tly_stripe_tasks_new(void); /* NULL on OOM */

/* Runs run(arg) on a thread of its own, then done(opaque) exactly once
 * from that thread. arg is freed with free_arg (may be NULL) when the task
 * is freed. On 0, *task is the caller's (tly_stripe_task_free, once done
 * was called). -1 when closing or out of resources: done is never called
 * and arg is freed (also when TLY_STRIPE_TASKS_MAX are in flight). */
int tly_stripe_tasks_start(tly_stripe_tasks_t *tasks, tly_stripe_task_fn run,
                           void *arg, void (*free_arg)(void *arg),
                           void (*done)(void *opaque), void *opaque,
                           tly_stripe_task_t **task);

/* The answer of a finished task (taken: the caller's), and its status. */
json_t *tly_stripe_task_answer(tly_stripe_task_t *task, int *status);
void tly_stripe_task_free(tly_stripe_task_t *task); /* NULL is fine */

/* Refuses new tasks and waits for those in flight. */
void tly_stripe_tasks_close(tly_stripe_tasks_t *tasks);
void tly_stripe_tasks_destroy(tly_stripe_tasks_t *tasks); /* closes first */

#endif
