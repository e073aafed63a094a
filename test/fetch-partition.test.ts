// The paging core (src/fetch-partition.ts) against an in-memory paged source whose listing can
// change between pages, so offsets shift exactly as on a live API; no network.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PRICE_AXIS_END } from '../src/domain.js';
import {
  fetchPartition,
  FRESH_PROGRESS,
  inPartition,
  PARTITION_ORDER,
  type PageCommit,
  type PartitionSource,
  type PartitionSpec,
} from '../src/fetch-partition.js';
import type { Offer } from '../src/nivoda/documents.js';
import type { DiamondQuery } from '../src/nivoda/query.js';

interface Stone {
  id: string;
  priceCents: number;
  carats: number;
  createdMs: number;
  updatedMs: number;
}

const T0 = Date.parse('2026-01-01T00:00:00Z');
const WINDOW_TO = new Date(T0 + 1000_000).toISOString();

function offerOf(s: Stone): Offer {
  return {
    id: `offer-${s.id}`,
    price: s.priceCents,
    diamond: {
      id: s.id,
      availability: 'AVAILABLE',
      updated: new Date(s.updatedMs).toISOString(),
      certificate: { shape: 'ROUND', carats: s.carats },
    },
  };
}

/** An in-memory API: the contract's filter semantics, createdAt order, and a hook after every search. */
class FakeSource implements PartitionSource {
  searches = 0;
  counts = 0;
  afterSearch: ((n: number) => void) | undefined;
  shortPages = false;
  /** The offset of the last search. */
  lastOffset = 0;
  /** A vendor that clamps the offset: past the end it returns the last page again, never an empty one. */
  repeatLastPage = false;
  constructor(public stones: Stone[]) {}

  /** The partition's own listing now, in order. */
  listing(s: PartitionSpec): Stone[] {
    return this.matching({ dollar_value: { from: s.priceMin, to: s.priceMax }, updated: { to: s.updatedTo } }).filter((st) =>
      inPartition(offerOf(st), s),
    );
  }

  private matching(q: DiamondQuery): Stone[] {
    const dv = q.dollar_value;
    const dpc = q.dollar_per_carat;
    const from = q.updated?.from ? Date.parse(q.updated.from) : -Infinity;
    const to = q.updated?.to ? Date.parse(q.updated.to) : Infinity;
    return this.stones
      .filter((s) => {
        const dollars = s.priceCents / 100;
        const perCarat = s.priceCents / 100 / s.carats;
        if (dv?.from !== undefined && dollars < dv.from) return false;
        if (dv?.to !== undefined && dollars > dv.to) return false;
        if (dpc?.from !== undefined && perCarat < dpc.from) return false;
        if (dpc?.to !== undefined && perCarat > dpc.to) return false;
        return s.updatedMs >= from && s.updatedMs <= to;
      })
      .sort((a, b) => a.createdMs - b.createdMs || a.id.localeCompare(b.id));
  }

  async search(query: DiamondQuery, page: { offset: number; limit: number; order: typeof PARTITION_ORDER }): Promise<Offer[]> {
    assert.deepEqual(page.order, PARTITION_ORDER);
    assert.ok(page.limit <= 50);
    this.searches++;
    this.lastOffset = page.offset;
    // A fetch that never ends would hang the test: fail it instead.
    if (this.searches > 5000) throw new Error('paged forever: 5000 searches');
    const all = this.matching(query);
    let rows = all.slice(page.offset, page.offset + page.limit);
    if (this.repeatLastPage && rows.length === 0 && all.length > 0) rows = all.slice(Math.max(0, all.length - page.limit));
    // A prefix, never empty: only an empty page ends the listing.
    if (this.shortPages && rows.length > 3 && this.searches % 3 === 0) rows = rows.slice(0, 2);
    const result = rows.map(offerOf);
    this.afterSearch?.(this.searches);
    return result;
  }

  async count(query: DiamondQuery): Promise<number> {
    this.counts++;
    return this.matching(query).length;
  }
}

function inventory(n: number, options: { minCents?: number; maxCents?: number } = {}): Stone[] {
  const min = options.minCents ?? 100_00;
  const max = options.maxCents ?? 200_00;
  return Array.from({ length: n }, (_, i) => ({
    id: `d${String(i).padStart(5, '0')}`,
    // Spread over the range, including exact whole-dollar bounds and cents just below them.
    priceCents: min + ((i * 7919) % (max - min + 1)),
    carats: 0.5 + (i % 7) * 0.25,
    createdMs: T0 + i * 10,
    updatedMs: T0 + i,
  }));
}

