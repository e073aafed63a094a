// The scan's vocabulary, shared by the density scan (heatmap.ts) and the partitioner: exact
// cumulative counts at whole-dollar prices, the partition-count rules, and the feasibility
// question both ask of a set of counts ("can these points be cut into n partitions with loads in
// [min, max]?"). Pure: no I/O. See heatmap.ts for why the counts are exact whatever the cents.
import { PRICE_AXIS_END } from './domain.js';

/** below(price) = number of the window's stones priced strictly below `price` (whole dollars). */
export interface CumulativePoint {
  price: number;
  below: number;
}

declare const normalised: unique symbol;

/**
 * Points as normalisePoints returns them: strictly increasing whole-dollar prices from 0 to
 * PRICE_AXIS_END, nondecreasing counts from 0 to the total. The brand makes "normalised once"
 * checkable by the compiler: only normalisePoints makes one.
 */
export type NormalisedPoints = readonly CumulativePoint[] & { readonly [normalised]: true };

/** A window's total and its normalised cumulative points: all a partition plan needs. */
export interface Density {
  total: number;
  points: NormalisedPoints;
}

export interface PartitionRules {
  /** HEATMAP_MAX_WORKERS on a full run, INCREMENTAL_MAX_WORKERS on an incremental one. */
  maxWorkers: number;
  /** RECORDS_PER_WORKER: the size a partition aims at. */
  recordsPerWorker: number;
  /** HEATMAP_MIN_RECORDS_PER_WORKER: no partition holds fewer, unless the whole window does. */
  minRecordsPerWorker: number;
}

/**
 * How many partitions a window of `total` stones asks for: 0 when empty, 1 when it holds fewer
 * than the minimum, otherwise ceil(total / recordsPerWorker) capped by maxWorkers and by
 * floor(total / minRecordsPerWorker) (more would force some partition under the minimum).
 */
export function partitionCount(total: number, rules: PartitionRules): number {
  if (total <= 0) return 0;
  if (total < rules.minRecordsPerWorker) return 1;
  const wanted = Math.ceil(total / rules.recordsPerWorker);
  const cap = Math.min(rules.maxWorkers, Math.floor(total / rules.minRecordsPerWorker));
  return Math.max(1, Math.min(wanted, cap));
}

/** Stones priced from `dollar` (inclusive) to dollar + 1 (exclusive) of the price field. */
export interface DollarStones {
  dollar: number;
  stones: number;
}

/**
 * The probed points as a strictly increasing price list from 0 to PRICE_AXIS_END with
 * nondecreasing counts. The inventory is live, so counts taken moments apart can disagree by a
 * few stones; clamping keeps every expectedRecords ≥ 0 and their sum = the window total.
 */
export function normalisePoints(points: readonly CumulativePoint[], total: number): NormalisedPoints {
  const byPrice = new Map<number, number>();
  for (const p of points) {
    if (!Number.isInteger(p.price) || p.price <= 0 || p.price >= PRICE_AXIS_END) continue;
    byPrice.set(p.price, p.below);
  }
  const sorted = [...byPrice.entries()].sort((a, b) => a[0] - b[0]);
  const out: CumulativePoint[] = [{ price: 0, below: 0 }];
  let running = 0;
  for (const [price, below] of sorted) {
    running = Math.min(total, Math.max(running, below));
    out.push({ price, below: running });
  }
  out.push({ price: PRICE_AXIS_END, below: total });
  return out as unknown as NormalisedPoints;
}

/** The adjacent points with lo.below <= target <= hi.below (lo the last such, so hi.below > target unless at the end). */
export function bracket(points: NormalisedPoints, target: number): { lo: CumulativePoint; hi: CumulativePoint } {
  let a = 0;
  let b = points.length - 1;
  while (b - a > 1) {
    const mid = (a + b) >> 1;
    if (points[mid]!.below <= target) a = mid;
    else b = mid;
  }
  return { lo: points[a]!, hi: points[b]! };
}

