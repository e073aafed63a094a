// End to end: the real command line as a child process against the Nivoda simulator over
// HTTP, Azurite, the Service Bus peer and a real PostgreSQL database (or PGlite).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BlobServiceClient } from '@azure/storage-blob';
import pg from 'pg';
import { PRICE_AXIS_END, type WorkItemMessage } from '../src/domain.js';
import { acquireLock } from '../src/lease.js';
import { createLogger } from '../src/log.js';
import { startSimulator, type Simulator } from '../tools/simulator/server.js';
import { startAzurite, type Azurite } from './helpers/azurite.js';
import { nivodaEnv, runCli, type CliResult } from './helpers/cli.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startServiceBusPeer, type ServiceBusPeer } from './helpers/servicebus-peer.js';

interface PlanJson {
  runType: string;
  updatedFrom: string | null;
  updatedTo: string;
  watermarkBefore: string | null;
  totalRecords: number;
  priceField: string;
  partitions: Array<{ partitionId: string; priceMin: number; priceMax: number; expectedRecords: number }>;
  scan: { countQueries: number; durationMs: number };
}

/** CONTRACT §2 from the outside: ids in order, integer ranges tiling [0, 2147483647), exact counts. */
function assertTiling(plan: PlanJson, prices: ArrayLike<number>, matches: (i: number) => boolean = () => true): void {
  const parts = plan.partitions;
  assert.equal(parts[0]?.priceMin, 0);
  assert.equal(parts.at(-1)?.priceMax, PRICE_AXIS_END);
  parts.forEach((p, i) => {
    assert.equal(p.partitionId, `partition-${i + 1}`);
    assert.ok(Number.isInteger(p.priceMin) && Number.isInteger(p.priceMax) && p.priceMin < p.priceMax, JSON.stringify(p));
    if (i > 0) assert.equal(p.priceMin, parts[i - 1]!.priceMax);
  });
  // The worker rule applied to every stone: each lands in exactly one partition, and the counts are the estimates.
  const counts = new Array<number>(parts.length).fill(0);
  let inWindow = 0;
  for (let i = 0; i < prices.length; i++) {
    if (!matches(i)) continue;
    inWindow++;
    const dollars = prices[i]!;
    const owners = parts.filter((p) => dollars >= p.priceMin && dollars <= p.priceMax && dollars < p.priceMax);
    assert.equal(owners.length, 1, `stone at $${dollars} fetched by ${owners.length} partitions`);
    counts[parts.indexOf(owners[0]!)]!++;
  }
  assert.equal(plan.totalRecords, inWindow);
  assert.deepEqual(
    parts.map((p) => p.expectedRecords),
    counts,
  );
}

const secretsIn = (result: CliResult, secrets: string[]) => secrets.filter((s) => result.stderr.includes(s) || result.stdout.includes(s));

