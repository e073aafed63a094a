// Live churn: listings change while a run pages them. Price moves (a few by a lot, so some
// stones cross partition bounds), listings touched without a price move, removals and new
// stones, each changed listing's `updated` set to the simulator's now. A batch of changes is
// applied at once by one O(n) merge into the price-sorted columns, so counts and searches stay
// exact (and as fast as before) after every mutation. Snapshots are the exact inventory of a
// moment, the reference end-to-end tests compare an ingest against.
import type { DiamondQuery } from '../../src/nivoda/query.js';
import {
  AVAILABILITIES,
  countMatching,
  diamondIdOf,
  emptyInventory,
  fillStone,
  offerIdOf,
  searchMatching,
  SHAPES,
  stoneNumberOf,
  type Inventory,
} from './inventory.js';

/** Prices stay below the largest GraphQL Int ($21.4M in cents); the realistic tail ends at $20M. */
const MAX_PRICE_CENTS = 2_000_000_000;
const DEFAULT_LARGE_MOVE_SHARE = 0.1;

export interface MutationSpec {
  /** Stones whose price moves: most by up to ±10 %, a share (`largeMoveShare`) by up to ×3 or ÷3. */
  reprice?: number;
  /** Stones whose listing changes without a price move (availability, media): `updated` only. */
  touch?: number;
  remove?: number;
  /** New stones (new ids), priced like the existing ones. */
  add?: number;
  /** `count` new stones at exactly `priceCents` (a pile at one price, e.g. on a partition bound). */
  spike?: { priceCents: number; count: number };
  /** Share of `reprice` that are large moves (default 0.1). */
  largeMoveShare?: number;
}

/** A stone as served: `id` is `diamond.id`, `offerId` is the offer's `id`. */
export interface StoneState {
  id: string;
  offerId: string;
  priceCents: number;
  /** `diamond.updated` as served (ISO). */
  updated: string;
}

export interface ChangedStone extends StoneState {
  previousPriceCents: number;
  previousUpdated: string;
}

export interface MutationResult {
  /** The simulator's now when the batch was applied (ISO). */
  at: string;
  /** The inventory's revision after the batch. */
  revision: number;
  repriced: ChangedStone[];
  touched: ChangedStone[];
  /** The removed stones as they were. */
  removed: StoneState[];
  /** New stones, spike included. */
  added: StoneState[];
}

function stoneState(inv: Inventory, i: number): StoneState {
  const id = inv.ids[i]!;
  return {
    id: diamondIdOf(id),
    offerId: offerIdOf(id),
    priceCents: inv.priceCents[i]!,
    updated: new Date(inv.updatedMs[i]!).toISOString(),
  };
}

const COLUMNS = [
  'priceCents',
  'carats',
  'updatedMs',
  'createdMs',
  'ids',
  'shapeIndex',
  'labgrown',
  'hasImage',
  'hasV360',
  'availability',
  'memo',
  'cut',
  'color',
  'clarity',
  'lab',
] as const satisfies readonly (keyof Inventory)[];
type ColumnName = (typeof COLUMNS)[number];
type Column = Inventory[ColumnName];

function newColumn(like: Column, length: number): Column {
  if (like instanceof Int32Array) return new Int32Array(length);
  if (like instanceof Float64Array) return new Float64Array(length);
  return new Uint8Array(length);
}

/** Replaces a column of the inventory in place (so every holder of the object sees the change). */
function setColumn(inv: Inventory, name: ColumnName, column: Column): void {
  // The column's type follows from its name (newColumn copies the old one's); TypeScript cannot
  // relate the two through the union, hence the widening.
  (inv as unknown as Record<ColumnName, Column>)[name] = column;
}

