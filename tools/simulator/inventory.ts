// The simulator's inventory: deterministic from a seed, stored column by column in typed
// arrays sorted by price, so that a count over ~440,000 stones is a binary search on the
// price bounds plus one tight loop (a few ms), and filtering follows the contract's
// semantics exactly (contract/nivoda.graphql, top of file). The heatmap and partition
// tests rely on these counts being *exact*, so every rule below is deliberate.
import type { DiamondQuery } from '../../src/nivoda/query.js';

export type InventoryShape = 'realistic' | 'empty' | 'one-stone' | 'point-mass' | 'dollar-spikes' | 'cent-edges';
export const INVENTORY_SHAPES: readonly InventoryShape[] = ['realistic', 'empty', 'one-stone', 'point-mass', 'dollar-spikes', 'cent-edges'];

export const SHAPES = ['ROUND', 'OVAL', 'EMERALD', 'CUSHION', 'PEAR', 'PRINCESS', 'RADIANT', 'MARQUISE', 'ASSCHER', 'HEART'] as const;
const SHAPE_WEIGHTS = [45, 12, 8, 7, 7, 6, 6, 3, 3, 3];
export const AVAILABILITIES = ['AVAILABLE', 'ON_HOLD', 'NOT_AVAILABLE'] as const;
const AVAILABILITY_WEIGHTS = [92, 6, 2];
export const CUTS = ['EX', 'VG', 'GD', 'F', 'P'] as const;
const CUT_WEIGHTS = [60, 25, 10, 4, 1];
/** Indexes into CUTS that `excludeFairPoorCuts` removes. */
const FAIR_POOR = new Set([3, 4]);
export const COLORS = ['D', 'E', 'F', 'G', 'H', 'I', 'J', 'K'] as const;
export const CLARITIES = ['FL', 'IF', 'VVS1', 'VVS2', 'VS1', 'VS2', 'SI1', 'SI2', 'I1'] as const;
export const LABS = ['GIA', 'IGI', 'HRD', 'GCAL'] as const;

/**
 * The stones that exist now. The simulator mutates an inventory in place (mutation.ts replaces
 * its columns and bumps `revision`), so a reference held by a test always reads the current state.
 */
export interface Inventory {
  /** Number of stones. */
  size: number;
  shape: InventoryShape;
  seed: number;
  /** The `now` the inventory was generated against (ms since epoch). */
  nowMs: number;
  /** Bumped by every mutation; caches of search results are valid for one revision. */
  revision: number;
  /** The id the next new stone gets: ids are never reused, so a removed stone stays gone. */
  nextId: number;
  /** Offer price in US cents, sorted ascending (ties by id). Every other column follows this order. */
  priceCents: Int32Array;
  /** Certificate carats, two decimals. */
  carats: Float64Array;
  /** Diamond.updated, ms since epoch. */
  updatedMs: Float64Array;
  /** Listing creation time (the default `createdAt` order), ms since epoch, never after updatedMs. */
  createdMs: Float64Array;
  /** Stable stone id (generation order), the tie-breaker of every order. */
  ids: Int32Array;
  /** Index into SHAPES. */
  shapeIndex: Uint8Array;
  labgrown: Uint8Array;
  hasImage: Uint8Array;
  hasV360: Uint8Array;
  /** Index into AVAILABILITIES. */
  availability: Uint8Array;
  /** 1 = a memo stone (`hide_memo: true` drops it). */
  memo: Uint8Array;
  /** Index into CUTS. */
  cut: Uint8Array;
  color: Uint8Array;
  clarity: Uint8Array;
  lab: Uint8Array;
}

export interface GenerateOptions {
  seed?: number;
  now?: Date;
  /** Number of stones; for 'realistic' every bin is scaled so the total is about this. */
  size?: number;
}

