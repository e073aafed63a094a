// The database layer against the real PostgreSQL server and against PGlite: migrations
// (from empty, re-run, concurrent), run records, that both backends hand the rest of the
// code the same JS values, and that the lease lock's SQL also runs on PGlite.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Database } from '../src/db/database.js';
import { loadMigrations, migrate, MigrationError } from '../src/db/migrate.js';
import { openDatabase } from '../src/db/open.js';
import {
  failInterruptedScans,
  getRun,
  listPartitions,
  listRuns,
  markFailed,
  markPartitionsPublished,
  rawTableHasRows,
  markPublished,
  recordRun,
  lastPublishedFullRun,
  unfinishedRuns,
  type NewRun,
} from '../src/db/runs.js';
import type { Partition } from '../src/domain.js';
import { acquireLock } from '../src/lease.js';
import { createLogger } from '../src/log.js';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  // Reverse order: pools close before their databases are dropped.
  // Each on its own, so one failing cleanup does not leave the databases after it behind.
  const results = [];
  for (const cleanup of cleanups.reverse())
    results.push(
      await cleanup().then(
        () => null,
        (err: unknown) => err,
      ),
    );
  const failures = results.filter((r) => r !== null);
  if (failures.length > 0) throw new AggregateError(failures, 'cleanup failed');
});

async function freshPostgres(poolMax = 4): Promise<{ test: TestDatabase; db: Database }> {
  const testDb = await createTestDatabase();
  cleanups.push(() => testDb.drop());
  const db = await openDatabase({ backend: 'postgres', url: testDb.url, poolMax });
  cleanups.push(() => db.close());
  return { test: testDb, db };
}

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Everything a migration can change, in a comparable form: columns, constraints, indexes, the migrations table. */
async function schemaSnapshot(db: Database): Promise<unknown> {
  const columns = await db.query(
    `SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns
     WHERE table_schema = 'public' ORDER BY table_name, column_name`,
  );
  const constraints = await db.query(
    `SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
     WHERE connamespace = 'public'::regnamespace ORDER BY rel, conname`,
  );
  const indexes = await db.query(`SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname`);
  const migrations = await db.query('SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version');
  return { columns, constraints, indexes, migrations };
}

const EXPECTED_TABLES = ['raw_diamonds_nivoda', 'run_metadata', 'run_partitions', 'scheduler_lock', 'schema_migrations'];

