// How a worker fetches one partition (CONTRACT §2, §9): pure paging and verification over an
// injected search and count, with every page handed to `commitPage` (the caller commits the
// page's rows and this progress in one transaction), so a redelivered work item resumes after
// the last committed page.
//
// Offset paging over a live inventory shifts: a listing that leaves the result list (updated
// after the window, repriced out of the range, removed) before the cursor moves every later
// stone one place forward, one that enters it moves them back (a page repeats a stone). So a
// pass pages until an EMPTY page (a short page is not the end), keeps what is in range, dedupes
// by diamond.id, and is then checked against the exact count. Counts alone cannot prove a pass
// complete (two listings removed behind the cursor and two added at the end leave the count as
// it was while a stone was skipped), so consecutive pages overlap by one stone: the next page
// starts at the previous page's last stone, and a page that does not begin with it shows that
// the listing shifted, so that pass cannot verify the partition. With the overlap a single
// removal between two page fetches skips nothing (the stone after the overlap stone moves onto
// the next page's first place); it takes two or more between two fetches to skip one. A pass
// that does not verify is followed by another from offset 0; what a pass finds that no earlier
// pass kept is new, and the partition is verified when the first pass was undisturbed and its
// unique stones match the count both before and after it, or when a later whole pass finds
// nothing new and its unique stones match the count taken right after. A pass also ends
// (disturbed, unverifiable) when its offset passes the count it began with plus slack, or after
// a few pages in a row that show nothing new: a vendor that clamps the offset or repeats its last
// page would otherwise be paged forever. Passes are bounded; a partition still unverified after
// the last one is reported with its `discrepancy` (the exact count minus the last pass's unique
// stones: not the number of stones missing, since stones read and then gone lower it and can
// hide a skipped one) and fails (src/worker.ts), never silently.
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
  /** The last stone of the previous page, which the next page must begin with; null at a pass start. */
  overlapId: string | null;
  /** The last step could not be checked by an overlap (a one-stone page). */
  uncheckedStep: boolean;
  /** The listing shifted around the cursor during this pass (an overlap that did not match). */
  disturbed: boolean;
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
  uncheckedStep: false,
  disturbed: false,
  stalePages: 0,
  cutShort: false,
};

/** Pages in a row with nothing new for the pass after which the pass ends (a vendor repeating its last page). */
export const MAX_STALE_PAGES = 3;

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
  let progress: PassProgress = { ...(options.progress ?? FRESH_PROGRESS) };
  const resuming = progress.nextOffset > 0 || progress.seen > 0;
  // Pass 1 keeps every stone it sees, so what it saw before an interruption is the kept set.
  let passSeen = progress.pass === 1 ? new Set(kept) : new Set<string>();
  if (resuming && progress.pass > 1) progress.resumed = true;
  if (progress.pass === 1) progress.seen = passSeen.size;

  const listing = partitionQuery(spec, { from: spec.priceMin, to: spec.priceMax });
  const exactCount = async (): Promise<number> => {
    calls.count++;
    const from = await source.count(partitionQuery(spec, { from: spec.priceMin }));
    // Nothing is priced at or above the axis end: no second query for the last partition.
    if (spec.priceMax >= PRICE_AXIS_END) return from;
    calls.count++;
    return from - (await source.count(partitionQuery(spec, { from: spec.priceMax })));
  };
  const commit = (items: Offer[]) => commitPage({ items, progress: { ...progress }, kept: kept.size, calls: { ...calls } });

  if (progress.countBefore === null) {
    progress.countBefore = await exactCount();
    await commit([]);
  }
  let cutShortPasses = 0;
  // Every stone a page of this pass showed (in range or not) in this delivery: a page that shows
  // nothing else is stale. After a resume it starts from the pass's kept stones only, which can
  // only delay the stale count.
  let passShown = new Set(passSeen);
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
      stopIfAsked(options.signal);
      const page = await source.search(listing, { offset: progress.nextOffset, limit: MAX_SEARCH_LIMIT, order: PARTITION_ORDER });
      calls.search++;
      const expected = progress.overlapId;
      const overlapped = expected !== null && page[0]?.diamond.id === expected;
      if (page.length === 0 || (overlapped && page.length === 1)) {
        // Only the overlap stone came back: the next offset may still hold a stone (a short
        // page), so look once more past it; an empty page is the only end.
        if (page.length === 0) {
          if (expected !== null) progress.disturbed = true;
          break;
        }
        progress.nextOffset += 1;
        progress.overlapId = null;
        progress.uncheckedStep = true;
        await commit([]);
        continue;
      }
      // A page that does not begin with the last stone of the one before means the listing
      // shifted around the cursor (a stone may have been skipped); so does a step that could
      // not be checked, when anything follows it.
      if ((expected !== null && !overlapped) || progress.uncheckedStep) progress.disturbed = true;
      const items: Offer[] = [];
      const onPage = new Set<string>();
      let shownBefore = true;
      for (const offer of overlapped ? page.slice(1) : page) {
        const id = offer.diamond.id;
        if (!passShown.has(id)) {
          passShown.add(id);
          shownBefore = false;
        }
        if (!inPartition(offer, spec) || onPage.has(id)) continue;
        onPage.add(id);
        items.push(offer);
        if (!passSeen.has(id)) {
          passSeen.add(id);
          progress.seen++;
        }
        if (!kept.has(id)) {
          kept.add(id);
          progress.newInPass++;
        }
      }
      progress.stalePages = shownBefore ? progress.stalePages + 1 : 0;
      // By the items received, not by `limit` (a short page mid-stream is not the end), less
      // one: the next page overlaps this one by its last stone, which detects a shift.
      if (page.length >= 2) {
        progress.nextOffset += page.length - 1;
        progress.overlapId = page.at(-1)!.diamond.id;
        progress.uncheckedStep = false;
      } else {
        progress.nextOffset += 1;
        progress.overlapId = null;
        progress.uncheckedStep = true;
      }
      await commit(items);
    }
    const count = await exactCount();
    if (progress.cutShort) cutShortPasses++;
    const verified =
      !progress.cutShort &&
      (progress.pass === 1
        ? !progress.disturbed && progress.countBefore === count && progress.seen === count
        : !progress.resumed && progress.newInPass === 0 && progress.seen === count);
    if (verified || progress.pass >= maxPasses) {
      return {
        verified,
        passes: progress.pass,
        count,
        lastPassUnique: progress.seen,
        kept: kept.size,
        discrepancy: verified ? 0 : count - progress.seen,
        cutShortPasses,
        calls: { ...calls },
      };
    }
    progress = { ...FRESH_PROGRESS, pass: progress.pass + 1, countBefore: count };
    passSeen = new Set();
    passShown = new Set();
    await commit([]);
  }
}

function stopIfAsked(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason));
}
