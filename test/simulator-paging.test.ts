// The simulator as a worker meets it: paging by offset in a fixed order, live churn while a
// partition is paged, short pages mid-stream, and the exact inventory a test compares against.
// Expected sets come from snapshot().stones() filtered by a naive reading of the contract, not
// from the simulator's own search code.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { DiamondQuery } from '../src/nivoda/query.js';
import { generateInventory, type OrderDirection, type OrderType } from '../tools/simulator/inventory.js';
import type { StoneRow } from '../tools/simulator/mutation.js';
import { startSimulator, type Simulator, type SimulatorOptions } from '../tools/simulator/server.js';
import { gql, tokenFor } from './helpers/simulator.js';

const NOW = new Date('2026-02-12T19:00:00.000Z');
const DAY = 86_400_000;
const SEARCH = `query($t: String!, $q: DiamondQuery!, $o: Int, $l: Int, $ord: DiamondOrder) {
  as(token: $t) { diamonds_by_query(query: $q, offset: $o, limit: $l, order: $ord) { items { id price diamond { id updated } } } } }`;
const COUNT = 'query($t: String!, $q: DiamondQuery!) { as(token: $t) { diamonds_by_query_count(query: $q) } }';

interface Item {
  id: string;
  price: number;
  diamond: { id: string; updated: string };
}
type Ord = { type: OrderType; direction: OrderDirection };

/** A clock that moves a millisecond per reading after NOW: changed stones leave a window ending at NOW. */
function testClock(): () => number {
  let t = NOW.getTime() + 60_000;
  return () => t++;
}

async function client(options: SimulatorOptions): Promise<{ sim: Simulator; search: Search; count: (q: DiamondQuery) => Promise<number> }> {
  const sim = await startSimulator({ now: NOW, clock: testClock(), ...options });
  const token = await tokenFor(sim);
  const search: Search = async (q, offset, order, limit = 50) => {
    const res = await gql(sim.url, SEARCH, { t: token, q, o: offset, l: limit, ord: order });
    if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
    if (res.body.errors) throw new Error(JSON.stringify(res.body.errors));
    return (res.body.data!.as as { diamonds_by_query: { items: Item[] } }).diamonds_by_query.items;
  };
  const count = async (q: DiamondQuery) => {
    const res = await gql(sim.url, COUNT, { t: token, q });
    if (res.body.errors) throw new Error(JSON.stringify(res.body.errors));
    return (res.body.data!.as as { diamonds_by_query_count: number }).diamonds_by_query_count;
  };
  return { sim, search, count };
}
type Search = (q: DiamondQuery, offset: number, order: Ord, limit?: number) => Promise<Item[]>;

/** The contract read literally over snapshot rows (price, $/ct, updated, labgrown: what these tests query). */
function naiveMatch(q: DiamondQuery, s: StoneRow): boolean {
  const inRange = (v: number, r?: { from?: number; to?: number }) =>
    (r?.from === undefined || v >= r.from) && (r?.to === undefined || v <= r.to);
  const updated = {
    from: q.updated?.from === undefined ? undefined : Date.parse(q.updated.from),
    to: q.updated?.to === undefined ? undefined : Date.parse(q.updated.to),
  };
  return (
    inRange(s.priceCents / 100, q.dollar_value) &&
    inRange(s.priceCents / 100 / s.carats, q.dollar_per_carat) &&
    inRange(Date.parse(s.updated), updated) &&
    (q.labgrown === undefined || s.labgrown === q.labgrown)
  );
}

function naiveOrdered(stones: StoneRow[], q: DiamondQuery, order: Ord): string[] {
  const key = (s: StoneRow) =>
    order.type === 'price'
      ? s.priceCents
      : order.type === 'createdAt'
        ? s.createdMs
        : order.type === 'size'
          ? s.carats
          : s.priceCents / 100 / s.carats;
  const sorted = stones.filter((s) => naiveMatch(q, s)).sort((a, b) => key(a) - key(b) || (a.id < b.id ? -1 : 1));
  const ids = sorted.map((s) => s.id);
  return order.direction === 'DESC' ? ids.reverse() : ids;
}

