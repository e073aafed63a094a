// The worker's and the consolidator's database paths, small and fast: real PostgreSQL (one
// throwaway database for the file, a fresh schema per test), runs inserted as the scheduler
// records them, a file watermark store, and an in-memory vendor where a test needs one.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { advanceWatermark, finishPartition } from '../src/consolidate.js';
import type { Database } from '../src/db/database.js';
import { migrate } from '../src/db/migrate.js';
import { claimPartition, failedPartitions, failPartition, reserveRetries, retryGeneration } from '../src/db/partitions.js';
import { openPostgres } from '../src/db/postgres.js';
import { PRICE_AXIS_END, type WorkItemMessage } from '../src/domain.js';
import type { WorkerConfig } from '../src/config.js';
import type { Logger } from '../src/log.js';
import type { NivodaClient } from '../src/nivoda/client.js';
import type { Offer, SearchPage } from '../src/nivoda/documents.js';
import type { DiamondQuery } from '../src/nivoda/query.js';
import type { NivodaStats } from '../src/nivoda/transport.js';
import type { ReceivedWorkItem, WorkItemQueue } from '../src/queue/queue.js';
import { handleDelivery } from '../src/worker.js';
import { FileWatermarkStore } from '../src/watermark/file-store.js';
import type { WatermarkStore } from '../src/watermark.js';
import { captureLogs } from './helpers/logs.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

interface RunSpec {
  runType?: 'full' | 'incremental';
  updatedTo: string;
  watermarkBefore?: string;
  /** The etag of the watermark document the run read at its start. */
  watermarkEtag?: string;
  partitions?: number;
  /** The database's clock by default. */
  startedAt?: string;
}

/** A run as the scheduler records and publishes it: its row and its partitions (pending). */
async function insertRun(db: Database, spec: RunSpec): Promise<{ runId: string; partitionIds: string[] }> {
  const runId = randomUUID();
  const incremental = spec.runType === 'incremental';
  await db.query(
    `INSERT INTO run_metadata (run_id, run_type, status, expected_workers, watermark_before, updated_from, updated_to, price_field,
                               started_at, recorded_at, published_at, watermark_etag)
     VALUES ($1, $2, 'published', $3, $4::timestamptz, $5::timestamptz, $6::timestamptz, 'dollar_value',
             coalesce($7::timestamptz, clock_timestamp()), now(), now(), $8)`,
    [
      runId,
      spec.runType ?? 'full',
      spec.partitions ?? 1,
      spec.watermarkBefore ?? null,
      incremental ? (spec.watermarkBefore ?? spec.updatedTo) : null,
      spec.updatedTo,
      spec.startedAt ?? null,
      spec.watermarkEtag ?? null,
    ],
  );
  const partitionIds: string[] = [];
  const n = spec.partitions ?? 1;
  for (let i = 0; i < n; i++) {
    const id = `partition-${i}`;
    partitionIds.push(id);
    await db.query(
      `INSERT INTO run_partitions (run_id, partition_id, price_min, price_max, expected_records, published_at) VALUES ($1, $2, $3, $4, 0, now())`,
      [runId, id, i * 100, i === n - 1 ? 2147483647 : (i + 1) * 100],
    );
  }
  return { runId, partitionIds };
}

const NO_CALLS = { search: 0, count: 0 };

/** Works every partition of the run to done (as workers would), which completes it. */
async function completeRun(db: Database, runId: string, partitionIds: string[]): Promise<void> {
  let completed = false;
  for (const id of partitionIds) {
    const claimed = await claimPartition(db, runId, id);
    assert.equal(claimed.kind, 'claimed');
    if (claimed.kind !== 'claimed') return;
    completed = (await finishPartition(db, claimed.claim, { kept: 0, count: 0, discrepancy: 0, calls: NO_CALLS })).runCompleted;
  }
  assert.equal(completed, true, 'the last partition completed the run');
}

const WORKER_CONFIG: WorkerConfig = { concurrency: 1, maxDeliveries: 3, lockSeconds: 30, maxPasses: 2, globalRequestsPerSecond: 1000 };

