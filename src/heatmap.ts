// Density scan of one window over an injected count function: pure, no I/O of its own.
//
// How counts map onto the worker rule (CONTRACT §2). Prices have cents (dollar_per_carat is any
// real number); the API's price bounds are inclusive whole numbers. So for a whole-dollar x,
//   count({from: x}) = #{price >= x}            exactly, whatever the cents,
// and with the window total T = count({}) (no price bound at all),
//   countBelow(x) = #{price < x} = T − count({from: x})          — one query per probed price.
// A worker owning [a, b) queries {from: a, to: b} (a <= price <= b) and keeps price < b, so it
// fetches exactly countBelow(b) − countBelow(a) stones: a stone at exactly b belongs to the next
// partition, one at b + $0.01 too, one at b − $0.01 to this one. The old scan's
// {from: a, to: b − 1} would have missed every stone in (b − 1, b): never use a `to` bound to count.
//
// The axis ends at PRICE_AXIS_END = 2147483647 (exclusive), and countBelow(PRICE_AXIS_END) is
// taken as T without a query: dollar_value cannot reach it (Offer.price is an Int of cents, so at
// most $21,474,836.47), and dollar_per_carat could only with a stone over $2.1 billion per carat,
// which the contract's last partition could not fetch anyway.
//
// The inventory is live: counts taken moments apart can disagree by a few stones. The
// scan clamps the points into a monotone sequence capped at T once per step (density.ts's normalisePoints).
//
// Strategies (HEATMAP_STRATEGY):
// - 'quantile' (default): T, a coarse geometric grid, then guesses for the price of each
//   boundary's quantile k·T/N from a monotone interpolation of what is known, refined
//   (interpolation with a bisection safeguard) only while a boundary is off by more than its
//   share of the balance tolerance, all probes of a round issued concurrently. When every
//   boundary still off is stuck on a one-dollar spike, the targets are re-spread so the spike's
//   neighbours absorb its imbalance (see spreadTargets) and refinement resumes on the budget left.
// - 'seed': the old system's scan pattern, the benchmark's reference: fixed denseZoneStep steps
//   from $0 to denseZoneThreshold, adaptive steps above it up to maxPrice (×5 after an empty
//   range, else scaled to aim at targetRecordsPerChunk, between 2·denseZoneStep and $50,000),
//   `concurrency` ranges per batch, the open tail above maxPrice. Each probe is recorded as an
//   exact cumulative point, so unlike the old scan it never loses stones.
import type { HeatmapStrategy } from './config.js';
import { PRICE_AXIS_END, type PriceBounds } from './domain.js';
import {
  bracket,
  cutCandidates,
  minimax,
  normalisePoints,
  partitionCount,
  type CumulativePoint,
  type Density,
  type NormalisedPoints,
  type PartitionRules,
} from './density.js';

/** Counts the window's stones within inclusive whole-dollar bounds; the caller binds window and base filter. */
export type CountFn = (bounds: PriceBounds) => Promise<number>;

export interface DensityScan extends Density {
  /** total: count({}), every stone in the window; points: every exact cumulative point probed, normalised. */
  countQueries: number;
  strategy: HeatmapStrategy;
}

export interface ScanOptions {
  strategy: HeatmapStrategy;
  /** HEATMAP_MAX_PRICE: the scan ceiling (the seed scans up to it; the quantile grid spans up to it). */
  maxPrice: number;
  denseZoneThreshold: number;
  denseZoneStep: number;
  partitions: PartitionRules;
  /** Count queries in flight at once (the client caps too). Default 4. */
  concurrency?: number;
  /** Quantile: stop refining once the plan's largest partition is within (1 + this) × ideal. Default 0.02. */
  balanceTolerance?: number;
  /** Quantile: at most this many count queries in all. Default max(80, 2 × partitions + 20). */
  maxQueries?: number;
  /** Quantile: prices in the coarse geometric grid from $1 to maxPrice. Default 6. */
  gridPoints?: number;
  /** Seed: the first adaptive step above the dense zone. Default 5000. */
  seedInitialStep?: number;
  /** Seed: the records per scanned range the adaptive step aims at. Default 2500. */
  seedTargetRecordsPerChunk?: number;
}

