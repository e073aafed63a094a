// How a worker fetches one partition (CONTRACT §2, §9): pure paging and verification over an
// injected search and count, with every page handed to `commitPage` (the caller commits the
// page's rows and this progress in one transaction), so a redelivered work item resumes after
// the last committed page.
//
// Offset paging over a live inventory shifts: a listing that leaves the result list (updated
// after the window, repriced out of the range, removed) before the cursor moves every later stone
// forward, one that enters it (a price moving into the range keeps its createdAt place) moves them
// back. So a pass pages until an EMPTY page (a short page is not the end), keeps what is in range,
// dedupes by diamond.id (a stone read again as the same listing is not handed over twice), and is
// checked against the exact count. Counts alone cannot prove a pass complete (removals behind the
// cursor and additions at the end cancel out), so pages CHAIN: each page starts at the previous
// page's last stone (the overlap stone) and must hold it. A page is a contiguous slice of the
// listing at its moment, and in createdAt order stones keep their relative order, so a page that
// holds a stone the pass already covered covers every stone up to its own last one that was in the
// result at that moment: a pass whose pages all chain has skipped no stone that stayed in the
// result for the whole pass. When a page does not hold the overlap stone, the pass RESYNCS instead
// of giving up: if the stone appears later in the page (the listing moved up) it continues after
// it; otherwise (moved down: net removals before the cursor) it steps back a page at a time
// (offset − 49, each page overlapping the one above by a stone; at most MAX_RESYNC_STEPS, and
// within the pass's resyncBudget) until a page holds one of the pass's ANCHORS — the chain's last
// ANCHOR_RING stones, so an overlap stone that itself left is replaced by the one before it, and so
// on — then chains the pages it holds through their shared stones and realigns the cursor on the
// chain's last stone; every stone read meanwhile is kept. The anchors are committed with the
// progress, so a redelivery resumes a resync. A pass is DISTURBED (it cannot vouch for its cover)
// when no anchor is found within reach (paging carries on from the page, as a new chain), when the
// listing moved up (a net entry behind the cursor: a stone the pass may have missed), or when it
// is cut short (below). An undisturbed pass verifies the partition when its unique stones are at
// least the exact count taken right after it (stones read and then gone make them exceed it; fewer
// means something entered behind the cursor). Not provable this way: an entry behind the cursor
// masked by as many removals before it between the same two pages; such a stone changed during
// the pass (its `updated` is recent), which the next incremental run's safety buffer re-reads. A
// pass that does not verify is followed by another from offset 0; what a pass finds that no
// earlier pass kept is new, and a later whole pass (not resumed) also verifies when it finds
// nothing new and its unique stones match the count taken right after it. A pass also ends
// (disturbed, unverifiable) when its offset passes the count it began with plus slack, after a few
// pages in a row that show nothing new, or when its resyncs exceed their budget: a vendor that
// clamps the offset or repeats its last page, or a listing moving under the cursor without end,
// would otherwise be paged forever. Passes are bounded; a partition still unverified after the
// last one is reported with its `discrepancy` (the exact count minus the last pass's unique
// stones: not the number of stones missing, since stones read and then gone lower it and can hide
// a skipped one) and fails (src/worker.ts), never silently.
import type { PriceField, WorkItemMessage } from './domain.js';
import { PRICE_AXIS_END } from './domain.js';
import type { Offer, SearchOrder } from './nivoda/documents.js';
import { MAX_SEARCH_LIMIT } from './nivoda/documents.js';
import { diamondQuery, type DiamondQuery } from './nivoda/query.js';

/**
 * createdAt ascending (the API's default, named explicitly): a new listing joins the end of the
 * list and a price move within the range keeps its place, so fewer changes shift offsets than in
 * a price order, where every move re-sorts the list.
 */
export const PARTITION_ORDER: SearchOrder = { type: 'createdAt', direction: 'ASC' };

export const DEFAULT_MAX_PASSES = 4;

/** What a worker needs of its work item. */
export type PartitionSpec = Pick<WorkItemMessage, 'priceMin' | 'priceMax' | 'priceField' | 'updatedFrom' | 'updatedTo' | 'query'>;

