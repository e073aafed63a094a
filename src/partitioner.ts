// Density scan → work items (CONTRACT §2). Pure: no I/O, no clock, no randomness.
//
// The scan hands over exact cumulative counts countBelow(price) = #{stones with price < price}
// at whole-dollar prices (see heatmap.ts for why they are exact whatever the cents). Every
// boundary is chosen among those probed prices, so a partition [priceMin, priceMax) holds exactly
// countBelow(priceMax) − countBelow(priceMin) stones under the worker rule (query
// {from: priceMin, to: priceMax}, keep price < priceMax), and expectedRecords is exact at scan
// time: no guess about how stones spread inside a bin, which is what made near-empty and giant
// partitions before.
//
// Choosing boundaries is an exact optimisation over the probed prices, not greedy cutting
// (greedy overshoots and ends with fewer partitions than asked):
//   1. the partition count N is the largest count ≤ partitionCount(total) for which every
//      partition can hold at least minRecordsPerWorker (a point mass — many stones at one
//      whole-dollar price — can make the asked-for count impossible; then fewer, never smaller);
//   2. the smallest achievable maximum load L* for N partitions (binary search over L with an
//      O(N·M) reachability check);
//   3. among plans whose loads lie in [min, L*], the one with the least sum of squared loads, so
//      the partitions not pinned by a point mass are still even.
import type { DensityScan, CumulativePoint } from './heatmap.js';
import { PRICE_AXIS_END, type Partition } from './domain.js';

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

/** Work items for a scanned window: tile [0, PRICE_AXIS_END), ids partition-1…partition-N in price order. */
export function planPartitions(scan: DensityScan, rules: PartitionRules): Partition[] {
  const total = scan.total;
  const wanted = partitionCount(total, rules);
  if (wanted === 0) return [];
  // Prices with equal counts are interchangeable as boundaries: keep the lowest, so sparse
  // stretches of a fine scan do not slow the optimiser down.
  const points = normalisePoints(scan.points, total).filter(
    (p, i, all) => i === 0 || i === all.length - 1 || (p.below !== all[i - 1]!.below && p.below < total),
  );
  const below = points.map((p) => p.below);
  const last = points.length - 1;
  const endCount = below[last] ?? total;

  let plan: number[] | undefined;
  if (wanted > 1) {
    const min = rules.minRecordsPerWorker;
    for (let n = wanted; n > 1 && plan === undefined; n--) {
      if (!reachable(below, n, min, endCount)) continue;
      const maxLoad = smallestMaxLoad(below, n, min, Math.ceil(endCount / n), endCount);
      plan = evenestPlan(below, n, min, maxLoad);
    }
  }
  const cuts = plan ?? [0, last];
  const partitions: Partition[] = [];
  for (let k = 1; k < cuts.length; k++) {
    const from = points[cuts[k - 1]!]!;
    const to = points[cuts[k]!]!;
    partitions.push({
      partitionId: `partition-${k}`,
      priceMin: from.price,
      priceMax: to.price,
      expectedRecords: to.below - from.below,
    });
  }
  return partitions;
}

/**
 * The probed points as a strictly increasing price list from 0 to PRICE_AXIS_END with
 * nondecreasing counts. The inventory is live, so counts taken moments apart can disagree by a
 * few stones; clamping keeps every expectedRecords ≥ 0 and their sum = the window total.
 */
export function normalisePoints(points: readonly CumulativePoint[], total: number): CumulativePoint[] {
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
  return out;
}

/** Predecessor window of cut j: cuts i < j with below[j] − maxLoad ≤ below[i] ≤ below[j] − min. */
function windowOf(below: readonly number[], j: number, min: number, maxLoad: number): [number, number] {
  // below is nondecreasing, so both ends are binary searches.
  const hi = lastAtMost(below, below[j]! - min, j - 1);
  const lo = firstAtLeast(below, below[j]! - maxLoad, hi + 1);
  return [lo, hi];
}

function lastAtMost(values: readonly number[], limit: number, upTo: number): number {
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

function firstAtLeast(values: readonly number[], limit: number, upTo: number): number {
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
function reachable(below: readonly number[], n: number, min: number, maxLoad: number): boolean {
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

/** Cut indices (0 … last) of the n-partition plan with loads in [min, maxLoad] and least Σ load². */
function evenestPlan(below: readonly number[], n: number, min: number, maxLoad: number): number[] {
  const m = below.length;
  const windows = below.map((_, j) => windowOf(below, j, min, maxLoad));
  const cost: Float64Array[] = [new Float64Array(m).fill(Infinity)];
  cost[0]![0] = 0;
  const from: Int32Array[] = [new Int32Array(m).fill(-1)];
  for (let k = 1; k <= n; k++) {
    const prev = cost[k - 1]!;
    const here = new Float64Array(m).fill(Infinity);
    const choice = new Int32Array(m).fill(-1);
    let firstReached = prev.findIndex((c) => c !== Infinity);
    let lastReached = m - 1;
    while (lastReached >= 0 && prev[lastReached] === Infinity) lastReached--;
    if (firstReached < 0) firstReached = m;
    // (below[j] − below[i])² is Monge and the windows move monotonically, so the best
    // predecessor never moves left as j grows: divide and conquer, O(M log M) per layer
    // instead of O(M · window) (a seed scan with a $1 dense step has tens of thousands of points).
    const solve = (jFrom: number, jTo: number, iFrom: number, iTo: number): void => {
      if (jFrom > jTo) return;
      const j = (jFrom + jTo) >> 1;
      const [lo, hi] = windows[j]!;
      for (let i = Math.max(lo, iFrom, firstReached); i <= Math.min(hi, iTo, lastReached); i++) {
        const base = prev[i]!;
        if (base === Infinity) continue;
        const load = below[j]! - below[i]!;
        const c = base + load * load;
        if (c < here[j]!) {
          here[j] = c;
          choice[j] = i;
        }
      }
      const best = choice[j]!;
      solve(jFrom, j - 1, iFrom, best < 0 ? iTo : best);
      solve(j + 1, jTo, best < 0 ? iFrom : best, iTo);
    };
    solve(1, m - 1, 0, m - 1);
    cost.push(here);
    from.push(choice);
  }
  if (cost[n]![m - 1] === Infinity) throw new Error('partitioner: no plan within the load found feasible (bug)');
  const cuts = [m - 1];
  for (let k = n, j = m - 1; k > 0; k--) {
    j = from[k]![j]!;
    cuts.push(j);
  }
  return cuts.reverse();
}