async function tables(db: Database): Promise<string[]> {
  const rows = await db.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`,
  );
  return rows.map((r) => r.table_name);
}

function newRun(overrides: Partial<NewRun> = {}): NewRun {
  return {
    runId: randomUUID(),
    runType: 'incremental',
    expectedWorkers: 2,
    watermarkBefore: '2024-01-15T02:00:00.000Z',
    updatedFrom: '2024-01-15T01:45:00.000Z',
    updatedTo: '2024-01-16T03:00:00.123Z',
    priceField: 'dollar_value',
    totalRecords: 6543,
    countQueries: 17,
    scanDurationMs: 812,
    startedAt: '2024-01-16T03:00:00.123Z',
    ...overrides,
  };
}

const TWO_PARTITIONS: Partition[] = [
  { partitionId: 'partition-1', priceMin: 0, priceMax: 2500, expectedRecords: 3300 },
  { partitionId: 'partition-2', priceMin: 2500, priceMax: 2147483647, expectedRecords: 3243 },
];

async function insertRawRows(db: Database, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await db.query('INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ($1, $2, $3, $4)', [
      `stone-${i}-${randomUUID()}`,
      `offer-${i}`,
      JSON.stringify({ price: i }),
      randomUUID(),
    ]);
  }
}

async function rawCount(db: Database): Promise<number> {
  const rows = await db.query<{ n: number }>('SELECT count(*) AS n FROM raw_diamonds_nivoda');
  return rows[0]!.n;
}

describe('migrations on the real PostgreSQL server', () => {
  let db: Database;
  before(async () => {
    ({ db } = await freshPostgres());
  });

  test('from empty: applies every file in number order and creates the tables', async () => {
    assert.deepEqual(await tables(db), []);
    const files = await loadMigrations();
    assert.ok(
      files.some((m) => m.id === '001_initial'),
      'the initial migration is shipped',
    );
    const { applied } = await migrate(db);
    assert.deepEqual(
      applied,
      files.map((m) => m.id),
    );
    const present = await tables(db);
    for (const table of EXPECTED_TABLES) assert.ok(present.includes(table), `${table} exists`);
    const recorded = await db.query<{ name: string }>('SELECT name FROM schema_migrations ORDER BY version');
    assert.deepEqual(
      recorded.map((r) => r.name),
      applied,
    );
  });

  test('a re-run applies nothing and changes nothing', async () => {
    const beforeRerun = await schemaSnapshot(db);
    assert.deepEqual(await migrate(db), { applied: [] });
    assert.deepEqual(await schemaSnapshot(db), beforeRerun);
  });

  test('the schema enforces what the code relies on', async () => {
    const run = newRun();
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
    // An incremental run without a lower bound would silently fetch everything.
    await assert.rejects(recordRun(db, newRun({ updatedFrom: null }), [], { emptyRawTable: false }), /incremental_has_from/);
    await assert.rejects(db.query(`UPDATE run_metadata SET status = 'done' WHERE run_id = $1`, [run.runId]), /check constraint/);
    await insertRawRows(db, 1);
    const [row] = await db.query<{ supplier_stone_id: string }>('SELECT supplier_stone_id FROM raw_diamonds_nivoda');
    await assert.rejects(
      db.query('INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ($1, $2, $3, $4)', [
        row!.supplier_stone_id,
        'offer-x',
        '{}',
        randomUUID(),
      ]),
      /raw_diamonds_nivoda_supplier_stone_id_key/,
    );
  });
});

describe('concurrent migrators', () => {
  test('two processes migrating the same empty database at once both succeed, each migration applied once', async () => {
    const { test: target, db: first } = await freshPostgres();
    const second = await openDatabase({ backend: 'postgres', url: target.url, poolMax: 4 });
    cleanups.push(() => second.close());
    const third = await openDatabase({ backend: 'postgres', url: target.url, poolMax: 4 });
    cleanups.push(() => third.close());

    const results = await Promise.all([migrate(first), migrate(second), migrate(third)]);
    const files = (await loadMigrations()).map((m) => m.id);
    const all = results.flatMap((r) => r.applied).sort();
    assert.deepEqual(all, [...files].sort(), 'every migration applied exactly once across the migrators');
    const recorded = await first.query<{ n: number }>('SELECT count(*) AS n FROM schema_migrations');
    assert.equal(recorded[0]!.n, files.length);
    for (const table of EXPECTED_TABLES) assert.ok((await tables(first)).includes(table));
  });
});

describe('migration files', () => {
  test('an edited applied migration, a misnamed file and a failing one are refused; a failed one leaves no trace', async () => {
    const { db } = await freshPostgres();
    const dir = await tempDir('migrations-');
    await writeFile(path.join(dir, '001_first.sql'), 'CREATE TABLE first_t (id int);\nCREATE TABLE first_u (id int);\n');
    assert.deepEqual(await migrate(db, { dir }), { applied: ['001_first'] });

    await writeFile(path.join(dir, '002_broken.sql'), 'CREATE TABLE second_t (id int);\nSELECT no_such_column FROM first_t;\n');
    await assert.rejects(migrate(db, { dir }), (err: unknown) => err instanceof MigrationError && /002_broken/.test(err.message));
    // Its transaction rolled back: the table it created before failing is gone, and it is not recorded.
    assert.ok(!(await tables(db)).includes('second_t'));
    const versions = await db.query<{ version: string }>('SELECT version FROM schema_migrations ORDER BY version');
    assert.deepEqual(
      versions.map((v) => v.version),
      ['001'],
    );

    await writeFile(path.join(dir, '002_broken.sql'), 'CREATE TABLE second_t (id int);\n');
    await writeFile(path.join(dir, '001_first.sql'), 'CREATE TABLE first_t (id bigint);\n');
    await assert.rejects(migrate(db, { dir }), /001_first was changed after it was applied/);

    const other = await tempDir('migrations-');
    await writeFile(path.join(other, '1_oops.sql'), 'SELECT 1;');
    await assert.rejects(loadMigrations(other), /1_oops.sql is not named NNN_name.sql/);
  });
});

describe('run records on the real PostgreSQL server', () => {
  let db: Database;
  let testDb: TestDatabase;
  before(async () => {
    ({ db, test: testDb } = await freshPostgres());
    await migrate(db);
  });

  test('recordRun is one transaction: a failing partition leaves no run row and the raw table untouched', async () => {
    await insertRawRows(db, 3);
    const run = newRun({ runType: 'full', watermarkBefore: null, updatedFrom: null });
    const bad: Partition[] = [
      TWO_PARTITIONS[0]!,
      { partitionId: 'partition-2', priceMin: 2500, priceMax: 100, expectedRecords: 1 }, // violates priceMax > priceMin
    ];
    await assert.rejects(recordRun(db, run, bad, { emptyRawTable: true }), /run_partitions_range/);
    assert.equal(await getRun(db, run.runId), undefined);
    assert.deepEqual(await listPartitions(db, run.runId), []);
    assert.equal(await rawCount(db), 3, 'the full run did not empty the raw table');

    // The same run with valid partitions goes through and empties the table in the same transaction.
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: true });
    assert.equal(await rawCount(db), 0);
    const stored = await getRun(db, run.runId);
    assert.equal(stored?.status, 'scheduling');
    assert.deepEqual(
      (await listPartitions(db, run.runId)).map(({ publishedAt, ...p }) => p),
      TWO_PARTITIONS,
    );
  });

  test('an incremental run leaves the raw table alone; a duplicate run id is refused', async () => {
    await insertRawRows(db, 2);
    const run = newRun();
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
    assert.equal(await rawCount(db), 2);
    await assert.rejects(recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: true }), /run_metadata_pkey/);
    assert.equal(await rawCount(db), 2, 'the refused full run emptied nothing');
  });

  test('life cycle: scheduling → published → completed, failed, abandoned; listRuns newest first', async () => {
    await db.exec('DELETE FROM run_metadata');
    const a = newRun({ startedAt: '2024-02-01T00:00:00.000Z' });
    const b = newRun({ startedAt: '2024-02-02T00:00:00.000Z' });
    const c = newRun({ startedAt: '2024-02-03T00:00:00.000Z' });
    const d = newRun({ startedAt: '2024-02-04T00:00:00.000Z', expectedWorkers: 0 });
    for (const run of [a, b, c]) await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
    await recordRun(db, d, [], { emptyRawTable: false });

    await markPartitionsPublished(db, a.runId, ['partition-1']);
    const partial = await listPartitions(db, a.runId);
    assert.ok(partial[0]!.publishedAt !== null && partial[1]!.publishedAt === null);

    await markPublished(db, a.runId);
    const published = await getRun(db, a.runId);
    assert.equal(published?.status, 'published');
    assert.match(published?.publishedAt ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok((await listPartitions(db, a.runId)).every((p) => p.publishedAt !== null));
    await assert.rejects(markPublished(db, a.runId), /is published, not scheduling/);
    await assert.rejects(markPublished(db, randomUUID()), /does not exist/);

    assert.deepEqual(
      (await unfinishedRuns(db)).map((r) => r.runId),
      [a.runId],
    );
    await db.query('UPDATE run_metadata SET completed_at = now() WHERE run_id = $1', [a.runId]);
    assert.deepEqual(await unfinishedRuns(db), []);

    const secret = 'postgres://scheduler:hunter2secret@db.example.com/prod';
    assert.equal(await markFailed(db, b.runId, `queue down while using ${secret}`), true);
    const failed = await getRun(db, b.runId);
    assert.equal(failed?.status, 'failed');
    assert.ok(failed?.error?.includes('queue down'));
    assert.ok(!failed?.error?.includes('hunter2secret'), 'the stored error is scrubbed of secrets');
    assert.equal(await markFailed(db, a.runId, 'late'), false, 'a published run is not turned into a failed one');
    assert.equal((await getRun(db, a.runId))?.status, 'published');

    // Recorded runs left in scheduling are not abandoned (their items may be out): only scans are failed.
    assert.equal(await failInterruptedScans(db), 0, 'c and d were recorded: they are to be finished, not failed');
    assert.equal((await getRun(db, c.runId))?.status, 'scheduling');

    const listed = await listRuns(db, 3);
    assert.deepEqual(
      listed.map((r) => r.runId),
      [d.runId, c.runId, b.runId],
    );
    assert.deepEqual(
      listed.map((r) => r.status),
      ['abandoned', 'abandoned', 'failed'],
    );
  });

  test('a full run whose TRUNCATE cannot get its lock fails whole: no run row, the raw table untouched', async () => {
    await db.exec('DELETE FROM run_metadata');
    await db.exec('TRUNCATE raw_diamonds_nivoda');
    await db.query(
      `INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ('held', 'o', '{}', gen_random_uuid())`,
    );
    assert.equal(await rawTableHasRows(db), true);
    const worker = new pg.Client({ connectionString: testDb.url });
    await worker.connect();
    try {
      await worker.query('BEGIN');
      await worker.query('LOCK TABLE raw_diamonds_nivoda IN ACCESS SHARE MODE'); // a worker reading it
      const full = newRun({ runType: 'full', updatedFrom: null, watermarkBefore: null });
      await assert.rejects(recordRun(db, full, TWO_PARTITIONS, { emptyRawTable: true, lockTimeoutMs: 200 }), /lock timeout/);
      assert.equal(await getRun(db, full.runId), undefined);
    } finally {
      await worker.query('ROLLBACK');
      await worker.end();
    }
    assert.equal(await rawTableHasRows(db), true);
  });

  test('the full-run guard: recent failed or abandoned runs count, runs without work items never do', async () => {
    await db.exec('DELETE FROM run_metadata');
    const now = new Date().toISOString();
    const empty = newRun({ startedAt: now, expectedWorkers: 0 });
    await recordRun(db, empty, [], { emptyRawTable: false });
    await markPublished(db, empty.runId);
    assert.ok((await getRun(db, empty.runId))?.completedAt, 'a run without work items is complete at once');

    const recentFailure = newRun({ startedAt: now });
    const oldFailure = newRun({ startedAt: '2024-01-01T00:00:00.000Z' });
    const nothingSent = newRun({ startedAt: now });
    for (const run of [recentFailure, oldFailure, nothingSent]) {
      await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
      if (run !== nothingSent) await markPartitionsPublished(db, run.runId, ['partition-1']);
      await markFailed(db, run.runId, 'queue down after the first batch');
    }
    assert.deepEqual(
      (await unfinishedRuns(db)).map((r) => r.runId),
      [recentFailure.runId],
    );

    assert.equal(await lastPublishedFullRun(db), undefined);
    const full = newRun({ runType: 'full', updatedFrom: null, watermarkBefore: null, startedAt: now, totalRecords: 437_849 });
    await recordRun(db, full, TWO_PARTITIONS, { emptyRawTable: false });
    await markPublished(db, full.runId);
    assert.equal((await lastPublishedFullRun(db))?.totalRecords, 437_849);
  });
});

describe('PGlite (embedded)', () => {
  let dir: string;
  let db: Database;
  before(async () => {
    dir = path.join(await tempDir('pglite-'), 'nested', 'pglite');
    db = await openDatabase({ backend: 'pglite', dir });
    cleanups.push(() => db.close());
  });

  test('migrations from empty; a re-run, also after reopening the directory, applies nothing', async () => {
    assert.equal(db.backend, 'pglite');
    const files = (await loadMigrations()).map((m) => m.id);
    assert.deepEqual(await migrate(db), { applied: files });
    for (const table of EXPECTED_TABLES) assert.ok((await tables(db)).includes(table));
    const snapshot = await schemaSnapshot(db);
    assert.deepEqual(await migrate(db), { applied: [] });
    assert.deepEqual(await schemaSnapshot(db), snapshot);

    await db.close();
    db = await openDatabase({ backend: 'pglite', dir });
    assert.deepEqual(await migrate(db), { applied: [] }, 'the migrations persisted in the directory');
    assert.deepEqual(await schemaSnapshot(db), snapshot);
  });

  test('recordRun rolls back on PGlite too', async () => {
    await insertRawRows(db, 2);
    const run = newRun({ runType: 'full', updatedFrom: null, watermarkBefore: null });
    const duplicate: Partition[] = [TWO_PARTITIONS[0]!, TWO_PARTITIONS[0]!];
    await assert.rejects(recordRun(db, run, duplicate, { emptyRawTable: true }));
    assert.equal(await getRun(db, run.runId), undefined);
    assert.equal(await rawCount(db), 2);
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: true });
    assert.equal(await rawCount(db), 0);
  });

  test('pg and PGlite return the same JS values and types for the same rows', async () => {
    const { db: server } = await freshPostgres();
    await migrate(server);
    const run = newRun({ totalRecords: 4_000_000_000 }); // above int4: exercises bigint parsing
    for (const target of [server, db]) await recordRun(target, run, TWO_PARTITIONS, { emptyRawTable: false });
    const fromServer = await getRun(server, run.runId);
    const fromPglite = await getRun(db, run.runId);
    assert.deepEqual(fromPglite, fromServer);
    assert.equal(fromServer?.totalRecords, 4_000_000_000);
    assert.equal(fromServer?.updatedTo, run.updatedTo, 'timestamps round-trip as the same ISO string');
    assert.deepEqual(await listPartitions(db, run.runId), await listPartitions(server, run.runId));

    const probe = `SELECT 9007199254740991::bigint AS big, count(*) AS n, 7::int4 AS small, 1.25::float8 AS float,
      '12.50'::numeric AS num, true AS flag, '{"a":[1,"x"],"b":null}'::jsonb AS doc,
      '2024-01-15T02:00:00.000Z'::timestamptz AS ts, NULL::timestamptz AS missing,
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, 'text' AS label`;
    const [a] = await server.query(probe);
    const [b] = await db.query(probe);
    assert.ok(a && b);
    const shape = (row: Record<string, unknown>) =>
      Object.fromEntries(Object.entries(row).map(([k, v]) => [k, v === null ? 'null' : (v as object).constructor.name]));
    assert.deepEqual(shape(b), shape(a));
    assert.deepEqual(shape(a), {
      big: 'Number',
      n: 'Number',
      small: 'Number',
      float: 'Number',
      num: 'String',
      flag: 'Boolean',
      doc: 'Object',
      ts: 'Date',
      missing: 'null',
      id: 'String',
      label: 'String',
    });
    assert.deepEqual(b, a);
  });

  test('the lease lock works on PGlite: acquire, refuse a second holder, release, acquire again', async () => {
    const logger = createLogger({ level: 'silent' });
    const a = await acquireLock(db, { holder: 'a', ttlSeconds: 30, logger });
    assert.ok(a.acquired);
    const b = await acquireLock(db, { holder: 'b', ttlSeconds: 30, logger });
    assert.equal(b.acquired, false);
    if (!b.acquired) assert.equal(b.holder, 'a');
    if (a.acquired) await a.release();
    const c = await acquireLock(db, { holder: 'c', ttlSeconds: 30, logger });
    assert.ok(c.acquired);
    if (c.acquired) await c.release();
    assert.equal((await db.query('SELECT * FROM scheduler_lock')).length, 0);
  });
});