/** Where paging stands; committed with every page, so a redelivery resumes from it. */
export interface PassProgress {
  /** 1, 2, … */
  pass: number;
  /** The offset of the next page of this pass. */
  nextOffset: number;
  /** The exact count taken before this pass (pass 1: before anything was fetched); null until taken. */
  countBefore: number | null;
  /** Unique stones this pass has kept so far. */
  seen: number;
  /** Of them, stones no earlier pass kept. */
  newInPass: number;
  /**
   * This pass was interrupted and resumed by another delivery: what it saw before is not
   * known here, so (after pass 1, whose stones are exactly the kept set) it cannot verify.
   */
  resumed: boolean;
  /** The stone the next page must begin with (the previous page's last); null at a pass start or for the probe past a one-stone page. */
  overlapId: string | null;
  /**
   * The last few stones of the pass's chain (see the top of this file), in listing order, the
   * last one furthest: a page holding any of them continues the chain. Empty at a pass start.
   */
  anchors: string[];
  /** The next page is the probe one place past a page that held only an anchor (the end, if empty). */
  uncheckedStep: boolean;
  /**
   * The pass cannot vouch for its cover: a shift no resync could bridge, the listing moved up
   * (a net entry behind the cursor), or it was cut short.
   */
  disturbed: boolean;
  /** Resyncs this pass (pages that held no anchor). */
  resyncs: number;
  /** Pages fetched while resyncing this pass (stepping back). */
  resyncPages: number;
  /** Pages in a row (up to now) that brought no stone this pass had not seen: a vendor repeating a page. */
  stalePages: number;
  /**
   * The pass was ended by the paging bound (see `pagingLimit`), not by an empty page: it is
   * disturbed and cannot verify, whatever its counts say.
   */
  cutShort: boolean;
}

export const FRESH_PROGRESS: PassProgress = {
  pass: 1,
  nextOffset: 0,
  countBefore: null,
  seen: 0,
  newInPass: 0,
  resumed: false,
  overlapId: null,
  anchors: [],
  uncheckedStep: false,
  disturbed: false,
  resyncs: 0,
  resyncPages: 0,
  stalePages: 0,
  cutShort: false,
};

/** Pages in a row with nothing new for the pass after which the pass ends (a vendor repeating its last page). */
export const MAX_STALE_PAGES = 3;

/** How many of the chain's last stones a pass keeps as anchors (and commits with its progress). */
export const ANCHOR_RING = 16;

/** Pages a resync steps back (each 49 places) looking for an anchor: bridges shifts of up to 196. */
export const MAX_RESYNC_STEPS = 4;

/**
 * Pages a pass may spend resyncing: twice its own pages' worth plus slack (a listing that shifts
 * before every page costs one step back a page, and a shift between the two again). A listing that keeps moving
 * under the cursor would otherwise be stepped back and forth forever (the offset bound would not see it).
 */
export function resyncBudget(countBefore: number): number {
  return 10 + 2 * Math.ceil(countBefore / (MAX_SEARCH_LIMIT - 1));
}

/**
 * The offset past which a pass stops paging: the count it began with plus slack for listings
 * that join while it pages. A vendor that clamps the offset (or keeps returning stones) would
 * otherwise be paged forever, since only an empty page ends a pass.
 */
export function pagingLimit(countBefore: number): number {
  return countBefore + Math.max(500, Math.ceil(countBefore / 4));
}

export interface PartitionSource {
  search(query: DiamondQuery, page: { offset: number; limit: number; order: SearchOrder }): Promise<Offer[]>;
  count(query: DiamondQuery): Promise<number>;
}

export interface PageCommit {
  /** The page's stones in range, deduped: each is inserted, or updated where the listing changed. */
  items: Offer[];
  progress: PassProgress;
  /** Unique stones the partition has kept over all passes. */
  kept: number;
  /** Calls made so far by this fetch (for the partition row). */
  calls: { search: number; count: number };
}

export interface FetchOptions {
  /** Stones already kept by earlier deliveries of this partition (its rows in the raw table). */
  kept?: Iterable<string>;
  /** Where an earlier delivery stopped; fresh when absent. */
  progress?: PassProgress;
  maxPasses?: number;
  /** Checked between pages: a stop after the page in flight. */
  signal?: AbortSignal;
}

export interface FetchOutcome {
  /** The last pass matched the count (see the top of this file). */
  verified: boolean;
  passes: number;
  /** The exact count after the last pass. */
  count: number;
  /** Unique stones the last pass kept. */
  lastPassUnique: number;
  /** Unique stones kept over all passes. */
  kept: number;
  /**
   * count − lastPassUnique when not verified (0 when verified). Not the number of missing
   * stones: stones read and then gone make it smaller (and can hide a skipped one, so a
   * skipped stone may show as 0 or less); stones that joined after the cursor passed make it larger.
   */
  discrepancy: number;
  /** Passes ended by the paging bound (a vendor repeating pages, or an endless listing). */
  cutShortPasses: number;
  /** Resyncs over all passes of this fetch (pages that held no anchor), and the pages they fetched. */
  resyncs: number;
  resyncPages: number;
  calls: { search: number; count: number };
}

