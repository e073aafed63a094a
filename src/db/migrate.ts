// Numbered plain-SQL migrations, applied by the scheduler itself.
//
// Files are `migrations/NNN_name.sql`, applied in number order, each in its own transaction
// together with its row in `schema_migrations`, so a migration is either fully applied and
// recorded or not at all. A file must not contain BEGIN/COMMIT of its own.
//
// Concurrency: every transaction here first takes `pg_advisory_xact_lock(MIGRATION_LOCK_KEY)`
// and only then reads what is applied. Two schedulers starting at once therefore queue up;
// the second finds the migration recorded and skips it. The lock is transaction-scoped, so it
// is released by COMMIT/ROLLBACK and never outlives the transaction on a pooled connection
// (safe behind a transaction-mode pooler). PGlite has a single session and no contention,
// where the call is harmless.
//
// An applied migration whose file has changed since (checksum mismatch) stops the process:
// editing history silently would leave databases that differ while claiming the same version.
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Database, Queryable } from './database.js';

/** Arbitrary but fixed: the advisory lock every migrator of this schema agrees on. */
const MIGRATION_LOCK_KEY = 4_721_330_118_201;

/** Next to this module in src/ (tsx) and in dist/ (the build copies the folder). */
export const DEFAULT_MIGRATIONS_DIR = fileURLToPath(new URL('./migrations/', import.meta.url));

const FILE_PATTERN = /^(\d{3})_([a-z0-9_]+)\.sql$/;

export interface Migration {
  /** "001" */
  version: string;
  /** "001_initial" */
  id: string;
  sql: string;
  checksum: string;
}

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
}

export async function loadMigrations(dir: string = DEFAULT_MIGRATIONS_DIR): Promise<Migration[]> {
  const names = (await readdir(dir)).filter((name) => name.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const name of names) {
    const match = FILE_PATTERN.exec(name);
    // A misnamed file would otherwise be skipped silently and its schema never created.
    if (!match) throw new MigrationError(`migration file ${name} is not named NNN_name.sql`);
    const version = match[1] as string;
    if (migrations.some((m) => m.version === version)) {
      throw new MigrationError(`two migration files share the number ${version}`);
    }
    const sql = await readFile(path.join(dir, name), 'utf8');
    // Line endings are normalised so a checkout with CRLF does not look like an edited migration.
    const checksum = createHash('sha256').update(sql.replace(/\r\n/g, '\n')).digest('hex');
    migrations.push({ version, id: name.slice(0, -'.sql'.length), sql, checksum });
  }
  return migrations;
}

interface AppliedRow extends Record<string, unknown> {
  version: string;
  name: string;
  checksum: string;
}

async function lockAndReadApplied(tx: Queryable): Promise<Map<string, AppliedRow>> {
  await tx.query('SELECT pg_advisory_xact_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
  // Created under the lock: two concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog.
  await tx.exec(`
    CREATE TABLE IF NOT EXISTS schema_migrations (
      version text PRIMARY KEY,
      name text NOT NULL,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
  const rows = await tx.query<AppliedRow>('SELECT version, name, checksum FROM schema_migrations');
  return new Map(rows.map((row) => [row.version, row]));
}

export interface MigrateOptions {
  /** Folder of NNN_name.sql files; tests point it elsewhere. */
  dir?: string;
}

/** Applies every pending migration. Returns the ids applied by this call (empty on a re-run). */
export async function migrate(db: Database, options: MigrateOptions = {}): Promise<{ applied: string[] }> {
  const migrations = await loadMigrations(options.dir);
  const applied: string[] = [];

  const already = await db.transaction(lockAndReadApplied);
  for (const migration of migrations) {
    const known = already.get(migration.version);
    if (known) {
      assertUnchanged(migration, known);
      continue;
    }
    const didApply = await db.transaction(async (tx) => {
      // Re-read under the lock: another process may have applied it since our first look.
      const current = (await lockAndReadApplied(tx)).get(migration.version);
      if (current) {
        assertUnchanged(migration, current);
        return false;
      }
      try {
        await tx.exec(migration.sql);
      } catch (err) {
        throw new MigrationError(`migration ${migration.id} failed: ${(err as Error).message}`, { cause: err });
      }
      await tx.query('INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [
        migration.version,
        migration.id,
        migration.checksum,
      ]);
      return true;
    });
    if (didApply) applied.push(migration.id);
  }
  return { applied };
}

function assertUnchanged(migration: Migration, recorded: AppliedRow): void {
  if (recorded.checksum !== migration.checksum) {
    throw new MigrationError(
      `migration ${migration.id} was changed after it was applied (recorded as ${recorded.name}); add a new migration instead`,
    );
  }
}
