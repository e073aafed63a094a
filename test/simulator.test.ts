// The simulator: its inventories (deterministic, shaped like the live API's histogram), its
// filtering (checked against a naive reading of the contract), and its HTTP behaviour.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import type { DiamondQuery } from '../src/nivoda/query.js';
import {
  AVAILABILITIES,
  countMatching,
  CUTS,
  DENSITY_BASELINE,
  DENSITY_BINS,
  generateInventory,
  inventoryFromStones,
  searchMatching,
  SHAPES,
  type Inventory,
} from '../tools/simulator/inventory.js';
import { startSimulator, type Simulator } from '../tools/simulator/server.js';
import { gql, tokenFor } from './helpers/simulator.js';

const NOW = new Date('2026-02-12T19:00:00.000Z');
const DAY = 86_400_000;
const COUNT = 'query($t: String!, $q: DiamondQuery!) { as(token: $t) { diamonds_by_query_count(query: $q) } }';

/** The contract read literally, one stone at a time: the reference countMatching must agree with. */
function naiveCount(inv: Inventory, q: DiamondQuery): number {
  const inRange = (v: number, r?: { from?: number; to?: number }) =>
    (r?.from === undefined || v >= r.from) && (r?.to === undefined || v <= r.to);
  let n = 0;
  for (let i = 0; i < inv.size; i++) {
    const price = inv.priceCents[i]!;
    const updated = {
      from: q.updated?.from === undefined ? undefined : Date.parse(q.updated.from),
      to: q.updated?.to === undefined ? undefined : Date.parse(q.updated.to),
    };
    if (!inRange(price / 100, q.dollar_value)) continue;
    if (!inRange(price / 100 / inv.carats[i]!, q.dollar_per_carat)) continue;
    if (!inRange(inv.updatedMs[i]!, updated)) continue;
    if (!inRange(inv.carats[i]!, q.sizes)) continue;
    if (q.shapes?.length && !q.shapes.map((s) => s.toUpperCase()).includes(SHAPES[inv.shapeIndex[i]!]!)) continue;
    if (q.availability?.length && !q.availability.includes(AVAILABILITIES[inv.availability[i]!]!)) continue;
    if (q.labgrown !== undefined && (inv.labgrown[i] === 1) !== q.labgrown) continue;
    if (q.has_image && !inv.hasImage[i]) continue;
    if (q.has_v360 && !inv.hasV360[i]) continue;
    if (q.hide_memo && inv.memo[i]) continue;
    if (q.excludeFairPoorCuts && ['F', 'P'].includes(CUTS[inv.cut[i]!]!)) continue;
    n++;
  }
  return n;
}

