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
// Steps 1 and 2 are density.ts's minimax (the scan asks the same question to know when to stop):
//   1. the partition count N is the largest count ≤ partitionCount(total) for which every
//      partition can hold at least minRecordsPerWorker (a point mass — many stones at one
//      whole-dollar price — can make the asked-for count impossible; then fewer, never smaller);
//   2. the smallest achievable maximum load L* for N partitions (binary search over L with an
//      O(N·M) reachability check);
//   3. among plans whose loads lie in [min, L*], the one with the least sum of squared loads, so
//      the partitions not pinned by a point mass are still even.
import type { Partition } from './domain.js';
import { cutCandidates, minimax, windowOf, type Density, type PartitionRules } from './density.js';

// The scheduler and the benchmark know these by the partitioner's name.
export { partitionCount, type PartitionRules } from './density.js';

/** Work items for a scanned window: tile [0, PRICE_AXIS_END), ids partition-1…partition-N in price order. */
export function planPartitions(density: Density, rules: PartitionRules): Partition[] {
  const { total } = density;
  const points = cutCandidates(density.points, total);
  const below = points.map((p) => p.below);
  const last = points.length - 1;
  const best = minimax(below, total, rules);
  if (best.partitions === 0) return [];
  const cuts = best.partitions > 1 ? evenestPlan(below, best.partitions, rules.minRecordsPerWorker, best.maxLoad) : [0, last];
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
