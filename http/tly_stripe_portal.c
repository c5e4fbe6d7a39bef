/*
 * tly_stripe_portal.c - billing portal sessions on their own threads (see
 * tly_stripe_portal.h). A call is a detached thread: portal sessions are
 * rare and human-initiated, so a thread each is simpler than a pool, and
 * the in-flight count lets shutdown wait for them.
 */
#include "tly_stripe_portal.h"

#include "tly_stripe_client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tly_stripe_portal {
  const tly_stripe_config_t *stripe;
  tly_stripe_client_t *client;
  pthread_mutex_t lock;
  pthread_cond_t idle;
  size_t in_flight;
  int closing;
};

struct tly_stripe_portal_call {
  tly_stripe_portal_t *portal;
  char customer[TLY_STRIPE_ID_MAX];
  void (*done)(void *opaque);
  void *opaque;
  long stripe_status; /* 0: no answer */
  char *body;
  char error[256];
};

tly_stripe_portal_t *tly_stripe_portal_new(const tly_stripe_config_t *stripe,
                                           char *errstr, size_t errstr_size) {
  tly_stripe_portal_t *portal = calloc(1, sizeof(*portal));
  if (!portal) {
    snprintf(errstr, errstr_size, "stripe portal: out of memory");
    return NULL;
  }
  tly_stripe_client_conf_t conf = {.api_base = stripe->api_base,
                                   .secret_key = stripe->secret_key,
                                   .api_version = stripe->api_version,
                                   .timeout_ms = (long)stripe->timeout_ms};
  portal->stripe = stripe;
  portal->client = tly_stripe_client_new(&conf, errstr, errstr_size);
  if (!portal->client) {
    free(portal);
    return NULL;
  }
  pthread_mutex_init(&portal->lock, NULL);
  pthread_cond_init(&portal->idle, NULL);
  return portal;
}

static void *call_main(void *arg) {
  tly_stripe_portal_call_t *call = arg;
  tly_stripe_portal_t *portal = call->portal;
  tly_stripe_param_t params[] = {
      {"customer", call->customer},
      {"return_url", portal->stripe->portal_return_url},
  };
  size_t count = portal->stripe->portal_return_url[0] ? 2 : 1;
  tly_stripe_response_t response;
  if (tly_stripe_post(portal->client, "/v1/billing_portal/sessions", params,
                      count, NULL, &response) == 0) {
    call->stripe_status = response.status;
    call->body = response.body;
    response.body = NULL;
  } else {
    snprintf(call->error, sizeof(call->error), "%s", response.error);
  }
  tly_stripe_response_clear(&response);
  /* The call belongs to the caller from here on: not touched again. */
  call->done(call->opaque);
  pthread_mutex_lock(&portal->lock);
  if (--portal->in_flight == 0)
    pthread_cond_broadcast(&portal->idle);
  pthread_mutex_unlock(&portal->lock);
  return NULL;
}

int tly_stripe_portal_request(tly_stripe_portal_t *portal, const char *customer,
                              void (*done)(void *opaque), void *opaque,
                              tly_stripe_portal_call_t **out) {
  tly_stripe_portal_call_t *call = calloc(1, sizeof(*call));
  pthread_attr_t attr;
  pthread_t thread;
  if (!call)
    return -1;
  call->portal = portal;
  snprintf(call->customer, sizeof(call->customer), "%s", customer);
  call->done = done;
  call->opaque = opaque;
  *out = call;
  pthread_mutex_lock(&portal->lock);
  int rc = -1;
  if (!portal->closing && pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    portal->in_flight++;
    rc = pthread_create(&thread, &attr, call_main, call) == 0 ? 0 : -1;
    if (rc)
      portal->in_flight--;
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&portal->lock);
  if (rc) {
    free(call);
    *out = NULL;
  }
  return rc;
}

json_t *tly_stripe_portal_result(long stripe_status, const char *body,
                                 const char *transport_error, int *status) {
  char message[512], stripe_message[256];
  *status = 502;
  if (!stripe_status) {
    snprintf(message, sizeof(message), "Stripe did not answer: %s",
             transport_error ? transport_error : "");
    return json_pack("{s:{s:s,s:s}}", "error", "code", "stripe_unavailable",
                     "message", message);
  }
  json_t *session = body ? json_loads(body, 0, NULL) : NULL;
  const char *url = json_string_value(json_object_get(session, "url"));
  if (stripe_status >= 200 && stripe_status < 300 && url) {
    json_t *id = json_object_get(session, "id");
    json_t *answer =
        json_pack("{s:s,s:O}", "url", url, "id", id ? id : json_null());
    json_decref(session);
    *status = 200;
    return answer;
  }
  json_decref(session);
  tly_stripe_error_message(body, stripe_message, sizeof(stripe_message));
  snprintf(message, sizeof(message), "Stripe answered %ld%s%s", stripe_status,
           stripe_message[0] ? ": " : " without a session URL", stripe_message);
  return json_pack("{s:{s:s,s:s,s:I}}", "error", "code", "stripe_error",
                   "message", message, "stripe_status",
                   (json_int_t)stripe_status);
}

json_t *tly_stripe_portal_answer(const tly_stripe_portal_call_t *call,
                                 int *status) {
  return tly_stripe_portal_result(call->stripe_status, call->body, call->error,
                                  status);
}

void tly_stripe_portal_call_free(tly_stripe_portal_call_t *call) {
  if (!call)
    return;
  free(call->body);
  free(call);
}

void tly_stripe_portal_close(tly_stripe_portal_t *portal) {
  if (!portal)
    return;
  pthread_mutex_lock(&portal->lock);
  portal->closing = 1;
  while (portal->in_flight)
    pthread_cond_wait(&portal->idle, &portal->lock);
  pthread_mutex_unlock(&portal->lock);
}

void tly_stripe_portal_destroy(tly_stripe_portal_t *portal) {
  if (!portal)
    return;
  tly_stripe_portal_close(portal);
  tly_stripe_client_destroy(portal->client);
  pthread_cond_destroy(&portal->idle);
  pthread_mutex_destroy(&portal->lock);
  free(portal);
}