const spec = (over: Partial<PartitionSpec> = {}): PartitionSpec => ({
  priceMin: 120,
  priceMax: 180,
  priceField: 'dollar_value',
  updatedTo: WINDOW_TO,
  query: {},
  ...over,
});

/** What the partition should hold at the end: the stones in range within the window, now. */
function expected(source: FakeSource, s: PartitionSpec): string[] {
  return source.stones
    .filter((st) => inPartition(offerOf(st), s) && st.updatedMs <= Date.parse(s.updatedTo))
    .map((st) => st.id)
    .sort();
}

function recorder() {
  const commits: PageCommit[] = [];
  const writes = new Map<string, number>();
  return {
    commits,
    writes,
    commit: async (page: PageCommit) => {
      commits.push(page);
      for (const item of page.items) writes.set(item.diamond.id, (writes.get(item.diamond.id) ?? 0) + 1);
    },
    ids: () => [...writes.keys()].sort(),
  };
}

describe('fetchPartition', () => {
  test('a still listing with short pages: one pass, every stone in range once, verified by the exact count', async () => {
    const edges = [119_99, 120_00, 179_99, 180_00].map((priceCents, i) => ({
      id: `edge${i}`,
      priceCents,
      carats: 1,
      createdMs: T0 + 5 + i,
      updatedMs: T0,
    }));
    const source = new FakeSource([...inventory(1000), ...edges]);
    source.shortPages = true;
    const s = spec();
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    const want = expected(source, s);
    assert.ok(want.length > 500, 'a partition of some size');
    assert.deepEqual(rec.ids(), want);
    assert.ok(
      [...rec.writes.values()].every((n) => n === 1),
      'no stone handed over twice',
    );
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 1);
    assert.equal(outcome.count, want.length);
    assert.equal(outcome.kept, want.length);
    assert.equal(outcome.discrepancy, 0);
    // Two counts before the pass and two after it (from priceMin minus from priceMax).
    assert.equal(source.counts, 4);
    assert.equal(outcome.calls.count, 4);
    assert.equal(outcome.calls.search, source.searches);
    // Pages overlap by one stone; the pass ends with the overlap stone alone, then an empty page.
    assert.ok(source.searches <= Math.ceil(want.length / 49) + 2 + Math.ceil(source.searches / 3), `${source.searches} searches`);
    // Stones priced exactly $180.00 belong to the next partition; $179.99 to this one.
    assert.ok(rec.writes.has('edge1') && rec.writes.has('edge2'));
    assert.ok(!rec.writes.has('edge0') && !rec.writes.has('edge3'));
    for (const id of rec.ids()) {
      const stone = source.stones.find((st) => st.id === id)!;
      assert.ok(stone.priceCents >= 120_00 && stone.priceCents < 180_00);
    }
  });

  test('a listing removed behind the cursor: the next page resyncs on the overlap stone, one pass verifies', async () => {
    const source = new FakeSource(inventory(600));
    const s = spec();
    const inRange = () => source.listing(s);
    source.afterSearch = (n) => {
      // After the third page, the first stone of the listing leaves (repriced far out of range).
      if (n === 3) {
        const first = inRange()[0]!;
        first.priceCents = 5_000_00;
        first.updatedMs = T0 + 5;
      }
    };
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    const want = expected(source, s);
    assert.equal(outcome.verified, true);
    // The page after the removal did not begin with the overlap stone: one step back found it.
    assert.equal(outcome.passes, 1);
    assert.equal(outcome.resyncs, 1);
    assert.equal(outcome.resyncPages, 1);
    // Everything in range now was kept; the stone that left was kept too (its new price is another partition's).
    for (const id of want) assert.ok(rec.writes.has(id), `stone ${id} kept`);
    assert.equal(outcome.kept, want.length + 1);
    assert.equal(outcome.count, want.length);
  });

  test('continuous removals behind the cursor (several a page) and new listings: one pass keeps every stone that stayed, a step back per shift', async () => {
    const source = new FakeSource(inventory(2000));
    const s = spec();
    const atStart = new Set(source.listing(s).map((st) => st.id));
    const removed = new Set<string>();
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    let next = 0;
    source.afterSearch = () => {
      // After every search: three stones before the cursor leave (repriced out, updated after
      // the window, removed), one new listing joins the end.
      const behind = source.listing(s).slice(0, source.lastOffset);
      for (let k = 0; k < 3 && behind.length > 0; k++) {
        const [st] = behind.splice(Math.floor(rand() * behind.length), 1);
        removed.add(st!.id);
        if (k === 0) st!.priceCents = 1_00;
        else if (k === 1) st!.updatedMs = T0 + 2000_000;
        else source.stones.splice(source.stones.indexOf(st!), 1);
      }
      source.stones.push({ id: `new${next}`, priceCents: 150_00, carats: 1, createdMs: T0 + 1e9 + next++, updatedMs: T0 + 7 });
    };
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    const stayed = [...atStart].filter((id) => !removed.has(id));
    assert.ok(removed.size > 50, `${removed.size} stones left while it paged`);
    for (const id of stayed) assert.ok(rec.writes.has(id), `stone ${id} stayed throughout and was kept`);
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 1, 'in one pass');
    assert.ok(outcome.resyncs > 5, `${outcome.resyncs} resyncs`);
    // A shift of a few places is bridged by one step back.
    assert.equal(outcome.resyncPages, outcome.resyncs);
    const pages = Math.ceil(atStart.size / 49);
    assert.ok(outcome.calls.search <= pages + outcome.resyncs * 2 + 3, `${outcome.calls.search} searches for ${pages} pages`);
    assert.ok(
      [...rec.writes.values()].every((n) => n === 1),
      'no stone handed over twice',
    );
  });

  test('the overlap stone itself leaves (and the stones before it): the ring of earlier stones realigns the pass', async () => {
    const source = new FakeSource(inventory(1000));
    const s = spec();
    const atStart = new Set(source.listing(s).map((st) => st.id));
    const removed = new Set<string>();
    const search = source.search.bind(source);
    // The hook sees the page just returned.
    source.search = async (q, page) => {
      const result = await search(q, page);
      after(source.searches, result);
      return result;
    };
    const after = (n: number, lastPage: Offer[]) => {
      // After pages 2, 4 and 6: the last stone of the page just returned (the next page's
      // overlap stone) leaves, after page 4 with the two before it, after page 6 with ten.
      const gone = n === 2 ? 1 : n === 4 ? 3 : n === 6 ? 11 : 0;
      for (const offer of lastPage.slice(-gone)) {
        if (gone === 0) break;
        const st = source.stones.find((x) => x.id === offer.diamond.id)!;
        st.updatedMs = T0 + 2000_000;
        removed.add(st.id);
      }
    };
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    assert.equal(removed.size, 15);
    for (const id of atStart) if (!removed.has(id)) assert.ok(rec.writes.has(id), `stone ${id} kept`);
    assert.deepEqual(rec.ids(), [...atStart].sort(), 'the stones that left had been read');
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 1);
    assert.equal(outcome.resyncs, 3);
    assert.equal(outcome.count, atStart.size - 15);
  });

  test('more of the chain left than the ring holds: the pass is disturbed and another one verifies', async () => {
    const source = new FakeSource(inventory(1000));
    const s = spec();
    const search = source.search.bind(source);
    source.search = async (q, page) => {
      const result = await search(q, page);
      after(source.searches, result);
      return result;
    };
    const after = (n: number, lastPage: Offer[]) => {
      // After page 3 the whole page just returned leaves: no anchor is left to find.
      if (n !== 3) return;
      for (const offer of lastPage) source.stones.find((x) => x.id === offer.diamond.id)!.updatedMs = T0 + 2000_000;
    };
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    const firstPass = rec.commits.filter((c) => c.progress.pass === 1).at(-1)!.progress;
    assert.equal(firstPass.disturbed, true);
    assert.equal(firstPass.resyncPages, 3, 'stepped back to offset 0, then gave up');
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 2);
    for (const id of expected(source, s)) assert.ok(rec.writes.has(id), `stone ${id} kept`);
  });

  test('a redelivery in the middle of a resync resumes from the committed anchors and still verifies in one pass', async () => {
    const source = new FakeSource(inventory(800));
    const s = spec();
    source.afterSearch = (n) => {
      // Two stones before the cursor leave after page 3 and after the first page of the redelivery.
      if (n === 3 || n === 6) for (const st of source.listing(s).slice(5, 7)) st.priceCents = 1_00;
    };
    const rec = recorder();
    let crashed = false;
    const crashing = async (page: PageCommit) => {
      // Killed as it commits the step-back page (the misaligned page before it is committed).
      if (!crashed && page.progress.resyncPages === 1) {
        crashed = true;
        throw new Error('killed');
      }
      await rec.commit(page);
    };
    await assert.rejects(fetchPartition(s, source, crashing), /killed/);
    const last = rec.commits.at(-1)!.progress;
    // The misaligned page was committed, the step back was not: the redelivery asks again there.
    assert.equal(last.resyncPages, 0);
    assert.ok(last.anchors.length > 1, 'its anchors were committed');
    const outcome = await fetchPartition(s, source, rec.commit, { kept: rec.writes.keys(), progress: last });
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 1);
    assert.ok(outcome.resyncs >= 1);
    for (const id of expected(source, s)) assert.ok(rec.writes.has(id), `stone ${id} kept`);
    assert.ok(
      [...rec.writes.values()].every((n) => n === 1),
      'no stone handed over twice across the crash',
    );
  });

  test('a redelivery resumes after the last committed page and never hands a stone over twice', async () => {
    const source = new FakeSource(inventory(800));
    const s = spec();
    const rec = recorder();
    let pagesBeforeCrash = 4;
    const crashing = async (page: PageCommit) => {
      if (page.items.length > 0 && pagesBeforeCrash-- === 0) throw new Error('killed');
      await rec.commit(page);
    };
    await assert.rejects(fetchPartition(s, source, crashing), /killed/);
    const last = rec.commits.at(-1)!;
    assert.ok(last.progress.nextOffset > 0);
    const searchesBefore = source.searches;
    const outcome = await fetchPartition(s, source, rec.commit, { kept: rec.writes.keys(), progress: last.progress });
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 1);
    assert.deepEqual(rec.ids(), expected(source, s));
    assert.ok(
      [...rec.writes.values()].every((n) => n === 1),
      'no stone handed over twice across the crash',
    );
    const pages = Math.ceil(expected(source, s).length / 50);
    assert.ok(source.searches - searchesBefore <= pages - 4 + 2, 'the resumed delivery did not start over');
  });

  test('a pass interrupted after pass 1 cannot verify on its own: one more pass follows', async () => {
    const source = new FakeSource(inventory(300));
    const s = spec();
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit, {
      kept: expected(source, s),
      progress: { ...FRESH_PROGRESS, pass: 2, nextOffset: 100, countBefore: expected(source, s).length, seen: 40 },
    });
    assert.equal(outcome.verified, true);
    assert.equal(outcome.passes, 3);
  });

  test('changes whose counts cancel out (the pass unique equals the count before and after): the overlap sees the entry', async () => {
    const source = new FakeSource(inventory(500));
    const s = spec();
    const join = (id: string, createdMs: number) => source.stones.push({ id, priceCents: 150_00, carats: 1, createdMs, updatedMs: T0 + 7 });
    source.afterSearch = (n) => {
      // A stone already fetched leaves (the next page resyncs; nothing is skipped, and the pass
      // still holds it), then one joins behind the cursor (missed: the listing moves up).
      if (n === 2) source.listing(s)[0]!.priceCents = 1_00;
      if (n === 4) join('behind', T0 - 1);
    };
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    const firstPass = rec.commits.filter((c) => c.progress.pass === 1).at(-1)!.progress;
    assert.equal(firstPass.countBefore, expected(source, s).length, 'the count did not move');
    assert.equal(firstPass.seen, expected(source, s).length, 'the first pass kept as many stones as the count says');
    assert.equal(firstPass.disturbed, true, 'but the overlap saw the listing shift');
    assert.equal(outcome.verified, true);
    assert.ok(outcome.passes >= 2);
    for (const id of expected(source, s)) assert.ok(rec.writes.has(id), `stone ${id} kept`);
  });

  test('a listing that never stops changing ends after the last pass with its difference reported', async () => {
    const source = new FakeSource(inventory(400));
    const s = spec();
    let next = 10_000;
    source.afterSearch = () => {
      // Every page: the first stone of the listing leaves, and two join behind the cursor
      // (listings repriced into the range keep their early place): every pass sees the listing
      // move up, and every later pass finds stones the earlier ones missed.
      source.listing(s)[0]!.priceCents = 1_00;
      for (let k = 0; k < 2; k++, next++)
        source.stones.push({ id: `n${next}`, priceCents: 150_00, carats: 1, createdMs: T0 - next, updatedMs: T0 + 7 });
    };
    const outcome = await fetchPartition(s, source, recorder().commit, { maxPasses: 3 });
    assert.equal(outcome.verified, false);
    assert.equal(outcome.passes, 3);
    assert.equal(outcome.discrepancy, outcome.count - outcome.lastPassUnique);
    assert.notEqual(outcome.discrepancy, 0);
  });

  test('a vendor that repeats its last page instead of an empty one: every pass ends, the partition is reported unverified', async () => {
    const source = new FakeSource(inventory(400));
    source.repeatLastPage = true;
    const s = spec();
    const rec = recorder();
    const want = expected(source, s);
    const outcome = await fetchPartition(s, source, rec.commit, { maxPasses: 2 });
    assert.equal(outcome.verified, false);
    assert.equal(outcome.passes, 2);
    assert.equal(outcome.cutShortPasses, 2);
    // The stones were all kept; only the end of the listing could not be seen.
    assert.deepEqual(rec.ids(), want);
    const pages = Math.ceil(want.length / 49);
    assert.ok(source.searches <= 2 * (pages + 1 + 3), `${source.searches} searches for ${pages} pages a pass`);
    const last = rec.commits.at(-1)!.progress;
    assert.equal(last.cutShort, true);
    assert.equal(last.disturbed, true);
  });

  test('a vendor that never stops returning new stones: a pass ends at its count plus slack', async () => {
    const source = new FakeSource(inventory(200));
    const s = spec();
    let next = 0;
    // Every search, 60 stones join the end of the listing: an endless stream ahead of the cursor.
    source.afterSearch = () => {
      for (let i = 0; i < 60; i++, next++)
        source.stones.push({ id: `e${next}`, priceCents: 150_00, carats: 1, createdMs: T0 + 1e9 + next, updatedMs: T0 + 7 });
    };
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit, { maxPasses: 1 });
    assert.equal(outcome.verified, false);
    assert.equal(outcome.cutShortPasses, 1);
    const countBefore = rec.commits[0]!.progress.countBefore!;
    assert.ok(countBefore > 50);
    // The bound: the count the pass began with plus max(500, 25 %), then at most one page past it.
    assert.ok(source.searches <= Math.ceil((countBefore + 500) / 49) + 2, `${source.searches} searches`);
  });

  test('a pass resumed past its bound (committed progress) ends at once, unverified', async () => {
    const source = new FakeSource(inventory(300));
    source.repeatLastPage = true;
    const s = spec();
    const want = expected(source, s);
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit, {
      kept: want,
      progress: { ...FRESH_PROGRESS, pass: 1, nextOffset: want.length + 600, countBefore: want.length, seen: want.length },
      maxPasses: 1,
    });
    assert.equal(outcome.verified, false, 'resumed beyond the bound: the pass ends at once');
    assert.equal(outcome.cutShortPasses, 1);
    assert.equal(source.searches, 0);
  });

  test('the last partition counts once per verification and keeps stones far above the scan ceiling', async () => {
    const source = new FakeSource([
      ...inventory(120, { minCents: 100_00, maxCents: 300_00 }),
      ...inventory(3, { minCents: 9_000_000_00, maxCents: 9_000_000_00 }).map((st) => ({ ...st, id: `${st.id}x` })),
    ]);
    const s = spec({ priceMin: 150, priceMax: PRICE_AXIS_END });
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    assert.equal(outcome.verified, true);
    assert.equal(source.counts, 2);
    assert.deepEqual(rec.ids(), expected(source, s));
    assert.ok(rec.ids().some((id) => id.endsWith('x')));
  });

  test('dollar_per_carat partitions by price / 100 / carats, exactly as the API filters', async () => {
    const source = new FakeSource(inventory(700));
    const s = spec({ priceField: 'dollar_per_carat', priceMin: 60, priceMax: 150 });
    const rec = recorder();
    const outcome = await fetchPartition(s, source, rec.commit);
    assert.equal(outcome.verified, true);
    assert.deepEqual(rec.ids(), expected(source, s));
    for (const id of rec.ids()) {
      const st = source.stones.find((x) => x.id === id)!;
      const v = st.priceCents / 100 / st.carats;
      assert.ok(v >= 60 && v < 150);
    }
  });

  test('stones updated after the window end are not the partition’s; an empty partition verifies at once', async () => {
    const source = new FakeSource(inventory(50).map((st) => ({ ...st, updatedMs: T0 + 2000_000 })));
    const rec = recorder();
    const outcome = await fetchPartition(spec(), source, rec.commit);
    assert.equal(outcome.verified, true);
    assert.equal(outcome.kept, 0);
    assert.equal(source.searches, 1);
  });
});
