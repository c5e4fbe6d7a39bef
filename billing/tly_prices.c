/*
 * tly_prices.c - what usage costs: tiered prices, token prices with the
 * margin, credits used (see tly_billing.h for the contracts). Pure: no
 * I/O, integers only. Moved out of tly_billing.c unchanged.
 */
#include "tly_billing.h"

int64_t tly_billing_tier_cost(const tly_feature_price_t *price,
                              int64_t quantity) {
  int64_t cost = 0, below = 0;
  if (quantity <= 0 || !price->tier_count)
    return 0;
  if (price->model == TLY_PRICE_VOLUME) {
    for (size_t i = 0; i < price->tier_count; i++) {
      const tly_tier_t *tier = &price->tiers[i];
      if (tier->up_to < 0 || quantity <= tier->up_to ||
          i + 1 == price->tier_count)
        return __builtin_mul_overflow(quantity, tier->unit_micros, &cost)
                   ? -1
                   : cost;
    }
  }
  for (size_t i = 0; i < price->tier_count && quantity > below; i++) {
    const tly_tier_t *tier = &price->tiers[i];
    int64_t top =
        tier->up_to < 0 || quantity < tier->up_to ? quantity : tier->up_to;
    int64_t units = top - below, part;
    if (__builtin_mul_overflow(units, tier->unit_micros, &part) ||
        __builtin_add_overflow(cost, part, &cost))
      return -1;
    below = top;
  }
  return cost;
}

int64_t tly_billing_credits_used(const tly_config_t *config,
                                 const tly_account_t *account) {
  return account->cycle.cost_micros / config->micros_per_credit;
}

/* The same arithmetic as fold_usage's token pricing, for estimates. */
int tly_billing_token_cost(const tly_config_t *config,
                           const tly_model_price_t *model, int64_t input_tokens,
                           int64_t output_tokens, int64_t *cost_micros,
                           int64_t *remainder) {
  int64_t a = 0, b = 0, base = 0, numerator = 0, cost = 0;
  if (__builtin_mul_overflow(input_tokens, model->input_per_mtok, &a) ||
      __builtin_mul_overflow(output_tokens, model->output_per_mtok, &b) ||
      __builtin_add_overflow(a, b, &base) ||
      __builtin_mul_overflow(base, 10000 + config->margin_bps, &numerator) ||
      __builtin_add_overflow(numerator, *remainder, &numerator) ||
      __builtin_add_overflow(*cost_micros,
                             numerator / TLY_TOKEN_COST_DENOMINATOR, &cost))
    return -1;
  *cost_micros = cost;
  *remainder = numerator % TLY_TOKEN_COST_DENOMINATOR;
  return 0;
}