export async function scanDensity(count: CountFn, options: ScanOptions): Promise<DensityScan> {
  const probe = new Prober(count, options.concurrency ?? 4);
  const total = await probe.total();
  if (options.strategy === 'seed') await seedScan(probe, total, options);
  else await quantileScan(probe, total, options);
  return {
    total,
    points: normalisePoints(probe.points(), total),
    countQueries: probe.queries,
    strategy: options.strategy,
  };
}

/** Issues count queries with bounded concurrency and keeps every exact cumulative point learned. */
class Prober {
  queries = 0;
  private readonly known = new Map<number, number>();
  private totalCount = 0;

  constructor(
    private readonly count: CountFn,
    private readonly concurrency: number,
  ) {}

  async total(): Promise<number> {
    this.totalCount = checked(await this.ask({}), 'count({})');
    return this.totalCount;
  }

  has(price: number): boolean {
    return price <= 0 || price >= PRICE_AXIS_END || this.known.has(price);
  }

  /** countBelow at each price (concurrently, at most `concurrency` in flight); known prices cost nothing. */
  async countBelow(prices: readonly number[]): Promise<void> {
    const wanted = [...new Set(prices)].filter((p) => !this.has(p));
    let next = 0;
    // Once one query has failed the scan is lost: the other lanes stop asking the vendor.
    let failed = false;
    const worker = async (): Promise<void> => {
      while (next < wanted.length && !failed) {
        const price = wanted[next++]!;
        try {
          const atOrAbove = checked(await this.ask({ from: price }), `count({from: ${price}})`);
          this.known.set(price, this.totalCount - atOrAbove);
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    const lanes = Math.max(1, Math.min(this.concurrency, wanted.length));
    await Promise.all(Array.from({ length: lanes }, worker));
  }

  points(): CumulativePoint[] {
    return [...this.known.entries()].map(([price, below]) => ({ price, below }));
  }

  private ask(bounds: PriceBounds): Promise<number> {
    this.queries++;
    return this.count(bounds);
  }
}

function checked(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 0) throw new Error(`heatmap: ${what} returned ${String(n)}, not a count`);
  return n;
}

// ---------------------------------------------------------------- seed strategy

async function seedScan(probe: Prober, total: number, options: ScanOptions): Promise<void> {
  if (total === 0) return;
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const minAdaptiveStep = options.denseZoneStep * 2;
  const target = options.seedTargetRecordsPerChunk ?? 2500;
  let step = options.seedInitialStep ?? 5000;
  let below = 0;
  let price = 0;
  while (price < options.maxPrice) {
    const batch: Array<{ from: number; to: number }> = [];
    let cursor = price;
    for (let i = 0; i < concurrency && cursor < options.maxPrice; i++) {
      if (cursor < options.denseZoneThreshold) step = options.denseZoneStep;
      const to = Math.min(cursor + step, options.maxPrice);
      batch.push({ from: cursor, to });
      cursor = to;
    }
    await probe.countBelow(batch.map((r) => r.to));
    const known = new Map(probe.points().map((p) => [p.price, p.below]));
    for (const range of batch) {
      const end = Math.min(total, Math.max(below, known.get(range.to) ?? below));
      const inRange = end - below;
      below = end;
      if (range.from >= options.denseZoneThreshold) {
        step =
          inRange === 0 ? Math.min(step * 5, 100_000) : Math.max(minAdaptiveStep, Math.min(Math.floor((step * target) / inRange), 50_000));
      }
    }
    price = cursor;
  }
  // The open tail [maxPrice, PRICE_AXIS_END) needs no query of its own: countBelow(maxPrice) was
  // just probed and countBelow(PRICE_AXIS_END) = total.
}

// ---------------------------------------------------------------- quantile strategy

async function quantileScan(probe: Prober, total: number, options: ScanOptions): Promise<void> {
  const n = partitionCount(total, options.partitions);
  if (n <= 1) return; // nothing to cut
  const tolerance = options.balanceTolerance ?? 0.02;
  const budget = options.maxQueries ?? Math.max(80, 2 * n + 20);
  // The client keeps about this many queries in flight anyway, so asking in waves of that size
  // costs no wall time over one big round, and every wave's guesses use all earlier answers.
  const wave = Math.max(1, options.concurrency ?? 4);
  const ideal = total / n;
  const limit = (1 + tolerance) * ideal;

  await probe.countBelow(geometricGrid(options.maxPrice, options.gridPoints ?? 6, budget - probe.queries));

  const lastWidth = new Map<number, number>(); // target index → bracket width (log price) when last probed
  const quantiles = Array.from({ length: n - 1 }, (_, i) => ((i + 1) * total) / n);
  let spread = false;
  while (probe.queries < budget) {
    const points = normalisePoints(probe.points(), total);
    if (balanced(points, total, options.partitions, n, tolerance)) return;
    const targets = spread ? spreadTargets(points, total, n) : quantiles;
    const curve = new MonotoneCurve(points, total);
    const brackets = targets.map((target) => bracket(points, target));
    // The plan that takes, for each quantile, the nearest known price: boundary k's error moves
    // its two neighbours' sizes, so only an error that makes a neighbour too big needs fixing.
    const reached = brackets.map(({ lo, hi }, k) => {
      const target = targets[k]!;
      return target - lo.below <= hi.below - target ? lo.below : hi.below;
    });
    const errors = reached.map((r, k) => r - targets[k]!);
    const size = (k: number): number => (reached[k] ?? total) - (reached[k - 1] ?? 0);
    const proposals: Array<{ k: number; price: number; error: number }> = [];
    brackets.forEach(({ lo, hi }, k) => {
      const error = errors[k]!;
      const harmful = (error > 0 && size(k) > limit) || (error < 0 && size(k + 1) > limit);
      if (!harmful || hi.price - lo.price <= 1) return; // fine, or a point mass no boundary can split
      const width = logPrice(hi.price) - logPrice(lo.price);
      const previous = lastWidth.get(k);
      // Interpolation converging from one side shrinks its bracket slowly: bisect (in log price) then.
      const stalled = previous !== undefined && width > 0.5 * previous;
      const guess = stalled ? NaN : curve.priceAt(targets[k]!, lo);
      const price = Number.isFinite(guess) ? guess : midpoint(lo.price, hi.price);
      proposals.push({ k, price: clamp(Math.round(price), lo.price + 1, hi.price - 1), error: Math.abs(error) });
    });
    // The boundaries furthest off their quantile first.
    proposals.sort((a, b) => b.error - a.error);
    const room = Math.min(wave, budget - probe.queries);
    const chosen: number[] = [];
    for (const proposal of proposals) {
      if (chosen.length >= room) break;
      if (probe.has(proposal.price) || chosen.includes(proposal.price)) continue;
      chosen.push(proposal.price);
      lastWidth.set(proposal.k, logPrice(brackets[proposal.k]!.hi.price) - logPrice(brackets[proposal.k]!.lo.price));
    }
    if (chosen.length === 0) {
      // Only spikes are left: re-aim the neighbours instead of giving up. Not from the start:
      // every pin moves its whole stretch's targets, and pins found one by one while the
      // quantiles are still being located make boundaries chase moving targets (measured: the
      // budget runs out first).
      if (spread) return;
      spread = true;
      lastWidth.clear();
      continue;
    }
    await probe.countBelow(chosen);
  }
}

/**
 * Where each boundary should land, in stones below it. Ideally at its quantile k·T/N, but a
 * boundary whose quantile falls inside a known one-dollar spike (no whole-dollar price between
 * the two known points around it) can only sit at one side of the spike, off its quantile by up
 * to the spike's size. Probing closer cannot help there; what helps is letting the neighbours
 * absorb the imbalance: such a boundary is pinned at one side, and the boundaries between two
 * consecutive pins (or a pin and an end of the axis) aim at evenly spaced counts, so a spike of
 * s stones off by e moves each of the m partitions of its stretch by only e/m. Shifting a
 * neighbour can land it in another spike: pinning repeats until no target does.
 */
function spreadTargets(points: NormalisedPoints, total: number, n: number): number[] {
  const pins = new Map<number, { lo: number; hi: number }>();
  let targets = Array.from({ length: n - 1 }, (_, i) => ((i + 1) * total) / n);
  for (let round = 0; round < n; round++) {
    let added = false;
    targets.forEach((target, k) => {
      if (pins.has(k)) return;
      const { lo, hi } = bracket(points, target);
      if (hi.price - lo.price <= 1 && lo.below < target && target < hi.below) {
        pins.set(k, { lo: lo.below, hi: hi.below });
        added = true;
      }
    });
    if (!added) break;
    targets = evenBetweenPins(pins, total, n);
  }
  return targets;
}

/**
 * Chooses a side for every pinned boundary (the lowest largest spacing between consecutive
 * anchors, a small DP over the pins in order; ties to the sides nearer the quantiles), then
 * spaces the free boundaries evenly between anchors.
 */
function evenBetweenPins(pins: ReadonlyMap<number, { lo: number; hi: number }>, total: number, n: number): number[] {
  const order = [...pins.keys()].sort((a, b) => a - b);
  type State = { worst: number; drift: number; from: number };
  const options = order.map((k) => [pins.get(k)!.lo, pins.get(k)!.hi]);
  const spacing = (k0: number, c0: number, k1: number, c1: number): number => (c1 < c0 ? Infinity : (c1 - c0) / (k1 - k0));
  const better = (a: State, b: State): boolean => a.worst < b.worst || (a.worst === b.worst && a.drift < b.drift);
  const table: State[][] = [];
  order.forEach((k, i) => {
    const row = options[i]!.map((c): State => {
      const drift = Math.abs(c - ((k + 1) * total) / n);
      if (i === 0) return { worst: spacing(-1, 0, k, c), drift, from: -1 };
      let best: State = { worst: Infinity, drift: Infinity, from: 0 };
      options[i - 1]!.forEach((p, side) => {
        const prev = table[i - 1]![side]!;
        const candidate = { worst: Math.max(prev.worst, spacing(order[i - 1]!, p, k, c)), drift: prev.drift + drift, from: side };
        if (better(candidate, best)) best = candidate;
      });
      return best;
    });
    table.push(row);
  });
  // Anchors by boundary index k (−1 is the axis start, n − 1 its end), walking the DP back.
  const anchors = new Map<number, number>([
    [-1, 0],
    [n - 1, total],
  ]);
  if (order.length > 0) {
    const last = order.length - 1;
    const close = (side: number): State => {
      const s = table[last]![side]!;
      return { ...s, worst: Math.max(s.worst, spacing(order[last]!, options[last]![side]!, n - 1, total)) };
    };
    let side = better(close(1), close(0)) ? 1 : 0;
    for (let i = last; i >= 0; i--) {
      anchors.set(order[i]!, options[i]![side]!);
      side = table[i]![side]!.from;
    }
  }
  const keys = [...anchors.keys()].sort((a, b) => a - b);
  const targets: number[] = [];
  for (let j = 0; j + 1 < keys.length; j++) {
    const k0 = keys[j]!;
    const k1 = keys[j + 1]!;
    const c0 = anchors.get(k0)!;
    const c1 = anchors.get(k1)!;
    for (let k = k0 + 1; k <= k1 && k < n - 1; k++) targets[k] = c0 + ((k - k0) * (c1 - c0)) / (k1 - k0);
  }
  return targets;
}

/** $1 … maxPrice, evenly spaced in log price: where the inventory lives is unknown (price field, filters). */
function geometricGrid(maxPrice: number, size: number, room: number): number[] {
  const count = Math.max(0, Math.min(size, room));
  if (count === 0) return [];
  if (count === 1) return [maxPrice];
  const top = logPrice(maxPrice);
  const base = logPrice(1);
  return Array.from({ length: count }, (_, i) => Math.round(Math.expm1(base + ((top - base) * i) / (count - 1))));
}

/** Would the partitioner's plan over these points have n partitions, the largest within the tolerance? */
function balanced(points: NormalisedPoints, total: number, rules: PartitionRules, n: number, tolerance: number): boolean {
  const best = minimax(
    cutCandidates(points, total).map((p) => p.below),
    total,
    rules,
  );
  return best.partitions === n && best.maxLoad <= (1 + tolerance) * (total / n);
}

const logPrice = (price: number): number => Math.log1p(price);
const midpoint = (a: number, b: number): number => Math.expm1((logPrice(a) + logPrice(b)) / 2);
const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));