describe('command line, end to end', () => {
  let sim: Simulator;
  let azurite: Azurite;
  let peer: ServiceBusPeer;
  let database: TestDatabase;
  let sql: pg.Client;
  let tmp: string;
  const sbKey = 'c2VydmljZWJ1cy1rZXktZm9yLXRlc3Rz';

  before(async () => {
    // Settled one by one, so whatever did start is stopped in after() even if another failed.
    const started = await Promise.allSettled([
      startSimulator({ shape: 'realistic', seed: 7, size: 60_000 }).then((s) => (sim = s)),
      startAzurite().then((a) => (azurite = a)),
      startServiceBusPeer().then((p) => (peer = p)),
      createTestDatabase().then((d) => (database = d)),
    ]);
    const failure = started.find((r) => r.status === 'rejected');
    if (failure) throw failure.reason;
    sql = new pg.Client({ connectionString: database.url });
    await sql.connect();
    tmp = await mkdtemp(path.join(os.tmpdir(), 'scheduler-cli-'));
  });

  after(async () => {
    await Promise.allSettled([sql?.end(), sim?.close(), azurite?.stop(), peer?.close()]);
    await database?.drop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  const azureEnv = (container = 'watermarks') => ({
    ...nivodaEnv(sim),
    DATABASE_URL: database.url,
    AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
    WATERMARK_CONTAINER: container,
    AZURE_SERVICE_BUS_CONNECTION_STRING: peer.connectionString(sbKey),
    SCHEDULER_DATA_DIR: path.join(tmp, 'unused'),
    // A child killed by the test timeout must not keep later runs skipping for minutes.
    SCHEDULER_LOCK_TTL_SECONDS: '20',
  });
  const allSecrets = () => [sim.password, sbKey, azurite.connectionString.match(/AccountKey=([^;]+)/)![1]!, ...sim.issuedTokens()];
  const runCount = async () => Number((await sql.query('SELECT count(*) AS n FROM run_metadata')).rows[0].n);

  it('exits 2 naming every missing NIVODA_* variable', async () => {
    const result = await runCli(['run'], { SCHEDULER_DATA_DIR: path.join(tmp, 'none') });
    assert.equal(result.code, 2);
    const line = result.logs.find((l) => l.level === 'error');
    assert.deepEqual(line?.problems, ['NIVODA_ENDPOINT is required', 'NIVODA_USERNAME is required', 'NIVODA_PASSWORD is required']);
  });

  it('exits 2 on bad usage and on a bad NIVODA_QUERY, before touching anything', async () => {
    assert.equal((await runCli(['frobnicate'], nivodaEnv(sim))).code, 2);
    assert.equal((await runCli(['status', '--limit', '0'], {})).code, 2);
    const result = await runCli(['plan'], {
      ...nivodaEnv(sim),
      NIVODA_QUERY: '{"updatedAt": {"from": "2024-01-01T00:00:00Z"}}',
      HEATMAP_MAX_WORKERS: 'many',
    });
    assert.equal(result.code, 2);
    const problems = result.logs.find((l) => l.level === 'error')?.problems as string[];
    assert.equal(problems.length, 2);
    assert.ok(problems.some((p) => p.includes('"updatedAt"')));
    assert.equal(sim.stats().countQueries, 0);
  });

  it('plan --json prints a plan that holds every stone exactly once and writes nothing', async () => {
    const dataDir = path.join(tmp, 'plan');
    const result = await runCli(['plan', '--json'], { ...nivodaEnv(sim), SCHEDULER_DATA_DIR: dataDir });
    assert.equal(result.code, 0, result.stderr);
    const plan = JSON.parse(result.stdout) as PlanJson;
    assert.equal(plan.runType, 'full');
    assert.equal(plan.updatedFrom, null);
    assert.equal(plan.partitions.length, 12); // ceil(60,000 / 5,000)
    const dollars = Array.from(sim.inventory.priceCents, (cents) => cents / 100);
    assertTiling(plan, dollars, (i) => sim.inventory.updatedMs[i]! <= Date.parse(plan.updatedTo));
    assert.ok(plan.scan.countQueries > 0 && plan.scan.countQueries <= 40, `count queries ${plan.scan.countQueries}`);
    assert.ok(
      result.logs.every((l) => !('unparsable' in l)),
      'stderr must be JSON lines only',
    );
    await assert.rejects(
      import('node:fs/promises').then((fs) => fs.stat(path.join(dataDir, 'pglite'))),
      /ENOENT/,
    );
  });

  it('plan --json on the dollar_per_carat axis holds every stone exactly once too', async () => {
    const result = await runCli(['plan', '--json'], {
      ...nivodaEnv(sim),
      NIVODA_PRICE_FIELD: 'dollar_per_carat',
      SCHEDULER_DATA_DIR: path.join(tmp, 'plan-ppc'),
    });
    assert.equal(result.code, 0, result.stderr);
    const plan = JSON.parse(result.stdout) as PlanJson;
    assert.equal(plan.priceField, 'dollar_per_carat');
    const { priceCents, carats, updatedMs } = sim.inventory;
    const perCarat = Array.from(priceCents, (cents, i) => cents / 100 / carats[i]!);
    assertTiling(plan, perCarat, (i) => updatedMs[i]! <= Date.parse(plan.updatedTo));
  });

  it('a full run records the run, empties the raw table and publishes one work item per partition', async () => {
    await runCli(['migrate'], { DATABASE_URL: database.url });
    await sql.query(
      `INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ('s-1', 'o-1', '{}', gen_random_uuid())`,
    );
    const result = await runCli(['run'], azureEnv());
    assert.equal(result.code, 0, result.stderr);

    const runs = (await sql.query('SELECT * FROM run_metadata')).rows;
    assert.equal(runs.length, 1);
    const [run] = runs;
    assert.equal(run.status, 'published');
    assert.equal(run.run_type, 'full');
    assert.equal((await sql.query('SELECT count(*) AS n FROM raw_diamonds_nivoda')).rows[0].n, '0');

    const messages = peer.received.filter((m) => (m.body as WorkItemMessage).runId === run.run_id);
    assert.equal(messages.length, run.expected_workers);
    const bodies = messages.map((m) => m.body as WorkItemMessage);
    bodies.forEach((body, i) => {
      const message = messages[i]!;
      assert.equal(message.messageId, `${body.runId}:${body.partitionId}`);
      assert.equal(message.subject, 'work-item');
      assert.equal(message.contentType, 'application/json');
      assert.deepEqual(message.applicationProperties, { runId: body.runId, partitionId: body.partitionId });
      assert.equal(body.isIncremental, false);
      assert.equal(body.partitionCount, bodies.length);
      assert.equal(body.updatedFrom, undefined);
      assert.equal(body.priceField, 'dollar_value');
      assert.deepEqual(body.query, {}, 'the base filter travels with the work item');
      assert.match(body.updatedTo, /Z$/);
    });
    const partitions = (
      await sql.query('SELECT count(*) AS n FROM run_partitions WHERE run_id = $1 AND published_at IS NOT NULL', [run.run_id])
    ).rows[0].n;
    assert.equal(Number(partitions), bodies.length);
    assert.deepEqual(secretsIn(result, allSecrets()), []);
    // The process's first line (its configuration) precedes the run; every line of the run carries its runId.
    const runIds = new Set(result.logs.filter((l) => l.msg !== 'configuration loaded').map((l) => l.runId));
    assert.deepEqual([...runIds], [run.run_id], 'every log line of the run carries its runId');
    const backends = result.logs.filter((l) => l.msg === 'backends');
    assert.equal(backends.length, 1, 'the backends are logged once');
    assert.match(String(backends[0]!.database), /^PostgreSQL 127\.0\.0\.1:5432\//);
    assert.match(String(backends[0]!.queue), /^Service Bus queue "work-items" in 127\.0\.0\.1:\d+$/);
    assert.match(String(backends[0]!.watermark), /^blob watermarks\/nivoda\.json$/);
  });

  it('a full run is refused while an earlier run is being worked, before spending any count query, unless --force', async () => {
    const before = peer.received.length;
    const queries = sim.stats().countQueries;
    const refused = await runCli(['run', '--full'], azureEnv());
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /--force/);
    const failure = refused.logs.find((l) => l.level === 'error');
    assert.equal(typeof failure?.runId, 'string', 'the failure line carries the runId');
    assert.ok(failure?.nivoda, 'and the Nivoda counters');
    assert.equal(sim.stats().countQueries, queries);
    assert.equal(peer.received.length, before);
    // The refusal is visible: a failed row with the guard's words.
    assert.equal(await runCount(), 2);
    const refusedRow = (await sql.query('SELECT status, error FROM run_metadata WHERE run_id = $1', [failure?.runId])).rows[0];
    assert.equal(refusedRow.status, 'failed');
    assert.match(String(refusedRow.error), /may still be worked/);
    // What the first run's workers would have written, every stone: between last night's
    // boundaries the warm scan then goes by the raw table's stones per dollar.
    await sql.query(
      `INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id)
       SELECT 'sim-' || i, 'offer-' || i, jsonb_build_object('price', cents), gen_random_uuid()
         FROM unnest($1::int[]) WITH ORDINALITY AS t(cents, i)`,
      [Array.from(sim.inventory.priceCents)],
    );
    const forced = await runCli(['run', '--full', '--force'], azureEnv());
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal(await runCount(), 3);
    // Last night's plan of the same kind is the starting point: a warm scan, cheaper than the cold one.
    const start = forced.logs.find((l) => l.start !== undefined);
    assert.equal(start?.start, 'warm', JSON.stringify(start));
    const [cold, warm] = (
      await sql.query(
        `SELECT count_queries, jsonb_array_length(scan_points) AS points FROM run_metadata WHERE status <> 'failed' ORDER BY started_at`,
      )
    ).rows;
    assert.ok(Number(warm.count_queries) < Number(cold.count_queries), `warm ${warm.count_queries} < cold ${cold.count_queries}`);
    // Every price a scan probed is recorded with its run (the total is the one query without a
    // price), and the warm scan started from all of last night's.
    assert.equal(Number(cold.points), Number(cold.count_queries) - 1);
    assert.equal(Number(warm.points), Number(warm.count_queries) - 1);
    assert.equal(start?.historyPoints, Number(cold.points));
    assert.equal(start?.prior, 'stones', JSON.stringify(start));
    assert.equal(start?.historyStoneDollars, new Set(Array.from(sim.inventory.priceCents, (c) => Math.floor(c / 100))).size);
    assert.equal((await sql.query('SELECT count(*) AS n FROM raw_diamonds_nivoda')).rows[0].n, '0', 'and the full run emptied it');
  });

  it('a run left in scheduling by a crash is finished by the next run --full: same run id, no scan, raw table untouched', async () => {
    await sql.query(
      `UPDATE run_metadata SET completed_at = now(), status = 'completed' WHERE completed_at IS NULL AND recorded_at IS NOT NULL`,
    ); // the consolidator's part
    const crashed = '00000000-0000-4000-8000-000000000001';
    await sql.query(
      `INSERT INTO run_metadata (run_id, run_type, status, expected_workers, updated_to, price_field, started_at, recorded_at, base_query)
       VALUES ($1, 'full', 'scheduling', 2, now(), 'dollar_value', now(), now(), '{}')`,
      [crashed],
    );
    await sql.query(
      `INSERT INTO run_partitions (run_id, partition_id, price_min, price_max, expected_records, published_at)
       VALUES ($1, 'partition-1', 0, 500, 10, now()), ($1, 'partition-2', 500, 2147483647, 10, NULL)`,
      [crashed],
    );
    await sql.query(`INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ('s-3', 'o-3', '{}', $1)`, [
      crashed,
    ]);
    const runs = await runCount();
    const queries = sim.stats().countQueries;
    const before = peer.received.length;
    const result = await runCli(['run', '--full'], azureEnv());
    assert.equal(result.code, 0, result.stderr);
    assert.ok(result.logs.some((l) => String(l.msg).startsWith('finishing a run recorded by an earlier invocation')));
    assert.equal((await sql.query('SELECT status FROM run_metadata WHERE run_id = $1', [crashed])).rows[0].status, 'published');
    assert.deepEqual(
      peer.received.slice(before).map((m) => m.messageId),
      [`${crashed}:partition-1`, `${crashed}:partition-2`],
    );
    assert.equal(await runCount(), runs, 'no new run');
    assert.equal(sim.stats().countQueries, queries, 'no new scan');
    assert.equal((await sql.query('SELECT count(*) AS n FROM raw_diamonds_nivoda')).rows[0].n, '1', 'the raw table is untouched');
    await sql.query(`UPDATE run_metadata SET completed_at = now(), status = 'completed' WHERE run_id = $1`, [crashed]);
  });

  it('an empty inventory with nothing to lose is a normal, empty run: exit 0, nothing published', async () => {
    const empty = await startSimulator({ shape: 'empty' });
    const fresh = await createTestDatabase();
    try {
      const before = peer.received.length;
      const result = await runCli(['run'], { ...azureEnv('empty-inventory'), NIVODA_ENDPOINT: empty.url, DATABASE_URL: fresh.url });
      assert.equal(result.code, 0, result.stderr);
      assert.ok(result.logs.some((l) => l.msg === 'run finished: the window holds no stones'));
      assert.equal(peer.received.length, before);
      const status = JSON.parse((await runCli(['status', '--json'], { DATABASE_URL: fresh.url })).stdout) as Array<{
        status: string;
        completedAt: string | null;
      }>;
      assert.equal(status[0]?.status, 'completed');
      assert.ok(status[0]?.completedAt, 'a run without work items is complete at once');
    } finally {
      await empty.close();
      await fresh.drop();
    }
  });

  it('a full scan that finds no stones does not empty the raw table', async () => {
    await sql.query('UPDATE run_metadata SET completed_at = now() WHERE completed_at IS NULL'); // the consolidator's part
    await sql.query(
      `INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ('s-2', 'o-2', '{}', gen_random_uuid())`,
    );
    const runs = await runCount();
    const rawRows = async () => Number((await sql.query('SELECT count(*) AS n FROM raw_diamonds_nivoda')).rows[0].n);
    const raw = await rawRows();
    assert.ok(raw > 0);
    const result = await runCli(['run', '--full'], { ...azureEnv(), NIVODA_QUERY: '{"sizes": {"from": 1000}}' });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /found no stones/);
    assert.equal(await runCount(), runs + 1, 'the refused night is visible');
    const [latest] = (await sql.query('SELECT status, error, recorded_at FROM run_metadata ORDER BY started_at DESC LIMIT 1')).rows;
    assert.equal(latest.status, 'failed');
    assert.match(String(latest.error), /found no stones/);
    assert.equal(latest.recorded_at, null);
    assert.equal(await rawRows(), raw);
  });

  it('watermark set refuses a bad or future date as a usage error', async () => {
    const bad = await runCli(['watermark', 'set', 'yesterday'], azureEnv());
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /lastUpdatedAt/);
    const future = await runCli(['watermark', 'set', new Date(Date.now() + 3600_000).toISOString()], azureEnv());
    assert.equal(future.code, 2);
    assert.match(future.stderr, /in the future/);
  });

  it('an unusable Service Bus connection string is a configuration error', async () => {
    const result = await runCli(['run'], { ...azureEnv(), AZURE_SERVICE_BUS_CONNECTION_STRING: 'garbage;SharedAccessKey=sekrit-key-123' });
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /AZURE_SERVICE_BUS_CONNECTION_STRING/);
    assert.ok(!result.stderr.includes('sekrit-key-123'));
  });

  it('with a watermark, the run is incremental from the watermark minus the safety buffer', async () => {
    const lastUpdatedAt = new Date(Date.now() - 24 * 3600_000).toISOString();
    const set = await runCli(['watermark', 'set', lastUpdatedAt], azureEnv());
    assert.equal(set.code, 0, set.stderr);
    const get = await runCli(['watermark', 'get'], azureEnv());
    assert.equal(JSON.parse(get.stdout).lastUpdatedAt, lastUpdatedAt);

    const before = peer.received.length;
    const result = await runCli(['run'], azureEnv());
    assert.equal(result.code, 0, result.stderr);
    const bodies = peer.received.slice(before).map((m) => m.body as WorkItemMessage);
    assert.ok(bodies.length >= 1 && bodies.length <= 10, `${bodies.length} incremental partitions`);
    const expectedFrom = new Date(Date.parse(lastUpdatedAt) - 15 * 60_000).toISOString();
    for (const body of bodies) {
      assert.equal(body.isIncremental, true);
      assert.equal(body.watermarkBefore, lastUpdatedAt);
      assert.equal(body.updatedFrom, expectedFrom);
    }
    const from = Date.parse(expectedFrom);
    const to = Date.parse(bodies[0]!.updatedTo);
    const inWindow = Array.from(sim.inventory.updatedMs).filter((t) => t >= from && t <= to).length;
    assert.equal(
      bodies.reduce((sum, b) => sum + b.expectedRecords, 0),
      inWindow,
    );
  });

  it('a second scheduler is skipped with exit 0 while the lock is held', async () => {
    const admin = new pg.Pool({ connectionString: database.url, max: 1 });
    const wrap = {
      query: async (text: string, params?: readonly unknown[]) => (await admin.query(text, params as unknown[])).rows,
      exec: async (text: string) => void (await admin.query(text)),
    };
    const lock = await acquireLock(wrap, { holder: 'other-host:4242:run-x', ttlSeconds: 60, logger: createLogger({ level: 'silent' }) });
    assert.ok(lock.acquired);
    try {
      const runs = await runCount();
      const result = await runCli(['run'], azureEnv());
      assert.equal(result.code, 0, result.stderr);
      const skipped = result.logs.find((l) => String(l.msg).startsWith('skipped'));
      assert.equal(skipped?.holder, 'other-host:4242:run-x');
      assert.equal(await runCount(), runs);
    } finally {
      await lock.release();
      await admin.end();
    }
  });

  it('RUN_TYPE=incremental without a watermark, or a malformed watermark, fails with exit 1 and writes nothing', async () => {
    const runs = await runCount();
    const published = peer.received.length;
    const missing = await runCli(['run'], { ...azureEnv('empty-container'), RUN_TYPE: 'incremental' });
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no watermark/);

    const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('broken');
    await container.createIfNotExists();
    await container.getBlockBlobClient('nivoda.json').upload('{"lastUpdatedAt": "yesterday"}', 30);
    const malformed = await runCli(['run'], azureEnv('broken'));
    assert.equal(malformed.code, 1);
    assert.match(malformed.stderr, /malformed.*lastUpdatedAt/);
    // Both nights are visible as failed rows with their cause; nothing was recorded or published.
    assert.equal(await runCount(), runs + 2);
    const failed = (await sql.query('SELECT status, error, recorded_at FROM run_metadata ORDER BY started_at DESC LIMIT 2')).rows;
    assert.deepEqual(
      failed.map((r) => [r.status, r.recorded_at]),
      [
        ['failed', null],
        ['failed', null],
      ],
    );
    assert.match(String(failed[0].error), /malformed/);
    assert.match(String(failed[1].error), /no watermark/);
    assert.equal(peer.received.length, published);
    // The operator's repair path still works on a malformed watermark.
    assert.equal((await runCli(['watermark', 'clear'], azureEnv('broken'))).code, 0);
    assert.deepEqual(secretsIn(malformed, allSecrets()), []);
  });

  it('bad Nivoda credentials fail the run with a clear message and no secret in the output', async () => {
    const result = await runCli(['run'], { ...azureEnv(), NIVODA_PASSWORD: 'wrong-password-123' });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /authentication failed/i);
    assert.ok(!result.stderr.includes('wrong-password-123'));
  });

  it('a queue that cannot take messages fails the run before it is recorded, exit 1 with the cause', async () => {
    const result = await runCli(['run'], { ...azureEnv(), AZURE_SERVICE_BUS_QUEUE: 'no-such-queue' });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /Service Bus queue \\"no-such-queue\\" in 127\.0\.0\.1:\d+ is not reachable/);
    const [latest] = (await sql.query('SELECT status, error, recorded_at FROM run_metadata ORDER BY started_at DESC LIMIT 1')).rows;
    assert.equal(latest.status, 'failed');
    assert.equal(latest.recorded_at, null, 'nothing was recorded');
    assert.match(String(latest.error), /could not be found|not reachable/);
    assert.deepEqual(secretsIn(result, allSecrets()), []);
  });

  it('runs with zero setup: embedded database, file watermark, local queue', async () => {
    const env = { ...nivodaEnv(sim), SCHEDULER_DATA_DIR: path.join(tmp, 'embedded') };
    const result = await runCli(['run'], env);
    assert.equal(result.code, 0, result.stderr);
    const peek = await runCli(['queue', 'peek', '--limit', '100'], env);
    assert.equal(peek.code, 0, peek.stderr);
    const items = peek.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { messageId: string; body: WorkItemMessage });
    assert.equal(items.length, 12);
    assert.equal(items[0]!.messageId, `${items[0]!.body.runId}:partition-1`);
    const status = await runCli(['status', '--json'], env);
    const [run] = JSON.parse(status.stdout) as Array<{ status: string; expectedWorkers: number }>;
    assert.equal(run?.status, 'published');
    assert.equal(run?.expectedWorkers, 12);
  });
});
