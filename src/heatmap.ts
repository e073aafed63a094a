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
// The inventory is live: counts taken moments apart can disagree by a few stones. The scan
// clamps the points into a monotone sequence capped at T once per step (density.ts's normalisePoints).
//
// Strategies (HEATMAP_STRATEGY):
// - 'quantile' (default): see quantileScan. In short: T (with last night's boundaries when a
//   warm start is given, in the same round), then waves of probes chosen by re-planning after
//   every wave, until the exact optimiser over everything probed meets the balance target, the
//   target is provably out of reach, or the query budget is spent.
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
  firstAtLeast,
  lastAtMost,
  minimax,
  normalisePoints,
  partitionCount,
  type CumulativePoint,
  type Density,
  type DollarStones,
  type NormalisedPoints,
  type PartitionRules,
} from './density.js';

export type { DollarStones } from './density.js';

/** Counts the window's stones within inclusive whole-dollar bounds; the caller binds window and base filter. */
export type CountFn = (bounds: PriceBounds) => Promise<number>;

/**
 * Last run's plan, to start from: the boundaries of the last recorded and published run of the
 * same run type, price field and base filter (the caller checks that), and its window total.
 */
export interface WarmStart {
  /** That run's window total (its count({})). */
  total: number;
  /** Its cut prices: the priceMin of every partition but the first, increasing whole dollars. */
  cuts: readonly number[];
  /**
   * Every point its scan probed (stones below each price, against its total), when recorded: the
   * shape of the inventory between the cuts, spikes included, that tonight's first round cannot see.
   */
  points?: readonly CumulativePoint[];
  /**
   * Last run's stones as its workers wrote them, per whole dollar of the price field (the raw
   * table): the exact shape of last night's inventory, which tonight's differs from by a night's
   * drift and new spikes. Preferred over `points` when given and plausible (see priorFrom).
   */
  stones?: readonly DollarStones[];
}

/** A WarmStart from a recorded plan: its total, its partitions (any order) and, when recorded, its scan's points and stones. */
export function warmStartFrom(
  total: number,
  partitions: readonly { priceMin: number; priceMax: number }[],
  points?: readonly CumulativePoint[],
  stones?: readonly DollarStones[],
): WarmStart {
  return {
    total,
    cuts: partitions
      .map((p) => p.priceMin)
      .filter((price) => price > 0)
      .sort((a, b) => a - b),
    ...(points && points.length > 0 ? { points } : {}),
    ...(stones && stones.length > 0 ? { stones } : {}),
  };
}

/**
 * Why the scan started warm or cold (log it):
 * - 'history': warm, from the WarmStart's boundaries;
 * - 'no-history': no WarmStart given (first run, or the caller found none that matches);
 * - 'invalid-history': the WarmStart is malformed (see startDetail);
 * - 'partition-count-changed': last run's partition count differs from tonight's;
 * - 'total-moved': tonight's total is more than maxWarmTotalChange away from last run's;
 * - 'shape-moved': some partition of last run's plan now holds far more or less than its share (maxWarmShapeChange);
 * - 'seed-strategy': the seed strategy never starts warm.
 */
export type StartReason =
  'history' | 'no-history' | 'invalid-history' | 'partition-count-changed' | 'total-moved' | 'shape-moved' | 'seed-strategy';

/**
 * Why the scan stopped:
 * - 'balanced': the plan's largest partition is within (1 + balanceTolerance) × ideal (or nothing to cut);
 * - 'unreachable': probed one-dollar spikes prove that target out of reach (floor says how far);
 *   the scan stopped within the tolerance of that floor instead (largest ≤ floor + tolerance × ideal);
 * - 'budget': maxQueries spent first (balance says what was reached);
 * - 'pattern': the seed strategy's fixed pattern ended.
 */
export type StopReason = 'balanced' | 'unreachable' | 'budget' | 'pattern';

export interface DensityScan extends Density {
  /** total: count({}), every stone in the window; points: every exact cumulative point probed, normalised. */
  countQueries: number;
  /** Dependent rounds of count queries (each round waits for the previous one's answers). */
  rounds: number;
  strategy: HeatmapStrategy;
  start: 'warm' | 'cold';
  startReason: StartReason;
  /** A sentence for the log when the start reason needs one (what was malformed, how far the inventory moved). */
  startDetail?: string;
  stopReason: StopReason;
  /** Partitions of the plan planPartitions makes from this scan. */
  partitions: number;
  /**
   * What a warm scan guessed tonight's shape between its probes from: 'stones' (WarmStart.stones,
   * exact per dollar), 'points' (last run's probed points), 'none' (cold, or boundaries alone).
   */
  prior: 'stones' | 'points' | 'none';
  /** That plan's largest partition / (total / partitions); 0 when empty. */
  balance: number;
  /**
   * A provable lower bound of `balance` for any scan of this window: the partitioner can only cut
   * between whole dollars, so a one-dollar spike found by the scan can force a larger partition.
   */
  floor: number;
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
  /** Quantile: HEATMAP_BALANCE_TOLERANCE, stop once the plan's largest partition is within (1 + this) × ideal. Default 0.02. */
  balanceTolerance?: number;
  /** Quantile: HEATMAP_MAX_COUNT_QUERIES, at most this many count queries in all. Default defaultMaxQueries(N). */
  maxQueries?: number;
  /** Quantile: last run's plan; absent = cold start. */
  warmStart?: WarmStart;
  /** Quantile: a warm start is refused when the total moved by more than this share. Default 0.25. */
  maxWarmTotalChange?: number;
  /** Quantile: … or when a partition of last run's plan now holds more than (1 ± this) × ideal. Default 0.5. */
  maxWarmShapeChange?: number;
  /** Quantile: probes per refinement round (re-planning between rounds). Default max(6, concurrency). */
  waveSize?: number;
  /** Quantile: prices in the coarse geometric grid from $1 to maxPrice of a cold start. Default 6. */
  gridPoints?: number;
  /** Seed: the first adaptive step above the dense zone. Default 5000. */
  seedInitialStep?: number;
  /** Seed: the records per scanned range the adaptive step aims at. Default 2500. */
  seedTargetRecordsPerChunk?: number;
}

/** The quantile scan's query budget when maxQueries is not given: 20 + 6 per partition (200 for 30). */
export function defaultMaxQueries(partitions: number): number {
  return 20 + 6 * Math.max(1, partitions);
}

export async function scanDensity(count: CountFn, options: ScanOptions): Promise<DensityScan> {
  const probe = new Prober(count, options.concurrency ?? 4);
  let outcome: Outcome;
  if (options.strategy === 'seed') {
    await probe.wave([], true);
    await seedScan(probe, probe.total, options);
    outcome = { start: 'cold', startReason: 'seed-strategy', stopReason: 'pattern', prior: 'none' };
  } else {
    outcome = await quantileScan(probe, options);
  }
  const total = probe.total;
  const points = normalisePoints(probe.points(), total);
  const best = minimax(
    cutCandidates(points, total).map((p) => p.below),
    total,
    options.partitions,
  );
  const floor =
    best.partitions === 0
      ? undefined
      : relaxedFloor(achievable(points), total, partitionCount(total, options.partitions), options.partitions);
  return {
    total,
    points,
    countQueries: probe.queries,
    rounds: probe.rounds,
    strategy: options.strategy,
    ...outcome,
    partitions: best.partitions,
    balance: best.partitions === 0 ? 0 : best.maxLoad / (total / best.partitions),
    floor: floor === undefined ? 0 : floor.maxLoad / (total / floor.partitions),
  };
}

