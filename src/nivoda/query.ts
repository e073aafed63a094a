// The one place that turns a run's window, the base filter and a price range into a
// DiamondQuery, so the scan's count queries and the workers' fetches cannot drift apart.
import type { BaseQuery } from '../config.js';
import type { PriceBounds, PriceField, UpdatedWindow } from '../domain.js';

export type DiamondQuery = BaseQuery & {
  updated?: { from?: string; to?: string };
  dollar_value?: PriceBounds;
  dollar_per_carat?: PriceBounds;
};

export interface QueryScope {
  baseQuery: BaseQuery;
  priceField: PriceField;
  window: UpdatedWindow;
}

/** The DiamondQuery for `bounds` (inclusive whole dollars, either end open) within a run's scope. */
export function diamondQuery(scope: QueryScope, bounds: PriceBounds = {}): DiamondQuery {
  const query: DiamondQuery = { ...scope.baseQuery, updated: { ...scope.window } };
  if (bounds.from !== undefined || bounds.to !== undefined) {
    query[scope.priceField] = { ...bounds };
  }
  return query;
}