describe('inventory', () => {
  const realistic = generateInventory('realistic', { seed: 11, now: NOW });

  it('is deterministic from its seed', () => {
    const a = generateInventory('realistic', { seed: 5, size: 5000, now: NOW });
    const b = generateInventory('realistic', { seed: 5, size: 5000, now: NOW });
    const c = generateInventory('realistic', { seed: 6, size: 5000, now: NOW });
    assert.deepEqual(a.priceCents, b.priceCents);
    assert.deepEqual(a.carats, b.carats);
    assert.deepEqual(a.updatedMs, b.updatedMs);
    assert.notDeepEqual(a.priceCents, c.priceCents);
    assert.equal(a.size, 5000, 'the size knob is exact');
  });

  it('reproduces the live histogram: every bin exactly, the baseline in total', () => {
    assert.equal(realistic.size, DENSITY_BASELINE);
    for (const [from, to, count] of DENSITY_BINS) {
      assert.equal(countMatching(realistic, { dollar_value: { from, to } }), count, `bin ${from}-${to}`);
    }
    for (let i = 1; i < realistic.size; i++) assert.ok(realistic.priceCents[i - 1]! <= realistic.priceCents[i]!);
  });

  it('has the stones between bins, a thin tail above $250,000 and realistic cents', () => {
    const binned = DENSITY_BINS.reduce((a, [, , c]) => a + c, 0);
    const tail = countMatching(realistic, { dollar_value: { from: 250_000 } });
    assert.ok(tail >= 100 && tail <= 1000, `tail ${tail}`);
    const millions = countMatching(realistic, { dollar_value: { from: 1_000_000 } });
    assert.ok(millions >= 1 && millions <= 50, `stones in the millions: ${millions}`);
    const between = DENSITY_BASELINE - binned - tail;
    assert.ok(between > 8000, `between bins: ${between}`);
    // $499.01–$499.99: in no bin, yet in {from: 499, to: 500}.
    const gap =
      countMatching(realistic, { dollar_value: { from: 499, to: 500 } }) -
      countMatching(realistic, { dollar_value: { from: 499, to: 499 } }) -
      countMatching(realistic, { dollar_value: { from: 500, to: 500 } });
    assert.ok(gap > 100, `stones priced $499.01-$499.99: ${gap}`);

    const endings = new Map<number, number>();
    for (const p of realistic.priceCents) endings.set(p % 100, (endings.get(p % 100) ?? 0) + 1);
    const share = (c: number) => (endings.get(c) ?? 0) / realistic.size;
    assert.ok(share(0) > 0.3, `whole-dollar share ${share(0)}`);
    assert.ok(share(99) > 0.05 && share(50) > 0.05);
    assert.ok(share(37) < 0.01 && share(37) > 0, 'other endings exist but are rare');
    // Round-price spikes: $1,000 holds far more stones than its neighbours.
    const at = (d: number) => countMatching(realistic, { dollar_value: { from: d, to: d } });
    assert.ok(at(1000) > 3 * at(1013), `$1000: ${at(1000)}, $1013: ${at(1013)}`);
  });

  it('spreads updated over months with a few per cent in the last day, and plausible carats', () => {
    const lastDay = countMatching(realistic, { updated: { from: new Date(NOW.getTime() - DAY).toISOString() } });
    assert.ok(lastDay / realistic.size > 0.01 && lastDay / realistic.size < 0.06, `last day ${lastDay}`);
    const older = countMatching(realistic, { updated: { to: new Date(NOW.getTime() - 90 * DAY).toISOString() } });
    assert.ok(older / realistic.size > 0.1, `older than 90 days: ${older}`);
    assert.equal(countMatching(realistic, { updated: { from: new Date(NOW.getTime() + 1).toISOString() } }), 0);
    // Roughly the live $/ct histogram: most stones $500-$1,499 per carat.
    const mid = countMatching(realistic, { dollar_per_carat: { from: 500, to: 1499 } });
    assert.ok(mid / realistic.size > 0.3 && mid / realistic.size < 0.7, `$500-1499/ct: ${mid}`);
    const carats = Array.from(realistic.carats).sort((a, b) => a - b);
    assert.ok(carats[Math.floor(carats.length / 2)]! > 0.3 && carats[Math.floor(carats.length / 2)]! < 2);
  });

  it('follows the contract example: $499.50 matches {499..500}, not {..499} nor {500..}', () => {
    const inv = inventoryFromStones([{ priceCents: 49_950, carats: 0.5 }], { now: NOW });
    assert.equal(countMatching(inv, { dollar_value: { from: 499, to: 500 } }), 1);
    assert.equal(countMatching(inv, { dollar_value: { to: 499 } }), 0);
    assert.equal(countMatching(inv, { dollar_value: { from: 500 } }), 0);
    // $999/ct: 499.50 / 0.5 = 999 exactly.
    assert.equal(countMatching(inv, { dollar_per_carat: { from: 999, to: 999 } }), 1);
    assert.equal(countMatching(inv, { dollar_per_carat: { from: 1000 } }), 0);
    // updated is inclusive at both ends.
    const updated = new Date(inv.updatedMs[0]!).toISOString();
    assert.equal(countMatching(inv, { updated: { from: updated, to: updated } }), 1);
  });

  it('agrees with a naive reading of the contract on random queries (property)', () => {
    const inventories = [
      generateInventory('realistic', { seed: 2, size: 3000, now: NOW }),
      generateInventory('cent-edges', { seed: 3, size: 2000, now: NOW }),
      generateInventory('dollar-spikes', { seed: 4, size: 2000, now: NOW }),
    ];
    const bound = fc.option(fc.integer({ min: -10, max: 25_000 }), { nil: undefined });
    const range = fc.record({ from: bound, to: bound }, { requiredKeys: [] });
    const date = fc.option(
      fc.integer({ min: NOW.getTime() - 400 * DAY, max: NOW.getTime() }).map((t) => new Date(t).toISOString()),
      { nil: undefined },
    );
    const query = fc.record(
      {
        dollar_value: range,
        dollar_per_carat: range,
        updated: fc.record({ from: date, to: date }, { requiredKeys: [] }),
        sizes: fc.record({ from: fc.option(fc.double({ min: 0, max: 5, noNaN: true }), { nil: undefined }) }, { requiredKeys: [] }),
        shapes: fc.subarray([...SHAPES, 'oval']),
        availability: fc.subarray([...AVAILABILITIES]),
        labgrown: fc.boolean(),
        has_image: fc.boolean(),
        has_v360: fc.boolean(),
        hide_memo: fc.boolean(),
        excludeFairPoorCuts: fc.boolean(),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.nat({ max: inventories.length - 1 }), query, (which, q) => {
        const inv = inventories[which]!;
        assert.equal(countMatching(inv, q as DiamondQuery), naiveCount(inv, q as DiamondQuery));
      }),
      { numRuns: 300 },
    );
  });

  it('makes the adversarial shapes', () => {
    assert.equal(generateInventory('empty').size, 0);
    assert.equal(countMatching(generateInventory('empty'), {}), 0);
    const one = generateInventory('one-stone', { now: NOW });
    assert.equal(one.size, 1);
    assert.equal(countMatching(one, { updated: { from: new Date(NOW.getTime() - DAY).toISOString() } }), 1);
    const mass = generateInventory('point-mass', { size: 10_000 });
    assert.ok(countMatching(mass, { dollar_value: { from: 1000, to: 1000 } }) >= 6000);
    const spikes = generateInventory('dollar-spikes', { size: 10_000 });
    assert.ok(spikes.priceCents.every((p) => p % 100 === 0));
    assert.ok(countMatching(spikes, { dollar_value: { from: 1000, to: 1000 } }) > 50);
    const edges = generateInventory('cent-edges', { size: 10_000 });
    const endings = new Set(Array.from(edges.priceCents, (p) => p % 100));
    assert.deepEqual(
      [...endings].sort((a, b) => a - b),
      [0, 1, 99],
    );
    // $499.99 falls in neither {499..499} nor {500..500}, yet in {499..500}.
    const priced = (c: number) => edges.priceCents.filter((p) => p === c).length;
    const at = (from: number, to: number) => countMatching(edges, { dollar_value: { from, to } });
    assert.equal(at(500, 500), priced(50_000));
    assert.equal(at(499, 500) - at(499, 499) - at(500, 500), priced(49_999));
    assert.ok(priced(49_999) > 0 && priced(50_001) > 0);
  });

  it('orders search results and pages through them', () => {
    const inv = generateInventory('realistic', { seed: 9, size: 4000, now: NOW });
    const q: DiamondQuery = { dollar_value: { from: 1000, to: 3000 } };
    const all = searchMatching(inv, q, { offset: 0, limit: 1e9 });
    assert.equal(all.length, countMatching(inv, q));
    const created = all.map((i) => inv.createdMs[i]!);
    assert.deepEqual(
      created,
      [...created].sort((a, b) => a - b),
      'default order is createdAt ASC',
    );
    const bySize = searchMatching(inv, q, { offset: 10, limit: 20, order: { type: 'size', direction: 'DESC' } });
    const carats = bySize.map((i) => inv.carats[i]!);
    assert.deepEqual(
      carats,
      [...carats].sort((a, b) => b - a),
    );
    const page1 = searchMatching(inv, q, { offset: 0, limit: 30, order: { type: 'price', direction: 'ASC' } });
    const page2 = searchMatching(inv, q, { offset: 30, limit: 30, order: { type: 'price', direction: 'ASC' } });
    assert.equal(new Set([...page1, ...page2]).size, 60);
    assert.ok(inv.priceCents[page1.at(-1)!]! <= inv.priceCents[page2[0]!]!);
  });
});