// ---------------------------------------------------------------------------------------
// PRNG: mulberry32, small, fast and good enough for test data; seeded so runs repeat.

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normal(rand: () => number): number {
  // Box-Muller; 1 - rand() keeps the log argument away from 0.
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

function weighted(rand: () => number, weights: readonly number[]): number {
  const total = weights.reduce((a, b) => a + b, 0);
  let r = rand() * total;
  for (let i = 0; i < weights.length; i++) {
    r -= weights[i]!;
    if (r < 0) return i;
  }
  return weights.length - 1;
}

// ---------------------------------------------------------------------------------------
// The live API's dollar_value histogram on 2026-02-12 (../shared/data/nivoda-density-2026-02-12.json),
// embedded so a clean clone of the repo generates the same inventory: inclusive whole-dollar
// bins [from, to, count]. Their counts sum to 428,771 of a baseline of 437,849; the rest are
// priced between bins ($499.01-$499.99) or above the last bin.

export const DENSITY_BASELINE = 437849;
// prettier-ignore
export const DENSITY_BINS: readonly (readonly [number, number, number])[] = [[0,499,100451],[500,999,90198],[1000,1499,48195],[1500,1999,37391],[2000,2499,25684],[2500,2999,18940],[3000,3499,13959],[3500,3999,10695],[4000,4499,8485],[4500,4999,6845],[5000,5499,5712],[5500,5999,4866],[6000,6499,4345],[6500,6999,3714],[7000,7499,3287],[7500,7999,2723],[8000,8499,2485],[8500,8999,2190],[9000,9499,2108],[9500,9999,1864],[10000,10499,1831],[10500,10999,1565],[11000,11499,1462],[11500,11999,1275],[12000,12499,1263],[12500,12999,1074],[13000,13499,1043],[13500,13999,946],[14000,14499,905],[14500,14999,865],[15000,15499,892],[15500,15999,793],[16000,16499,680],[16500,16999,642],[17000,17499,642],[17500,17999,617],[18000,18499,599],[18500,18999,561],[19000,19499,543],[19500,19999,513],[20000,24999,3945],[25000,29999,2790],[30000,34999,1889],[35000,39999,1440],[40000,44999,1104],[45000,49999,824],[50000,59999,1074],[60000,69999,691],[70000,79999,445],[80000,89999,351],[90000,99999,247],[100000,124999,483],[125000,149999,258],[150000,174999,189],[175000,199999,90],[200000,224999,66],[225000,249999,37]];

interface Bin {
  from: number;
  to: number;
  count: number;
}
const BINS: readonly Bin[] = DENSITY_BINS.map(([from, to, count]) => ({ from, to, count }));

// ---------------------------------------------------------------------------------------
// Stone attributes other than price.

const DAY_MS = 86_400_000;

/** A plausible carat weight for a price: $/ct rises with price (bigger stones cost more per carat). */
function caratsFor(rand: () => number, priceCents: number): number {
  const dollars = Math.max(priceCents / 100, 30);
  // Calibrated roughly on the live dollar_per_carat histogram: most stones $500-$1,500/ct.
  const medianPerCarat = 1100 * Math.pow(dollars / 1000, dollars < 1000 ? 0.25 : 0.6);
  const perCarat = medianPerCarat * Math.exp(0.4 * normal(rand));
  const carats = Math.round((dollars / perCarat) * 100) / 100;
  return Math.min(Math.max(carats, 0.08), 40);
}

/**
 * Generates stone `id` at row `i` with the given price. Initial generation and stones added by
 * live churn share it, so new listings look like the rest.
 */
export function fillStone(inv: Inventory, i: number, rand: () => number, id: number, price: number): void {
  const now = inv.nowMs;
  inv.ids[i] = id;
  inv.priceCents[i] = price;
  inv.carats[i] = caratsFor(rand, price);
  // A few per cent changed in the last 24 h (what an incremental run sees); the rest spread
  // over months, more of them recent.
  const age = rand() < 0.03 ? rand() * DAY_MS : DAY_MS + Math.min(-Math.log(1 - rand()) * 60 * DAY_MS, 540 * DAY_MS);
  inv.updatedMs[i] = Math.round(now - age);
  inv.createdMs[i] = Math.round(inv.updatedMs[i] - Math.min(-Math.log(1 - rand()) * 45 * DAY_MS, 720 * DAY_MS));
  inv.shapeIndex[i] = weighted(rand, SHAPE_WEIGHTS);
  inv.labgrown[i] = rand() < 0.42 ? 1 : 0;
  inv.hasImage[i] = rand() < 0.86 ? 1 : 0;
  inv.hasV360[i] = rand() < 0.7 ? 1 : 0;
  inv.availability[i] = weighted(rand, AVAILABILITY_WEIGHTS);
  inv.memo[i] = rand() < 0.1 ? 1 : 0;
  inv.cut[i] = weighted(rand, CUT_WEIGHTS);
  inv.color[i] = Math.floor(rand() * COLORS.length);
  inv.clarity[i] = Math.floor(rand() * CLARITIES.length);
  inv.lab[i] = inv.labgrown[i] ? (rand() < 0.8 ? 1 : 3) : rand() < 0.85 ? 0 : 2;
}

function fillAttributes(inv: Inventory, rand: () => number, order: Uint32Array, prices: ArrayLike<number>): void {
  for (let i = 0; i < inv.size; i++) {
    const id = order[i]!;
    fillStone(inv, i, rand, id, prices[id]!);
  }
}

export function emptyInventory(shape: InventoryShape, seed: number, nowMs: number, size: number): Inventory {
  return {
    size,
    shape,
    seed,
    nowMs,
    revision: 0,
    nextId: size,
    priceCents: new Int32Array(size),
    carats: new Float64Array(size),
    updatedMs: new Float64Array(size),
    createdMs: new Float64Array(size),
    ids: new Int32Array(size),
    shapeIndex: new Uint8Array(size),
    labgrown: new Uint8Array(size),
    hasImage: new Uint8Array(size),
    hasV360: new Uint8Array(size),
    availability: new Uint8Array(size),
    memo: new Uint8Array(size),
    cut: new Uint8Array(size),
    color: new Uint8Array(size),
    clarity: new Uint8Array(size),
    lab: new Uint8Array(size),
  };
}

/** Stone ids ordered by (price, id). */
function priceOrder(prices: ArrayLike<number>): Uint32Array {
  const n = prices.length;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  if (n < 2 ** 21) {
    // Pack (price, id) into one double (price < 2^31, id < 2^21: 52 bits) so the native
    // numeric sort does the work; a comparator sort is ~10x slower on 440k stones.
    const keys = new Float64Array(n);
    for (let i = 0; i < n; i++) keys[i] = prices[i]! * 2 ** 21 + i;
    keys.sort();
    for (let i = 0; i < n; i++) order[i] = keys[i]! % 2 ** 21;
  } else {
    order.sort((a, b) => prices[a]! - prices[b]! || a - b);
  }
  return order;
}

function build(shape: InventoryShape, seed: number, nowMs: number, prices: number[], rand: () => number): Inventory {
  const inv = emptyInventory(shape, seed, nowMs, prices.length);
  fillAttributes(inv, rand, priceOrder(prices), prices);
  return inv;
}

// ---------------------------------------------------------------------------------------
// Prices.

/** Cents for a whole-dollar amount: many .00, then .50/.99/.95, then anything. */
function centsEnding(rand: () => number): number {
  const r = rand();
  if (r < 0.45) return 0;
  if (r < 0.55) return 50;
  if (r < 0.65) return 99;
  if (r < 0.7) return 95;
  return Math.floor(rand() * 100);
}

/** Round-number step for a price magnitude: where sellers' prices pile up. */
function roundStep(dollars: number): number {
  if (dollars < 1000) return 50;
  if (dollars < 10_000) return 100;
  if (dollars < 100_000) return 500;
  return 5000;
}

function realisticPrices(rand: () => number, size: number): number[] {
  const bins = BINS;
  const binned = bins.reduce((a, b) => a + b.count, 0);
  const scale = size / DENSITY_BASELINE;
  const tailCount = Math.round(420 * scale);
  const gapCount = Math.max(0, Math.round((DENSITY_BASELINE - binned) * scale) - tailCount);
  const prices: number[] = [];

  const densities = bins.map((b) => b.count / (b.to - b.from + 1));
  const counts = bins.map((b) => Math.round(b.count * scale));
  // Rounding each bin drifts from the requested size; the largest bin absorbs the difference.
  counts[0] = Math.max(0, counts[0]! + size - tailCount - gapCount - counts.reduce((a, b) => a + b, 0));
  for (let i = 0; i < bins.length; i++) {
    const bin = bins[i]!;
    const count = counts[i]!;
    const width = bin.to - bin.from + 1;
    // Exponential decay inside the bin, its rate taken from this bin's and the next one's
    // mean density, so the curve is smooth across bin edges (no flat steps).
    const next = densities[i + 1] ?? densities[i]! * (densities[i]! / (densities[i - 1] ?? densities[i]!));
    const lambda = Math.max(0, Math.log(densities[i]! / next) / width);
    for (let k = 0; k < count; k++) {
      let dollars: number;
      if (bin.from === 0) {
        // The cheapest stones: almost none below ~$60, rising to a plateau.
        dollars = rand() < 0.3 ? 60 + 190 * Math.sqrt(rand()) : 250 + rand() * (width - 250);
      } else if (lambda > 1e-9) {
        const u = rand();
        dollars = bin.from - Math.log(1 - u * (1 - Math.exp(-lambda * width))) / lambda;
      } else {
        dollars = bin.from + rand() * width;
      }
      let d = Math.min(Math.floor(dollars), bin.to);
      if (rand() < 0.08) {
        // Spikes at round prices ($500, $1,000) and just under them ($999).
        const step = roundStep(d);
        const snapped = Math.round(d / step) * step - (rand() < 0.4 ? 1 : 0);
        if (snapped >= bin.from && snapped <= bin.to) d = snapped;
      }
      // A bin is inclusive of `to` dollars exactly; $to.01–$to.99 belong to the gap below.
      const cents = d === bin.to ? 0 : centsEnding(rand);
      prices.push(d * 100 + cents);
    }
  }

  // Stones between one bin's `to` and the next bin's `from` ($499.01–$499.99): the ~9,000
  // the histogram misses, mostly $x99.99-style prices, weighted by the local density.
  const gapWeights = densities.map((d) => d);
  for (let k = 0; k < gapCount; k++) {
    const i = weighted(rand, gapWeights);
    const base = bins[i]!.to * 100;
    const r = rand();
    const cents = r < 0.5 ? 99 : r < 0.65 ? 50 : r < 0.8 ? 95 : 1 + Math.floor(rand() * 98);
    prices.push(base + cents);
  }

  // A thin tail above $250,000 (Pareto), a few stones in the millions, capped below Int32.
  const tailStart = (bins.at(-1)?.to ?? 249_999) + 1;
  for (let k = 0; k < tailCount; k++) {
    const dollars = Math.min(tailStart / Math.pow(1 - rand(), 1 / 2.3), 20_000_000);
    // Expensive stones are often listed at round thousands.
    const d = rand() < 0.5 ? Math.round(dollars / 1000) * 1000 : Math.floor(dollars);
    prices.push(Math.max(tailStart, d) * 100 + (rand() < 0.8 ? 0 : centsEnding(rand)));
  }
  return prices;
}

function pointMassPrices(rand: () => number, size: number): number[] {
  // 60% of the stones at exactly $1,000.00: no partition boundary can split them.
  const prices: number[] = [];
  for (let k = 0; k < size; k++) {
    if (k < Math.round(size * 0.6)) prices.push(100_000);
    else prices.push(Math.round(200 + 20_000 * Math.pow(rand(), 2.5)) * 100 + centsEnding(rand));
  }
  return prices;
}

function dollarSpikePrices(rand: () => number, size: number): number[] {
  // Whole-dollar prices only, with tall spikes at round numbers and just below them.
  const spikes: number[] = [];
  for (let d = 500; d <= 20_000; d += d < 5000 ? 500 : 1000) spikes.push(d, d - 1);
  const prices: number[] = [];
  for (let k = 0; k < size; k++) {
    if (rand() < 0.5) prices.push(spikes[Math.floor(rand() * spikes.length)]! * 100);
    else prices.push(Math.round(100 + 20_000 * Math.pow(rand(), 2)) * 100);
  }
  return prices;
}

function centEdgePrices(rand: () => number, size: number): number[] {
  // A cent either side of round prices: $499.99, $500.00, $500.01, at every multiple of $50.
  const prices: number[] = [];
  for (let k = 0; k < size; k++) {
    const round = (1 + Math.floor(rand() * 400)) * 50 * 100;
    prices.push(round + (Math.floor(rand() * 3) - 1));
  }
  return prices;
}

const DEFAULT_SIZES: Record<InventoryShape, number> = {
  realistic: 437_849,
  empty: 0,
  'one-stone': 1,
  'point-mass': 50_000,
  'dollar-spikes': 50_000,
  'cent-edges': 20_000,
};

/** A deterministic inventory of the given shape: the same seed, now and size give the same stones. */
export function generateInventory(shape: InventoryShape, options: GenerateOptions = {}): Inventory {
  const seed = options.seed ?? 1;
  const nowMs = (options.now ?? new Date()).getTime();
  const size = Math.max(0, Math.round(options.size ?? DEFAULT_SIZES[shape]));
  const rand = mulberry32(seed);
  switch (shape) {
    case 'realistic':
      return build(shape, seed, nowMs, realisticPrices(rand, size), rand);
    case 'empty':
      return build(shape, seed, nowMs, [], rand);
    case 'one-stone': {
      const inv = build(shape, seed, nowMs, size > 0 ? [123_456] : [], rand);
      // One stone changed an hour ago: inside any sensible incremental window.
      if (inv.size > 0) inv.updatedMs[0] = nowMs - 3_600_000;
      return inv;
    }
    case 'point-mass':
      return build(shape, seed, nowMs, pointMassPrices(rand, size), rand);
    case 'dollar-spikes':
      return build(shape, seed, nowMs, dollarSpikePrices(rand, size), rand);
    case 'cent-edges':
      return build(shape, seed, nowMs, centEdgePrices(rand, size), rand);
  }
}

/**
 * An inventory from explicit stones (tests that need exact prices). Attributes not given are
 * generated from the seed; `updated` defaults to an hour before `now`.
 */
export function inventoryFromStones(
  stones: { priceCents: number; carats?: number; updated?: Date; labgrown?: boolean; shape?: (typeof SHAPES)[number] }[],
  options: { seed?: number; now?: Date } = {},
): Inventory {
  const seed = options.seed ?? 1;
  const nowMs = (options.now ?? new Date()).getTime();
  const prices = stones.map((s) => s.priceCents);
  const inv = build('realistic', seed, nowMs, prices, mulberry32(seed));
  for (let i = 0; i < inv.size; i++) {
    const stone = stones[inv.ids[i]!]!;
    if (stone.carats !== undefined) inv.carats[i] = stone.carats;
    inv.updatedMs[i] = stone.updated?.getTime() ?? nowMs - 3_600_000;
    inv.createdMs[i] = Math.min(inv.createdMs[i]!, inv.updatedMs[i]!);
    if (stone.labgrown !== undefined) inv.labgrown[i] = stone.labgrown ? 1 : 0;
    if (stone.shape !== undefined) inv.shapeIndex[i] = SHAPES.indexOf(stone.shape);
  }
  return inv;
}

// ---------------------------------------------------------------------------------------
// Filtering: the contract's semantics, compiled once per query.

/** The query cannot be evaluated (e.g. a date that does not parse): the API answers with a GraphQL error. */
export class QueryError extends Error {
  override readonly name = 'QueryError';
}

interface Range {
  from?: number | null;
  to?: number | null;
}

interface Compiled {
  /** Index range [lo, hi) after the dollar_value bounds (binary search on the sorted prices). */
  lo: number;
  hi: number;
  test: (i: number) => boolean;
  /** True when `test` accepts every stone in [lo, hi). */
  trivial: boolean;
}

function lowerBound(a: Int32Array, value: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function parseDate(value: string | null | undefined, where: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  const ms = Date.parse(value);
  if (!Number.isFinite(ms) || !/^\d{4}-\d{2}-\d{2}/.test(value)) {
    throw new QueryError(`Invalid date "${value}" in ${where}: expected an ISO-8601 timestamp`);
  }
  return ms;
}

const present = (v: number | null | undefined): v is number => v !== undefined && v !== null;

function maskOf(values: readonly string[] | null | undefined, universe: readonly string[]): number | undefined {
  // An empty or absent list does not filter (a common API convention; a worker never sends one).
  if (!values || values.length === 0) return undefined;
  let mask = 0;
  for (const v of values) {
    const index = universe.indexOf(v.toUpperCase());
    if (index >= 0) mask |= 1 << index;
  }
  return mask;
}

function compile(inv: Inventory, query: DiamondQuery): Compiled {
  // GraphQL inputs may carry explicit nulls; they mean "not set".
  const q = query as DiamondQuery & Record<string, unknown>;
  const dv = (q.dollar_value ?? undefined) as Range | undefined;
  // dollar_value: price / 100 >= from  <=>  price >= from * 100 (exact, integer cents).
  const lo = present(dv?.from) ? lowerBound(inv.priceCents, dv.from * 100) : 0;
  let hi = present(dv?.to) ? lowerBound(inv.priceCents, dv.to * 100 + 1) : inv.size;
  if (hi < lo) hi = lo;

  const { priceCents, carats, updatedMs, shapeIndex, availability, labgrown, hasImage, hasV360, memo, cut } = inv;

  const dpc = (q.dollar_per_carat ?? undefined) as Range | undefined;
  const useDpc = present(dpc?.from) || present(dpc?.to);
  const dpcFrom = present(dpc?.from) ? dpc.from : -Infinity;
  const dpcTo = present(dpc?.to) ? dpc.to : Infinity;
  const updated = q.updated ?? undefined;
  const uf = parseDate(updated?.from, 'updated.from');
  const ut = parseDate(updated?.to, 'updated.to');
  const useUpdated = uf !== undefined || ut !== undefined;
  const updFrom = uf ?? -Infinity;
  const updTo = ut ?? Infinity;
  const sizes = (q.sizes ?? undefined) as Range | undefined;
  const useSizes = present(sizes?.from) || present(sizes?.to);
  const sizeFrom = present(sizes?.from) ? sizes.from : -Infinity;
  const sizeTo = present(sizes?.to) ? sizes.to : Infinity;
  const shapeMask = maskOf(q.shapes, SHAPES) ?? -1;
  const availabilityMask = maskOf(q.availability, AVAILABILITIES) ?? -1;
  // labgrown is a selector (true: lab only, false: natural only); the other booleans are
  // "only those that…" switches that filter when true and do nothing when false.
  const lab = typeof q.labgrown === 'boolean' ? (q.labgrown ? 1 : 0) : -1;
  const needImage = q.has_image === true;
  const needV360 = q.has_v360 === true;
  const hideMemo = q.hide_memo === true;
  const noFairPoor = q.excludeFairPoorCuts === true;
  const trivial =
    !useDpc &&
    !useUpdated &&
    !useSizes &&
    shapeMask === -1 &&
    availabilityMask === -1 &&
    lab === -1 &&
    !needImage &&
    !needV360 &&
    !hideMemo &&
    !noFairPoor;

  // One closure with flags rather than a list of small ones: the count loop stays a few ms.
  const test = (i: number): boolean => {
    if (useUpdated) {
      const u = updatedMs[i]!;
      if (u < updFrom || u > updTo) return false;
    }
    if (useDpc) {
      // Exactly the contract's expression, so the partition rule "< priceMax" agrees with it.
      const v = priceCents[i]! / 100 / carats[i]!;
      if (v < dpcFrom || v > dpcTo) return false;
    }
    if (useSizes) {
      const c = carats[i]!;
      if (c < sizeFrom || c > sizeTo) return false;
    }
    if (shapeMask !== -1 && ((1 << shapeIndex[i]!) & shapeMask) === 0) return false;
    if (availabilityMask !== -1 && ((1 << availability[i]!) & availabilityMask) === 0) return false;
    if (lab !== -1 && labgrown[i] !== lab) return false;
    if (needImage && hasImage[i] !== 1) return false;
    if (needV360 && hasV360[i] !== 1) return false;
    if (hideMemo && memo[i] !== 0) return false;
    if (noFairPoor && FAIR_POOR.has(cut[i]!)) return false;
    return true;
  };
  return { lo, hi, test, trivial };
}

/** How many stones match `query` under the contract's semantics. */
export function countMatching(inventory: Inventory, query: DiamondQuery): number {
  const { lo, hi, test, trivial } = compile(inventory, query);
  if (trivial) return hi - lo;
  let n = 0;
  for (let i = lo; i < hi; i++) if (test(i)) n++;
  return n;
}

export type OrderType = 'createdAt' | 'price' | 'price_per_carat' | 'size';
export type OrderDirection = 'ASC' | 'DESC';
export interface Order {
  type: OrderType;
  direction: OrderDirection;
}

export interface PageRequest {
  offset: number;
  limit: number;
  /** Default: createdAt ASC (the contract's default). */
  order?: Order;
}

export interface Page {
  /** Row indexes of the page's stones, in order. */
  rows: number[];
  /** Length of the whole ordered result list the page was cut from (offsets index into it). */
  matching: number;
}

// Paging is a slice of the query's whole ordered result list, materialised once per
// (query, order type, inventory revision): sequential pages then cost O(limit) each, whatever
// the offset, and every page of one revision is cut from the same list, so paging a still
// inventory returns every matching stone exactly once. A mutation bumps the revision and the
// next page is cut from the new list: offsets shift exactly as they do on a live API.
interface OrderedResult {
  /** Matching rows in ascending (key, id) order; DESC reads it backwards. */
  rows: Int32Array;
}

const MAX_CACHED_RESULTS = 256;
/** Cap on the rows all cached lists hold together (4 bytes each). */
const MAX_CACHED_ROWS = 16_000_000;

interface ResultCache {
  revision: number;
  lists: Map<string, OrderedResult>;
  rows: number;
  counts: Map<string, number>;
}
const resultCaches = new WeakMap<Inventory, ResultCache>();

function cacheFor(inv: Inventory): ResultCache {
  let cache = resultCaches.get(inv);
  if (!cache || cache.revision !== inv.revision) {
    cache = { revision: inv.revision, lists: new Map(), rows: 0, counts: new Map() };
    resultCaches.set(inv, cache);
  }
  return cache;
}

/** A stable text for a query: key order and explicit nulls do not make two cache entries. */
export function canonicalQuery(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalQuery).join(',')}]`;
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined && v !== null)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalQuery(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function orderKey(inv: Inventory, type: Exclude<OrderType, 'price'>, i: number): number {
  if (type === 'createdAt') return inv.createdMs[i]!;
  if (type === 'size') return inv.carats[i]!;
  return inv.priceCents[i]! / 100 / inv.carats[i]!;
}

function materialise(inv: Inventory, query: DiamondQuery, type: OrderType): Int32Array {
  const { lo, hi, test, trivial } = compile(inv, query);
  const found = new Int32Array(hi - lo);
  let m = 0;
  for (let i = lo; i < hi; i++) if (trivial || test(i)) found[m++] = i;
  // Rows are stored in (price, id) order: the price order needs no sort.
  if (type === 'price') return found.slice(0, m);
  const keys = new Float64Array(m);
  const ids = new Int32Array(m);
  const positions = new Uint32Array(m);
  for (let k = 0; k < m; k++) {
    keys[k] = orderKey(inv, type, found[k]!);
    ids[k] = inv.ids[found[k]!]!;
    positions[k] = k;
  }
  // Ties by the stable stone id, so the order (and paging) is total and deterministic.
  positions.sort((a, b) => keys[a]! - keys[b]! || ids[a]! - ids[b]!);
  const rows = new Int32Array(m);
  for (let k = 0; k < m; k++) rows[k] = found[positions[k]!]!;
  return rows;
}

function orderedResult(inv: Inventory, query: DiamondQuery, type: OrderType): OrderedResult {
  const cache = cacheFor(inv);
  const key = `${type}|${canonicalQuery(query)}`;
  let result = cache.lists.get(key);
  if (result) {
    // Least recently used goes first: re-insert on every hit.
    cache.lists.delete(key);
    cache.lists.set(key, result);
    return result;
  }
  result = { rows: materialise(inv, query, type) };
  cache.lists.set(key, result);
  cache.rows += result.rows.length;
  for (const [oldKey, old] of cache.lists) {
    if (cache.lists.size <= MAX_CACHED_RESULTS && cache.rows <= MAX_CACHED_ROWS) break;
    if (old === result) break;
    cache.lists.delete(oldKey);
    cache.rows -= old.rows.length;
  }
  return result;
}

/**
 * One page of the matching stones in `order` (ascending (key, id); DESC is its exact reverse):
 * positions offset … offset + limit − 1 of the whole ordered list of the current revision.
 */
export function searchPage(inventory: Inventory, query: DiamondQuery, page: PageRequest): Page {
  const type = page.order?.type ?? 'createdAt';
  const desc = page.order?.direction === 'DESC';
  const { rows: list } = orderedResult(inventory, query, type);
  const n = list.length;
  const end = Math.min(n, page.offset + Math.max(0, page.limit));
  const rows: number[] = [];
  for (let k = page.offset; k < end; k++) rows.push(list[desc ? n - 1 - k : k]!);
  return { rows, matching: n };
}

/** Row indexes of the matching stones in `order`, skipping `offset`, at most `limit`. */
export function searchMatching(inventory: Inventory, query: DiamondQuery, page: PageRequest): number[] {
  return searchPage(inventory, query, page).rows;
}

/** countMatching, cached for the current revision (search pages report a count each). */
export function cachedCount(inventory: Inventory, query: DiamondQuery): number {
  const cache = cacheFor(inventory);
  const key = canonicalQuery(query);
  let n = cache.counts.get(key);
  if (n === undefined) {
    n = countMatching(inventory, query);
    if (cache.counts.size >= MAX_CACHED_RESULTS) cache.counts.clear();
    cache.counts.set(key, n);
  }
  return n;
}

// ---------------------------------------------------------------------------------------
// Ids as served: the stone's number, fixed width in hex, so ids sort like the numbers.

export function diamondIdOf(id: number): string {
  return `diamond-${id.toString(16).padStart(8, '0')}`;
}

export function offerIdOf(id: number): string {
  return `offer-${id.toString(16).padStart(8, '0')}`;
}

/** The stone number behind a served diamond id, or undefined when it is not one of ours. */
export function stoneNumberOf(diamondId: string): number | undefined {
  const match = /^diamond-([0-9a-f]{8})$/.exec(diamondId);
  return match ? Number.parseInt(match[1]!, 16) : undefined;
}
