// The database port, one conformance suite run against both backends: the real PostgreSQL
// server (a throwaway database per fixture) and PGlite (a directory per fixture). Migrations
// (from empty, re-run, after reopening, failing and edited files), the schema's constraints,
// run records, the JS values both drivers hand the rest of the code, and the lease lock.
// Where PGlite cannot take part (a second session on the same database) the case is skipped
// for it with the reason.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { Config } from '../src/config.js';
import type { Database } from '../src/db/database.js';
import { loadMigrations, migrate, MigrationError } from '../src/db/migrate.js';
import { openDatabase } from '../src/db/open.js';
import {
  abandonRun,
  beginRun,
  failInterruptedScans,
  getRun,
  lastComparableRun,
  notePublishAttempt,
  unpublishedRuns,
  listPartitions,
  listRuns,
  markFailed,
  markPartitionsPublished,
  rawTableHasRows,
  rawStonesByDollar,
  markPublished,
  recordRun,
  storedError,
  lastPublishedFullRun,
  unfinishedRuns,
  type NewRun,
  type RunRecord,
} from '../src/db/runs.js';
import { PRICE_AXIS_END, type Partition } from '../src/domain.js';
import { acquireLock } from '../src/lease.js';
import { createLogger } from '../src/log.js';
import { forEachBackend, runCleanups, type Backend } from './helpers/conformance.js';
import { createTestDatabase } from './helpers/postgres.js';

/** What a test may ask of a backend beyond the Database interface. */
interface DbFixture {
  /** What `Database.backend` says on this backend. */
  kind: Database['backend'];
  /** A new, empty database. */
  fresh(): Promise<Database>;
  /** Closes `db` and opens the same database again, as a restarted process would. */
  reopen(db: Database): Promise<Database>;
  /** A second, independent session on the database of `db` (another process). Needs `concurrentSessions`. */
  anotherSession(db: Database): Promise<Database>;
  /** Closes every database the fixture opened and removes what it created. */
  close(): Promise<void>;
}

type DbCapability = 'concurrentSessions';

/** Opens databases through the one factory (db/open.ts) and remembers each one's configuration, so it can be reopened. */
function dbFixture(
  kind: Database['backend'],
  create: () => Promise<{ config: Config['database']; remove: () => Promise<void> }>,
): DbFixture {
  // Both backends' close() is idempotent, so a database closed by reopen() may be closed again here.
  const cleanups: (() => Promise<unknown>)[] = [];
  const configs = new Map<Database, Config['database']>();
  const open = async (config: Config['database']): Promise<Database> => {
    const db = await openDatabase(config);
    configs.set(db, config);
    cleanups.push(() => db.close());
    return db;
  };
  const configOf = (db: Database): Config['database'] => {
    const config = configs.get(db);
    if (!config) throw new Error('not a database of this fixture');
    return config;
  };
  return {
    kind,
    async fresh() {
      const { config, remove } = await create();
      cleanups.push(remove);
      return open(config);
    },
    async reopen(db) {
      await db.close();
      return open(configOf(db));
    },
    anotherSession: (db) => open(configOf(db)),
    // Reverse order: pools close before their databases are dropped.
    close: () => runCleanups(cleanups),
  };
}

const postgres: Backend<DbFixture, DbCapability> = {
  name: 'PostgreSQL',
  open: async () =>
    dbFixture('postgres', async () => {
      const target = await createTestDatabase();
      return { config: { backend: 'postgres', url: target.url, poolMax: 4 }, remove: () => target.drop() };
    }),
  close: (fixture) => fixture.close(),
};

const pglite: Backend<DbFixture, DbCapability> = {
  name: 'PGlite',
  open: async () =>
    dbFixture('pglite', async () => {
      const root = await mkdtemp(path.join(os.tmpdir(), 'pglite-'));
      // Nested and absent: the backend creates the directories it needs.
      const dir = path.join(root, 'nested', 'pglite');
      return { config: { backend: 'pglite', dir }, remove: () => rm(root, { recursive: true, force: true }) };
    }),
  close: (fixture) => fixture.close(),
  lacks: {
    concurrentSessions:
      'PGlite is one session inside one process, and a second process may not open its directory (the data-directory lock file keeps it out)',
  },
};

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

