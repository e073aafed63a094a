// Crash and fault tests on the real process (CONTRACT §1, §7): a real PostgreSQL database
// (directly or through a proxy the test cuts), the real Service Bus SDK against the AMQP peer
// (with duplicate detection, as the queue is deployed), and the Nivoda simulator over HTTP.
// Each test uses its own database, so one test's leftovers cannot decide another's outcome.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import type { WorkItemMessage } from '../src/domain.js';
import { FileWatermarkStore } from '../src/watermark/file-store.js';
import { startSimulator, type Simulator } from '../tools/simulator/server.js';
import { runCli, startCli } from './helpers/cli.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { closedPort, startServiceBusPeer, type ServiceBusPeer } from './helpers/servicebus-peer.js';
import { startTcpProxy } from './helpers/tcp-proxy.js';

const QUEUE = 'work-items';

describe('run safety on the real process', () => {
  let sim: Simulator;
  let tmp: string;
  const databases: TestDatabase[] = [];
  const peers: ServiceBusPeer[] = [];

  before(async () => {
    sim = await startSimulator({ shape: 'realistic', seed: 11, size: 40_000 });
    tmp = await mkdtemp(path.join(os.tmpdir(), 'scheduler-safety-'));
  });

  after(async () => {
    await Promise.allSettled([sim?.close(), ...peers.map((p) => p.close())]);
    await Promise.allSettled(databases.map((d) => d.drop()));
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** A fresh database (migrated) with a SQL client, a peer with duplicate detection and small batches, and the env. */
  async function setup(name: string, peerOptions: { maxMessageSize?: number } = {}) {
    const database = await createTestDatabase();
    databases.push(database);
    const peer = await startServiceBusPeer({ duplicateDetection: true, maxMessageSize: peerOptions.maxMessageSize ?? 262_144 });
    peers.push(peer);
    const sql = new pg.Pool({ connectionString: database.url, max: 2 });
    const env: Record<string, string> = {
      NIVODA_ENDPOINT: sim.url,
      NIVODA_USERNAME: sim.username,
      NIVODA_PASSWORD: sim.password,
      NIVODA_MAX_REQUESTS_PER_SECOND: '200',
      NIVODA_GLOBAL_REQUESTS_PER_SECOND: '200',
      DATABASE_URL: database.url,
      AZURE_SERVICE_BUS_CONNECTION_STRING: peer.connectionString(),
      SCHEDULER_DATA_DIR: path.join(tmp, name),
    };
    assert.equal((await runCli(['migrate'], env)).code, 0);
    const one = async (text: string, params: unknown[] = []) => (await sql.query(text, params)).rows[0] as Record<string, unknown>;
    const runs = async () => (await sql.query('SELECT * FROM run_metadata ORDER BY started_at')).rows as Array<Record<string, unknown>>;
    const rawCount = async () => Number((await one('SELECT count(*) AS n FROM raw_diamonds_nivoda')).n);
    const addRawRow = (id: string) =>
      sql.query(`INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ($1, $1, '{}', gen_random_uuid())`, [
        id,
      ]);
    const storedIds = () => peer.messages(QUEUE).map((m) => m.messageId);
    return { database, peer, sql, env, one, runs, rawCount, addRawRow, storedIds, done: () => sql.end() };
  }

  /** Each messageId once at the peer, and exactly the run's partitions. */
  function assertEachPartitionOnce(ids: Array<string | undefined>, runId: string, partitions: number): void {
    const expected = Array.from({ length: partitions }, (_, i) => `${runId}:partition-${i + 1}`).sort();
    assert.deepEqual([...ids].sort(), expected);
  }

  it('production without Azure settings exits 2 naming each; with SCHEDULER_LOCAL=1 it runs locally and logs its backends', async () => {
    const env = { NIVODA_ENDPOINT: sim.url, NIVODA_USERNAME: sim.username, NIVODA_PASSWORD: sim.password, NODE_ENV: 'production' };
    const refused = await runCli(['run'], { ...env, SCHEDULER_DATA_DIR: path.join(tmp, 'prod') });
    assert.equal(refused.code, 2, refused.stderr);
    const problems = (refused.logs.find((l) => Array.isArray(l.problems))?.problems ?? []) as string[];
    for (const name of ['DATABASE_URL', 'AZURE_STORAGE_ACCOUNT_URL', 'AZURE_SERVICE_BUS_NAMESPACE']) {
      assert.ok(
        problems.some((p) => p.startsWith(name)),
        `${name} named: ${problems.join('; ')}`,
      );
    }
    const local = await runCli(['run'], { ...env, SCHEDULER_LOCAL: '1', SCHEDULER_DATA_DIR: path.join(tmp, 'prod-local') });
    assert.equal(local.code, 0, local.stderr);
    const backends = local.logs.filter((l) => l.msg === 'backends');
    assert.equal(backends.length, 1);
    assert.match(String(backends[0]!.database), /^embedded PGlite in .*prod-local/);
    assert.match(String(backends[0]!.queue), /^local queue/);
    assert.match(String(backends[0]!.watermark), /prod-local.*nivoda\.json$/);
  });

  it('a wrong password and an unreachable API each leave a failed row that status shows with its cause', async () => {
    const t = await setup('visible');
    try {
      const wrong = await runCli(['run'], { ...t.env, NIVODA_PASSWORD: 'not-the-password-1' });
      assert.equal(wrong.code, 1);
      const port = await closedPort();
      const down = await runCli(['run'], { ...t.env, NIVODA_ENDPOINT: `http://127.0.0.1:${port}/api/diamonds`, NIVODA_MAX_ATTEMPTS: '2' });
      assert.equal(down.code, 1);
      // Network errors name the host and port; expected failures are one line without a stack.
      assert.match(down.stderr, new RegExp(`network error reaching 127\\.0\\.0\\.1:${port}: ECONNREFUSED`));
      const errorLines = down.logs.filter((l) => l.level === 'error');
      assert.equal(errorLines.length, 1);
      assert.equal(errorLines[0]!.err, undefined, 'no stack trace at error level');
      assert.ok(down.logs.some((l) => l.level === 'debug' && l.msg === 'the failure in full'));

      const status = await runCli(['status', '--json'], t.env);
      assert.equal(status.code, 0, status.stderr);
      const rows = JSON.parse(status.stdout) as Array<{ status: string; error: string | null; recordedAt: string | null }>;
      assert.deepEqual(
        rows.map((r) => r.status),
        ['failed', 'failed'],
      );
      assert.match(rows[0]!.error ?? '', /ECONNREFUSED/);
      assert.match(rows[1]!.error ?? '', /authentication failed/i);
      assert.ok(!status.stdout.includes('not-the-password-1'));
      const text = await runCli(['status'], t.env);
      assert.match(text.stdout, /failed .*error: Nivoda authentication failed/s);
    } finally {
      await t.done();
    }
  });

  it('Service Bus down before the transaction: exit 1, nothing recorded, the raw table untouched', async () => {
    const t = await setup('sb-down');
    try {
      await t.addRawRow('kept-1');
      const port = await closedPort();
      const result = await runCli(['run', '--full'], {
        ...t.env,
        AZURE_SERVICE_BUS_CONNECTION_STRING: `Endpoint=sb://127.0.0.1:${port};SharedAccessKeyName=test;SharedAccessKey=abc;UseDevelopmentEmulator=true`,
      });
      assert.equal(result.code, 1);
      assert.match(result.stderr, new RegExp(`in 127\\.0\\.0\\.1:${port} is not reachable`));
      assert.equal(await t.rawCount(), 1, 'the raw table was not emptied');
      const [run] = await t.runs();
      assert.equal(run?.status, 'failed');
      assert.equal(run?.recorded_at, null);
      assert.equal(Number((await t.one('SELECT count(*) AS n FROM run_partitions')).n), 0);
    } finally {
      await t.done();
    }
  });

  it('the broker failing mid-publish: exit 1; with the broker back the next invocation publishes the rest of the same run', async () => {
    // Small batches (about 3 work items each), so a publish has several.
    const t = await setup('mid-publish', { maxMessageSize: 1500 });
    try {
      t.peer.rejectNext(1000, 'com.microsoft:server-busy', { skip: 2 });
      const first = await runCli(['run'], t.env);
      assert.equal(first.code, 1, first.stderr);
      assert.match(first.stderr, /the next invocation publishes its work items again under the same run id/);
      const [run] = await t.runs();
      assert.equal(run?.status, 'failed');
      assert.ok(run?.recorded_at, 'recorded');
      const partitions = Number(run?.expected_workers);
      assert.ok(partitions > 6, `${partitions} partitions`);
      const out = t.storedIds().length;
      assert.ok(out > 0 && out < partitions, `${out} of ${partitions} out`);
      await t.addRawRow('written-by-a-worker');

      t.peer.rejectNext(0, 'com.microsoft:server-busy');
      const queries = sim.stats().countQueries;
      const second = await runCli(['run'], t.env);
      assert.equal(second.code, 0, second.stderr);
      assert.equal((await t.runs()).length, 1, 'no new run');
      assert.equal(sim.stats().countQueries, queries, 'no new scan');
      assert.equal(await t.rawCount(), 1, 'the raw table is not emptied a second time');
      const [finished] = await t.runs();
      assert.equal(finished?.status, 'published');
      assert.equal(finished?.publish_attempts, 2);
      assertEachPartitionOnce(t.storedIds(), String(run?.run_id), partitions);
    } finally {
      await t.done();
    }
  });

  it('SIGKILL while the broker holds an unacknowledged batch: the next run --full finishes the run and does not empty the raw table', async () => {
    const t = await setup('sigkill', { maxMessageSize: 1500 });
    try {
      t.peer.holdNext(1);
      const running = startCli(['run'], t.env);
      await running.waitForLog((l) => l.msg === 'run recorded');
      for (let i = 0; i < 200 && t.peer.received.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(t.peer.received.length > 0, 'the broker holds a batch');
      running.child.kill('SIGKILL');
      await running.result;
      const [run] = await t.runs();
      assert.equal(run?.status, 'scheduling');
      await t.addRawRow('written-by-a-worker');

      // The killed holder's lease: `lock` names it, `lock release` frees it (its process is gone).
      const lock = await runCli(['lock', '--json'], t.env);
      assert.equal(lock.code, 0, lock.stderr);
      const lease = JSON.parse(lock.stdout) as { holder: string; holderGone: boolean; expiresAt: string };
      assert.equal(lease.holder.split(':')[1], String(running.child.pid));
      assert.equal(lease.holderGone, true);
      const released = await runCli(['lock', 'release'], t.env);
      assert.equal(released.code, 0, released.stderr);

      const next = await runCli(['run', '--full'], t.env);
      assert.equal(next.code, 0, next.stderr);
      assert.equal(await t.rawCount(), 1, 'not emptied under the workers of the first run');
      assert.equal((await t.runs()).length, 1);
      assert.equal((await t.runs())[0]?.status, 'published');
      assertEachPartitionOnce(t.storedIds(), String(run?.run_id), Number(run?.expected_workers));
    } finally {
      await t.done();
    }
  });

  it('the database dropping out mid-publish: exit 1; the next run --full finishes the run and does not empty the raw table', async () => {
    const t = await setup('db-drop', { maxMessageSize: 1500 });
    const target = new URL(t.database.url);
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port) });
    try {
      const viaProxy = new URL(t.database.url);
      viaProxy.port = String(proxy.port);
      const env = { ...t.env, DATABASE_URL: viaProxy.toString() };
      t.peer.ackDelayMs = 300;
      const running = startCli(['run'], env);
      await running.waitForLog((l) => l.msg === 'run recorded');
      proxy.cut();
      const result = await running.result;
      proxy.restore();
      t.peer.ackDelayMs = 0;
      assert.equal(result.code, 1, result.stderr);
      const [run] = await t.runs();
      assert.notEqual(run?.status, 'published');
      assert.ok(run?.recorded_at);
      await t.addRawRow('written-by-a-worker');
      // Its lease could not be released with the database gone: the holder has exited, so it may be freed.
      assert.equal((await runCli(['lock', 'release'], env)).code, 0);

      const next = await runCli(['run', '--full'], env);
      assert.equal(next.code, 0, next.stderr);
      assert.equal(await t.rawCount(), 1);
      assert.equal((await t.runs()).length, 1);
      assert.equal((await t.runs())[0]?.status, 'published');
      assertEachPartitionOnce(t.storedIds(), String(run?.run_id), Number(run?.expected_workers));
    } finally {
      await proxy.close();
      await t.done();
    }
  });

  it('SIGTERM mid-publish: exit 1 within 25 s, the run failed "stopped", the lease released; the immediate rerun finishes it', async () => {
    const t = await setup('sigterm', { maxMessageSize: 1500 });
    try {
      t.peer.ackDelayMs = 1000;
      const running = startCli(['run'], t.env);
      await running.waitForLog((l) => l.msg === 'run recorded');
      for (let i = 0; i < 200 && t.peer.received.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      const signalled = Date.now();
      running.child.kill('SIGTERM');
      const result = await running.result;
      assert.equal(result.code, 1, result.stderr);
      assert.ok(Date.now() - signalled < 25_000, `stopped in ${Date.now() - signalled} ms`);
      const [run] = await t.runs();
      assert.equal(run?.status, 'failed');
      assert.match(String(run?.error), /^stopped: stopped by SIGTERM/);
      assert.ok(t.storedIds().length < Number(run?.expected_workers), 'it stopped before the end');
      assert.equal(Number((await t.one('SELECT count(*) AS n FROM scheduler_lock')).n), 0, 'the lease was released');

      t.peer.ackDelayMs = 0;
      const rerun = await runCli(['run'], t.env);
      assert.equal(rerun.code, 0, rerun.stderr);
      assert.ok(!rerun.logs.some((l) => String(l.msg).startsWith('skipped')));
      assertEachPartitionOnce(t.storedIds(), String(run?.run_id), Number(run?.expected_workers));
    } finally {
      await t.done();
    }
  });

  it('SIGTERM during the scan marks the run failed and releases the lease', async () => {
    const t = await setup('sigterm-scan');
    sim.configure({ latencyMs: 300 });
    try {
      const running = startCli(['run'], t.env);
      await running.waitForLog((l) => l.msg === 'scanning inventory density');
      running.child.kill('SIGTERM');
      const result = await running.result;
      assert.equal(result.code, 1, result.stderr);
      const [run] = await t.runs();
      assert.equal(run?.status, 'failed');
      assert.match(String(run?.error), /stopped by SIGTERM/);
      assert.equal(run?.recorded_at, null);
      assert.equal(Number((await t.one('SELECT count(*) AS n FROM scheduler_lock')).n), 0);
    } finally {
      sim.configure({ latencyMs: 0 });
      await t.done();
    }
  });

  it('a lease lost mid-publish stops publishing before the next batch', async () => {
    const t = await setup('lease-lost', { maxMessageSize: 1500 });
    try {
      t.peer.ackDelayMs = 800;
      const running = startCli(['run'], { ...t.env, SCHEDULER_LOCK_TTL_SECONDS: '3' });
      await running.waitForLog((l) => l.msg === 'run recorded');
      // Another scheduler takes the lease over (as after a pause past the TTL).
      await t.sql.query(`UPDATE scheduler_lock SET token = gen_random_uuid(), holder = 'elsewhere:1:other'`);
      const result = await running.result;
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /scheduler lock lost/);
      const [run] = await t.runs();
      assert.equal(run?.status, 'failed');
      assert.match(String(run?.error), /lock lost/);
      assert.ok(t.storedIds().length < Number(run?.expected_workers), 'publishing stopped');
    } finally {
      await t.done();
    }
  });

  it('status <runId> shows the run and its partitions; abandon is an operator decision; a watermark offset is passed on in UTC', async () => {
    const t = await setup('status');
    try {
      const dir = path.join(tmp, 'status', 'watermarks');
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'nivoda.json'), JSON.stringify({ lastUpdatedAt: '2026-11-30T04:00:00.000+02:00' }));
      const result = await runCli(['run'], t.env);
      assert.equal(result.code, 0, result.stderr);
      const [run] = await t.runs();
      const runId = String(run?.run_id);
      // The document it started from, so an operator's later `watermark set` is told apart from it.
      const read = await new FileWatermarkStore(path.join(dir, 'nivoda.json')).read();
      assert.equal(run?.watermark_etag, read?.etag);
      const bodies = t.peer.messages(QUEUE).map((m) => m.body as WorkItemMessage);
      assert.ok(bodies.length > 0);
      assert.ok(bodies.every((b) => b.watermarkBefore === '2026-11-30T02:00:00.000Z' && b.updatedFrom === '2026-11-30T01:45:00.000Z'));

      const json = await runCli(['status', runId, '--json'], t.env);
      assert.equal(json.code, 0, json.stderr);
      const shown = JSON.parse(json.stdout) as {
        runId: string;
        status: string;
        partitions: Array<{ partitionId: string; expectedRecords: number; publishedAt: string | null }>;
      };
      assert.equal(shown.runId, runId);
      assert.equal(shown.partitions.length, bodies.length);
      assert.ok(shown.partitions.every((p) => p.publishedAt !== null));
      const text = await runCli(['status', runId], t.env);
      assert.match(text.stdout, new RegExp(`run ${runId}: published \\(incremental\\)`));
      assert.match(text.stdout, /partition-1 +\$0 ≤ price < /);

      assert.equal((await runCli(['status', 'not-a-run'], t.env)).code, 2);
      const abandoned = await runCli(['abandon', runId, '--reason', 'test'], t.env);
      assert.equal(abandoned.code, 0, abandoned.stderr);
      assert.equal((await t.runs())[0]?.status, 'abandoned');
      assert.match(String((await t.runs())[0]?.error), /abandoned by an operator: test/);
    } finally {
      await t.done();
    }
  });

  it('abandoning a recorded full run needs --force and then clears the watermark, so the next run refills the raw table', async () => {
    const t = await setup('abandon-full');
    try {
      const dir = path.join(tmp, 'abandon-full', 'watermarks');
      await mkdir(dir, { recursive: true });
      const watermarkFile = path.join(dir, 'nivoda.json');
      await writeFile(watermarkFile, JSON.stringify({ lastUpdatedAt: new Date(Date.now() - 86_400_000).toISOString() }));
      const full = await runCli(['run', '--full'], t.env);
      assert.equal(full.code, 0, full.stderr);
      const [run] = await t.runs();
      assert.equal(run?.run_type, 'full');
      const refused = await runCli(['abandon', String(run?.run_id)], t.env);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /emptied raw_diamonds_nivoda.*--force/);
      assert.equal((await t.runs())[0]?.status, 'published');
      const forced = await runCli(['abandon', String(run?.run_id), '--force', '--reason', 'bad vendor data'], t.env);
      assert.equal(forced.code, 0, forced.stderr);
      assert.match(forced.stdout, /the watermark was cleared: the next run is a full run/);
      assert.equal((await t.runs())[0]?.status, 'abandoned');
      await assert.rejects(readFile(watermarkFile), /ENOENT/);
    } finally {
      await t.done();
    }
  });

  it('lock and lock release on PostgreSQL: a live holder is refused without --force', async () => {
    const t = await setup('lock-live');
    try {
      assert.match((await runCli(['lock'], t.env)).stdout, /nobody holds the scheduler lock/);
      await t.sql.query(
        `INSERT INTO scheduler_lock (name, holder, token, acquired_at, renewed_at, expires_at)
         VALUES ('scheduler', 'other-host:77:run-y', gen_random_uuid(), now(), now(), now() + interval '5 minutes')`,
      );
      const shown = await runCli(['lock'], t.env);
      assert.match(shown.stdout, /holder: other-host:77:run-y/);
      assert.match(shown.stdout, /expiresAt: /);
      const refused = await runCli(['lock', 'release'], t.env);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /--force/);
      const skipped = await runCli(['run'], t.env);
      assert.equal(skipped.code, 0);
      const line = skipped.logs.find((l) => String(l.msg).startsWith('skipped'));
      assert.equal(line?.holder, 'other-host:77:run-y');
      assert.ok(typeof line?.expiresAt === 'string', 'the skipped line says when the lease expires');
      const forced = await runCli(['lock', 'release', '--force'], t.env);
      assert.equal(forced.code, 0, forced.stderr);
      assert.equal(Number((await t.one('SELECT count(*) AS n FROM scheduler_lock')).n), 0);
    } finally {
      await t.done();
    }
  });

  it('lock and lock release on PGlite: the lock file of a gone process is shown and freed', async () => {
    const dataDir = path.join(tmp, 'pglite-lock');
    const env = { SCHEDULER_DATA_DIR: dataDir };
    assert.equal((await runCli(['migrate'], env)).code, 0);
    assert.match((await runCli(['lock'], env)).stdout, /nobody holds the scheduler lock/);
    const file = `${path.join(dataDir, 'pglite')}.lock`;
    await writeFile(
      file,
      JSON.stringify({ holder: `${os.hostname()}:999999:run-z`, pid: 999_999, hostname: os.hostname(), since: new Date().toISOString() }),
    );
    const shown = await runCli(['lock', '--json'], env);
    const lock = JSON.parse(shown.stdout) as { kind: string; holderGone: boolean };
    assert.equal(lock.kind, 'lock file');
    assert.equal(lock.holderGone, true);
    assert.equal((await runCli(['lock', 'release'], env)).code, 0);
    await assert.rejects(readFile(file), /ENOENT/);
    // A live holder (this test process) is refused without --force.
    await writeFile(file, JSON.stringify({ holder: 'me', pid: process.pid, hostname: os.hostname(), since: new Date().toISOString() }));
    const refused = await runCli(['lock', 'release'], env);
    assert.equal(refused.code, 1);
    assert.equal((await runCli(['lock', 'release', '--force'], env)).code, 0);
  });

  it('messages: unknown command, --version, and pg warnings as JSON log lines', async () => {
    const typo = await runCli(['rnu'], {});
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /unknown command \\"rnu\\" \(commands: run, plan, status/);
    assert.doesNotMatch(typo.stderr, /too many arguments/);
    const version = await runCli(['--version'], {});
    assert.equal(version.code, 0);
    const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.equal(version.stdout.trim(), pkg.version);
    const database = await createTestDatabase();
    databases.push(database);
    const ssl = await runCli(['status'], { DATABASE_URL: `${database.url}?sslmode=require` });
    assert.equal(ssl.code, 1);
    assert.ok(
      ssl.logs.every((l) => !('unparsable' in l)),
      `JSON lines only:\n${ssl.stderr}`,
    );
    assert.ok(ssl.logs.some((l) => l.msg === 'runtime warning' && String(l.detail).includes('SECURITY WARNING')));
  });

  it('a raw table the scan cannot read its shape from: the full run goes warm on last run’s points and says why', async () => {
    const t = await setup('stones-unread');
    try {
      assert.equal((await runCli(['run', '--full'], t.env)).code, 0);
      await t.sql.query(`UPDATE run_metadata SET completed_at = now(), status = 'completed'`); // the consolidator's part
      await t.addRawRow('left-by-the-workers');
      // A schema the operator changed by hand: the read of the stones per dollar fails, the run does not.
      await t.sql.query('ALTER TABLE raw_diamonds_nivoda RENAME COLUMN payload TO payload_moved');
      const warm = await runCli(['run', '--full'], t.env);
      assert.equal(warm.code, 0, warm.stderr);
      const start = warm.logs.find((l) => l.start !== undefined);
      assert.equal(start?.start, 'warm', JSON.stringify(start));
      assert.equal(start?.prior, 'points', JSON.stringify(start));
      assert.match(String(start?.stonesUnread), /payload/);
      assert.equal(await t.rawCount(), 0, 'the full run still emptied the raw table');
      assert.equal((await t.runs()).filter((r) => r.status !== 'failed').length, 2);
    } finally {
      await t.done();
    }
  });

  it('on a terminal, the scan shows a progress line; piped, it does not', async () => {
    const hasScript = await promisify(execFile)('script', ['--version']).then(
      () => true,
      () => false,
    );
    if (!hasScript) return;
    const dataDir = path.join(tmp, 'tty');
    const env = {
      ...process.env,
      NIVODA_ENDPOINT: sim.url,
      NIVODA_USERNAME: sim.username,
      NIVODA_PASSWORD: sim.password,
      SCHEDULER_DATA_DIR: dataDir,
      NODE_ENV: 'test',
    };
    const tsx = import.meta.resolve('tsx');
    const index = new URL('../src/index.ts', import.meta.url).pathname;
    const command = `${process.execPath} --import ${tsx} ${index} plan --json`;
    const { stdout } = await promisify(execFile)('script', ['-qec', command, '/dev/null'], { env, maxBuffer: 10_000_000 });
    assert.match(stdout, /scanning: \d+ count queries · last probe/);
    const piped = await runCli(['plan', '--json'], {
      NIVODA_ENDPOINT: sim.url,
      NIVODA_USERNAME: sim.username,
      NIVODA_PASSWORD: sim.password,
      SCHEDULER_DATA_DIR: dataDir,
    });
    assert.doesNotMatch(piped.stderr, /scanning: \d+ count queries/);
  });
});
