// The simulator's speed, printed (the issue asks for a count over ~440,000 stones "well under
// 50 ms", and a full ingest of the realistic inventory, ~8,800 pages, must not be slowed by the
// simulator): in-process counting and paging, the round trip over HTTP, and the cost of churn.
// It prints figures; it asserts nothing.
import { countMatching, generateInventory, mulberry32, searchPage, type Inventory, type Order } from '../tools/simulator/inventory.js';
import { mutateInventory } from '../tools/simulator/mutation.js';
import { startSimulator } from '../tools/simulator/server.js';
import type { DiamondQuery } from '../src/nivoda/query.js';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timed(fn: () => unknown, runs = 21): Promise<number> {
  await fn(); // warm-up (JIT, connection)
  const times: number[] = [];
  for (let k = 0; k < runs; k++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return median(times);
}

const now = new Date();
const window = { to: now.toISOString() };

/** 30 price partitions of about equal size, as a full run makes them (whole-dollar bounds). */
function partitions(inv: Inventory): DiamondQuery[] {
  const bounds = [0];
  for (let k = 1; k < 30; k++) bounds.push(Math.floor(inv.priceCents[Math.floor((k * inv.size) / 30)]! / 100));
  bounds.push(2147483647);
  return bounds.slice(0, -1).map((from, k) => ({ dollar_value: { from, to: bounds[k + 1]! }, updated: window }));
}

/** Pages every partition from offset 0 until an empty page, in process; pages per second. */
function ingestInProcess(inv: Inventory, order: Order, churnEvery = 0): { pages: number; perSecond: number } {
  const rand = mulberry32(7);
  let pages = 0;
  const t = performance.now();
  for (const q of partitions(inv)) {
    for (let offset = 0; ;) {
      const { rows } = searchPage(inv, q, { offset, limit: 50, order });
      pages++;
      // 1 % of the stones per 1,000 pages, applied every `churnEvery` pages (the simulator's churn knobs).
      if (churnEvery > 0 && pages % churnEvery === 0) {
        mutateInventory(inv, { reprice: Math.round(inv.size * 0.00001 * churnEvery * 0.7), remove: 1, add: 1 }, rand, Date.now());
      }
      if (rows.length === 0) break;
      offset += rows.length;
    }
  }
  return { pages, perSecond: pages / ((performance.now() - t) / 1000) };
}

const inventory = generateInventory('realistic', { seed: 1, now });
const query = {
  updated: { from: new Date(now.getTime() - 200 * 86_400_000).toISOString(), to: now.toISOString() },
  dollar_value: { from: 0, to: 2147483647 },
  labgrown: false,
};
const inProcess = await timed(() => countMatching(inventory, query));
const byPrice = ingestInProcess(inventory, { type: 'price', direction: 'ASC' });
const byCreated = ingestInProcess(inventory, { type: 'createdAt', direction: 'ASC' });
const churned = generateInventory('realistic', { seed: 1, now });
const mutationMs = await timed(
  () => mutateInventory(churned, { reprice: 300, touch: 50, remove: 75, add: 75 }, mulberry32(3), Date.now()),
  11,
);
const byPriceChurn = ingestInProcess(churned, { type: 'price', direction: 'ASC' }, 10);
const byCreatedChurn = ingestInProcess(churned, { type: 'createdAt', direction: 'ASC' }, 10);
const countAfterChurn = await timed(() => countMatching(churned, query));

const sim = await startSimulator({ inventory: generateInventory('realistic', { seed: 1, now }), now });
try {
  const call = (q: string, variables: Record<string, unknown>) =>
    fetch(sim.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query: q, variables }) }).then(
      (r) => r.json(),
    );
  const auth = (await call(
    'query($u: String!, $p: String!) { authenticate { username_and_password(username: $u, password: $p) { token } } }',
    { u: sim.username, p: sim.password },
  )) as {
    data: { authenticate: { username_and_password: { token: string } } };
  };
  const token = auth.data.authenticate.username_and_password.token;
  const overHttp = await timed(() =>
    call('query($t: String!, $q: DiamondQuery!) { as(token: $t) { diamonds_by_query_count(query: $q) } }', { t: token, q: query }),
  );
  const SEARCH = `query($t: String!, $q: DiamondQuery!, $o: Int) { as(token: $t) {
    diamonds_by_query(query: $q, offset: $o, limit: 50, order: {type: price, direction: ASC}) {
      items { id price diamond { id availability updated image video certificate { certNumber lab shape carats color clarity cut labgrown } } } } } }`;
  const pagePartition = async (q: DiamondQuery): Promise<number> => {
    let pages = 0;
    for (let offset = 0; ;) {
      const res = (await call(SEARCH, { t: token, q, o: offset })) as { data: { as: { diamonds_by_query: { items: unknown[] } } } };
      pages++;
      const n = res.data.as.diamonds_by_query.items.length;
      if (n === 0) return pages;
      offset += n;
    }
  };
  // A full ingest over HTTP: 30 partitions, 6 paged at once (workers with concurrency).
  const queue = partitions(sim.inventory);
  const t = performance.now();
  let pages = 0;
  await Promise.all(
    Array.from({ length: 6 }, async () => {
      for (let q = queue.shift(); q; q = queue.shift()) {
        const n = await pagePartition(q);
        pages += n;
      }
    }),
  );
  const http = { pages, perSecond: pages / ((performance.now() - t) / 1000), concurrent: 6 };
  const snapshotMs = await timed(() => sim.snapshot(), 5);
  process.stdout.write(
    `Simulator: ${inventory.size.toLocaleString('en-US')} stones · count in-process ${inProcess.toFixed(2)} ms (median) · ` +
      `count query over HTTP ${overHttp.toFixed(2)} ms (median round trip)\n`,
  );
  const f = (n: number) => Math.round(n).toLocaleString('en-US');
  process.stdout.write(
    `Paging a full ingest (30 partitions, limit 50, from offset 0 until an empty page; ${f(byPrice.pages)} pages):\n` +
      `  in-process: price ASC ${f(byPrice.perSecond)} pages/s · createdAt ASC ${f(byCreated.perSecond)} pages/s\n` +
      `  in-process with churn (a batch every 10 pages): price ASC ${f(byPriceChurn.perSecond)} pages/s · ` +
      `createdAt ASC ${f(byCreatedChurn.perSecond)} pages/s\n` +
      `  over HTTP (${http.concurrent} partitions at once, full offers): ${f(http.perSecond)} pages/s (${f(http.pages)} pages)\n` +
      `  one mutation batch (500 changes) ${mutationMs.toFixed(1)} ms · count after churn ${countAfterChurn.toFixed(2)} ms · ` +
      `snapshot() ${snapshotMs.toFixed(1)} ms\n\n`,
  );
} finally {
  await sim.close();
}