/** The first row whose (price, id) is not below (price, id): where an entering stone goes. */
function insertionPoint(inv: Inventory, price: number, id: number): number {
  let lo = 0;
  let hi = inv.size;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const p = inv.priceCents[mid]!;
    if (p < price || (p === price && inv.ids[mid]! < id)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** `count` distinct rows not yet taken, marked in `taken`. */
function pickRows(rand: () => number, n: number, count: number, taken: Uint8Array): number[] {
  const rows: number[] = [];
  while (rows.length < count) {
    const i = Math.floor(rand() * n);
    if (taken[i]) continue;
    taken[i] = 1;
    rows.push(i);
  }
  return rows;
}

function movedPrice(rand: () => number, price: number, large: boolean): number {
  const factor = large ? Math.exp((rand() * 2 - 1) * Math.log(3)) : 1 + (rand() * 2 - 1) * 0.1;
  let next = Math.min(Math.max(Math.round(price * factor), 1), MAX_PRICE_CENTS);
  if (next === price) next = price < MAX_PRICE_CENTS ? price + 1 : price - 1;
  return next;
}

/**
 * Applies one batch of changes to `inv` in place and bumps its revision. Which stones change
 * and how is drawn from `rand`, so the same seed and the same calls give the same inventory.
 */
export function mutateInventory(inv: Inventory, spec: MutationSpec, rand: () => number, nowMs: number): MutationResult {
  const n = inv.size;
  const whole = (v: number | undefined, what: string): number => {
    const x = v ?? 0;
    if (!Number.isInteger(x) || x < 0) throw new RangeError(`mutate: ${what} must be a whole number >= 0, got ${String(v)}`);
    return x;
  };
  const spike = spec.spike;
  if (spike && (!Number.isInteger(spike.priceCents) || spike.priceCents < 0 || spike.priceCents > MAX_PRICE_CENTS)) {
    throw new RangeError(`mutate: spike.priceCents must be a whole number of cents in [0, ${MAX_PRICE_CENTS}]`);
  }
  // Existing stones change at most once per batch; more changes than stones are cut to fit.
  const reprice = Math.min(whole(spec.reprice, 'reprice'), n);
  const touch = Math.min(whole(spec.touch, 'touch'), n - reprice);
  const remove = Math.min(whole(spec.remove, 'remove'), n - reprice - touch);
  const add = whole(spec.add, 'add');
  const spikeCount = spike ? whole(spike.count, 'spike.count') : 0;
  const largeShare = spec.largeMoveShare ?? DEFAULT_LARGE_MOVE_SHARE;

  const taken = new Uint8Array(n); // 1 = the row leaves its place (moved or removed)
  const repricedRows = pickRows(rand, n, reprice, taken);
  const touchedRows = pickRows(rand, n, touch, taken);
  const removedRows = pickRows(rand, n, remove, taken);

  const result: MutationResult = {
    at: new Date(nowMs).toISOString(),
    revision: inv.revision + 1,
    repriced: [],
    touched: [],
    removed: [],
    added: [],
  };
  for (const i of removedRows) result.removed.push(stoneState(inv, i));

  // The stones that (re)enter: changed ones copied with their new price and time, then new ones.
  const moved = emptyInventory(inv.shape, inv.seed, nowMs, repricedRows.length + touchedRows.length + add + spikeCount);
  let m = 0;
  const copy = (i: number, price: number): void => {
    for (const name of COLUMNS) moved[name][m] = inv[name][i]!;
    moved.priceCents[m] = price;
    // `updated` never goes backwards, even when the clock is behind the generated inventory.
    moved.updatedMs[m] = Math.max(nowMs, inv.updatedMs[i]! + 1);
    const state = stoneState(moved, m);
    const change: ChangedStone = {
      ...state,
      previousPriceCents: inv.priceCents[i]!,
      previousUpdated: new Date(inv.updatedMs[i]!).toISOString(),
    };
    (price === inv.priceCents[i] ? result.touched : result.repriced).push(change);
    m++;
  };
  for (const i of repricedRows) copy(i, movedPrice(rand, inv.priceCents[i]!, rand() < largeShare));
  for (const i of touchedRows) copy(i, inv.priceCents[i]!);
  let nextId = inv.nextId;
  const addStone = (price: number): void => {
    fillStone(moved, m, rand, nextId++, price);
    moved.updatedMs[m] = nowMs;
    moved.createdMs[m] = nowMs;
    result.added.push(stoneState(moved, m));
    m++;
  };
  for (let k = 0; k < add; k++) {
    // Priced like a random existing stone, give or take 10 %: new listings follow the density.
    const base = n > 0 ? inv.priceCents[Math.floor(rand() * n)]! : 30_000 + Math.floor(rand() * 2_000_000);
    addStone(Math.min(Math.max(Math.round(base * (1 + (rand() * 2 - 1) * 0.1)), 100), MAX_PRICE_CENTS));
  }
  for (let k = 0; k < spikeCount; k++) addStone(spike!.priceCents);

  // Merge: the kept rows are already in (price, id) order and few rows change, so the new
  // columns are runs of old rows copied in bulk, with the (sorted) entering stones between them.
  // A plan of segments: [oldFrom, oldTo) runs, or ~e for entering stone e.
  const entering = Uint32Array.from({ length: m }, (_, k) => k);
  entering.sort((a, b) => moved.priceCents[a]! - moved.priceCents[b]! || moved.ids[a]! - moved.ids[b]!);
  const plan: number[] = []; // pairs: (from, to) for a run, (~e, 0) for an entering stone
  let cursor = 0;
  const copyUpTo = (end: number): void => {
    // Old rows [cursor, end), minus the leaving ones.
    while (cursor < end) {
      while (cursor < end && taken[cursor]) cursor++;
      let stop = cursor;
      while (stop < end && !taken[stop]) stop++;
      if (stop > cursor) plan.push(cursor, stop);
      cursor = stop;
    }
  };
  for (let j = 0; j < m; j++) {
    const e = entering[j]!;
    copyUpTo(insertionPoint(inv, moved.priceCents[e]!, moved.ids[e]!));
    plan.push(~e, 0);
  }
  copyUpTo(n);
  const size = n - repricedRows.length - touchedRows.length - removedRows.length + m;
  for (const name of COLUMNS) {
    const from = inv[name];
    const extra = moved[name];
    const out = newColumn(from, size);
    let k = 0;
    for (let p = 0; p < plan.length; p += 2) {
      const a = plan[p]!;
      if (a < 0) out[k++] = extra[~a]!;
      else {
        // `out` has `from`'s element type (newColumn); TypeScript cannot see it through the union.
        (out as Int32Array).set((from as Int32Array).subarray(a, plan[p + 1]), k);
        k += plan[p + 1]! - a;
      }
    }
    setColumn(inv, name, out);
  }
  inv.size = size;
  inv.nextId = nextId;
  inv.revision++;
  return result;
}

// ---------------------------------------------------------------------------------------
// Request-driven churn: every `everyRequests` served searches, a batch sized so that
// `rate` × the inventory's size stones change per 1,000 searches. Driven by requests, not by
// the clock, so a given seed and request sequence always produce the same inventory.

export interface ChurnMix {
  reprice: number;
  touch: number;
  remove: number;
  add: number;
}
export const DEFAULT_CHURN_MIX: ChurnMix = { reprice: 0.6, touch: 0.1, remove: 0.15, add: 0.15 };

export interface ChurnKnobs {
  /** Fraction of the inventory changed per 1,000 served search requests (0 = no churn). */
  churnRate: number;
  /** A batch every this many served searches. */
  churnEveryRequests: number;
  churnMix: ChurnMix;
  churnLargeMoveShare: number;
}

export class RequestChurn {
  private served = 0;
  /** Fractional changes owed from earlier batches, so small rates still add up. */
  private owed = 0;

  /** Counts one served search; returns the batch due now, if any. */
  onSearch(knobs: ChurnKnobs, size: number, rand: () => number): MutationSpec | undefined {
    this.served++;
    const every = Math.max(1, Math.floor(knobs.churnEveryRequests));
    if (knobs.churnRate <= 0 || this.served % every !== 0) return undefined;
    this.owed += (knobs.churnRate * Math.max(size, 1) * every) / 1000;
    const changes = Math.floor(this.owed);
    this.owed -= changes;
    if (changes === 0) return undefined;
    const mix = knobs.churnMix;
    const weights = [mix.reprice, mix.touch, mix.remove, mix.add].map((w) => Math.max(0, w));
    const total = weights.reduce((a, b) => a + b, 0);
    if (total <= 0) return undefined;
    const counts = [0, 0, 0, 0];
    for (let k = 0; k < changes; k++) {
      let r = rand() * total;
      let c = 0;
      while (c < 3 && (r -= weights[c]!) >= 0) c++;
      counts[c]!++;
    }
    return { reprice: counts[0], touch: counts[1], remove: counts[2], add: counts[3], largeMoveShare: knobs.churnLargeMoveShare };
  }
}

// ---------------------------------------------------------------------------------------
// Snapshots.

/** One stone of a snapshot, as the API serves it (ids, price in cents, `updated`). */
export interface StoneRow extends StoneState {
  updatedMs: number;
  /** Listing creation time (the createdAt order), ms since epoch. */
  createdMs: number;
  carats: number;
  shape: string;
  labgrown: boolean;
  availability: string;
}

export interface InventorySnapshot {
  /** The simulator's now when it was taken (ISO). */
  takenAt: string;
  revision: number;
  size: number;
  /** A private copy of the columns (sorted by price, id): countMatching/searchMatching work on it. */
  inventory: Inventory;
  /** Every stone, in (price, id) order. Builds 1 object per stone: ~0.3 s for 440k. */
  stones(): StoneRow[];
  /** The stone with this `diamond.id`, if it exists in the snapshot. */
  get(diamondId: string): StoneRow | undefined;
  /** The stones a query selects, under the contract's semantics, in (price, id) order. */
  matching(query: DiamondQuery): StoneRow[];
  count(query: DiamondQuery): number;
}

export function cloneInventory(inv: Inventory): Inventory {
  const copy: Inventory = { ...inv };
  for (const name of COLUMNS) setColumn(copy, name, inv[name].slice(0, inv.size));
  return copy;
}

export function stoneRow(inv: Inventory, i: number): StoneRow {
  return {
    ...stoneState(inv, i),
    updatedMs: inv.updatedMs[i]!,
    createdMs: inv.createdMs[i]!,
    carats: inv.carats[i]!,
    shape: SHAPES[inv.shapeIndex[i]!]!,
    labgrown: inv.labgrown[i] === 1,
    availability: AVAILABILITIES[inv.availability[i]!]!,
  };
}

export function takeSnapshot(inv: Inventory, nowMs: number): InventorySnapshot {
  const frozen = cloneInventory(inv);
  let rowOf: Int32Array | undefined;
  return {
    takenAt: new Date(nowMs).toISOString(),
    revision: frozen.revision,
    size: frozen.size,
    inventory: frozen,
    stones: () => Array.from({ length: frozen.size }, (_, i) => stoneRow(frozen, i)),
    get: (diamondId) => {
      const id = stoneNumberOf(diamondId);
      if (id === undefined || id >= frozen.nextId) return undefined;
      if (!rowOf) {
        rowOf = new Int32Array(frozen.nextId).fill(-1);
        for (let i = 0; i < frozen.size; i++) rowOf[frozen.ids[i]!] = i;
      }
      const row = rowOf[id]!;
      return row < 0 ? undefined : stoneRow(frozen, row);
    },
    matching: (query) =>
      searchMatching(frozen, query, { offset: 0, limit: frozen.size, order: { type: 'price', direction: 'ASC' } }).map((i) =>
        stoneRow(frozen, i),
      ),
    count: (query) => countMatching(frozen, query),
  };
}