type Outcome = Pick<DensityScan, 'start' | 'startReason' | 'startDetail' | 'stopReason' | 'prior'>;

/** Issues count queries in rounds with bounded concurrency and keeps every exact answer. */
class Prober {
  queries = 0;
  rounds = 0;
  /** count({from: price}) by price. */
  private readonly atOrAbove = new Map<number, number>();
  private totalCount: number | undefined;

  constructor(
    private readonly count: CountFn,
    private readonly concurrency: number,
  ) {}

  get total(): number {
    if (this.totalCount === undefined) throw new Error('heatmap: the total is not known yet (bug)');
    return this.totalCount;
  }

  has(price: number): boolean {
    return price <= 0 || price >= PRICE_AXIS_END || this.atOrAbove.has(price);
  }

  /**
   * One round: count({}) when `withTotal`, and count({from: p}) for each price not asked yet,
   * concurrently, at most `concurrency` in flight. below(p) needs the total, so a first round
   * sends it along with the first prices and the points are read only after the round.
   */
  async wave(prices: readonly number[], withTotal = false): Promise<void> {
    const wanted: Array<number | undefined> = withTotal ? [undefined] : [];
    for (const p of new Set(prices)) if (!this.has(p)) wanted.push(p);
    if (wanted.length === 0) return;
    this.rounds++;
    let next = 0;
    // Once one query has failed the scan is lost: the other lanes stop asking the vendor.
    let failed = false;
    const lane = async (): Promise<void> => {
      while (next < wanted.length && !failed) {
        const price = wanted[next++];
        try {
          if (price === undefined) this.totalCount = checked(await this.ask({}), 'count({})');
          else this.atOrAbove.set(price, checked(await this.ask({ from: price }), `count({from: ${price}})`));
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    const lanes = Math.max(1, Math.min(this.concurrency, wanted.length));
    await Promise.all(Array.from({ length: lanes }, lane));
  }

  /** Every probed price with below = T − count({from: price}) (not yet clamped: see normalisePoints). */
  points(): CumulativePoint[] {
    const total = this.total;
    return [...this.atOrAbove.entries()].map(([price, atOrAbove]) => ({ price, below: total - atOrAbove }));
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
    await probe.wave(batch.map((r) => r.to));
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
//
// Every round re-plans from scratch over everything probed so far:
//   1. the exact optimiser (density.ts's minimax) over the probed prices: if its plan has N
//      partitions, the largest within L = (1 + tolerance) × T/N, stop ('balanced');
//   2. a provable floor (relaxedFloor): the same question with every unprobed stretch taken as
//      infinitely divisible and every probed one-dollar gap as indivisible. When even that
//      cannot meet L (a point mass, a spike larger than a partition may hold, N too large for
//      the minimum), the target becomes floor + tolerance × ideal ('unreachable' once met);
//   3. a chain (planChain): for each boundary either a probed price or a "hole" — a window of
//      counts [t − h, t + h] where any price will do. Holes come in runs between two anchors
//      (probed prices near a quantile, both sides of a probed one-dollar spike, a warm start's
//      old boundaries), evenly spaced, with h the slack the run leaves; the chain whose unfilled
//      holes look cheapest to fill wins (holeCost). So a warm start keeps every boundary whose
//      partitions still fit and moves only the stretch around one that does not; a cold start
//      begins with one run of N − 1 holes at the quantiles; a spike is an anchor a chain may use
//      or step over, never a hole (no probe inside a one-dollar gap).
//   3a. on a cold start of at least SWEEP_MIN_PARTS partitions, the chain gives way to a sweep
//      (sweepHoles) that fixes boundaries left to right, each once, in a window set when it
//      comes up; the chain takes over for good once the sweep is stuck or short of budget;
//   4. one probe per hole (the widest first, at most waveSize per round): on a warm start with
//      last run's points, last run's curve rescaled to the bracket (PriorCurve: it knows where
//      last night's spikes were); else a monotone curve in (log price, logit share) for a wide
//      bracket, linear in price for a narrow one, and a bisection when the bracket did not halve
//      since its last probe (half way to it below SWEEP_MIN_PARTS partitions). A bracket whose
//      stones stay while its price range shrinks holds a spike the target sits in: SPIKE_PROBES spread over it (every dollar once it is narrow)
//      find its edges in a round or two instead of a bisection per round.
//   5. a warm start with last night's stones per dollar (WarmStart.stones, the raw table) skips
//      3–4: its shape is exact but for a night's drift and new spikes, so exactPlan plans every
//      cut at a whole dollar on the counts it predicts and probes, in one round, the cuts it
//      moved; what a probe shows reshapes the next plan. A bracket holding a new spike's excess
//      is cut near its edges as a gamble on the spike's side, else with room for either side,
//      and only with that room once a gamble missed. Back to 3–4 when that finds no plan, on
//      more than two excesses (a shape gone wrong, or many new spikes), or on 'unreachable'.

/** Brackets at most this wide (in price, relative to their low end) are interpolated linearly. */
const NARROW = 0.15;
/** A run's half-window h must leave at least this share of the tolerance's half-slack, else more boundaries move. */
const MIN_HALF_SHARE = 0.35;
/**
 * … on a warm start whose first plan missed by more than SPIKE_NIGHT_MISS tolerances (a partition
 * grew by a spike's worth; on ordinary nights it misses by less than 1.2): narrower windows, so
 * fewer boundaries move around the spike. Measured on seeds 101–130 and 201–230, checked on
 * 301–330 (see the README's benchmark).
 */
const SPIKE_NIGHT_HALF_SHARE = 0.2;
const SPIKE_NIGHT_MISS = 2;
/** Weight of the bracket-to-window ratio in a hole's cost (see holeCost). */
const HOLE_EFFORT = 0.5;
/** Probes within this share of the slack of a quantile may anchor runs (see anchorPrices). */
const ANCHOR_SHARE = 0.5;
/** Longest run of holes between two probed anchors that planChain considers (keeps it fast for large N). */
const MAX_RUN = 64;
/**
 * Probes spread over a bracket that holds a spike (see SpikeWatch). Measured on the spike nights
 * of seeds 101–130 (checked on 201–230): 3 and 4 alike, rounds median 5 → 4, max 16 → 13.
 */
const SPIKE_PROBES = 3;

async function quantileScan(probe: Prober, options: ScanOptions): Promise<Outcome> {
  const rules = options.partitions;
  const tolerance = options.balanceTolerance ?? 0.02;
  if (!(tolerance >= 0)) throw new Error(`heatmap: balanceTolerance must be ≥ 0, got ${tolerance}`);
  const warm = options.warmStart;
  const history = warm === undefined ? undefined : checkWarmStart(warm, rules);
  const start: Outcome = history?.usable
    ? { start: 'warm', startReason: 'history', stopReason: 'balanced', prior: 'none' }
    : {
        start: 'cold',
        startReason: warm === undefined ? 'no-history' : (history?.reason ?? 'invalid-history'),
        ...(history?.detail ? { startDetail: history.detail } : {}),
        stopReason: 'balanced',
        prior: 'none',
      };
  // Warm: the total and every old boundary in one round. Cold: the total alone, so an empty or
  // tiny window costs one query; the grid follows once the total says there is something to cut.
  await probe.wave(history?.usable ? warm!.cuts : [], true);
  const total = probe.total;
  const n = partitionCount(total, rules);
  if (n <= 1) return start;

  if (start.start === 'warm') {
    const moved = warmMoved(warm!, total, n, probe, options);
    if (moved) Object.assign(start, { start: 'cold', ...moved });
  }
  const budget = options.maxQueries ?? defaultMaxQueries(n);
  if (start.start === 'cold') {
    const known = probe.points().length;
    const grid = geometricGrid(options.maxPrice, options.gridPoints ?? 6, budget - probe.queries);
    if (known < grid.length) await probe.wave(grid);
  }

  const wave = Math.max(1, options.waveSize ?? Math.max(6, options.concurrency ?? 4));
  const min = rules.minRecordsPerWorker;
  const limit = (1 + tolerance) * (total / n);
  /** Log-price bracket width when each price was probed: the bisection safeguard's memory. */
  const widthWhenProbed = new Map<number, number>();
  const spikes = new SpikeWatch();
  const prior = start.start === 'warm' ? priorFrom(warm!, total, options.maxWarmTotalChange ?? 0.25) : undefined;
  if (prior) start.prior = prior.exact ? 'stones' : 'points';
  const sweep: SweepState = { parts: 0, maxLoad: 0, fixed: [], widths: [], off: false };
  let halfShare: number | undefined;
  let exactGaveWay = false;
  const excess: ExcessWatch = { around: false, gambles: new Map() };
  for (;;) {
    const points = normalisePoints(probe.points(), total);
    const known = cutCandidates(points, total);
    const best = minimax(
      known.map((p) => p.below),
      total,
      rules,
    );
    if (best.partitions === n && best.maxLoad <= limit) return { ...start, stopReason: 'balanced' };
    halfShare ??=
      start.start === 'warm' && best.maxLoad > (1 + SPIKE_NIGHT_MISS * tolerance) * (total / n) ? SPIKE_NIGHT_HALF_SHARE : MIN_HALF_SHARE;
    const floor = relaxedFloor(achievable(points), total, n, rules, limit);
    const unreachable = floor.partitions < n || floor.maxLoad > limit;
    const parts = floor.partitions;
    const maxLoad = unreachable ? Math.max((1 + tolerance) * (total / parts), floor.maxLoad + tolerance * (total / parts)) : limit;
    if (unreachable && best.partitions === parts && best.maxLoad <= maxLoad) return { ...start, stopReason: 'unreachable' };
    const room = Math.min(wave, budget - probe.queries);
    if (room <= 0) return { ...start, stopReason: 'budget' };

    if (prior?.exact && !unreachable && !exactGaveWay && n <= EXACT_MAX_PARTS) {
      const planned = exactProbes(points, prior, excess, probe, total, n, limit, min, budget - probe.queries, wave);
      if (planned.length > 0) {
        await probe.wave(planned);
        continue;
      }
      // No plan on the shape's predictions (or nothing left to probe for one): the chain from here on.
      exactGaveWay = true;
    }
    const swept =
      start.start === 'cold' && parts >= SWEEP_MIN_PARTS && !sweep.off
        ? sweepHoles(sweep, points, known, total, parts, maxLoad, min, room, budget - probe.queries)
        : undefined;
    const holes =
      swept !== undefined && swept.length > 0
        ? swept
        : planChain(
            points,
            known,
            total,
            parts,
            maxLoad,
            min,
            halfShare * ((maxLoad - total / parts) / 2),
            anchorPrices(points, start.start === 'warm' ? warm!.cuts : [], parts, ANCHOR_SHARE * (maxLoad - total / parts)),
          );
    const chosen: number[] = [];
    const curve = new MonotoneCurve(points, total);
    for (const hole of holes) {
      if (chosen.length >= room) break;
      const spread = spikes.holds(hole) ? spikes.spread(hole) : undefined;
      const prices = spread ?? [guess(hole, curve, widthWhenProbed, prior, parts < SWEEP_MIN_PARTS ? SMALL_STALL_SHARE : 1)];
      for (const price of prices) {
        if (chosen.length >= room) break;
        if (price === undefined || probe.has(price) || chosen.includes(price)) continue;
        chosen.push(price);
        widthWhenProbed.set(price, logPrice(hole.hi.price) - logPrice(hole.lo.price));
        spikes.probed(price, hole);
      }
    }
    // Nothing left to probe means every remaining way to the target runs through a one-dollar
    // gap: as far as whole-dollar cuts go, this is the best there is.
    if (chosen.length === 0) return { ...start, stopReason: unreachable ? 'unreachable' : 'budget' };
    await probe.wave(chosen);
  }
}

/**
 * The probes of a warm round with last night's exact shape (PriorCurve.exact): the cuts of the
 * plan exactPlan makes that are not probed yet, all of them in one round (the shape is exact but
 * for a night's drift, so they rarely miss). Tonight's stones per stone of the shape is the
 * median over the brackets (nightScale), so a new spike's stones show as one bracket's excess
 * instead of a deficit everywhere. A gamble on an excess's side (see exactPlan) that missed
 * means the excess sits near its bracket's edge: from then on the plan allows for either side.
 * Without a plan at the target it plans without the margin, then a little over the target
 * (EXACT_LADDER): the next round plans on what those probes count. Without any, it spreads a
 * round of probes over the largest excess to find it. More than MAX_EXCESSES excesses are a
 * shape gone wrong, or many new spikes: it gives way to the chain (an empty round).
 */
function exactProbes(
  points: NormalisedPoints,
  prior: PriorCurve,
  excess: ExcessWatch,
  probe: Prober,
  total: number,
  n: number,
  maxLoad: number,
  min: number,
  room: number,
  wave: number,
): number[] {
  const slack = maxLoad - total / n;
  for (const [price, predicted] of excess.gambles) {
    const at = points.find((p) => p.price === price);
    if (at !== undefined && Math.abs(at.below - predicted) > EXCESS_FLAG * slack) excess.around = true;
  }
  excess.gambles.clear();
  const scale = nightScale(points, prior, total);
  const excesses = excessBrackets(points, prior, scale, slack);
  // Excesses in many brackets are not new spikes but a shape gone wrong: the chain, from here on.
  if (excesses.length > MAX_EXCESSES) return [];
  const excessAt = new Map(excesses.map((e) => [e.lo.price, e.excess]));
  // A plan without the margin, or a little over the target, beats none: its probes land where
  // the counts that decide the plan are, and the next round plans on them. A plan of probed cuts
  // only (met only over the target; each later try would find it too) teaches nothing.
  for (const [marginShare, slackFactor] of EXACT_LADDER) {
    const plan = exactPlan(points, prior, scale, total, n, total / n + slack * slackFactor, min, excessAt, excess.around, marginShare);
    if (plan === undefined) continue;
    const chosen = take(plan, room, probe, excess);
    if (chosen.length > 0) return chosen;
    break;
  }
  // No plan: find the largest excess (every dollar of a narrow bracket, else a wave spread evenly).
  let widest: (typeof excesses)[number] | undefined;
  for (const e of excesses) if (widest === undefined || Math.abs(e.excess) > Math.abs(widest.excess)) widest = e;
  if (widest === undefined) return [];
  const { lo, hi } = widest;
  const dollars = hi.price - lo.price;
  const k = Math.min(room, dollars - 1 <= 2 * wave ? dollars - 1 : wave);
  const finding: number[] = [];
  for (let i = 1; i <= k; i++) {
    const price = Math.round(lo.price + (dollars * i) / (k + 1));
    if (price > lo.price && price < hi.price && !probe.has(price) && !finding.includes(price)) finding.push(price);
  }
  return finding;
}

/**
 * Tonight's stones per stone of last run's shape, the median over the brackets: a new spike's
 * stones in one bracket leave it where the night's drift put it (a ratio of totals would not).
 */
function nightScale(points: NormalisedPoints, prior: PriorCurve, total: number): number {
  const ratios: number[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const was = prior.below(points[i + 1]!.price) - prior.below(points[i]!.price);
    if (was > 0) ratios.push((points[i + 1]!.below - points[i]!.below) / was);
  }
  if (ratios.length === 0) return prior.total > 0 ? total / prior.total : 1;
  ratios.sort((a, b) => a - b);
  return ratios[Math.floor(ratios.length / 2)]!;
}

/** The plan's cuts not probed yet, at most `limit`; its gambles are remembered to be checked. */
function take(plan: ExactCut[] | undefined, limit: number, probe: Prober, excess: ExcessWatch): number[] {
  const chosen: number[] = [];
  for (const cut of plan ?? []) {
    if (chosen.length >= limit || probe.has(cut.price)) continue;
    chosen.push(cut.price);
    if (cut.gamble !== undefined) excess.gambles.set(cut.price, cut.gamble);
  }
  return chosen;
}

/** A cut of exactPlan's: its price, and when it is a gamble on an excess's side, the count it predicts. */
interface ExactCut {
  price: number;
  gamble?: number;
}

/** Tonight's brackets (wider than a dollar, within last run's prices) whose stones differ from last run's shape's, rescaled by nightScale, by more than EXCESS_FLAG × slack. */
function excessBrackets(
  points: NormalisedPoints,
  prior: PriorCurve,
  scale: number,
  slack: number,
): Array<{ lo: CumulativePoint; hi: CumulativePoint; excess: number }> {
  const out: Array<{ lo: CumulativePoint; hi: CumulativePoint; excess: number }> = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const lo = points[i]!;
    const hi = points[i + 1]!;
    if (hi.price - lo.price <= 1 || hi.price > prior.end) continue;
    const excess = hi.below - lo.below - (prior.below(hi.price) - prior.below(lo.price)) * scale;
    if (Math.abs(excess) > EXCESS_FLAG * slack) out.push({ lo, hi, excess });
  }
  return out;
}
/**
 * More brackets than this with an excess: the shape is off, or new spikes are many, and the chain
 * does better (a spike's excess can span two brackets). Seeds 101–130: 1 / 2 / 4 give the same
 * spike nights; three new spikes on the 150,000-stone inventory of heatmap.test.ts take 96
 * queries in 10 rounds with the chain, 128 in 14 when up to n / 4 excesses are planned around.
 */
const MAX_EXCESSES = 2;

/** What an exact scan learnt of tonight's excesses: whether it still gambles on their side, and its gambles in flight (price, predicted count). */
interface ExcessWatch {
  around: boolean;
  gambles: Map<number, number>;
}
/**
 * A bracket whose stones differ from last run's shape's (rescaled by nightScale) by more than
 * this share of a partition's slack holds an excess: a new spike, or one gone. A night's drift
 * moves a partition's count by well under it (seeds 101–130: 0.3 / 0.5 / 1 give the same plans).
 */
const EXCESS_FLAG = 0.5;
/**
 * A cut within this share of an excess bracket's stones (by last run's shape) from its edge is a
 * gamble that the excess lies beyond it; deeper inside, the plan allows for either side. Measured
 * on the spike nights of seeds 101–130: 0.05 / 0.1 / 0.2 give 39 / 38 / 38 count queries median,
 * p90 49 / 39 / 39.
 */
const EXCESS_EDGE = 0.1;

/**
 * exactPlan's DP grows with partitions × candidates (about 400 per bracket): plans of up to this
 * many partitions use it (a full run has 30); larger ones keep the chain.
 */
const EXACT_MAX_PARTS = 60;
/** Brackets wider than this many dollars are sampled this many times by exactPlan (a plan needs no finer grain there). */
const EXACT_SAMPLES = 400;
/**
 * Share of the tolerance's slack exactPlan keeps free beside a predicted cut. Small: the exact
 * shape misses by a night's drift only, and a wider margin moves more boundaries. Measured on
 * the spike nights of seeds 101–130 (0.02 / 0.05 / 0.1 / 0.25: 39 / 40 / 41 / 45 count queries
 * median, p90 40 / 41 / 43 / 68, with the exact shape), checked on 201–230 and 301–330.
 */
const EXACT_MARGIN = 0.02;
/**
 * exactPlan's tries, first to last: (margin share, slack factor of the target). Measured on a
 * 1,500-stone spike beside a boundary of a 150,000-stone inventory (a third of a partition over a
 * 2 % target; heatmap.test.ts): without the last three, plans give out once the spike is found and
 * the chain takes 7–11 more rounds; with them 3–4 rounds in all. The benchmark's seeds 101–130
 * give the same figures with the first alone.
 */
const EXACT_LADDER: ReadonlyArray<readonly [number, number]> = [
  [EXACT_MARGIN, 1],
  [0, 1],
  [0, 1.1],
  [0, 1.25],
  [0, 1.5],
];

/**
 * The plan with the fewest unprobed cuts, then the most slack: a DP over tonight's probed points
 * and the whole dollars between them (every one in narrow brackets, EXACT_SAMPLES in wide ones)
 * at the counts last night's exact shape, rescaled to each bracket, predicts. The unprobed cuts'
 * prices come back (they are tonight's probes); undefined when no such plan meets maxLoad.
 * Unlike planChain's evenly spaced windows, a probe that lands off its prediction only moves
 * the cuts that must move to make room for it.
 *
 * A bracket of `excessAt` (its low end's price → its excess, see excessBrackets) does not say
 * where inside it the excess sits (a new spike is one dollar anywhere): rescaling the shape to
 * the bracket would spread it and miss everywhere. A cut in its outer EXCESS_EDGE on either side
 * gambles that the excess lies beyond it (the gamble comes back with its predicted count, for
 * exactProbes to check); a cut deeper inside, or any once `around`, may count anywhere from "the
 * excess above" to "below", and both partitions beside it must allow for that.
 */
function exactPlan(
  points: NormalisedPoints,
  prior: PriorCurve,
  scale: number,
  total: number,
  n: number,
  maxLoad: number,
  min: number,
  excessAt: ReadonlyMap<number, number>,
  around: boolean,
  marginShare: number,
): ExactCut[] | undefined {
  const margin = marginShare * (maxLoad - total / n);
  const prices: number[] = [];
  // A candidate's count tonight lies in [lows, highs]: one number but inside an excess bracket.
  const lows: number[] = [];
  const highs: number[] = [];
  const predicted: boolean[] = [];
  const gambles: Array<number | undefined> = [];
  for (let i = 0; i < points.length; i++) {
    const p = points[i]!;
    prices.push(p.price);
    lows.push(p.below);
    highs.push(p.below);
    predicted.push(false);
    gambles.push(undefined);
    const q = points[i + 1];
    if (q === undefined || q.price - p.price <= 1 || q.below === p.below) continue;
    // Above last night's dearest stone the shape predicts nothing: sample up to it, not to the axis's end.
    const top = Math.min(q.price, Math.max(p.price + 2, prior.end));
    const step = Math.max(1, (top - p.price) / EXACT_SAMPLES);
    const a = prior.below(p.price);
    const weight = prior.below(q.price) - a;
    const e = excessAt.get(p.price);
    const inside = (c: number): number => clamp(c, p.below, q.below);
    let last = p.price;
    for (let x = p.price + step; x < top; x += step) {
      const price = Math.round(x);
      if (price <= last || price >= top) continue;
      last = price;
      prices.push(price);
      predicted.push(true);
      if (e === undefined) {
        const c = prior.predict(price, p, q);
        lows.push(c);
        highs.push(c);
        gambles.push(undefined);
        continue;
      }
      const base = p.below + (prior.below(price) - a) * scale;
      const share = weight > 0 ? (prior.below(price) - a) / weight : (price - p.price) / (q.price - p.price);
      // Near an edge, the excess is taken to lie beyond the cut (a gamble a probe checks); elsewhere, or once around, either side.
      const at = around ? undefined : share <= EXCESS_EDGE ? base : share >= 1 - EXCESS_EDGE ? base + e : undefined;
      if (at !== undefined) {
        const c = inside(at);
        lows.push(c);
        highs.push(c);
        gambles.push(c);
      } else {
        lows.push(inside(Math.min(base, base + e)));
        highs.push(inside(Math.max(base, base + e)));
        gambles.push(undefined);
      }
    }
  }
  const m = prices.length;
  // A gamble beside an interval can count more than the interval's low end: the scan down from j
  // stops where even the highest low so far leaves too much.
  const highestLow = new Float64Array(m);
  for (let i = 0; i < m; i++) highestLow[i] = Math.max(i > 0 ? highestLow[i - 1]! : -Infinity, lows[i]!);
  // cost[j]: fewest predicted cuts of a plan whose latest cut is j; slack[j]: its tightest room.
  let cost = new Float64Array(m).fill(Infinity);
  let slack = new Float64Array(m).fill(-Infinity);
  cost[0] = 0;
  slack[0] = Infinity;
  const from: Int32Array[] = [];
  for (let k = 1; k <= n; k++) {
    const nextCost = new Float64Array(m).fill(Infinity);
    const nextSlack = new Float64Array(m).fill(-Infinity);
    const back = new Int32Array(m).fill(-1);
    const low = Math.max(total - (n - k) * maxLoad, k * min);
    const high = Math.min(k * maxLoad, total - (n - k) * min);
    for (let j = 1; j < m; j++) {
      if (k === n ? j !== m - 1 : j === m - 1 || highs[j]! < low || lows[j]! > high) continue;
      const own = predicted[j] ? margin : 0;
      for (let i = j - 1; i >= 0; i--) {
        if (highs[j]! - highestLow[i]! > maxLoad) break;
        const load = highs[j]! - lows[i]!;
        if (load > maxLoad) continue;
        const room = maxLoad - load - own - (predicted[i] ? margin : 0);
        if (room < 0 || lows[j]! - highs[i]! < min || cost[i] === Infinity) continue;
        const c = cost[i]! + (predicted[j] ? 1 : 0);
        const r = Math.min(slack[i]!, room);
        if (c < nextCost[j]! || (c === nextCost[j]! && r > nextSlack[j]!)) {
          nextCost[j] = c;
          nextSlack[j] = r;
          back[j] = i;
        }
      }
    }
    from.push(back);
    cost = nextCost;
    slack = nextSlack;
  }
  if (cost[m - 1] === Infinity) return undefined;
  const out: ExactCut[] = [];
  for (let k = n, j = m - 1; k > 0; k--) {
    const i = from[k - 1]![j]!;
    if (predicted[i]) out.push({ price: prices[i]!, ...(gambles[i] !== undefined && { gamble: gambles[i] }) });
    j = i;
  }
  return out;
}

/**
 * The cold sweep (see sweepHoles), on plans of at least SWEEP_MIN_PARTS partitions (smaller
 * ones, the incremental windows, meet their targets with the chain). Measured on seeds 1–12:
 * windows SWEEP_SHARE × their density-weighted share of the remaining slack, each later boundary
 * keeping SWEEP_RESERVE of a partition's slack, probes aimed at the middle of the window.
 */
const SWEEP_MIN_PARTS = 10;
const SWEEP_SHARE = 1.5;
const SWEEP_RESERVE = 0.5;
/** The sweep gives way to the chain when fewer than this many queries per unplaced boundary are left. */
const SWEEP_BUDGET_SHARE = 2;

/** The cold sweep's memory: boundaries fixed so far (counts, first 0) and each boundary's window width once it was set. */
interface SweepState {
  parts: number;
  maxLoad: number;
  fixed: number[];
  widths: number[];
  /** Set once the sweep got stuck or the budget runs short: the chain finishes the scan. */
  off: boolean;
}

/**
 * A left-to-right sweep that places each boundary once: boundary k's window is
 * [hi − w, hi] with hi = c(k−1) + maxLoad (the furthest the fixed prefix reaches) and w a share of
 * the slack the remaining partitions leave, weighted by local density (a dense stretch needs a
 * wider window in counts to span a dollar). The highest probed point in the window
 * fixes the boundary for good, so its window never moves; the next few boundaries are probed
 * ahead at their predicted windows to fill the round. Undefined, and off for the rest of the
 * scan, when the sweep is stuck (a window that only a one-dollar gap covers, with no slack left to
 * step below it) or the budget runs short: the chain then covers the whole range, so a scan that
 * stops on its budget still has points near every quantile.
 */
function sweepHoles(
  state: SweepState,
  points: NormalisedPoints,
  known: readonly CumulativePoint[],
  total: number,
  n: number,
  maxLoad: number,
  min: number,
  room: number,
  left: number,
): Hole[] | undefined {
  if (state.parts !== n || state.maxLoad !== maxLoad) Object.assign(state, { parts: n, maxLoad, fixed: [0], widths: [] });
  const counts = known.map((p) => p.below);
  const window = (k: number, prev: number, width: number): [number, number] => {
    const hi = Math.min(prev + maxLoad, total - (n - k) * min);
    return [Math.max(hi - width, prev + min, total - (n - k) * maxLoad), hi];
  };
  const widthFor = (k: number, prev: number): number => {
    const slack = prev + (n - k + 1) * maxLoad - total;
    if (k === n - 1) return slack;
    const step = (total - prev) / (n - k + 1);
    let sum = 0;
    let own = 0;
    for (let j = k; j < n; j++) {
      const w = densityAt(points, prev + (j - k + 1) * step);
      sum += w;
      if (j === k) own = w;
    }
    const share = Math.min(slack, (SWEEP_SHARE * slack * own) / sum);
    return Math.min(share, Math.max(slack - SWEEP_RESERVE * (maxLoad - total / n) * (n - 1 - k), slack / (n - k)));
  };
  for (;;) {
    const k = state.fixed.length;
    if (k >= n) return [];
    const prev = state.fixed[k - 1]!;
    state.widths[k] ??= widthFor(k, prev);
    const [lo, hi] = window(k, prev, state.widths[k]);
    if (hi < lo) {
      state.off = true;
      return undefined;
    }
    // The window's end is a fraction of a stone: a count past it, even by less than one, overloads the partition.
    const j = lastAtMost(counts, hi);
    if (j >= 0 && counts[j]! >= lo) {
      state.fixed.push(counts[j]!);
      continue;
    }
    // No probe can land between counts[j] and the next point (a one-dollar gap): step below it if the slack allows.
    const { lo: left, hi: right } = bracket(points, hi);
    if (right.price - left.price <= 1) {
      const floorLo = Math.max(prev + min, total - (n - k) * maxLoad);
      if (j >= 0 && counts[j]! >= floorLo && counts[j]! > prev) {
        state.fixed.push(counts[j]!);
        continue;
      }
      state.off = true;
      return undefined;
    }
    break;
  }
  // Too little budget left to place the rest one by one: let the chain cover the whole range instead.
  if (left < SWEEP_BUDGET_SHARE * (n - state.fixed.length)) {
    state.off = true;
    return undefined;
  }
  const holes: Hole[] = [];
  let prev = state.fixed[state.fixed.length - 1]!;
  for (let k = state.fixed.length; k < n && holes.length < room; k++) {
    const width = k === state.fixed.length ? state.widths[k]! : widthFor(k, prev);
    const [lo, hi] = window(k, prev, width);
    const target = (lo + hi) / 2;
    const inside = firstAtLeast(counts, lo);
    if (!(inside < counts.length && counts[inside]! <= hi)) {
      const b = bracket(points, target);
      if (b.hi.price - b.lo.price > 1) holes.push({ target, half: (hi - lo) / 2, lo: b.lo, hi: b.hi });
    }
    prev = target;
  }
  return holes;
}

/** Stones per dollar around a count, from the probed points that bracket it. */
function densityAt(points: NormalisedPoints, at: number): number {
  const { lo, hi } = bracket(points, at);
  return Math.max(1e-9, (hi.below - lo.below) / Math.max(1, hi.price - lo.price));
}

interface HistoryCheck {
  usable: boolean;
  reason?: StartReason;
  detail?: string;
}

/** What can be said of a WarmStart before the first round. */
function checkWarmStart(warm: WarmStart, rules: PartitionRules): HistoryCheck {
  if (!Number.isInteger(warm.total) || warm.total < 0)
    return { usable: false, reason: 'invalid-history', detail: `warm start total ${String(warm.total)} is not a count` };
  for (let i = 0; i < warm.cuts.length; i++) {
    const cut = warm.cuts[i]!;
    if (!Number.isInteger(cut) || cut <= 0 || cut >= PRICE_AXIS_END || (i > 0 && cut <= warm.cuts[i - 1]!))
      return {
        usable: false,
        reason: 'invalid-history',
        detail: `warm start cut ${String(cut)} (index ${i}) is not an increasing whole-dollar price`,
      };
  }
  const before = warm.cuts.length + 1;
  const expected = partitionCount(warm.total, rules);
  if (before < 2)
    return { usable: false, reason: 'partition-count-changed', detail: `last run had ${before} partition, nothing to start from` };
  if (before !== expected)
    return {
      usable: false,
      reason: 'partition-count-changed',
      detail: `last run had ${before} partitions, its total asks for ${expected} under today's rules`,
    };
  return { usable: true };
}

/** After the first round: does tonight's window still look like last run's? Undefined when it does. */
function warmMoved(
  warm: WarmStart,
  total: number,
  n: number,
  probe: Prober,
  options: ScanOptions,
): Omit<Outcome, 'start' | 'stopReason' | 'prior'> | undefined {
  const before = warm.cuts.length + 1;
  if (before !== n)
    return {
      startReason: 'partition-count-changed',
      startDetail: `last run had ${before} partitions, tonight's total ${total} asks for ${n}`,
    };
  const change = warm.total === 0 ? Infinity : Math.abs(total - warm.total) / warm.total;
  const maxChange = options.maxWarmTotalChange ?? 0.25;
  if (change > maxChange)
    return {
      startReason: 'total-moved',
      startDetail: `total ${warm.total} → ${total} (${(change * 100).toFixed(1)} %, more than ${maxChange * 100} %)`,
    };
  const points = normalisePoints(probe.points(), total);
  const ideal = total / n;
  let worst = 0;
  for (let i = 1; i < points.length; i++) worst = Math.max(worst, Math.abs((points[i]!.below - points[i - 1]!.below) / ideal - 1));
  const maxShape = options.maxWarmShapeChange ?? 0.5;
  if (worst > maxShape)
    return {
      startReason: 'shape-moved',
      startDetail: `a partition of last run's plan now holds ${((1 + worst) * 100).toFixed(0)} % or less of its share (limit ±${maxShape * 100} %)`,
    };
  return undefined;
}

/**
 * Last run's shape for a warm scan's guesses: its stones per dollar when given, well formed and
 * within maxChange of tonight's total (a raw table half refilled or long stale is no guide), else
 * its scan's points, else none.
 */
function priorFrom(warm: WarmStart, total: number, maxChange: number): PriorCurve | undefined {
  const stones = warm.stones;
  if (stones !== undefined && stones.length > 0) {
    const points: CumulativePoint[] = [];
    let below = 0;
    let ok = true;
    for (let i = 0; i < stones.length && ok; i++) {
      const { dollar, stones: s } = stones[i]!;
      ok = dollar >= 0 && Number.isInteger(s) && s > 0 && (i === 0 || dollar > stones[i - 1]!.dollar);
      // Past the axis (an absurd price, even one too large for a number): counted, not a point.
      if (ok && dollar < PRICE_AXIS_END) {
        ok = Number.isInteger(dollar);
        points.push({ price: dollar, below }, { price: dollar + 1, below: below + s });
      }
      below += s;
    }
    if (ok && total > 0 && Math.abs(below - total) / total <= maxChange) return new PriorCurve(normalisePoints(points, below), below, true);
  }
  if (warm.points !== undefined && warm.points.length >= 2) return new PriorCurve(normalisePoints(warm.points, warm.total), warm.total);
  return undefined;
}

/**
 * The probed prices a chain may anchor a run of holes at: both sides of every probed one-dollar
 * gap holding stones (a spike no cut can split), and a warm start's old boundaries. Not any
 * probe: a run re-spaced around a point that merely missed its window would move every target
 * of the run each round, and the scan would chase them (measured: twice the queries).
 */
function anchorPrices(points: NormalisedPoints, cuts: readonly number[], n: number, near: number): Set<number> {
  const anchors = new Set(cuts);
  const total = points[points.length - 1]!.below;
  for (const p of points) {
    const k = Math.round((p.below * n) / total);
    if (k > 0 && k < n && Math.abs(p.below - (k * total) / n) <= near) anchors.add(p.price);
  }
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1]!;
    const b = points[i]!;
    if (b.price - a.price === 1 && b.below > a.below) anchors.add(a.price).add(b.price);
  }
  return anchors;
}

/** A window of counts where any boundary will do, and the probed points around it. */
interface Hole {
  target: number;
  half: number;
  lo: CumulativePoint;
  hi: CumulativePoint;
}

interface ChainState {
  /** Holes no probed point fills so far. */
  cost: number;
  /** The narrowest half-window so far (robustness, the tie-break). */
  half: number;
  prevK: number;
  prevJ: number;
}

/**
 * The chain of boundaries with the fewest unfilled holes (then the widest narrowest window): a DP
 * over (boundary k, probed point j) where point j may serve boundary k only inside the envelope
 * every feasible plan keeps it in. Holes needing a probe come back widest-gap first.
 */
function planChain(
  points: NormalisedPoints,
  known: readonly CumulativePoint[],
  total: number,
  n: number,
  maxLoad: number,
  min: number,
  minHalf: number,
  anchors: ReadonlySet<number>,
): Hole[] {
  const counts = known.map((p) => p.below);
  const last = known.length - 1;
  const layers: Array<Map<number, ChainState>> = [new Map([[0, { cost: 0, half: Infinity, prevK: -1, prevJ: -1 }]])];
  for (let k = 1; k <= n; k++) {
    const layer = new Map<number, ChainState>();
    const candidates: number[] = [];
    if (k === n) candidates.push(last);
    else {
      const low = Math.max(total - (n - k) * maxLoad, k * min);
      const high = Math.min(k * maxLoad, total - (n - k) * min);
      for (let j = firstAtLeast(counts, low); j < last && counts[j]! <= high; j++)
        if (j > 0 && anchors.has(known[j]!.price)) candidates.push(j);
    }
    for (const j of candidates) {
      let best: ChainState | undefined;
      for (let k0 = k - 1; k0 >= Math.max(0, k - 1 - MAX_RUN); k0--) {
        for (const [j0, state] of layers[k0]!) {
          if (j0 >= j || (best !== undefined && state.cost > best.cost)) continue;
          const run = runCost(points, counts, counts[j0]!, counts[j]!, k - k0 - 1, maxLoad, min, minHalf);
          if (run === undefined) continue;
          const candidate = { cost: state.cost + run.cost, half: Math.min(state.half, run.half), prevK: k0, prevJ: j0 };
          if (best === undefined || candidate.cost < best.cost || (candidate.cost === best.cost && candidate.half > best.half))
            best = candidate;
        }
      }
      if (best !== undefined) layer.set(j, best);
    }
    layers.push(layer);
  }
  const end = layers[n]!.get(last);
  if (end === undefined) {
    // No chain keeps every run's windows wide enough: aim at the quantiles with what slack there is.
    if (minHalf > 0) return planChain(points, known, total, n, maxLoad, min, 0, anchors);
    return runHoles(points, counts, 0, total, n - 1, Math.max(0, (maxLoad - total / n) / 2)).filter((h) => h.hi.price - h.lo.price > 1);
  }
  const holes: Hole[] = [];
  for (let k = n, j = last; k > 0;) {
    const s = layers[k]!.get(j)!;
    const h = k - s.prevK - 1;
    if (h > 0) {
      const u = counts[s.prevJ]!;
      const v = counts[j]!;
      const spacing = (v - u) / (h + 1);
      holes.push(...runHoles(points, counts, u, v, h, runHalf(spacing, h, maxLoad, min)));
    }
    k = s.prevK;
    j = s.prevJ;
  }
  return holes.sort((a, b) => b.hi.below - b.lo.below - (a.hi.below - a.lo.below));
}

/**
 * Half-window of the holes of a run spaced `spacing` apart: a lone hole between two anchors may
 * move by all of the slack either way; in a longer run two holes share each inner partition's.
 */
function runHalf(spacing: number, h: number, maxLoad: number, min: number): number {
  return h === 1 ? Math.min(maxLoad - spacing, spacing - min) : Math.min((maxLoad - spacing) / 2, (spacing - min) / 2);
}

/** The unfilled holes of a run of h between counts u and v, each with its bracket. */
function runHoles(points: NormalisedPoints, counts: readonly number[], u: number, v: number, h: number, half: number): Hole[] {
  const holes: Hole[] = [];
  const spacing = (v - u) / (h + 1);
  for (let i = 1; i <= h; i++) {
    const target = u + i * spacing;
    if (filled(counts, target, half)) continue;
    const { lo, hi } = bracket(points, target);
    holes.push({ target, half, lo, hi });
  }
  return holes;
}

/** A run of h holes between anchors u < v: its unfilled holes and half-window, or undefined when it cannot work. */
function runCost(
  points: NormalisedPoints,
  counts: readonly number[],
  u: number,
  v: number,
  h: number,
  maxLoad: number,
  min: number,
  minHalf: number,
): { cost: number; half: number } | undefined {
  const gap = v - u;
  if (h === 0) return gap <= maxLoad && gap >= min ? { cost: 0, half: Infinity } : undefined;
  const spacing = gap / (h + 1);
  const half = runHalf(spacing, h, maxLoad, min);
  if (half < minHalf || half < 0) return undefined;
  let cost = 0;
  for (let i = 1; i <= h; i++) {
    const target = u + i * spacing;
    if (filled(counts, target, half)) continue;
    const { lo, hi } = bracket(points, target);
    if (hi.price - lo.price <= 1) return undefined; // inside a one-dollar gap: no price can be there
    cost += holeCost(hi.below - lo.below, half);
  }
  return { cost, half };
}

/**
 * About how many probes a hole will take: one, plus more the wider its bracket is against its
 * window. So chains prefer wide windows, and stay with a target whose bracket is already narrow.
 */
function holeCost(bracketCount: number, half: number): number {
  return 1 + HOLE_EFFORT * Math.log2(1 + bracketCount / Math.max(1, 2 * half));
}

/** Is some probed count within [target − half, target + half]? */
function filled(counts: readonly number[], target: number, half: number): boolean {
  const j = firstAtLeast(counts, target - half);
  return j < counts.length && counts[j]! <= target + half;
}

/**
 * Brackets that hold a spike a hole's target sits in: after a probe, the bracket kept most of
 * its stones (more than HELD) while its price range shrank (below SHRUNK). Interpolation or
 * bisection then finds the spike's edges a dollar range at a time, a round each; spreading
 * SPIKE_PROBES over the bracket does it in one or two.
 */
class SpikeWatch {
  private static readonly HELD = 0.8;
  private static readonly SHRUNK = 0.7;
  /** For each probed price: its hole's bracket (stones, dollars) when it was probed. */
  private readonly when = new Map<number, { stones: number; dollars: number }>();

  probed(price: number, hole: Hole): void {
    this.when.set(price, { stones: hole.hi.below - hole.lo.below, dollars: hole.hi.price - hole.lo.price });
  }

  holds(hole: Hole): boolean {
    const stones = hole.hi.below - hole.lo.below;
    const dollars = hole.hi.price - hole.lo.price;
    if (dollars <= 2) return false;
    return [hole.lo.price, hole.hi.price].some((price) => {
      const before = this.when.get(price);
      return before !== undefined && stones > SpikeWatch.HELD * before.stones && dollars < SpikeWatch.SHRUNK * before.dollars;
    });
  }

  /** Evenly spread over the bracket; every dollar in it once that takes at most twice as many. */
  spread(hole: Hole): number[] {
    const dollars = hole.hi.price - hole.lo.price;
    const k = dollars - 1 <= 2 * SPIKE_PROBES ? dollars - 1 : SPIKE_PROBES;
    return Array.from({ length: k }, (_, i) => Math.round(hole.lo.price + (dollars * (i + 1)) / (k + 1)));
  }
}

/**
 * How far a stalled guess moves from the interpolation to the bracket's middle on plans of fewer
 * than SWEEP_MIN_PARTS partitions (larger ones bisect): their windows are narrow and often near
 * one end of the bracket, where a bisection overshoots. Incremental cold scans of seeds 101–130,
 * 201–230, 301–330: 11 / 13 / 14, 12 / 14 / 15, 11 / 14 / 15 count queries (rounds max 8–9) →
 * 11 / 11 / 12 on each (rounds max 5) at 0.5; 0.25 alike, 0 (no bisection) 10–11 / 11 / 11–12.
 */
const SMALL_STALL_SHARE = 0.5;

/** The price to probe for a hole: strictly inside its bracket. */
function guess(
  hole: Hole,
  curve: MonotoneCurve,
  widthWhenProbed: ReadonlyMap<number, number>,
  prior: PriorCurve | undefined,
  stallShare: number,
): number | undefined {
  const { lo, hi, target } = hole;
  if (hi.price - lo.price <= 1) return undefined;
  // Last run's shape beats any curve through tonight's few points, and knows no stalling.
  const fromPrior = prior?.priceAt(target, lo, hi);
  if (fromPrior !== undefined) return fromPrior;
  const width = logPrice(hi.price) - logPrice(lo.price);
  // Interpolation converging from one side shrinks its bracket slowly: go `stallShare` of the way to the middle then.
  const stalled = [lo.price, hi.price].some((p) => {
    const before = widthWhenProbed.get(p);
    return before !== undefined && width > 0.5 * before;
  });
  const narrow = hi.price - lo.price <= Math.max(8, NARROW * lo.price);
  const middle = (): number => (narrow ? (lo.price + hi.price) / 2 : midpoint(lo.price, hi.price));
  const interpolated = (): number => {
    if (narrow) return lo.price + ((target - lo.below) / (hi.below - lo.below)) * (hi.price - lo.price);
    const onCurve = curve.priceAt(target, lo);
    return Number.isFinite(onCurve) ? onCurve : midpoint(lo.price, hi.price);
  };
  let price: number;
  if (!stalled) price = interpolated();
  else if (stallShare >= 1) price = middle();
  else {
    const from = interpolated();
    price = from + stallShare * (middle() - from);
  }
  return clamp(Math.round(price), lo.price + 1, hi.price - 1);
}

// ---------------------------------------------------------------- the provable floor

type Interval = [number, number];

/**
 * Counts a boundary could have, as far as the probes tell: anything between two probed points
 * more than a dollar apart (an optimistic relaxation, so what it cannot do is impossible), only the
 * two ends of a one-dollar gap.
 */
function achievable(points: NormalisedPoints): Interval[] {
  const out: Interval[] = [];
  const push = (a: number, b: number): void => {
    const top = out[out.length - 1];
    if (top !== undefined && a <= top[1]) top[1] = Math.max(top[1], b);
    else out.push([a, b]);
  };
  push(points[0]!.below, points[0]!.below);
  for (let i = 0; i + 1 < points.length; i++) {
    const p = points[i]!;
    const q = points[i + 1]!;
    if (q.price - p.price > 1) push(p.below, q.below);
    else push(q.below, q.below);
  }
  return out;
}

/** Relaxed: can n partitions with loads in [min, maxLoad] end at `total`, boundaries only at achievable counts? */
function relaxedFeasible(reach: readonly Interval[], total: number, n: number, min: number, maxLoad: number): boolean {
  let at: Interval[] = [[0, 0]];
  for (let k = 1; k <= n && at.length > 0; k++) {
    const shifted: Interval[] = [];
    for (const [a, b] of at) {
      const top = shifted[shifted.length - 1];
      if (top !== undefined && a + min <= top[1]) top[1] = Math.max(top[1], b + maxLoad);
      else shifted.push([a + min, b + maxLoad]);
    }
    const next: Interval[] = [];
    for (let i = 0, j = 0; i < shifted.length && j < reach.length;) {
      const lo = Math.max(shifted[i]![0], reach[j]![0]);
      const hi = Math.min(shifted[i]![1], reach[j]![1]);
      if (lo <= hi) next.push([lo, hi]);
      if (shifted[i]![1] < reach[j]![1]) i++;
      else j++;
    }
    at = next;
  }
  return at.some(([a, b]) => a <= total && total <= b);
}

/**
 * The relaxed counterpart of minimax: the largest n ≤ wanted that the relaxation allows, and its
 * least largest partition — a lower bound for every plan any further probing can reach. With
 * `enough`, stops as soon as that load is known to be ≤ enough (returns it as the load).
 */
function relaxedFloor(reach: readonly Interval[], total: number, wanted: number, rules: PartitionRules, enough?: number): Minimax {
  const min = rules.minRecordsPerWorker;
  for (let n = wanted; n > 1; n--) {
    if (!relaxedFeasible(reach, total, n, min, total)) continue;
    if (enough !== undefined && relaxedFeasible(reach, total, n, min, enough)) return { partitions: n, maxLoad: enough };
    let lo = Math.max(min, Math.ceil(total / n));
    let hi = total;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (relaxedFeasible(reach, total, n, min, mid)) hi = mid;
      else lo = mid + 1;
    }
    return { partitions: n, maxLoad: hi };
  }
  return { partitions: Math.min(1, wanted), maxLoad: total };
}

type Minimax = ReturnType<typeof minimax>;

/** $1 … maxPrice, evenly spaced in log price: where the inventory lives is unknown (price field, filters). */
function geometricGrid(maxPrice: number, size: number, room: number): number[] {
  const count = Math.max(0, Math.min(size, room));
  if (count === 0) return [];
  if (count === 1) return [maxPrice];
  const top = logPrice(maxPrice);
  const base = logPrice(1);
  return Array.from({ length: count }, (_, i) => Math.round(Math.expm1(base + ((top - base) * i) / (count - 1))));
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

  /** The curve's stones below `price`, a price between known points i and i + 1. */
  belowAt(price: number, i: number): number {
    return this.total / (1 + Math.exp(-this.at(i, logPrice(price))));
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

/**
 * Last run's cumulative curve, rescaled between tonight's probed points: a night moves little,
 * so last run's shape inside a bracket (its spikes included, which tonight's few points cannot
 * show) is the best guess of tonight's. Between last run's own points, its monotone curve.
 */
class PriorCurve {
  /** Whole dollars, increasing (normalised points), so "after price p" is "at least p + 1". */
  private readonly prices: number[];
  private readonly curve: MonotoneCurve;

  /** exact: the points are a count below every dollar that holds stones and the next one (WarmStart.stones). */
  constructor(
    private readonly points: NormalisedPoints,
    readonly total: number,
    readonly exact = false,
  ) {
    this.prices = points.map((p) => p.price);
    this.curve = new MonotoneCurve(points, total);
    this.end = points.length >= 2 ? points[points.length - 2]!.price + 1 : 1;
  }

  /** Just past last run's highest point below the axis's end: above it the shape knows no stones. */
  readonly end: number;

  /** Tonight's stones below `price` as last run's shape predicts them, between tonight's probed points lo < price < hi. */
  predict(price: number, lo: CumulativePoint, hi: CumulativePoint): number {
    const a = this.below(lo.price);
    const b = this.below(hi.price);
    const share = b > a ? (this.below(price) - a) / (b - a) : (price - lo.price) / (hi.price - lo.price);
    return lo.below + share * (hi.below - lo.below);
  }

  /** Where tonight's count reaches `target` between lo and hi by last run's shape; undefined when last run probed nothing inside. */
  priceAt(target: number, lo: CumulativePoint, hi: CumulativePoint): number | undefined {
    const inside = firstAtLeast(this.prices, lo.price + 1);
    if (inside >= this.prices.length || this.prices[inside]! >= hi.price) return undefined;
    const a = this.below(lo.price);
    const b = this.below(hi.price);
    if (!(b > a) || !(hi.below > lo.below)) return undefined;
    const wanted = a + ((target - lo.below) / (hi.below - lo.below)) * (b - a);
    // The lowest whole dollar strictly inside the bracket where last run's curve reaches it.
    let l = lo.price + 1;
    let h = hi.price - 1;
    while (l < h) {
      const mid = Math.floor((l + h) / 2);
      if (this.below(mid) >= wanted) h = mid;
      else l = mid + 1;
    }
    return l;
  }

  /** Last run's stones below `price`. */
  below(price: number): number {
    const i = firstAtLeast(this.prices, price + 1) - 1;
    if (i < 0) return 0;
    const at = this.points[i]!;
    // Exact points leave no stones between them but at their own dollars.
    if (this.exact || at.price === price || i + 1 >= this.points.length) return at.below;
    return this.curve.belowAt(price, i);
  }
}