/** The work item the scheduler publishes for a partition of `insertRun` (one partition over the whole axis by default). */
function workItem(runId: string, partitionId = 'partition-0', updatedTo = '2026-03-10T02:00:00.000Z'): WorkItemMessage {
  return {
    runId,
    partitionId,
    priceMin: 0,
    priceMax: PRICE_AXIS_END,
    expectedRecords: 0,
    isIncremental: false,
    priceField: 'dollar_value',
    updatedTo,
    partitionCount: 1,
    query: {},
  };
}

/**
 * An in-memory vendor: `stones` offers in createdAt order, paged by offset; `countExtra` stones
 * the count sees and the listing never shows (a stone paging loses); `afterSearch` runs after
 * every page and may change `offers` (the listing as the next page sees it).
 */
function fakeVendor(stones: number) {
  const offers: Offer[] = Array.from({ length: stones }, (_, i) => ({
    id: `offer-${i}`,
    price: 100_00 + i,
    diamond: {
      id: `d${String(i).padStart(4, '0')}`,
      availability: 'AVAILABLE',
      updated: '2026-03-01T00:00:00.000Z',
      certificate: { shape: 'ROUND', carats: 1 },
    },
  }));
  const vendor = {
    offers,
    countExtra: 0,
    searches: 0,
    afterSearch: undefined as ((n: number) => Promise<void>) | undefined,
    client: {
      async count(query: DiamondQuery): Promise<number> {
        const from = query.dollar_value?.from ?? 0;
        return offers.filter((o) => o.price / 100 >= from).length + vendor.countExtra;
      },
      async search(_query: DiamondQuery, page: SearchPage): Promise<{ totalCount: number; items: Offer[] }> {
        vendor.searches++;
        const items = offers.slice(page.offset, page.offset + page.limit);
        await vendor.afterSearch?.(vendor.searches);
        return { totalCount: 0, items };
      },
      async authenticate(): Promise<void> {},
      stats: () => ({}) as NivodaStats,
    } satisfies NivodaClient,
  };
  return vendor;
}

/** One delivery as the queue hands it over; records how it was settled. */
function delivery(body: unknown, messageId: string, deliveryCount = 1) {
  const settled: string[] = [];
  const item: ReceivedWorkItem = {
    messageId,
    body,
    deliveryCount,
    lockedUntil: new Date(Date.now() + 60_000),
    complete: async () => void settled.push('complete'),
    abandon: async () => void settled.push('abandon'),
    deadLetter: async (reason) => void settled.push(`dead-letter ${reason}`),
    renewLock: async () => new Date(Date.now() + 60_000),
  };
  return { item, settled };
}

async function partitionRow(db: Database, runId: string, partitionId = 'partition-0') {
  const rows = await db.query(
    `SELECT status, error, fetched_records, verified_count, discrepancy, pass, next_offset, retries FROM run_partitions
      WHERE run_id = $1 AND partition_id = $2`,
    [runId, partitionId],
  );
  return rows[0]!;
}

async function runRow(db: Database, runId: string) {
  return (await db.query('SELECT status, completed_at FROM run_metadata WHERE run_id = $1', [runId]))[0]!;
}

/** What `watermark set <ISO>` writes (src/commands.ts), at the time it is run. */
async function operatorSets(store: WatermarkStore, lastUpdatedAt: string, at = new Date().toISOString()): Promise<void> {
  const current = await store.read();
  await store.write(
    { lastUpdatedAt, lastRunId: 'manual', lastRunCompletedAt: at },
    current ? { ifMatch: current.etag } : { ifNoneMatch: '*' },
  );
}