describe('simulator over HTTP', () => {
  let sim: Simulator;
  let token: string;
  before(async () => {
    sim = await startSimulator({ shape: 'realistic', now: NOW, seed: 11 });
    token = await tokenFor(sim);
  });
  after(() => sim.close());

  it('answers a count over the whole realistic inventory over HTTP', async () => {
    const q = { updated: { to: NOW.toISOString() }, dollar_value: { from: 0 } };
    const res = await gql(sim.url, COUNT, { t: token, q });
    assert.equal((res.body.data?.as as { diamonds_by_query_count: number }).diamonds_by_query_count, sim.inventory.size);
  });

  it('validates like the real API: HTTP 200 with errors and no count', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ colour: ['D'] }, /Field "colour" is not defined by type "DiamondQuery"/],
      [{ dollar_value: { from: 2147483648 } }, /Int cannot represent non 32-bit signed integer value/],
      [{ dollar_value: { from: 1.5 } }, /Int cannot represent non-integer value/],
      [{ updated: { from: 'last week' } }, /Invalid date "last week"/],
    ];
    for (const [q, message] of cases) {
      const res = await gql(sim.url, COUNT, { t: token, q });
      assert.equal(res.status, 200);
      assert.match(res.body.errors?.[0]?.message ?? '', message);
      assert.notEqual((res.body.data?.as as { diamonds_by_query_count?: number } | null)?.diamonds_by_query_count, 0);
    }
    const badEnum = await gql(
      sim.url,
      `query { as(token: "${token}") { diamonds_by_query(query: {}, order: {type: cheapest, direction: ASC}) { total_count } } }`,
    );
    assert.equal(badEnum.body.errors?.[0]?.extensions?.code, 'GRAPHQL_VALIDATION_FAILED');
    const notAnObject = await gql(sim.url, COUNT, 'oops' as unknown as Record<string, unknown>);
    assert.equal(notAnObject.status, 200);
    assert.ok(notAnObject.body.errors?.length, 'variables that are not an object are an error, not a crash');
    const overLimit = await gql(sim.url, `query { as(token: "${token}") { diamonds_by_query(query: {}, limit: 51) { total_count } } }`);
    assert.match(overLimit.body.errors?.[0]?.message ?? '', /limit must be at most 50/);
  });

  it('refuses wrong credentials and unknown or expired tokens with UNAUTHENTICATED', async () => {
    const wrong = await gql(
      sim.url,
      `query { authenticate { username_and_password(username: "${sim.username}", password: "nope") { token } } }`,
    );
    assert.equal(wrong.body.errors?.[0]?.message, 'invalid credentials');
    assert.equal(wrong.body.errors?.[0]?.extensions?.code, 'UNAUTHENTICATED');
    const unknown = await gql(sim.url, COUNT, { t: 'not-a-token', q: {} });
    assert.equal(unknown.body.errors?.[0]?.extensions?.code, 'UNAUTHENTICATED');
    const mine = await tokenFor(sim);
    assert.ok((await gql(sim.url, COUNT, { t: mine, q: {} })).body.data);
    sim.expireTokens();
    const expired = await gql(sim.url, COUNT, { t: mine, q: {} });
    assert.equal(expired.body.errors?.[0]?.extensions?.code, 'UNAUTHENTICATED');
    token = await tokenFor(sim);
  });

  it('serves search pages with the contract fields', async () => {
    const res = await gql(
      sim.url,
      `query($t: String!) { as(token: $t) { diamonds_by_query(query: {dollar_value: {from: 500, to: 600}}, limit: 3, order: {type: price, direction: DESC}) {
        total_count items { id price diamond { id availability updated certificate { shape carats labgrown } } } } } }`,
      { t: token },
    );
    const result = (
      res.body.data?.as as {
        diamonds_by_query: { items: { price: number; diamond: { updated: string; certificate: { carats: number } } }[] };
      }
    ).diamonds_by_query;
    assert.equal(result.items.length, 3);
    assert.ok(result.items.every((o) => o.price <= 60_000 && o.price >= 50_000));
    assert.ok(result.items[0]!.price >= result.items[2]!.price);
    assert.ok(!Number.isNaN(Date.parse(result.items[0]!.diamond.updated)));
  });

  it('applies its knobs: latency, 429 with Retry-After, 503, a server-side rate limit, hung requests', async () => {
    const probe = await startSimulator({ shape: 'one-stone', latencyMs: 80 });
    try {
      const t = performance.now();
      await tokenFor(probe);
      assert.ok(performance.now() - t >= 75, 'latency applied');

      probe.configure({ latencyMs: 0, rate429: 1, retryAfterSeconds: 7 });
      const throttled = await fetch(probe.url, { method: 'POST', body: '{"query":"{ __typename }"}' });
      assert.equal(throttled.status, 429);
      assert.equal(throttled.headers.get('retry-after'), '7');
      await throttled.text();

      probe.configure({ rate429: 0, rate5xx: 1 });
      const unavailable = await fetch(probe.url, { method: 'POST', body: '{"query":"{ __typename }"}' });
      assert.equal(unavailable.status, 503);
      await unavailable.text();

      // A fresh server, so the earlier requests are not in its sliding second.
      const limited = await startSimulator({ shape: 'one-stone', maxRequestsPerSecond: 3 });
      try {
        const statuses = await Promise.all(
          Array.from({ length: 6 }, async () => {
            const r = await fetch(limited.url, { method: 'POST', body: '{"query":"{ __typename }"}' });
            await r.text();
            return r.status;
          }),
        );
        assert.equal(statuses.filter((s) => s === 200).length, 3);
        assert.equal(statuses.filter((s) => s === 429).length, 3);
        assert.equal(limited.stats().rejected429, 3);
        assert.equal(limited.stats().maxInAnySecond, 6);
      } finally {
        await limited.close();
      }

      probe.configure({ rate5xx: 0, rateTimeout: 1 });
      const hung = fetch(probe.url, { method: 'POST', body: '{"query":"{ __typename }"}', signal: AbortSignal.timeout(150) });
      await assert.rejects(hung, (err: Error) => err.name === 'TimeoutError');
      assert.equal(probe.stats().timedOut, 1);
    } finally {
      await probe.close();
    }
  });

  it('reports its totals on GET /stats', async () => {
    const res = await fetch(new URL('/stats', sim.url));
    const stats = (await res.json()) as { requests: number; countQueries: number };
    assert.deepEqual(stats, JSON.parse(JSON.stringify(sim.stats())));
    assert.ok(stats.requests >= 2 && stats.countQueries >= 1, JSON.stringify(stats));
  });

  it('closes even with a request hanging', async () => {
    const probe = await startSimulator({ shape: 'empty', rateTimeout: 1 });
    const hung = fetch(probe.url, { method: 'POST', body: '{"query":"{ __typename }"}' }).catch((err: Error) => err);
    await new Promise((r) => setTimeout(r, 50));
    const t = performance.now();
    await probe.close();
    assert.ok(performance.now() - t < 1000);
    assert.ok((await hung) instanceof Error);
  });
});