/** The partition's query by §2: the base filter, the price range (inclusive Int bounds) and the run's window. */
export function partitionQuery(spec: PartitionSpec, bounds: { from: number; to?: number }): DiamondQuery {
  return diamondQuery(
    { baseQuery: spec.query, priceField: spec.priceField, window: { from: spec.updatedFrom, to: spec.updatedTo } },
    bounds,
  );
}

/** The price an offer is partitioned by, exactly as the API filters it (dollars, or dollars per carat). */
export function priceOf(offer: Offer, field: PriceField): number {
  return field === 'dollar_value' ? offer.price / 100 : offer.price / 100 / offer.diamond.certificate.carats;
}

/** Whether the partition owns the offer: priceMin ≤ price < priceMax. */
export function inPartition(offer: Offer, spec: Pick<PartitionSpec, 'priceMin' | 'priceMax' | 'priceField'>): boolean {
  const price = priceOf(offer, spec.priceField);
  return price >= spec.priceMin && price < spec.priceMax;
}

/** A page as fetched: where it was asked for and the ids it held, in listing order. */
interface HeldPage {
  offset: number;
  ids: string[];
}

/** Pages, dedupes, verifies; resumes from `options.progress`. Throws what the source or commitPage throws. */
export async function fetchPartition(
  spec: PartitionSpec,
  source: PartitionSource,
  commitPage: (page: PageCommit) => Promise<void>,
  options: FetchOptions = {},
): Promise<FetchOutcome> {
  const maxPasses = Math.max(1, options.maxPasses ?? DEFAULT_MAX_PASSES);
  const kept = new Set(options.kept ?? []);
  const calls = { search: 0, count: 0 };
  let progress: PassProgress = withDefaults(options.progress ?? FRESH_PROGRESS);
  const resuming = progress.nextOffset > 0 || progress.seen > 0;
  // Pass 1 keeps every stone it sees, so what it saw before an interruption is the kept set.
  // Each with the listing it was handed over as (unknown for what an earlier delivery kept).
  let passSeen = new Map<string, string | undefined>(progress.pass === 1 ? [...kept].map((id) => [id, undefined]) : []);
  if (resuming && progress.pass > 1) progress.resumed = true;
  if (progress.pass === 1) progress.seen = passSeen.size;
  // Every stone a page of this pass showed (in range or not) in this delivery: a page that shows
  // nothing else is stale. After a resume it starts from the pass's kept stones only, which can
  // only delay the stale count.
  let passShown = new Set(passSeen.keys());

  const listing = partitionQuery(spec, { from: spec.priceMin, to: spec.priceMax });
  const exactCount = async (): Promise<number> => {
    calls.count++;
    const from = await source.count(partitionQuery(spec, { from: spec.priceMin }));
    // Nothing is priced at or above the axis end: no second query for the last partition.
    if (spec.priceMax >= PRICE_AXIS_END) return from;
    calls.count++;
    return from - (await source.count(partitionQuery(spec, { from: spec.priceMax })));
  };
  const commit = (items: Offer[]) =>
    commitPage({ items, progress: { ...progress, anchors: [...progress.anchors] }, kept: kept.size, calls: { ...calls } });
  const fetchPage = async (offset: number): Promise<Offer[]> => {
    stopIfAsked(options.signal);
    const page = await source.search(listing, { offset, limit: MAX_SEARCH_LIMIT, order: PARTITION_ORDER });
    calls.search++;
    return page;
  };
  /**
   * The page's stones in range that this pass has not handed over yet (or has, as another
   * listing), deduped, counted for the pass and the partition.
   */
  const keep = (page: Offer[]): Offer[] => {
    const items: Offer[] = [];
    const onPage = new Set<string>();
    for (const offer of page) {
      const id = offer.diamond.id;
      if (!inPartition(offer, spec) || onPage.has(id)) continue;
      onPage.add(id);
      const version = versionOf(offer);
      if (!passSeen.has(id)) progress.seen++;
      else if (passSeen.get(id) === undefined || passSeen.get(id) === version) continue;
      passSeen.set(id, version);
      items.push(offer);
      if (!kept.has(id)) {
        kept.add(id);
        progress.newInPass++;
      }
    }
    return items;
  };
  /** Whether the page shows a stone no page of this pass showed before (a vendor repeating a page does not). */
  const showsNew = (page: Offer[]): boolean => {
    let fresh = false;
    for (const offer of page) {
      if (passShown.has(offer.diamond.id)) continue;
      passShown.add(offer.diamond.id);
      fresh = true;
    }
    return fresh;
  };
  /** The chain's covered stones grow by `ids` (in listing order); the ring keeps the last few. */
  const cover = (ids: string[]): void => {
    progress.anchors = [...progress.anchors, ...ids].slice(-ANCHOR_RING);
  };
  /** The last place in `ids` that holds a covered stone (an anchor), or −1. */
  const lastAnchor = (ids: string[]): number => {
    const ring = new Set(progress.anchors);
    for (let i = ids.length - 1; i >= 0; i--) if (ring.has(ids[i]!)) return i;
    return -1;
  };
  /**
   * The page at `offset` holds an anchor at `at` (−1: a pass's first page, which covers the
   * listing from its start): what follows it is covered, and the next page starts at the page's
   * last stone, which it must hold again.
   */
  const advance = (offset: number, ids: string[], at: number): void => {
    if (at < ids.length - 1) {
      cover(ids.slice(at + 1));
      progress.overlapId = ids.at(-1)!;
      progress.nextOffset = offset + ids.length - 1;
      progress.uncheckedStep = false;
    } else if (ids.length < MAX_SEARCH_LIMIT) {
      // A short page ends with the anchor (only the anchor came back, or a step back found it
      // last): the listing may end there, or the page was cut short, so look once more past
      // it; an empty page is the only end.
      progress.overlapId = null;
      progress.nextOffset = offset + at + 1;
      progress.uncheckedStep = true;
    } else {
      // The anchor ends a full page (the listing moved up by a page's worth): ask again from it.
      progress.overlapId = ids[at]!;
      progress.nextOffset = offset + at;
      progress.uncheckedStep = false;
    }
  };
  /**
   * The page at `misaligned.offset` holds no anchor: the listing moved down past the cursor (net
   * removals before it), or up by more than a page. Steps back a page at a time (each overlapping
   * the one above it by a stone), up to MAX_RESYNC_STEPS, until an anchor turns up; then chains
   * every page held since through their shared stones, so the cover is still gapless, and
   * realigns the cursor on the chain's last stone. Every stone read is kept. False: no anchor
   * found (the pass is disturbed) or the pass's resync budget ran out (cut short).
   */
  const resync = async (misaligned: HeldPage): Promise<boolean> => {
    progress.resyncs++;
    const held: HeldPage[] = [misaligned];
    let lowest = misaligned.offset;
    for (let step = 0; step < MAX_RESYNC_STEPS && lowest > 0; step++) {
      if (progress.resyncPages >= resyncBudget(progress.countBefore ?? 0)) {
        progress.disturbed = true;
        progress.cutShort = true;
        await commit([]);
        return false;
      }
      lowest = Math.max(0, lowest - (MAX_SEARCH_LIMIT - 1));
      const page = await fetchPage(lowest);
      progress.resyncPages++;
      held.push({ offset: lowest, ids: page.map((o) => o.diamond.id) });
      const items = keep(page);
      for (const offer of page) passShown.add(offer.diamond.id);
      if (!chain(held)) {
        await commit(items);
        continue;
      }
      progress.stalePages = 0;
      await commit(items);
      return true;
    }
    progress.disturbed = true;
    return false;
  };
  /** Extends the cover through the held pages; true (and the cursor realigned) when any holds an anchor. */
  const chain = (held: HeldPage[]): boolean => {
    let found = false;
    for (let grew = true; grew;) {
      grew = false;
      for (const page of held) {
        const at = lastAnchor(page.ids);
        if (at < 0) continue;
        found = true;
        if (at < page.ids.length - 1) {
          cover(page.ids.slice(at + 1));
          grew = true;
        }
      }
    }
    if (!found) return false;
    // Realign on the chain's last stone where it was seen last (held pages are in fetch order):
    // the next page must begin with it.
    const frontier = progress.anchors.at(-1)!;
    for (let k = held.length - 1; k >= 0; k--) {
      const at = held[k]!.ids.lastIndexOf(frontier);
      if (at >= 0) {
        advance(held[k]!.offset, held[k]!.ids, at);
        return true;
      }
    }
    // The frontier is not on any held page (found was a ring stone that ends its page): ask from it.
    for (let k = held.length - 1; k >= 0; k--) {
      const at = lastAnchor(held[k]!.ids);
      if (at >= 0) {
        advance(held[k]!.offset, held[k]!.ids, at);
        return true;
      }
    }
    return false;
  };

  if (progress.countBefore === null) {
    progress.countBefore = await exactCount();
    await commit([]);
  }
  let cutShortPasses = 0;
  let totalResyncs = 0;
  let totalResyncPages = 0;
  for (;;) {
    for (;;) {
      const limit = pagingLimit(progress.countBefore ?? 0);
      if (progress.nextOffset > limit || progress.stalePages >= MAX_STALE_PAGES) {
        // The vendor keeps returning stones where the listing should have ended: this pass ends
        // here, disturbed (it cannot verify), and the next one (if any) starts over.
        progress.disturbed = true;
        progress.cutShort = true;
        await commit([]);
        break;
      }
      const offset = progress.nextOffset;
      const page = await fetchPage(offset);
      const ids = page.map((o) => o.diamond.id);
      const items = keep(page);
      progress.stalePages = showsNew(page) ? 0 : progress.stalePages + 1;
      const starting = progress.anchors.length === 0;
      if (page.length === 0 && (starting || progress.uncheckedStep)) {
        // The end: an empty page at the start, or just past a page that held only the anchor.
        await commit(items);
        break;
      }
      if (starting) {
        // A pass's first page covers the listing from its start. Resumed without anchors
        // (progress of an older version) past offset 0, nothing can check this step.
        if (offset > 0) progress.disturbed = true;
        advance(offset, ids, -1);
        await commit(items);
        continue;
      }
      const at = lastAnchor(ids);
      if (at >= 0) {
        // Aligned (the anchor leads the page), or the listing moved up (it appears later, or on
        // the probe past the end): a net entry behind the cursor, a stone this pass may have
        // missed, so it cannot verify.
        if (at > 0 || progress.uncheckedStep) progress.disturbed = true;
        advance(offset, ids, at);
        await commit(items);
        continue;
      }
      await commit(items);
      if (await resync({ offset, ids })) continue;
      if (progress.cutShort) break;
      // No anchor within reach: start a new chain here, disturbed; an empty page ends the pass.
      if (page.length === 0) break;
      progress.anchors = [];
      advance(offset, ids, -1);
      await commit([]);
    }
    const count = await exactCount();
    if (progress.cutShort) cutShortPasses++;
    totalResyncs += progress.resyncs;
    totalResyncPages += progress.resyncPages;
    // A gapless pass (every page chained) skipped no stone that stayed in the result while it
    // paged; holding at least as many as the count, it missed no entry the count shows either.
    const gapless = !progress.cutShort && !progress.disturbed && !(progress.pass > 1 && progress.resumed);
    const verified =
      !progress.cutShort &&
      ((gapless && progress.seen >= count) ||
        (progress.pass > 1 && !progress.resumed && progress.newInPass === 0 && progress.seen === count));
    if (verified || progress.pass >= maxPasses) {
      return {
        verified,
        passes: progress.pass,
        count,
        lastPassUnique: progress.seen,
        kept: kept.size,
        discrepancy: verified ? 0 : count - progress.seen,
        cutShortPasses,
        resyncs: totalResyncs,
        resyncPages: totalResyncPages,
        calls: { ...calls },
      };
    }
    progress = { ...FRESH_PROGRESS, anchors: [], pass: progress.pass + 1, countBefore: count };
    passSeen = new Map();
    passShown = new Set();
    await commit([]);
  }
}

/** What a rewrite of the stone's row would change: a stone read again as the same listing is not handed over twice. */
function versionOf(offer: Offer): string {
  return `${offer.id}|${offer.price}|${offer.diamond.updated}`;
}

/** Progress committed by an older version lacks the resync state: the overlap stone is its only anchor. */
function withDefaults(stored: PassProgress): PassProgress {
  const p: PassProgress = { ...FRESH_PROGRESS, ...stored };
  p.anchors = Array.isArray(stored.anchors) ? [...stored.anchors] : p.overlapId !== null ? [p.overlapId] : [];
  return p;
}

function stopIfAsked(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason));
}