/** The worker's rule: advance by the items received, stop only on an empty page. */
async function pageCorrectly(search: Search, q: DiamondQuery, order: Ord): Promise<{ ids: string[]; pages: Item[][] }> {
  const ids: string[] = [];
  const pages: Item[][] = [];
  for (let offset = 0; ;) {
    const items = await search(q, offset, order);
    if (items.length === 0) return { ids, pages };
    pages.push(items);
    ids.push(...items.map((i) => i.diamond.id));
    offset += items.length;
  }
}

/** What a naive pager does: advance by `limit`, stop on the first page shorter than `limit`. */
async function pageNaively(search: Search, q: DiamondQuery, order: Ord): Promise<string[]> {
  const ids: string[] = [];
  for (let offset = 0; ; offset += 50) {
    const items = await search(q, offset, order);
    ids.push(...items.map((i) => i.diamond.id));
    if (items.length < 50) return ids;
  }
}

const duplicates = (ids: string[]) => ids.length - new Set(ids).size;

describe('paging a still inventory', () => {
  let sim: Simulator;
  let search: Search;
  before(async () => {
    ({ sim, search } = await client({ shape: 'realistic', size: 20_000, seed: 21 }));
  });
  after(() => sim.close());

  const partition: DiamondQuery = { dollar_value: { from: 1000, to: 2999 }, updated: { to: NOW.toISOString() } };

  it('returns every matching stone exactly once, in the order asked, for every order type and direction', async () => {
    const stones = sim.snapshot().stones();
    const orders: Ord[] = (['createdAt', 'price', 'price_per_carat', 'size'] as const).flatMap((type) =>
      (['ASC', 'DESC'] as const).map((direction) => ({ type, direction })),
    );
    for (const order of orders) {
      const { ids, pages } = await pageCorrectly(search, partition, order);
      const expected = naiveOrdered(stones, partition, order);
      assert.ok(expected.length > 2000, `a partition of ${expected.length} stones`);
      assert.deepEqual(ids, expected, `${order.type} ${order.direction}`);
      assert.ok(
        pages.slice(0, -1).every((p) => p.length === 50),
        'no short pages unless asked for',
      );
    }
  });

  it('pages a filtered query (labgrown, $/ct) the same way', async () => {
    const q: DiamondQuery = {
      dollar_per_carat: { from: 800, to: 2000 },
      labgrown: true,
      updated: { from: new Date(NOW.getTime() - 90 * DAY).toISOString() },
    };
    const order: Ord = { type: 'price_per_carat', direction: 'ASC' };
    const { ids } = await pageCorrectly(search, q, order);
    assert.deepEqual(ids, naiveOrdered(sim.snapshot().stones(), q, order));
    assert.ok(ids.length > 100);
  });

  it('refuses a limit above 50 with a GraphQL error (BAD_USER_INPUT), and serves 50', async () => {
    await assert.rejects(search(partition, 0, { type: 'price', direction: 'ASC' }, 51), /BAD_USER_INPUT/);
    assert.equal((await search(partition, 0, { type: 'price', direction: 'ASC' }, 50)).length, 50);
    assert.deepEqual(await search(partition, 1_000_000, { type: 'price', direction: 'ASC' }), [], 'past the end: an empty page');
  });

  it('keeps the existing faults for search queries', async () => {
    sim.injectFaults({ kind: 'status', status: 503 }, { kind: 'status', status: 429, retryAfterSeconds: 2 });
    await assert.rejects(search(partition, 0, { type: 'price', direction: 'ASC' }), /HTTP 503/);
    const res = await fetch(sim.url, { method: 'POST', body: '{"query":"{ __typename }"}' });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), '2');
    await res.text();
    assert.equal((await search(partition, 0, { type: 'price', direction: 'ASC' })).length, 50);
  });
});