/**
 * Monotone cubic (Fritsch–Carlson) through the known points in (log(1 + price), logit(fraction
 * below)): roughly lognormal inventories are nearly straight lines there, so a few points go far,
 * and monotonicity means a guess never leaves its bracket.
 */
class MonotoneCurve {
  private readonly xs: number[];
  private readonly ys: number[];
  private readonly slopes: number[];
  private readonly total: number;

  constructor(points: readonly CumulativePoint[], total: number) {
    this.total = total;
    this.xs = points.map((p) => logPrice(p.price));
    this.ys = points.map((p) => this.y(p.below));
    const n = this.xs.length;
    const secants: number[] = [];
    for (let i = 0; i + 1 < n; i++) secants.push((this.ys[i + 1]! - this.ys[i]!) / (this.xs[i + 1]! - this.xs[i]!));
    this.slopes = Array.from({ length: n }, (_, i) => {
      if (i === 0) return secants[0] ?? 0;
      if (i === n - 1) return secants[n - 2] ?? 0;
      const left = secants[i - 1]!;
      const right = secants[i]!;
      if (left <= 0 || right <= 0) return 0;
      const hl = this.xs[i]! - this.xs[i - 1]!;
      const hr = this.xs[i + 1]! - this.xs[i]!;
      const wl = 2 * hr + hl;
      const wr = hr + 2 * hl;
      return (wl + wr) / (wl / left + wr / right);
    });
  }