describe('npm run simulator', () => {
  it('prints its URL and credentials and answers queries', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'tools/simulator/main.ts', '--port', '0', '--shape', 'one-stone'], {
      cwd: new URL('..', import.meta.url),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      let out = '';
      child.stdout.setEncoding('utf8');
      const ready = new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (chunk: string) => {
          out += chunk;
          if (/NIVODA_PASSWORD=.+\n/.test(out)) resolve();
        });
        child.once('exit', (code) => reject(new Error(`simulator exited (${code}): ${out}`)));
        setTimeout(() => reject(new Error(`no credentials printed within 15 s: ${out}`)), 15_000).unref();
      });
      await ready;
      const url = /NIVODA_ENDPOINT=(\S+)/.exec(out)![1]!;
      const username = /NIVODA_USERNAME=(\S+)/.exec(out)![1]!;
      const password = /NIVODA_PASSWORD=(\S+)/.exec(out)![1]!;
      assert.match(out, /listening on http:\/\/127\.0\.0\.1:\d+\/api\/diamonds/);
      const auth = await gql(
        url,
        'query($u: String!, $p: String!) { authenticate { username_and_password(username: $u, password: $p) { token } } }',
        {
          u: username,
          p: password,
        },
      );
      const t = (auth.body.data?.authenticate as { username_and_password: { token: string } }).username_and_password.token;
      const res = await gql(url, COUNT, { t, q: {} });
      assert.deepEqual(res.body.data, { as: { diamonds_by_query_count: 1 } });
    } finally {
      child.kill('SIGTERM');
      if (child.exitCode === null) await once(child, 'exit');
    }
  });
});