describe('mutations', () => {
  let sim: Simulator;
  let search: Search;
  let count: (q: DiamondQuery) => Promise<number>;
  before(async () => {
    ({ sim, search, count } = await client({ shape: 'realistic', size: 30_000, seed: 5 }));
  });
  after(() => sim.close());

  it('applies reprice, touch, remove, add and a spike at once and says what changed', () => {
    const before = sim.snapshot();
    const result = sim.mutate({ reprice: 400, touch: 50, remove: 120, add: 90, spike: { priceCents: 150_000, count: 25 } });
    const now = sim.snapshot();
    assert.equal(result.repriced.length, 400);
    assert.equal(result.touched.length, 50);
    assert.equal(result.removed.length, 120);
    assert.equal(result.added.length, 115);
    assert.equal(now.size, before.size - 120 + 115);
    assert.equal(now.revision, before.revision + 1);
    assert.equal(result.revision, now.revision);
    for (const r of result.removed) assert.equal(now.get(r.id), undefined, `${r.id} removed`);
    for (const a of result.added) {
      assert.equal(before.get(a.id), undefined, 'a new id');
      assert.deepEqual(now.get(a.id) && { p: now.get(a.id)!.priceCents, u: now.get(a.id)!.updated }, { p: a.priceCents, u: a.updated });
      assert.ok(Date.parse(a.updated) > NOW.getTime());
    }
    assert.equal(result.added.filter((a) => a.priceCents === 150_000).length >= 25, true);
    let large = 0;
    for (const r of result.repriced) {
      const stone = now.get(r.id)!;
      assert.equal(stone.priceCents, r.priceCents);
      assert.equal(before.get(r.id)!.priceCents, r.previousPriceCents);
      assert.notEqual(r.priceCents, r.previousPriceCents);
      assert.ok(Date.parse(stone.updated) > NOW.getTime(), 'updated set to now');
      const ratio = r.priceCents / r.previousPriceCents;
      if (ratio > 1.1001 || ratio < 0.8999) large++;
    }
    assert.ok(large > 10 && large < 100, `large moves: ${large} of 400`);
    for (const t of result.touched) {
      assert.equal(now.get(t.id)!.priceCents, t.previousPriceCents);
      assert.ok(Date.parse(now.get(t.id)!.updated) > Date.parse(t.previousUpdated));
    }
    // The stored order stays (price, id), which counting by binary search relies on.
    const stones = now.stones();
    for (let i = 1; i < stones.length; i++) {
      const [a, b] = [stones[i - 1]!, stones[i]!];
      assert.ok(a.priceCents < b.priceCents || (a.priceCents === b.priceCents && a.id < b.id));
    }
  });

  it('moves prices across partition bounds', () => {
    const bound = 2000;
    const result = sim.mutate({ reprice: 2000 });
    const crossed = result.repriced.filter((r) => r.previousPriceCents < bound * 100 !== r.priceCents < bound * 100);
    assert.ok(crossed.length > 5, `crossed $${bound}: ${crossed.length}`);
  });

  it('keeps counts over HTTP equal to a brute-force count over snapshot() after every mutation', async () => {
    const queries: DiamondQuery[] = [
      {},
      { dollar_value: { from: 1000, to: 1999 } },
      { dollar_value: { from: 1500 }, updated: { to: NOW.toISOString() } },
      { dollar_value: { to: 499 }, updated: { from: NOW.toISOString() } },
      { dollar_per_carat: { from: 1000, to: 3000 }, labgrown: false },
      { dollar_value: { from: 1500, to: 1500 } },
    ];
    for (let round = 0; round < 4; round++) {
      sim.mutate({
        reprice: 300,
        touch: 30,
        remove: 80 * round,
        add: 100,
        spike: round === 2 ? { priceCents: 150_000, count: 40 } : undefined,
      });
      const stones = sim.snapshot().stones();
      for (const q of queries) {
        assert.equal(await count(q), stones.filter((s) => naiveMatch(q, s)).length, `round ${round}: ${JSON.stringify(q)}`);
      }
      // Searches agree too: the full listing of a window is exactly the snapshot's.
      const q = queries[2]!;
      const { ids } = await pageCorrectly(search, q, { type: 'price', direction: 'ASC' });
      assert.deepEqual(ids, naiveOrdered(stones, q, { type: 'price', direction: 'ASC' }));
    }
  });

  it('serves the exact inventory on GET /inventory', async () => {
    const res = await fetch(new URL('/inventory', sim.url));
    const lines = (await res.text()).trim().split('\n');
    const snapshot = sim.snapshot();
    assert.equal(res.headers.get('x-inventory-revision'), String(snapshot.revision));
    assert.equal(lines.length, snapshot.size);
    assert.deepEqual(JSON.parse(lines[123]!), snapshot.stones()[123]);
  });

  it('keeps a snapshot unaffected by later mutations', () => {
    const snap = sim.snapshot();
    const first = snap.stones()[0]!;
    const result = sim.mutate({ remove: 5000 });
    assert.equal(snap.size, sim.snapshot().size + 5000);
    assert.deepEqual(snap.get(first.id), first);
    assert.equal(snap.count({}), sim.snapshot().count({}) + result.removed.length);
  });

  it('refuses a bad mutation with a clear error', () => {
    assert.throws(() => sim.mutate({ reprice: -1 }), /reprice must be a whole number/);
    assert.throws(() => sim.mutate({ spike: { priceCents: 1.5, count: 1 } }), /spike\.priceCents/);
  });
});

