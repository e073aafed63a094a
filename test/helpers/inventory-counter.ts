// An in-memory stand-in for diamonds_by_query_count over a list of prices in cents, with the
// contract's semantics exactly: `dollar_value` filters on price / 100 with inclusive whole-number
// bounds, so cents are compared against bound × 100 (no floating point anywhere).
import assert from 'node:assert/strict';
import type { CountFn } from '../../src/heatmap.js';
import { PRICE_AXIS_END, type Partition, type PriceBounds } from '../../src/domain.js';

export interface InventoryCounter {
  count: CountFn;
  /** Every call, in order: what the scan asked. */
  asked: PriceBounds[];
}

export function inventoryCounter(priceCents: ArrayLike<number>): InventoryCounter {
  const sorted = Float64Array.from(priceCents).sort();
  const asked: PriceBounds[] = [];
  const count: CountFn = async (bounds) => {
    asked.push({ ...bounds });
    for (const b of [bounds.from, bounds.to]) {
      if (b !== undefined && !Number.isInteger(b)) throw new Error(`Int bound expected, got ${b}`);
    }
    const lo = bounds.from === undefined ? 0 : firstAtLeast(sorted, bounds.from * 100);
    const hi = bounds.to === undefined ? sorted.length : firstAtLeast(sorted, bounds.to * 100 + 1);
    return Math.max(0, hi - lo);
  };
  return { count, asked };
}

function firstAtLeast(sorted: Float64Array, value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export interface WorkerRuleResult {
  /** Stones each partition's worker keeps, in the partitions' order. */
  fetched: number[];
  /** Stones no worker keeps / more than one worker keeps. */
  unowned: number;
  duplicated: number;
}

/**
 * CONTRACT §2 applied literally to every stone: a worker queries {from: priceMin, to: priceMax}
 * (inclusive, on price / 100) and keeps the stones priced < priceMax.
 */
export function workerRule(partitions: readonly Partition[], priceCents: ArrayLike<number>): WorkerRuleResult {
  const fetched = partitions.map(() => 0);
  let unowned = 0;
  let duplicated = 0;
  for (let s = 0; s < priceCents.length; s++) {
    const cents = priceCents[s]!;
    let owners = 0;
    for (let k = 0; k < partitions.length; k++) {
      const p = partitions[k]!;
      const matchesQuery = cents >= p.priceMin * 100 && cents <= p.priceMax * 100;
      if (matchesQuery && cents < p.priceMax * 100) {
        owners++;
        fetched[k]!++;
      }
    }
    if (owners === 0) unowned++;
    else if (owners > 1) duplicated++;
  }
  return { fetched, unowned, duplicated };
}

/** Deterministic PRNG, the simulator's, so generated inventories are reproducible. */
export { mulberry32 as seededRandom } from '../../tools/simulator/inventory.js';

/** CONTRACT §2 shape: ids, integer contiguous non-empty ranges tiling [0, PRICE_AXIS_END). */
export function assertTiles(partitions: readonly Partition[]): void {
  let next = 0;
  partitions.forEach((p, i) => {
    assert.equal(p.partitionId, `partition-${i + 1}`);
    assert.ok(Number.isInteger(p.priceMin) && Number.isInteger(p.priceMax), 'whole dollars');
    assert.equal(p.priceMin, next, 'contiguous');
    assert.ok(p.priceMax > p.priceMin, 'non-empty range');
    assert.ok(Number.isInteger(p.expectedRecords) && p.expectedRecords >= 0);
    next = p.priceMax;
  });
  if (partitions.length > 0) assert.equal(next, PRICE_AXIS_END);
}