  /** The price where the curve reaches `below`, between the known point lo and the next one. */
  priceAt(below: number, lo: CumulativePoint): number {
    const i = this.xs.indexOf(logPrice(lo.price));
    if (i < 0 || i + 1 >= this.xs.length) return NaN;
    const target = this.y(below);
    let a = this.xs[i]!;
    let b = this.xs[i + 1]!;
    for (let step = 0; step < 60; step++) {
      const mid = (a + b) / 2;
      if (this.at(i, mid) < target) a = mid;
      else b = mid;
    }
    return Math.expm1((a + b) / 2);
  }

  private at(i: number, x: number): number {
    const x0 = this.xs[i]!;
    const h = this.xs[i + 1]! - x0;
    const t = (x - x0) / h;
    const t2 = t * t;
    const t3 = t2 * t;
    return (
      (2 * t3 - 3 * t2 + 1) * this.ys[i]! +
      (t3 - 2 * t2 + t) * h * this.slopes[i]! +
      (-2 * t3 + 3 * t2) * this.ys[i + 1]! +
      (t3 - t2) * h * this.slopes[i + 1]!
    );
  }

  private y(below: number): number {
    const f = clamp(below / this.total, 0.5 / this.total, 1 - 0.5 / this.total);
    return Math.log(f / (1 - f));
  }
}