describe('live churn while paging', () => {
  const partition: DiamondQuery = { dollar_value: { from: 1000, to: 2999 }, updated: { to: NOW.toISOString() } };
  const order: Ord = { type: 'price', direction: 'ASC' };

  it('makes a naive pager miss or duplicate stones that never changed', async () => {
    const { sim, search } = await client({ shape: 'realistic', size: 30_000, seed: 8, churnRate: 0.2, churnEveryRequests: 5 });
    try {
      const start = new Set(
        sim
          .snapshot()
          .matching(partition)
          .map((s) => s.id),
      );
      const ids = await pageNaively(search, partition, order);
      const end = new Set(
        sim
          .snapshot()
          .matching(partition)
          .map((s) => s.id),
      );
      // Stones in the window from start to end (none of them changed): a correct fetch has them all.
      const stable = [...start].filter((id) => end.has(id));
      const got = new Set(ids);
      const missed = stable.filter((id) => !got.has(id)).length;
      const stats = sim.stats();
      assert.ok(stats.mutationBatches > 10, `churn batches: ${stats.mutationBatches}`);
      assert.ok(stats.repriced > 0 && stats.removed > 0 && stats.added > 0);
      assert.ok(missed + duplicates(ids) > 0, `missed ${missed}, duplicated ${duplicates(ids)}`);
      assert.ok(missed > 0, `a stone that never changed is lost: ${missed} of ${stable.length}`);
    } finally {
      await sim.close();
    }
  });

  it('with a lagging vendor clock, changed and new stones stay in the window and a naive pager reads some twice', async () => {
    // The window ends at this machine's now; the vendor's clock is an hour behind, so every
    // change lands inside the window: repriced stones move within the listing, new ones enter.
    const inventory = generateInventory('realistic', { size: 30_000, seed: 8, now: NOW });
    const sim = await startSimulator({ inventory, churnRate: 0.2, churnEveryRequests: 5, clockOffsetMs: -3_600_000 });
    try {
      const token = await tokenFor(sim);
      const q: DiamondQuery = { dollar_value: { from: 1000, to: 2999 }, updated: { to: new Date().toISOString() } };
      const ids: string[] = [];
      for (let offset = 0; ; offset += 50) {
        const res = await gql(sim.url, SEARCH, { t: token, q, o: offset, l: 50, ord: order });
        const items = (res.body.data!.as as { diamonds_by_query: { items: Item[] } }).diamonds_by_query.items;
        ids.push(...items.map((i) => i.diamond.id));
        if (items.length < 50) break;
      }
      assert.ok(Date.parse(sim.now().toISOString()) < Date.now() - 3_500_000, 'the simulator clock lags');
      const changed = sim.mutations().flatMap((m) => [...m.repriced, ...m.added]);
      assert.ok(
        changed.every((c) => Date.parse(c.updated) <= Date.parse(q.updated!.to!)),
        'changes land inside the window',
      );
      assert.ok(duplicates(ids) > 0, `duplicates: ${duplicates(ids)}`);
    } finally {
      await sim.close();
    }
  });

  it('applies churn in batches at the configured rate of served searches', async () => {
    const { sim, search } = await client({ shape: 'realistic', size: 10_000, seed: 3, churnRate: 0.05, churnEveryRequests: 4 });
    try {
      for (let k = 0; k < 40; k++) await search(partition, 0, order);
      const s = sim.stats();
      assert.equal(s.mutationBatches, 10, 'one batch every 4 searches');
      // 0.05 × 10,000 per 1,000 searches = 0.5 per search → 20 changes over 40 searches (±1 for the carry).
      const changes = s.repriced + s.touched + s.removed + s.added;
      assert.ok(changes >= 19 && changes <= 20, `changes: ${changes}`);
      assert.equal(sim.mutations().length, 10);
      // Counts are not searches: they drive no churn.
      await gql(sim.url, COUNT, { t: await tokenFor(sim), q: {} });
      assert.equal(sim.stats().mutationBatches, 10);
      sim.configure({ churnRate: 0 });
      for (let k = 0; k < 8; k++) await search(partition, 0, order);
      assert.equal(sim.stats().mutationBatches, 10, 'configure turns it off');
    } finally {
      await sim.close();
    }
  });

  it('is deterministic: the same seed and request sequence give the same pages and inventory', async () => {
    const run = async (seed: number) => {
      const { sim, search } = await client({
        shape: 'realistic',
        size: 8000,
        seed,
        churnRate: 0.3,
        churnEveryRequests: 3,
        shortPageRate: 0.2,
      });
      try {
        const { ids } = await pageCorrectly(search, partition, order);
        const snap = sim.snapshot();
        return { ids, stones: snap.stones(), mutations: sim.mutations() };
      } finally {
        await sim.close();
      }
    };
    const [a, b, c] = [await run(4), await run(4), await run(5)];
    assert.deepEqual(a.ids, b.ids);
    assert.deepEqual(a.stones, b.stones);
    assert.deepEqual(a.mutations, b.mutations);
    assert.ok(a.mutations.length > 5);
    assert.notDeepEqual(a.stones, c.stones);
  });
});

