// The worker and the consolidator end to end (CONTRACT §9): the real scheduler publishes a run,
// workers consume it from the Service Bus test peer (real SDK, peek-lock) or the local queue,
// page the Nivoda simulator over HTTP and write real PostgreSQL (and PGlite); at the end the raw
// table is compared with the simulator's exact inventory.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { openResources, type Resources } from '../src/app.js';
import { loadConfig, type Config } from '../src/config.js';
import { advanceWatermark, finishPartition, watermarkTarget } from '../src/consolidate.js';
import type { Database } from '../src/db/database.js';
import { claimPartition } from '../src/db/partitions.js';
import { vendorBudget } from '../src/nivoda/budget.js';
import { createNivodaClient, type NivodaClient } from '../src/nivoda/client.js';
import { run } from '../src/scheduler.js';
import type { WatermarkStore } from '../src/watermark.js';
import { runWorker, type WorkerSummary } from '../src/worker.js';
import type { InventorySnapshot } from '../tools/simulator/mutation.js';
import { startSimulator, type Simulator, type SimulatorOptions } from '../tools/simulator/server.js';
import { runCli } from './helpers/cli.js';
import { captureLogs } from './helpers/logs.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startServiceBusPeer, type ServiceBusPeer } from './helpers/servicebus-peer.js';

const QUEUE = 'work-items';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface Setup {
  sim: Simulator;
  env: Record<string, string>;
  dataDir: string;
  close(): Promise<void>;
}