describe('worker and consolidator: database paths', () => {
  let pg: TestDatabase;
  let db: Database;
  let dir: string;
  let watermarks: WatermarkStore;
  before(async () => {
    pg = await createTestDatabase();
    db = await openPostgres({ url: pg.url, poolMax: 4 });
  });
  after(async () => {
    await db?.close();
    await pg?.drop();
  });
  beforeEach(async () => {
    await db.exec('DROP SCHEMA public CASCADE; CREATE SCHEMA public;');
    await migrate(db);
    dir = await mkdtemp(path.join(os.tmpdir(), 'worker-db-test-'));
    watermarks = new FileWatermarkStore(path.join(dir, 'watermarks', 'nivoda.json'));
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const deps = (nivoda: NivodaClient, logger: Logger) => ({
    db,
    // handleDelivery settles through the delivery itself; the queue is never used.
    queue: {} as WorkItemQueue,
    watermarks,
    nivoda,
    logger,
    config: WORKER_CONFIG,
  });
  const running = new AbortController().signal;

  test('a partition that never verifies fails with its cause: the run is not completed, the watermark does not move; a retry delivery completes it', async () => {
    const { logger, records } = captureLogs({ level: 'debug' });
    const run = await insertRun(db, { updatedTo: '2026-03-10T02:00:00.000Z' });
    // The count sees a stone that no page ever shows: paging lost it.
    const vendor = fakeVendor(120);
    vendor.countExtra = 1;
    const { item, settled } = delivery(workItem(run.runId), `${run.runId}:partition-0`);
    const handled = await handleDelivery(deps(vendor.client, logger), item, running);
    assert.equal(handled.kind, 'dead-lettered');
    assert.equal(handled.runCompleted, undefined);
    assert.deepEqual(settled, ['dead-letter PartitionUnverified']);
    const row = await partitionRow(db, run.runId);
    assert.equal(row.status, 'failed');
    assert.equal(row.error, 'not verified after 2 pass(es): kept 120, exact count 121');
    assert.deepEqual([row.fetched_records, row.verified_count, row.discrepancy], [120, 121, 1]);
    assert.deepEqual([row.pass, row.next_offset], [1, 0], 'the next delivery pages it afresh');
    const failedLine = records().find((r) => r.msg?.toString().startsWith('partition failed: not verified'));
    assert.equal(failedLine?.level, 'error', 'logged at error level');
    assert.deepEqual([failedLine?.resyncs, failedLine?.resyncPages], [0, 0], 'the resync counts are logged with the failure');
    assert.equal((await runRow(db, run.runId)).status, 'published');
    assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'nothing-due');
    assert.equal(await watermarks.read(), null, 'the watermark did not move');
    assert.deepEqual(await failedPartitions(db, run.runId), [{ partitionId: 'partition-0', retries: 0 }], '`worker retry` re-queues it');
    // A retry's count is committed before its publish: one that crashed in between does not make
    // the next retry reuse its message id (which duplicate detection would drop).
    assert.deepEqual(await reserveRetries(db, run.runId), [{ partitionId: 'partition-0', retries: 1 }]);
    assert.deepEqual(await reserveRetries(db, run.runId), [{ partitionId: 'partition-0', retries: 2 }]);
    assert.equal((await partitionRow(db, run.runId)).status, 'failed', 'still failed until its work item is out');
    // A stale dead letter (the original work item, generation 0) cannot fail the partition once it
    // was re-queued (generation 2 is being worked); the current generation can.
    assert.equal(retryGeneration(`${run.runId}:partition-0`), 0);
    assert.equal(retryGeneration(`${run.runId}:partition-0:retry-2`), 2);
    await db.query(`UPDATE run_partitions SET status = 'working' WHERE run_id = $1`, [run.runId]);
    assert.equal(await failPartition(db, run.runId, 'partition-0', 'stale dead letter', { generation: 0 }), false);
    assert.equal((await partitionRow(db, run.runId)).status, 'working');
    assert.equal(await failPartition(db, run.runId, 'partition-0', 'current dead letter', { generation: 2 }), true);

    // The vendor is fixed; the retried work item completes the run.
    vendor.countExtra = 0;
    const retried = delivery(workItem(run.runId), `${run.runId}:partition-0:retry-1`);
    const again = await handleDelivery(deps(vendor.client, logger), retried.item, running);
    assert.equal(again.kind, 'done');
    assert.equal(again.runCompleted, run.runId);
    assert.equal((await partitionRow(db, run.runId)).status, 'done');
    assert.equal((await runRow(db, run.runId)).status, 'completed');
    assert.equal((await watermarks.read())?.watermark.lastRunId, run.runId);
  });

  test('a listing that shifts under the cursor: the partition resyncs, verifies, and its "partition done" line counts the resyncs', async () => {
    const { logger, records } = captureLogs({ level: 'debug' });
    const run = await insertRun(db, { updatedTo: '2026-03-10T02:00:00.000Z' });
    const vendor = fakeVendor(200);
    // After the second page the first stone leaves the listing: the next page does not begin
    // with the overlap stone, and one step back finds it.
    vendor.afterSearch = async (n) => {
      if (n === 2) vendor.offers.shift();
    };
    const { item, settled } = delivery(workItem(run.runId), `${run.runId}:partition-0`);
    const handled = await handleDelivery(deps(vendor.client, logger), item, running);
    assert.equal(handled.kind, 'done');
    assert.deepEqual(settled, ['complete']);
    const done = records().find((r) => r.msg === 'partition done');
    assert.equal(done?.passes, 1, 'bridged by the resync: no second pass');
    assert.deepEqual([done?.resyncs, done?.resyncPages], [1, 1]);
  });

  test('a run abandoned while its partition is worked: the worker stops at the next page, writes nothing more, settles the message', async () => {
    const { logger } = captureLogs({ level: 'debug' });
    const run = await insertRun(db, { updatedTo: '2026-03-10T02:00:00.000Z' });
    const vendor = fakeVendor(300);
    // The operator runs `abandon <runId>` while the second page is fetched.
    vendor.afterSearch = async (n) => {
      if (n === 2) await db.query(`UPDATE run_metadata SET status = 'abandoned' WHERE run_id = $1`, [run.runId]);
    };
    const { item, settled } = delivery(workItem(run.runId), `${run.runId}:partition-0`);
    const handled = await handleDelivery(deps(vendor.client, logger), item, running);
    assert.equal(handled.kind, 'run-abandoned');
    assert.deepEqual(settled, ['complete']);
    assert.equal(vendor.searches, 2, 'no page after the abandon');
    const raw = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM raw_diamonds_nivoda');
    assert.equal(raw[0]?.n, 50, 'only the page committed before the abandon');
    const row = await partitionRow(db, run.runId);
    assert.notEqual(row.status, 'working');
    assert.notEqual(row.status, 'done');
    assert.equal((await runRow(db, run.runId)).status, 'abandoned');
  });

  describe('the watermark is written once per run, never over an operator', () => {
    test('a rewind (`watermark set`) after the run’s watermark was written stands through later consolidations', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      const run = await insertRun(db, { updatedTo: '2026-03-10T02:00:00.000Z' });
      await completeRun(db, run.runId, run.partitionIds);
      const first = await advanceWatermark(db, watermarks, logger);
      assert.equal(first.decision, 'written');
      assert.equal((await watermarks.read())?.watermark.lastUpdatedAt, '2026-03-10T02:00:00.000Z');

      await operatorSets(watermarks, '2026-03-07T02:00:00.000Z');
      const again = await advanceWatermark(db, watermarks, logger);
      assert.equal(again.written, null);
      assert.equal(again.decision, 'already-written');
      assert.equal((await watermarks.read())?.watermark.lastUpdatedAt, '2026-03-07T02:00:00.000Z', 'the rewind stands');
    });

    test('a `watermark clear` after the run’s watermark was written stands (the next run is full)', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      const run = await insertRun(db, { updatedTo: '2026-03-10T02:00:00.000Z' });
      await completeRun(db, run.runId, run.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'written');
      assert.equal(await watermarks.clear(), true);
      const again = await advanceWatermark(db, watermarks, logger);
      assert.equal(again.decision, 'already-written');
      assert.equal(await watermarks.read(), null, 'still cleared');
    });

    test('a rewind between a run’s completion and its watermark write (a crash) is not undone by the repair', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      const earlier = await insertRun(db, { updatedTo: '2026-03-09T02:00:00.000Z' });
      await completeRun(db, earlier.runId, earlier.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'written');
      const run = await insertRun(db, {
        runType: 'incremental',
        watermarkBefore: '2026-03-09T02:00:00.000Z',
        updatedTo: '2026-03-10T02:00:00.000Z',
      });
      await completeRun(db, run.runId, run.partitionIds);
      // The worker crashed before its watermark write; the on-call rewinds meanwhile.
      await operatorSets(watermarks, '2026-03-06T02:00:00.000Z');
      const repair = await advanceWatermark(db, watermarks, logger);
      assert.equal(repair.decision, 'operator-changed');
      assert.equal((await watermarks.read())?.watermark.lastUpdatedAt, '2026-03-06T02:00:00.000Z');
      // Decided once: a later consolidation does not reconsider.
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'already-written');
      assert.equal((await watermarks.read())?.watermark.lastUpdatedAt, '2026-03-06T02:00:00.000Z');
    });

    test('a watermark cleared under an incremental run is not re-created when that run completes', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      const run = await insertRun(db, {
        runType: 'incremental',
        watermarkBefore: '2026-03-09T02:00:00.000Z',
        updatedTo: '2026-03-10T02:00:00.000Z',
      });
      await completeRun(db, run.runId, run.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'operator-changed');
      assert.equal(await watermarks.read(), null);
    });

    test('the normal path still writes: a first full run on no watermark, then an incremental run over the last run’s watermark', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      const full = await insertRun(db, { updatedTo: '2026-03-09T02:00:00.000Z' });
      await completeRun(db, full.runId, full.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'written');
      const inc = await insertRun(db, {
        runType: 'incremental',
        watermarkBefore: '2026-03-09T02:00:00.000Z',
        updatedTo: '2026-03-10T02:00:00.000Z',
      });
      await completeRun(db, inc.runId, inc.partitionIds);
      const advanced = await advanceWatermark(db, watermarks, logger);
      assert.equal(advanced.decision, 'written');
      assert.deepEqual(
        [(await watermarks.read())?.watermark.lastUpdatedAt, (await watermarks.read())?.watermark.lastRunId],
        ['2026-03-10T02:00:00.000Z', inc.runId],
      );
      // An operator's rewind before a run started is what that run started from: its completion moves it on.
      await operatorSets(watermarks, '2026-03-08T02:00:00.000Z');
      const next = await insertRun(db, {
        runType: 'incremental',
        watermarkBefore: '2026-03-08T02:00:00.000Z',
        updatedTo: '2026-03-11T02:00:00.000Z',
      });
      await completeRun(db, next.runId, next.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'written');
      assert.equal((await watermarks.read())?.watermark.lastRunId, next.runId);
    });

    test('an operator who sets the value a running run started from again, after it started, is not overwritten', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      const w0 = '2026-03-08T02:00:00.000Z';
      await operatorSets(watermarks, w0, '2026-03-08T03:00:00.000Z');
      const read = (await watermarks.read())!.etag;
      const r0 = await insertRun(db, {
        runType: 'incremental',
        watermarkBefore: w0,
        watermarkEtag: read,
        updatedTo: '2026-03-09T02:00:00.000Z',
        startedAt: '2026-03-09T02:00:00.000Z',
      });
      // The next night starts while r0 is still worked, from the same document.
      const r2 = await insertRun(db, {
        runType: 'incremental',
        watermarkBefore: w0,
        watermarkEtag: read,
        updatedTo: '2026-03-10T02:00:00.000Z',
        startedAt: '2026-03-10T02:00:00.000Z',
      });
      await completeRun(db, r0.runId, r0.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'written');
      // After r2 started, the on-call rewinds to the value r2 happened to start from, to fetch again from it.
      await operatorSets(watermarks, w0, '2026-03-10T03:00:00.000Z');
      await completeRun(db, r2.runId, r2.partitionIds);
      assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'operator-changed');
      assert.deepEqual(
        [(await watermarks.read())?.watermark.lastUpdatedAt, (await watermarks.read())?.watermark.lastRunId],
        [w0, 'manual'],
        'the rewind stands',
      );
    });

    test('a run that started from the operator’s value moves it on, whatever the clocks say (same millisecond, database clock behind)', async () => {
      const { logger } = captureLogs({ level: 'debug' });
      for (const [setAt, startedAt] of [
        ['2026-03-08T03:00:00.123Z', '2026-03-08T03:00:00.123456Z'],
        ['2026-03-08T03:00:05.000Z', '2026-03-08T03:00:03.000Z'],
      ] as const) {
        await operatorSets(watermarks, '2026-03-08T02:00:00.000Z', setAt);
        const run = await insertRun(db, {
          runType: 'incremental',
          watermarkBefore: '2026-03-08T02:00:00.000Z',
          watermarkEtag: (await watermarks.read())!.etag,
          updatedTo: '2026-03-11T02:00:00.000Z',
          startedAt,
        });
        await completeRun(db, run.runId, run.partitionIds);
        assert.equal((await advanceWatermark(db, watermarks, logger)).decision, 'written', `set at ${setAt}, run started ${startedAt}`);
        assert.equal((await watermarks.read())?.watermark.lastRunId, run.runId);
        await db.query(`DELETE FROM run_partitions`);
        await db.query(`DELETE FROM run_metadata`);
      }
    });
  });
});