describe('short pages', () => {
  const q: DiamondQuery = { dollar_value: { from: 300, to: 1999 } };
  const order: Ord = { type: 'createdAt', direction: 'ASC' };

  it('come at the configured rate; advancing by items received loses nothing, by limit or stopping on one does', async () => {
    const { sim, search } = await client({ shape: 'realistic', size: 20_000, seed: 13, shortPageRate: 0.3 });
    try {
      const expected = naiveOrdered(sim.snapshot().stones(), q, order);
      const { ids, pages } = await pageCorrectly(search, q, order);
      assert.deepEqual(ids, expected, 'every stone once, in order');
      const nonFinal = pages.slice(0, -1);
      const short = nonFinal.filter((p) => p.length < 50).length;
      assert.ok(short / nonFinal.length > 0.2 && short / nonFinal.length < 0.4, `${short} short of ${nonFinal.length}`);
      assert.ok(pages.every((p) => p.length >= 1));
      const served = sim.stats().shortPages;
      assert.equal(served, short);

      sim.resetStats();
      const byLimit: string[] = [];
      for (let offset = 0; ; offset += 50) {
        const items = await search(q, offset, order);
        if (items.length === 0) break;
        byLimit.push(...items.map((i) => i.diamond.id));
      }
      assert.ok(sim.stats().shortPages > 0);
      assert.ok(byLimit.length < expected.length, 'advancing by limit skips what short pages left out');
      assert.equal(duplicates(byLimit), 0);
      const stopping = await pageNaively(search, q, order);
      assert.ok(stopping.length < expected.length / 2, `stopping on a short page: ${stopping.length} of ${expected.length}`);
    } finally {
      await sim.close();
    }
  });
});

describe('an inventory passed in', () => {
  it('is the live one: countMatching over sim.inventory follows mutations', async () => {
    const inventory = generateInventory('dollar-spikes', { size: 3000, now: NOW });
    const { sim, count } = await client({ inventory });
    try {
      sim.mutate({ remove: 100, add: 7 });
      assert.equal(inventory.size, 2907);
      assert.equal(await count({}), 2907);
      assert.equal(sim.stats().inventorySize, 2907);
    } finally {
      await sim.close();
    }
  });
});

describe('npm run simulator flags', () => {
  it('takes the churn and short-page knobs and refuses bad ones by name', async () => {
    const run = (...args: string[]) =>
      new Promise<{ code: number | null; err: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', 'tools/simulator/main.ts', ...args], {
          cwd: new URL('..', import.meta.url),
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let err = '';
        child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
        child.once('exit', (code) => resolve({ code, err }));
      });
    const badMix = await run('--port', '0', '--shape', 'empty', '--churn-mix', 'reprice=1,explode=2');
    assert.equal(badMix.code, 2);
    assert.match(badMix.err, /--churn-mix \(SIMULATOR_CHURN_MIX\) must be a list like reprice=/);
    const badRate = await run('--port', '0', '--shape', 'empty', '--short-page-rate', '1.5');
    assert.equal(badRate.code, 2);
    assert.match(badRate.err, /--short-page-rate \(SIMULATOR_SHORT_PAGE_RATE\) must be a number in \[0, 1\]/);
  });
});
