/*
 * tly_stripe_portal.c - billing portal sessions on their own threads (see
 * tly_stripe_portal.h). A call is a task of the HTTP port's
 * (tly_http_tasks.h): a detached thread, since portal sessions are rare
 * and human-initiated, whose in-flight count lets shutdown wait for them.
 */
#include "tly_stripe_portal.h"

#include "tly_stripe_client.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tly_stripe_portal {
  const tly_stripe_config_t *stripe;
  tly_stripe_client_t *client;
  tly_http_tasks_t *calls; /* unbounded, as sessions are human-initiated */
};

/* One call's argument: the portal and the customer. */
typedef struct {
  tly_stripe_portal_t *portal;
  char customer[TLY_STRIPE_ID_MAX];
} call_arg_t;

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
  portal->calls = tly_http_tasks_new(SIZE_MAX);
  if (!portal->calls) {
    snprintf(errstr, errstr_size, "stripe portal: out of memory");
    tly_stripe_client_destroy(portal->client);
    free(portal);
    return NULL;
  }
  return portal;
}

/* The call (on a thread of its own): the session, or Stripe's error. */
static json_t *call_run(void *opaque, int *status) {
  call_arg_t *arg = opaque;
  tly_stripe_portal_t *portal = arg->portal;
  tly_stripe_param_t params[] = {
      {"customer", arg->customer},
      {"return_url", portal->stripe->portal_return_url},
  };
  size_t count = portal->stripe->portal_return_url[0] ? 2 : 1;
  tly_stripe_response_t response;
  json_t *answer =
      tly_stripe_post(portal->client, "/v1/billing_portal/sessions", params,
                      count, NULL, &response) == 0
          ? tly_stripe_portal_result(response.status, response.body, NULL,
                                     status)
          : tly_stripe_portal_result(0, NULL, response.error, status);
  tly_stripe_response_clear(&response);
  return answer;
}

int tly_stripe_portal_request(tly_stripe_portal_t *portal, const char *customer,
                              void (*done)(void *opaque), void *opaque,
                              tly_http_task_t **call) {
  call_arg_t *arg = calloc(1, sizeof(*arg));
  *call = NULL;
  if (!arg)
    return -1;
  arg->portal = portal;
  snprintf(arg->customer, sizeof(arg->customer), "%s", customer);
  return tly_http_tasks_start(portal->calls, call_run, arg, free, done, opaque,
                              call);
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

void tly_stripe_portal_close(tly_stripe_portal_t *portal) {
  if (portal)
    tly_http_tasks_close(portal->calls);
}

void tly_stripe_portal_destroy(tly_stripe_portal_t *portal) {
  if (!portal)
    return;
  tly_http_tasks_destroy(portal->calls); /* closes first */
  tly_stripe_client_destroy(portal->client);
  free(portal);
}