/**
 * The points worth cutting at: prices with equal counts are interchangeable as boundaries, so
 * only the lowest is kept (sparse stretches of a fine scan do not slow the optimisers down).
 */
export function cutCandidates(points: NormalisedPoints, total: number): CumulativePoint[] {
  return points.filter((p, i, all) => i === 0 || i === all.length - 1 || (p.below !== all[i - 1]!.below && p.below < total));
}

/** The least largest partition an n-partition plan over these counts can have, and that n. */
export interface Minimax {
  /** Partitions of the plan: the asked-for count, or fewer when the minimum forces it (1 when none fits). */
  partitions: number;
  /** Its largest partition (the total for a single partition, 0 for none). */
  maxLoad: number;
}

/**
 * Exact over the given counts (`below`: nondecreasing, first 0, last the total): the largest
 * n ≤ partitionCount for which every partition can hold at least the minimum, then the least
 * achievable maximum load for that n (binary search with an O(n·M log M) reachability check).
 */
export function minimax(below: readonly number[], total: number, rules: PartitionRules): Minimax {
  const wanted = partitionCount(total, rules);
  if (wanted === 0) return { partitions: 0, maxLoad: 0 };
  const end = below[below.length - 1] ?? total;
  const min = rules.minRecordsPerWorker;
  for (let n = wanted; n > 1; n--) {
    if (!reachable(below, n, min, end)) continue;
    return { partitions: n, maxLoad: smallestMaxLoad(below, n, min, Math.ceil(end / n), end) };
  }
  return { partitions: 1, maxLoad: end };
}

/** Predecessor window of cut j: cuts i < j with below[j] − maxLoad ≤ below[i] ≤ below[j] − min. */
export function windowOf(below: readonly number[], j: number, min: number, maxLoad: number): [number, number] {
  // below is nondecreasing, so both ends are binary searches.
  const hi = lastAtMost(below, below[j]! - min, j - 1);
  const lo = firstAtLeast(below, below[j]! - maxLoad, hi + 1);
  return [lo, hi];
}

/** In nondecreasing values: the index of the last value ≤ limit (a limit between whole counts too), −1 when none; only indexes ≤ upTo. */
export function lastAtMost(values: readonly number[], limit: number, upTo = values.length - 1): number {
  let lo = 0;
  let hi = upTo;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (values[mid]! <= limit) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/** In nondecreasing values: the index of the first value ≥ limit, among indexes < upTo; upTo when none. */
export function firstAtLeast(values: readonly number[], limit: number, upTo = values.length): number {
  let lo = 0;
  let hi = upTo - 1;
  let found = upTo;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (values[mid]! >= limit) {
      found = mid;
      hi = mid - 1;
    } else lo = mid + 1;
  }
  return found;
}

/** Can the points be cut into exactly n partitions with loads in [min, maxLoad]? O(n·M log M). */
export function reachable(below: readonly number[], n: number, min: number, maxLoad: number): boolean {
  const m = below.length;
  const windows = below.map((_, j) => windowOf(below, j, min, maxLoad));
  let prev = new Uint8Array(m);
  prev[0] = 1;
  const prefix = new Int32Array(m + 1);
  for (let k = 1; k <= n; k++) {
    for (let i = 0; i < m; i++) prefix[i + 1] = prefix[i]! + prev[i]!;
    const next = new Uint8Array(m);
    for (let j = 1; j < m; j++) {
      const [lo, hi] = windows[j]!;
      if (hi >= lo && prefix[hi + 1]! - prefix[lo]! > 0) next[j] = 1;
    }
    prev = next;
  }
  return prev[m - 1] === 1;
}

function smallestMaxLoad(below: readonly number[], n: number, min: number, floor: number, ceiling: number): number {
  let lo = Math.max(floor, min);
  let hi = ceiling;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (reachable(below, n, min, mid)) hi = mid;
    else lo = mid + 1;
  }
  return hi;
}