/** A simulator, a data dir, and the environment of the real configuration pointing at them. */
async function setup(sim: SimulatorOptions, extra: Record<string, string> = {}): Promise<Setup> {
  const simulator = await startSimulator({ shape: 'realistic', seed: 7, ...sim });
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'worker-test-'));
  const env: Record<string, string> = {
    NODE_ENV: 'test',
    NIVODA_ENDPOINT: simulator.url,
    NIVODA_USERNAME: simulator.username,
    NIVODA_PASSWORD: simulator.password,
    NIVODA_MAX_REQUESTS_PER_SECOND: '1000',
    NIVODA_GLOBAL_REQUESTS_PER_SECOND: '1000',
    NIVODA_REQUEST_TIMEOUT_MS: '3000',
    RECORDS_PER_WORKER: '2500',
    HEATMAP_MIN_RECORDS_PER_WORKER: '500',
    SCHEDULER_DATA_DIR: dataDir,
    LOG_LEVEL: 'info',
    ...extra,
  };
  return {
    sim: simulator,
    env,
    dataDir,
    close: async () => {
      await simulator.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The real scheduler, in process: one run (full unless a watermark exists). */
async function schedule(env: Record<string, string>, options: { full?: boolean } = {}): Promise<string> {
  const config = loadConfig(env);
  const { logger } = captureLogs({ level: 'info' });
  const resources = await openResources(config, logger);
  try {
    const nivoda = createNivodaClient(config.nivoda, logger, { baseDelayMs: 20, maxDelayMs: 200 });
    const outcome = await run({ ...resources, config, nivoda, logger }, options);
    assert.equal(outcome.kind, 'published');
    return outcome.kind === 'published' ? outcome.runId : '';
  } finally {
    await resources.close();
  }
}

interface WorkerHandle {
  done: Promise<WorkerSummary>;
  stop(): void;
  resources: Resources;
  nivoda: NivodaClient;
  records: () => Record<string, unknown>[];
}

/** One worker, as a process would be: its own connections, client and budget. */
async function startWorker(
  env: Record<string, string>,
  options: {
    concurrency?: number;
    idleExitMs?: number;
    watermarks?: (store: WatermarkStore) => WatermarkStore;
    beforeStart?: (nivoda: NivodaClient) => Promise<void>;
  } = {},
): Promise<WorkerHandle> {
  const config: Config = loadConfig(env);
  const { logger, records } = captureLogs({ level: 'info' });
  const resources = await openResources(config, logger);
  const nivoda = createNivodaClient(config.nivoda, logger, {
    baseDelayMs: 20,
    maxDelayMs: 300,
    budget: vendorBudget(resources.db, config.worker.globalRequestsPerSecond),
  });
  await options.beforeStart?.(nivoda);
  const controller = new AbortController();
  const watermarks = options.watermarks ? options.watermarks(resources.watermarks) : resources.watermarks;
  const done = runWorker(
    { db: resources.db, queue: resources.queue, watermarks, nivoda, logger, config: config.worker },
    {
      concurrency: options.concurrency ?? 2,
      idleExitMs: options.idleExitMs ?? 1500,
      signal: controller.signal,
      receiveWaitMs: 300,
      deadLetterEveryMs: 500,
    },
  ).finally(() => resources.close());
  return { done, stop: () => controller.abort(new Error('test stop')), resources, nivoda, records };
}

interface RawRow {
  id: string;
  offerId: string;
  priceCents: number;
  updated: string;
  runId: string;
  partitionId: string | null;
  rewritten: boolean;
}

async function rawRows(db: Database): Promise<RawRow[]> {
  const rows = await db.query(
    `SELECT supplier_stone_id, offer_id, (payload->>'price')::bigint AS price, source_updated_at, run_id, partition_id,
            updated_at <> created_at AS rewritten
       FROM raw_diamonds_nivoda`,
  );
  return rows.map((r) => ({
    id: String(r.supplier_stone_id),
    offerId: String(r.offer_id),
    priceCents: Number(r.price),
    updated: new Date(r.source_updated_at as Date).toISOString(),
    runId: String(r.run_id),
    partitionId: typeof r.partition_id === 'string' ? r.partition_id : null,
    rewritten: r.rewritten === true,
  }));
}

/** The raw table against the exact inventory: missing, stale (listing differs), extra (not in the inventory). */
function compare(raw: RawRow[], snapshot: InventorySnapshot): { expected: number; missing: string[]; stale: string[]; extra: string[] } {
  const byId = new Map(raw.map((r) => [r.id, r]));
  assert.equal(byId.size, raw.length, 'one row per stone');
  const missing: string[] = [];
  const stale: string[] = [];
  const stones = snapshot.stones();
  for (const stone of stones) {
    const row = byId.get(stone.id);
    if (!row) missing.push(stone.id);
    else if (row.priceCents !== stone.priceCents || row.updated !== stone.updated || row.offerId !== stone.offerId) stale.push(stone.id);
  }
  const extra = raw.filter((r) => !snapshot.get(r.id)).map((r) => r.id);
  return { expected: stones.length, missing, stale, extra };
}

async function withDb<T>(url: string, fn: (db: Database) => Promise<T>): Promise<T> {
  const { openPostgres } = await import('../src/db/postgres.js');
  const db = await openPostgres({ url, poolMax: 2 });
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A watermark store that counts the writes that reach it. */
function countingWrites(store: WatermarkStore, counter: { writes: number }): WatermarkStore {
  return {
    location: store.location,
    read: () => store.read(),
    clear: (c) => store.clear(c),
    write: async (w, c) => {
      const result = await store.write(w, c);
      counter.writes++;
      return result;
    },
  };
}

describe('worker and consolidator on PostgreSQL with the Service Bus peer', () => {
  let pg: TestDatabase;
  let peer: ServiceBusPeer;
  before(async () => {
    pg = await createTestDatabase();
    peer = await startServiceBusPeer({ queues: [QUEUE], lockDurationMs: 4000, maxDeliveryCount: 3 });
  });
  after(async () => {
    await peer?.close();
    await pg?.drop();
  });
  /** A fresh schema for each test: the raw table is global. */
  const resetDb = () => withDb(pg.url, (db) => db.exec(`DROP SCHEMA public CASCADE; CREATE SCHEMA public;`));
  const baseEnv = () => ({
    DATABASE_URL: pg.url,
    AZURE_SERVICE_BUS_CONNECTION_STRING: peer.connectionString(),
    WORKER_MAX_DELIVERIES: '3',
  });

  test('a full ingest with 4 workers: every stone once, the run completed once, the watermark written once', async () => {
    await resetDb();
    const s = await setup({ size: 24_000 }, baseEnv());
    try {
      const runId = await schedule(s.env);
      const counter = { writes: 0 };
      const workers = await Promise.all(
        Array.from({ length: 4 }, () => startWorker(s.env, { concurrency: 2, watermarks: (w) => countingWrites(w, counter) })),
      );
      const summaries = await Promise.all(workers.map((w) => w.done));
      await withDb(pg.url, async (db) => {
        const result = compare(await rawRows(db), s.sim.snapshot());
        assert.equal(result.expected, 24_000);
        assert.deepEqual(result.missing, []);
        assert.deepEqual(result.stale, []);
        assert.deepEqual(result.extra, []);
        const runs = await db.query(`SELECT status, completed_at, watermark_written_at, updated_to FROM run_metadata WHERE run_id = $1`, [
          runId,
        ]);
        assert.equal(runs[0]?.status, 'completed');
        assert.ok(runs[0]?.watermark_written_at);
        const parts = await db.query(
          `SELECT status, fetched_records, verified_count, discrepancy, deliveries FROM run_partitions WHERE run_id = $1`,
          [runId],
        );
        assert.ok(parts.length >= 8, `${parts.length} partitions`);
        assert.ok(parts.every((p) => p.status === 'done' && p.discrepancy === 0 && p.fetched_records === p.verified_count));
        assert.equal(
          parts.reduce((n, p) => n + Number(p.fetched_records), 0),
          24_000,
        );
      });
      assert.equal(summaries.flatMap((x) => x.completedRuns).length, 1, 'one consolidation');
      assert.equal(counter.writes, 1, 'one watermark write');
      const stored = await workers[0]!.resources.watermarks.read();
      assert.equal(stored?.watermark.lastRunId, runId);
      assert.ok(summaries.filter((x) => (x.outcomes.done ?? 0) > 0).length >= 2, 'the work was shared');
      // Paging cost: ceil(stones / 49) overlapping pages plus a closing page or two per partition.
      const stats = s.sim.stats();
      assert.ok(stats.searchQueries <= Math.ceil(24_000 / 49) + 3 * 10 + 30, `${stats.searchQueries} searches`);
      assert.equal(peer.activeCount(QUEUE), 0);
    } finally {
      await s.close();
    }
  });

  test('live churn during paging (moves across partition bounds, a lagging vendor clock), then an incremental run: every stone once with its latest listing', async () => {
    await resetDb();
    const s = await setup(
      { size: 15_000, churnRate: 0.02, churnEveryRequests: 5, churnLargeMoveShare: 0.3, clockOffsetMs: -120_000 },
      baseEnv(),
    );
    try {
      const full = await schedule(s.env);
      const first = await Promise.all([startWorker(s.env), startWorker(s.env)]);
      await Promise.all(first.map((w) => w.done));
      assert.ok(s.sim.stats().mutationBatches > 5, 'the inventory changed while it was paged');
      // Then the inventory keeps changing between runs, and the incremental run pages a still one.
      s.sim.configure({ churnRate: 0 });
      s.sim.mutate({ reprice: 300, touch: 100, remove: 100, add: 200 });
      await sleep(50);
      const incremental = await schedule(s.env);
      const second = await Promise.all([startWorker(s.env), startWorker(s.env)]);
      await Promise.all(second.map((w) => w.done));
      await withDb(pg.url, async (db) => {
        const result = compare(await rawRows(db), s.sim.snapshot());
        assert.deepEqual(result.missing, [], 'no stone missing');
        assert.deepEqual(result.stale, [], 'every stone with its latest listing');
        const removed = new Set(s.sim.mutations().flatMap((m) => m.removed.map((r) => r.id)));
        assert.ok(
          result.extra.every((id) => removed.has(id)),
          'rows not in the inventory are stones it removed',
        );
        const runs = await db.query(`SELECT run_id, status FROM run_metadata WHERE run_id = ANY($1::uuid[])`, [[full, incremental]]);
        assert.deepEqual(
          runs.map((r) => r.status),
          ['completed', 'completed'],
        );
      });
      const stored = await first[0].resources.watermarks.read();
      assert.equal(stored?.watermark.lastRunId, incremental);
    } finally {
      await s.close();
    }
  });

  test('a lock lost to a second worker: the second resumes after the last committed page, no stone is written twice', async () => {
    await resetDb();
    const s = await setup(
      { size: 3000, latencyMs: 50 },
      { ...baseEnv(), RECORDS_PER_WORKER: '5000', HEATMAP_MIN_RECORDS_PER_WORKER: '5000' },
    );
    try {
      const runId = await schedule(s.env);
      const a = await startWorker(s.env, { concurrency: 1, idleExitMs: 4000 });
      await withDb(pg.url, (db) =>
        waitFor('worker A to commit pages', async () => {
          const rows = await db.query(`SELECT next_offset FROM run_partitions WHERE run_id = $1`, [runId]);
          return Number(rows[0]?.next_offset) >= 500;
        }),
      );
      assert.equal(peer.expireLocks(QUEUE), 1, 'the lock of worker A ends');
      const b = await startWorker(s.env, { concurrency: 1, idleExitMs: 2000 });
      const [sa, sb] = await Promise.all([a.done, b.done]);
      assert.equal(sa.outcomes['lock-lost'], 1, 'worker A stopped when it lost the work item');
      assert.equal(sb.outcomes.done, 1, 'worker B finished it');
      await withDb(pg.url, async (db) => {
        const raw = await rawRows(db);
        const result = compare(raw, s.sim.snapshot());
        assert.deepEqual([result.missing.length, result.stale.length, result.extra.length], [0, 0, 0]);
        assert.equal(raw.filter((r) => r.rewritten).length, 0, 'no row was written twice');
        const parts = await db.query(`SELECT deliveries, status FROM run_partitions WHERE run_id = $1`, [runId]);
        assert.deepEqual(
          parts.map((p) => [p.status, p.deliveries]),
          [['done', 2]],
        );
      });
      const resumed = b.records().find((r) => r.msg === 'resuming partition');
      assert.ok(resumed && Number(resumed.offset) >= 500, 'B resumed where A had committed');
    } finally {
      await s.close();
    }
  });

  test('a worker killed (SIGKILL) mid-partition: the redelivery resumes, no stone twice', async () => {
    await resetDb();
    const s = await setup(
      { size: 4000, latencyMs: 10 },
      { ...baseEnv(), RECORDS_PER_WORKER: '5000', HEATMAP_MIN_RECORDS_PER_WORKER: '5000' },
    );
    try {
      const runId = await schedule(s.env);
      const child = spawn(
        process.execPath,
        ['--import', import.meta.resolve('tsx'), path.join(root, 'src', 'index.ts'), 'worker', '--concurrency', '1'],
        {
          cwd: root,
          env: { PATH: process.env.PATH, HOME: process.env.HOME, ...s.env, NIVODA_MAX_REQUESTS_PER_SECOND: '40' },
          stdio: ['ignore', 'ignore', 'ignore'],
        },
      );
      await withDb(pg.url, (db) =>
        waitFor('the child worker to commit pages', async () => {
          const rows = await db.query(`SELECT next_offset FROM run_partitions WHERE run_id = $1`, [runId]);
          return Number(rows[0]?.next_offset) >= 800;
        }),
      );
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('close', resolve));
      const searchesBefore = s.sim.stats().searchQueries;
      // The lock runs out (4 s here), the message comes back with its delivery count one higher.
      const w = await startWorker(s.env, { concurrency: 1, idleExitMs: 6000 });
      const summary = await w.done;
      assert.equal(summary.outcomes.done, 1);
      await withDb(pg.url, async (db) => {
        const raw = await rawRows(db);
        const result = compare(raw, s.sim.snapshot());
        assert.deepEqual([result.missing.length, result.stale.length, result.extra.length], [0, 0, 0]);
        assert.equal(raw.filter((r) => r.rewritten).length, 0, 'no row was written twice');
        const parts = await db.query(`SELECT deliveries FROM run_partitions WHERE run_id = $1`, [runId]);
        assert.equal(parts[0]?.deliveries, 2);
      });
      const pages = Math.ceil(4000 / 49);
      assert.ok(s.sim.stats().searchQueries - searchesBefore < pages - 800 / 50 + 5, 'the second delivery did not start over');
      assert.equal(
        peer
          .messages(QUEUE)
          .filter((m) => m.messageId?.startsWith(runId))
          .at(-1)?.deliveryCount,
        1,
      );
    } finally {
      await s.close();
    }
  });

  test('a partition dead-lettered: the run is not completed, the watermark stays, `worker retry` re-queues it and the run completes', async () => {
    await resetDb();
    const s = await setup({ size: 6000 }, baseEnv());
    try {
      const runId = await schedule(s.env);
      // Authenticated first, so the fault hits the first count of some partition: a GraphQL error no retry can fix.
      const w = await startWorker(s.env, {
        concurrency: 1,
        beforeStart: async (nivoda) => {
          await nivoda.authenticate();
          s.sim.injectFaults({ kind: 'graphql-error', message: 'Invalid value for DiamondQuery', code: 'BAD_USER_INPUT' });
        },
      });
      const summary = await w.done;
      assert.equal(summary.outcomes['dead-lettered'], 1);
      await withDb(pg.url, async (db) => {
        const runs = await db.query(`SELECT status, completed_at FROM run_metadata WHERE run_id = $1`, [runId]);
        assert.equal(runs[0]?.status, 'published');
        assert.equal(runs[0]?.completed_at, null);
        const failed = await db.query(`SELECT partition_id, error FROM run_partitions WHERE run_id = $1 AND status = 'failed'`, [runId]);
        assert.equal(failed.length, 1);
        assert.match(String(failed[0]?.error), /Invalid value for DiamondQuery/);
      });
      assert.equal(await w.resources.watermarks.read(), null, 'the watermark did not move');
      assert.equal(peer.deadLetters(QUEUE).length, 0, 'the dead letter was drained into the partition row');

      const status = await runCli(['status', runId], s.env);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /failed/);
      assert.match(status.stdout, /exact count/);
      const consolidated = await runCli(['consolidate', runId], s.env);
      assert.equal(consolidated.code, 0, consolidated.stderr);
      assert.match(consolidated.stdout, /not complete/);

      const retry = await runCli(['worker', 'retry', runId], s.env);
      assert.equal(retry.code, 0, retry.stderr);
      assert.match(retry.stdout, /re-queued 1 failed partition/);
      assert.ok(peer.messages(QUEUE).some((m) => m.messageId?.endsWith(':retry-1')));
      const again = await startWorker(s.env, { concurrency: 1 });
      assert.equal((await again.done).completedRuns.includes(runId), true);
      await withDb(pg.url, async (db) => {
        const result = compare(await rawRows(db), s.sim.snapshot());
        assert.deepEqual([result.missing.length, result.stale.length, result.extra.length], [0, 0, 0]);
      });
      assert.equal((await again.resources.watermarks.read())?.watermark.lastRunId, runId);
    } finally {
      await s.close();
    }
  });

  test('the vendor budget holds across workers: three workers together stay under NIVODA_GLOBAL_REQUESTS_PER_SECOND', async () => {
    await resetDb();
    const s = await setup(
      { size: 3000 },
      { ...baseEnv(), RECORDS_PER_WORKER: '1000', HEATMAP_MIN_RECORDS_PER_WORKER: '1000', NIVODA_GLOBAL_REQUESTS_PER_SECOND: '20' },
    );
    try {
      await schedule(s.env);
      s.sim.resetStats();
      const workers = await Promise.all([1, 2, 3].map(() => startWorker(s.env, { concurrency: 2 })));
      const summaries = await Promise.all(workers.map((w) => w.done));
      assert.equal(summaries.flatMap((x) => x.completedRuns).length, 1);
      const stats = s.sim.stats();
      assert.ok(stats.requests > 60, `${stats.requests} requests: enough to measure`);
      // Each process alone may send 1,000 requests/s; together they are spaced by the shared bucket.
      // (A late timer can bunch two requests: one or two over the cap in a sliding second, never a burst.)
      assert.ok(stats.maxInAnySecond <= 22, `at most ${stats.maxInAnySecond} requests in any second`);
      const span = (Math.max(...s.sim.arrivals()) - Math.min(...s.sim.arrivals())) / 1000;
      console.log(
        `vendor budget 20/s, 3 workers × concurrency 2: ${stats.requests} requests in ${span.toFixed(2)} s ` +
          `(${(stats.requests / span).toFixed(1)}/s on average), at most ${stats.maxInAnySecond} in any sliding second, ${stats.rejected429} × 429`,
      );
      await withDb(pg.url, async (db) => {
        const result = compare(await rawRows(db), s.sim.snapshot());
        assert.deepEqual([result.missing.length, result.stale.length, result.extra.length], [0, 0, 0]);
      });
    } finally {
      await s.close();
    }
  });

  test('two workers finishing the last two partitions at once: one completes the run, one watermark write', async () => {
    await resetDb();
    const s = await setup({ size: 3000 }, { ...baseEnv(), RECORDS_PER_WORKER: '1500', HEATMAP_MIN_RECORDS_PER_WORKER: '1000' });
    try {
      for (let round = 0; round < 5; round++) {
        const runId = await schedule(s.env, { full: true });
        const { logger } = captureLogs({ level: 'info' });
        const config = loadConfig(s.env);
        const [a, b] = await Promise.all([openResources(config, logger), openResources(config, logger)]);
        try {
          const ids = (await a.db.query(`SELECT partition_id FROM run_partitions WHERE run_id = $1 ORDER BY price_min`, [runId])).map((r) =>
            String(r.partition_id),
          );
          assert.ok(ids.length >= 2);
          // Every partition but the last two is done already.
          for (const id of ids.slice(0, -2)) {
            const c = await claimPartition(a.db, runId, id);
            assert.equal(c.kind, 'claimed');
            if (c.kind === 'claimed')
              await finishPartition(a.db, c.claim, { kept: 0, count: 0, discrepancy: 0, calls: { search: 0, count: 0 } });
          }
          const [ca, cb] = await Promise.all([claimPartition(a.db, runId, ids.at(-2)!), claimPartition(b.db, runId, ids.at(-1)!)]);
          assert.ok(ca.kind === 'claimed' && cb.kind === 'claimed');
          const finish = { kept: 0, count: 0, discrepancy: 0, calls: { search: 0, count: 0 } };
          const results = await Promise.all([finishPartition(a.db, ca.claim, finish), finishPartition(b.db, cb.claim, finish)]);
          assert.equal(results.filter((r) => r.runCompleted).length, 1, `round ${round}: exactly one completed the run`);
          const counter = { writes: 0 };
          const store = countingWrites(a.watermarks, counter);
          await Promise.all(results.map((r) => (r.runCompleted ? advanceWatermark(a.db, store, logger) : Promise.resolve())));
          await advanceWatermark(b.db, store, logger);
          assert.equal(counter.writes, 1, `round ${round}: one watermark write`);
          assert.equal((await store.read())?.watermark.lastRunId, runId);
        } finally {
          await a.close();
          await b.close();
        }
      }
    } finally {
      await s.close();
    }
  });
});

describe('worker on PGlite with the local queue', () => {
  test('vendor faults (429, 5xx, timeouts, token expiry) and short pages: the ingest is still exact; `worker` exits 0 when idle', async () => {
    const s = await setup(
      { size: 8000, rate429: 0.03, rate5xx: 0.03, rateTimeout: 0.01, retryAfterSeconds: 0, tokenLifetimeMs: 1500, shortPageRate: 0.2 },
      { NIVODA_REQUEST_TIMEOUT_MS: '500', NIVODA_MAX_ATTEMPTS: '8', NIVODA_GLOBAL_REQUESTS_PER_SECOND: '400' },
    );
    try {
      // Scheduled through the real command line too: zero configuration, embedded everything.
      const scheduled = await runCli(['run'], { ...s.env, NIVODA_REQUEST_TIMEOUT_MS: '2000' });
      assert.equal(scheduled.code, 0, scheduled.stderr.slice(-2000));
      const worked = await runCli(['worker', '--concurrency', '4', '--idle-exit', '2'], s.env, { timeoutMs: 120_000 });
      assert.equal(worked.code, 0, worked.stderr.slice(-3000));
      const stats = s.sim.stats();
      assert.ok(stats.rejected429 + stats.rejected5xx + stats.timedOut > 5, 'faults happened');
      assert.ok(stats.shortPages > 5, 'short pages happened');
      assert.ok(stats.authentications >= 2, 'tokens expired and were renewed');
      const { openPglite } = await import('../src/db/pglite.js');
      const db = await openPglite(path.join(s.dataDir, 'pglite'));
      try {
        const result = compare(await rawRows(db), s.sim.snapshot());
        assert.deepEqual([result.missing.length, result.stale.length, result.extra.length], [0, 0, 0]);
        const runs = await db.query(`SELECT status FROM run_metadata`);
        // When it fails, say why: the partitions that are not done and what the worker warned of.
        const unfinished = await db.query(`SELECT * FROM run_partitions WHERE status <> 'done'`);
        const queued = await db.query(
          `SELECT message_id, state, delivery_count, locked_until, dead_letter_reason FROM local_work_items WHERE state <> 'completed'`,
        );
        const warnings = worked.stderr.split('\n').filter((line) => /"level":(40|50|60)/.test(line));
        assert.deepEqual(
          runs.map((r) => r.status),
          ['completed'],
          JSON.stringify({ unfinished, queued, warnings: warnings.slice(-20) }, null, 1),
        );
        const queue = await db.query(`SELECT state, count(*)::int AS n FROM local_work_items GROUP BY state`);
        assert.deepEqual(
          queue.map((r) => [r.state, r.n]),
          [['completed', queue[0]?.n]],
        );
      } finally {
        await db.close();
      }
      const watermark = await runCli(['watermark', 'get'], s.env);
      assert.match(watermark.stdout, /lastRunId/);
    } finally {
      await s.close();
    }
  });
});

describe('watermark rule', () => {
  const r = (runId: string, runType: 'full' | 'incremental', status: 'completed' | 'published' | 'failed', updatedTo: string) => ({
    runId,
    runType,
    status,
    updatedTo,
    completedAt: null,
  });
  test('never past an earlier run that is not completed; a completed full run covers what came before', () => {
    assert.equal(watermarkTarget([r('a', 'full', 'completed', '1'), r('b', 'incremental', 'completed', '2')]).due?.runId, 'b');
    const held = watermarkTarget([
      r('a', 'full', 'completed', '1'),
      r('b', 'incremental', 'published', '2'),
      r('c', 'incremental', 'completed', '3'),
    ]);
    assert.equal(held.due?.runId, 'a');
    assert.equal(held.heldBackBy?.runId, 'b');
    assert.equal(watermarkTarget([r('b', 'incremental', 'failed', '2'), r('c', 'full', 'completed', '3')]).due?.runId, 'c');
    assert.equal(watermarkTarget([r('b', 'incremental', 'published', '2')]).due, null);
  });
});