// Backend-independent: reading a migrations directory touches no database.
test('a migration file not named NNN_name.sql is refused', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'migrations-'));
  try {
    await writeFile(path.join(dir, '1_oops.sql'), 'SELECT 1;');
    await assert.rejects(loadMigrations(dir), /1_oops.sql is not named NNN_name.sql/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// Backend-independent too: the rule both tables' `error` columns are written by.
test('a stored error is scrubbed of secrets and bounded in length', () => {
  const stored = storedError(`connect to postgres://scheduler:hunter2secret@db.example.com/prod failed: ${'x'.repeat(10_000)}`);
  assert.ok(stored.startsWith('connect to postgres://'), stored.slice(0, 80));
  assert.ok(!stored.includes('hunter2secret'));
  assert.equal(stored.length, 4000);
  assert.equal(storedError('short'), 'short');
});

forEachBackend('database port', [postgres, pglite], (suite) => {
  // The migration cases share one database, in order: from empty, re-run, reopened.
  let migrated: Database | undefined;
  const migratedDb = (): Database => {
    assert.ok(migrated, 'the from-empty migration test ran first');
    return migrated;
  };

  suite.test('migrations from empty: applies every file in number order and creates the tables', async (fixture) => {
    const db = (migrated = await fixture.fresh());
    assert.equal(db.backend, fixture.kind);
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

  suite.test('a re-run applies nothing and changes nothing, also after reopening the database', async (fixture) => {
    const beforeRerun = await schemaSnapshot(migratedDb());
    assert.deepEqual(await migrate(migratedDb()), { applied: [] });
    assert.deepEqual(await schemaSnapshot(migratedDb()), beforeRerun);

    migrated = await fixture.reopen(migratedDb());
    assert.deepEqual(await migrate(migratedDb()), { applied: [] }, 'the migrations persisted');
    assert.deepEqual(await schemaSnapshot(migratedDb()), beforeRerun);
  });

  suite.test('the schema enforces what the code relies on', async () => {
    const db = migratedDb();
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

  suite.test(
    'three sessions migrating the same empty database at once all succeed, each migration applied once',
    { needs: ['concurrentSessions'] },
    async (fixture) => {
      const first = await fixture.fresh();
      const second = await fixture.anotherSession(first);
      const third = await fixture.anotherSession(first);

      const results = await Promise.all([migrate(first), migrate(second), migrate(third)]);
      const files = (await loadMigrations()).map((m) => m.id);
      const all = results.flatMap((r) => r.applied).sort();
      assert.deepEqual(all, [...files].sort(), 'every migration applied exactly once across the migrators');
      const recorded = await first.query<{ n: number }>('SELECT count(*) AS n FROM schema_migrations');
      assert.equal(recorded[0]!.n, files.length);
      for (const table of EXPECTED_TABLES) assert.ok((await tables(first)).includes(table));
    },
  );

  suite.test('an edited applied migration and a failing one are refused; a failed one leaves no trace', async (fixture) => {
    const db = await fixture.fresh();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'migrations-'));
    try {
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
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  // The run-record cases share one migrated database, each starting from the state it needs.
  let records: Database | undefined;
  const recordsDb = async (fixture: DbFixture): Promise<Database> => {
    if (!records) {
      records = await fixture.fresh();
      await migrate(records);
    }
    return records;
  };

  suite.test('recordRun is one transaction: a failing partition leaves no run row and the raw table untouched', async (fixture) => {
    const db = await recordsDb(fixture);
    await db.exec('TRUNCATE raw_diamonds_nivoda');
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

  suite.test('recordRun rolls back on a duplicate partition id too', async (fixture) => {
    const db = await recordsDb(fixture);
    await db.exec('TRUNCATE raw_diamonds_nivoda');
    await insertRawRows(db, 2);
    const run = newRun({ runType: 'full', updatedFrom: null, watermarkBefore: null });
    const duplicate: Partition[] = [TWO_PARTITIONS[0]!, TWO_PARTITIONS[0]!];
    await assert.rejects(recordRun(db, run, duplicate, { emptyRawTable: true }));
    assert.equal(await getRun(db, run.runId), undefined);
    assert.equal(await rawCount(db), 2);
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: true });
    assert.equal(await rawCount(db), 0);
  });

  suite.test('an incremental run leaves the raw table alone; a duplicate run id is refused', async (fixture) => {
    const db = await recordsDb(fixture);
    await db.exec('TRUNCATE raw_diamonds_nivoda');
    await insertRawRows(db, 2);
    const run = newRun();
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
    assert.equal(await rawCount(db), 2);
    await assert.rejects(recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: true }), /is scheduling, not scanning/);
    assert.equal(await rawCount(db), 2, 'the refused full run emptied nothing');
  });

  suite.test('the raw table’s stones per whole dollar, by either price field, leaving out rows without a usable price', async (fixture) => {
    const db = await recordsDb(fixture);
    await db.exec('TRUNCATE raw_diamonds_nivoda');
    assert.deepEqual(await rawStonesByDollar(db, 'dollar_value'), []);
    const payloads: unknown[] = [
      { price: 49_950, diamond: { certificate: { carats: 0.5 } } }, // $499.50, $999/ct
      { price: 49_999, diamond: { certificate: { carats: 1 } } }, // $499.99, $499.99/ct
      { price: 50_000, diamond: { certificate: { carats: 2 } } }, // $500.00 exactly, $250/ct
      { price: 0, diamond: { certificate: { carats: 0.3 } } },
      { price: 123_456_789, diamond: { certificate: { carats: 1 } } }, // far above any scan ceiling
      { price: 70_000, diamond: { certificate: { carats: 0 } } }, // no per-carat price
      { price: 70_000, diamond: { certificate: { carats: '1.2' } } }, // a carats string: no per-carat price
      { price: '70000' }, // a price string: not usable
      { price: -100 },
      {},
    ];
    for (const [i, payload] of payloads.entries())
      await db.query('INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ($1, $2, $3, $4)', [
        `stone-${i}`,
        `offer-${i}`,
        JSON.stringify(payload),
        randomUUID(),
      ]);
    // Prices past the price axis, one too large for a JS number: counted at the axis's end.
    for (const [i, payload] of ['{"price": 1e400}', '{"price": 1000000000000}'].entries())
      await db.query('INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ($1, $2, $3::jsonb, $4)', [
        `huge-${i}`,
        `offer-huge-${i}`,
        payload,
        randomUUID(),
      ]);
    assert.deepEqual(await rawStonesByDollar(db, 'dollar_value'), [
      { dollar: 0, stones: 1 },
      { dollar: 499, stones: 2 },
      { dollar: 500, stones: 1 },
      { dollar: 700, stones: 2 },
      { dollar: 1_234_567, stones: 1 },
      { dollar: PRICE_AXIS_END, stones: 2 },
    ]);
    assert.deepEqual(await rawStonesByDollar(db, 'dollar_per_carat'), [
      { dollar: 0, stones: 1 },
      { dollar: 250, stones: 1 },
      { dollar: 499, stones: 1 },
      { dollar: 999, stones: 1 },
      { dollar: 1_234_567, stones: 1 },
    ]);
  });

  suite.test('the last comparable run carries its scan points; without them, or malformed, it still carries its plan', async (fixture) => {
    const db = await recordsDb(fixture);
    await db.exec('DELETE FROM run_metadata');
    const like = { runType: 'incremental' as const, priceField: 'dollar_value' as const, baseQuery: {} };
    const scanPoints = [
      { price: 250, below: 1200 },
      { price: 2500, below: 3300 },
    ];
    const run = newRun({ scanPoints });
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
    await markPublished(db, run.runId);
    const last = await lastComparableRun(db, like);
    assert.equal(last?.run.runId, run.runId);
    assert.deepEqual(last?.scanPoints, scanPoints);
    for (const stored of ['[[250, -1]]', '[[250]]', '{"price": 250}', '"oops"', '"[[250, 1200]]"', null]) {
      await db.query(`UPDATE run_metadata SET scan_points = $2::jsonb WHERE run_id = $1`, [run.runId, stored]);
      const found = await lastComparableRun(db, like);
      assert.equal(found?.run.runId, run.runId, String(stored));
      assert.equal(found?.partitions.length, 2);
      assert.equal(found?.scanPoints, undefined, `${String(stored)} is no scan points`);
    }
  });

  suite.test(
    'life cycle: scanning → scheduling → published, failed, finished after failing, abandoned; listRuns newest first',
    async (fixture) => {
      const db = await recordsDb(fixture);
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

      // Every recorded run not completed counts as possibly worked, whether or not its items were acknowledged.
      assert.deepEqual(
        (await unfinishedRuns(db)).map((r) => r.runId),
        [a.runId, b.runId, c.runId],
      );
      assert.deepEqual(
        (await unpublishedRuns(db)).map((r) => r.runId),
        [b.runId, c.runId, d.runId],
        'recorded, not published: to be finished (also d, though it has no work items)',
      );
      await db.query(`UPDATE run_metadata SET completed_at = now(), status = 'completed' WHERE run_id = $1`, [a.runId]);
      // Workers may complete a run before the scheduler records it published: that is success, not an error.
      await markPublished(db, a.runId);
      assert.equal((await getRun(db, a.runId))?.status, 'completed');
      assert.deepEqual(
        (await unfinishedRuns(db)).map((r) => r.runId),
        [b.runId, c.runId],
      );

      const secret = 'postgres://scheduler:hunter2secret@db.example.com/prod';
      assert.equal(await markFailed(db, b.runId, `queue down while using ${secret}`), true);
      const failed = await getRun(db, b.runId);
      assert.equal(failed?.status, 'failed');
      assert.ok(failed?.error?.includes('queue down'));
      assert.ok(!failed?.error?.includes('hunter2secret'), 'the stored error is scrubbed of secrets');
      assert.equal(await markFailed(db, a.runId, 'late'), false, 'a completed run is not turned into a failed one');
      assert.equal((await getRun(db, a.runId))?.status, 'completed');
      // A run that failed after it was recorded is finished by a later invocation: published, its error cleared.
      await notePublishAttempt(db, b.runId, 'host:1:next');
      assert.equal((await getRun(db, b.runId))?.status, 'scheduling');
      await markPublished(db, b.runId);
      const finished = await getRun(db, b.runId);
      assert.equal(finished?.status, 'published');
      assert.equal(finished?.publishAttempts, 1);
      assert.equal(finished?.error, null);

      // Recorded runs left in scheduling are not failed (their items may be out): only interrupted scans are.
      const scanning = newRun({ startedAt: '2024-02-05T00:00:00.000Z' });
      await beginRun(db, { runId: scanning.runId, holder: 'host:2:killed', startedAt: scanning.startedAt });
      assert.equal((await getRun(db, scanning.runId))?.status, 'scanning');
      assert.equal(await failInterruptedScans(db), 1, 'only the scan; c was recorded: it is to be finished');
      assert.equal((await getRun(db, c.runId))?.status, 'scheduling');
      assert.match((await getRun(db, scanning.runId))?.error ?? '', /stopped during the scan/);

      // Abandoning is an operator's decision, never automatic; a completed run cannot be abandoned.
      assert.equal(await abandonRun(db, c.runId, 'its partitions were re-run by hand'), 'scheduling');
      await assert.rejects(abandonRun(db, a.runId, 'too late'), /is completed/);

      const listed = await listRuns(db, 3);
      assert.deepEqual(
        listed.map((r) => r.runId),
        [scanning.runId, d.runId, c.runId],
      );
      assert.deepEqual(
        listed.map((r) => r.status),
        ['failed', 'scheduling', 'abandoned'],
      );
    },
  );

  suite.test(
    'a full run whose TRUNCATE cannot get its lock fails whole: no run row, the raw table untouched',
    { needs: ['concurrentSessions'] },
    async (fixture) => {
      const db = await recordsDb(fixture);
      await db.exec('DELETE FROM run_metadata');
      await db.exec('TRUNCATE raw_diamonds_nivoda');
      await db.query(
        `INSERT INTO raw_diamonds_nivoda (supplier_stone_id, offer_id, payload, run_id) VALUES ('held', 'o', '{}', gen_random_uuid())`,
      );
      assert.equal(await rawTableHasRows(db), true);
      const worker = await fixture.anotherSession(db);
      const full = newRun({ runType: 'full', updatedFrom: null, watermarkBefore: null });
      // A worker reading the table holds ACCESS SHARE for the whole of its transaction.
      await worker.transaction(async (tx) => {
        await tx.exec('LOCK TABLE raw_diamonds_nivoda IN ACCESS SHARE MODE');
        await assert.rejects(recordRun(db, full, TWO_PARTITIONS, { emptyRawTable: true, lockTimeoutMs: 200 }), /lock timeout/);
        assert.equal(await getRun(db, full.runId), undefined);
      });
      assert.equal(await rawTableHasRows(db), true);
    },
  );

  suite.test(
    'the full-run guard: every recorded run not completed or abandoned counts, runs without work items never do',
    async (fixture) => {
      const db = await recordsDb(fixture);
      await db.exec('DELETE FROM run_metadata');
      const now = new Date().toISOString();
      const empty = newRun({ startedAt: now, expectedWorkers: 0 });
      await recordRun(db, empty, [], { emptyRawTable: false });
      await markPublished(db, empty.runId);
      assert.ok((await getRun(db, empty.runId))?.completedAt, 'a run without work items is complete at once');
      assert.equal((await getRun(db, empty.runId))?.status, 'completed');

      // An acknowledgement that never arrived proves nothing: a failed recorded run counts however old
      // and however many of its items were acknowledged; a scan that failed before recording does not.
      const oldFailure = newRun({ startedAt: '2024-01-01T00:00:00.000Z' });
      const nothingAcknowledged = newRun({ startedAt: now });
      for (const run of [oldFailure, nothingAcknowledged]) {
        await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
        if (run === oldFailure) await markPartitionsPublished(db, run.runId, ['partition-1']);
        await markFailed(db, run.runId, 'queue down after the first batch');
      }
      const scanFailed = newRun({ startedAt: now });
      await beginRun(db, { runId: scanFailed.runId, holder: 'h:1:r' });
      await markFailed(db, scanFailed.runId, 'Nivoda count failed');
      const abandoned = newRun({ startedAt: now });
      await recordRun(db, abandoned, TWO_PARTITIONS, { emptyRawTable: false });
      await abandonRun(db, abandoned.runId, 'operator');
      assert.deepEqual(
        (await unfinishedRuns(db)).map((r) => r.runId),
        [oldFailure.runId, nothingAcknowledged.runId],
      );

      assert.equal(await lastPublishedFullRun(db), undefined);
      const full = newRun({ runType: 'full', updatedFrom: null, watermarkBefore: null, startedAt: now, totalRecords: 437_849 });
      await recordRun(db, full, TWO_PARTITIONS, { emptyRawTable: false });
      await markPublished(db, full.runId);
      assert.equal((await lastPublishedFullRun(db))?.totalRecords, 437_849);
    },
  );

  // Every backend is held to the same literal values, so the two hand the rest of the code the
  // same JS values and types for the same rows.
  suite.test('returns the JS values and types the rest of the code expects, for run rows and for every column type', async (fixture) => {
    const db = await recordsDb(fixture);
    const run = newRun({ totalRecords: 4_000_000_000 }); // above int4: exercises bigint parsing
    await recordRun(db, run, TWO_PARTITIONS, { emptyRawTable: false });
    const stored = await getRun(db, run.runId);
    assert.equal(stored?.totalRecords, 4_000_000_000);
    assert.equal(stored?.updatedTo, run.updatedTo, 'timestamps round-trip as the same ISO string');
    const expectedRun: RunRecord = {
      runId: run.runId,
      runType: 'incremental',
      status: 'scheduling',
      expectedWorkers: 2,
      watermarkBefore: '2024-01-15T02:00:00.000Z',
      updatedFrom: '2024-01-15T01:45:00.000Z',
      updatedTo: '2024-01-16T03:00:00.123Z',
      priceField: 'dollar_value',
      totalRecords: 4_000_000_000,
      countQueries: 17,
      scanDurationMs: 812,
      startedAt: '2024-01-16T03:00:00.123Z',
      publishedAt: null,
      completedAt: null,
      error: null,
      baseQuery: {},
      publishAttempts: 0,
      holder: null,
    } as Omit<RunRecord, 'recordedAt'> as RunRecord;
    assert.match(stored?.recordedAt ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual({ ...stored, recordedAt: undefined }, { ...expectedRun, recordedAt: undefined });
    assert.deepEqual(
      await listPartitions(db, run.runId),
      TWO_PARTITIONS.map((p) => ({ ...p, publishedAt: null })),
    );

    const probe = `SELECT 9007199254740991::bigint AS big, count(*) AS n, 7::int4 AS small, 1.25::float8 AS float,
      '12.50'::numeric AS num, true AS flag, '{"a":[1,"x"],"b":null}'::jsonb AS doc,
      '2024-01-15T02:00:00.000Z'::timestamptz AS ts, NULL::timestamptz AS missing,
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, 'text' AS label`;
    const [row] = await db.query(probe);
    assert.ok(row);
    const shape = (r: Record<string, unknown>) =>
      Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v === null ? 'null' : (v as object).constructor.name]));
    assert.deepEqual(shape(row), {
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
    assert.deepEqual(row, {
      big: 9007199254740991,
      n: 1,
      small: 7,
      float: 1.25,
      num: '12.50',
      flag: true,
      doc: { a: [1, 'x'], b: null },
      ts: new Date('2024-01-15T02:00:00.000Z'),
      missing: null,
      id: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
      label: 'text',
    });
  });

  suite.test('upgrading a database written under the earlier publishing rules: nothing old is republished', async (fixture) => {
    const db = await fixture.fresh();
    const earlier = await mkdtemp(path.join(os.tmpdir(), 'migrations-'));
    try {
      // The schema as the earlier scheduler left it: migrations 001–003 only.
      for (const m of (await loadMigrations()).filter((m) => Number(m.version) <= 3))
        await writeFile(path.join(earlier, `${m.id}.sql`), m.sql);
      await migrate(db, { dir: earlier });
      const insert = (status: string, completed: boolean) =>
        db.query(
          `INSERT INTO run_metadata (run_id, run_type, status, expected_workers, updated_to, price_field, published_at, completed_at, error)
           VALUES ($1, 'full', $2, 2, now(), 'dollar_value', CASE WHEN $2 = 'published' THEN now() END, CASE WHEN $3 THEN now() END,
                   CASE WHEN $2 = 'failed' THEN 'queue down' END) RETURNING run_id`,
          [randomUUID(), status, completed],
        );
      const [failed] = await insert('failed', false);
      const [crashed] = await insert('scheduling', false);
      const [done] = await insert('published', true);
      const [working] = await insert('published', false);
      await migrate(db);
      const status = async (row: Record<string, unknown> | undefined) => (await getRun(db, String(row?.run_id)))?.status;
      assert.equal(await status(failed), 'abandoned');
      assert.match((await getRun(db, String(failed?.run_id)))?.error ?? '', /^queue down; abandoned when migration 004 was applied/);
      assert.equal(await status(crashed), 'abandoned');
      assert.equal(await status(done), 'completed');
      assert.equal(await status(working), 'published', "a published run's workers may still be busy");
      assert.deepEqual(await unpublishedRuns(db), [], 'the first invocation after the upgrade republishes nothing');
    } finally {
      await db.close();
      await rm(earlier, { recursive: true, force: true });
    }
  });

  suite.test('the lease lock: acquire, refuse a second holder, release, acquire again', async (fixture) => {
    const db = await recordsDb(fixture);
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
