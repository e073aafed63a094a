// Opens the configured backends (the one place that goes from the configuration to the
// ports: database, queue, watermark store; each port's open.ts picks the backend) and holds
// the single-instance lock around a run. Every command opens what it needs through here.
import os from 'node:os';
import type { BaseConfig } from './config.js';
import type { Database } from './db/database.js';
import { migrate } from './db/migrate.js';
import { openDatabase } from './db/open.js';
import { ConfigError, PermanentError, toError } from './errors.js';
import { acquireLock } from './lease.js';
import { acquireFileLock, embeddedLockFile, type FileLockHandle } from './lock-file.js';
import { scrub, type Logger } from './log.js';
import { openQueue } from './queue/open.js';
import type { WorkItemQueue } from './queue/queue.js';
import type { WatermarkStore } from './watermark.js';
import { openWatermarkStore } from './watermark/open.js';

export interface Resources {
  config: BaseConfig;
  watermarks: WatermarkStore;
  db: Database;
  queue: WorkItemQueue;
  /** Migrations this process applied when it opened the database. */
  migrations: string[];
  /** Held in embedded mode from before PGlite opens until close(): one process per PGlite directory. */
  embeddedLock: FileLockHandle | null;
  close(): Promise<void>;
}

/** Thrown when the embedded database is held by another process; a run treats it as "skipped". */
export class EmbeddedDatabaseBusyError extends PermanentError {
  override readonly name = 'EmbeddedDatabaseBusyError';
  constructor(
    readonly holder: string,
    readonly since: string,
    readonly pid: number,
    readonly hostname: string,
  ) {
    super(
      `the embedded database is in use by ${holder} (pid ${pid} on ${hostname}) since ${since}; ` +
        'wait for it to finish, or set DATABASE_URL for concurrent access',
    );
  }
}

/** How commands other than `run` name themselves as holders of the embedded database. */
export const CLI_HOLDER = 'cli';

export const holderName = (runId: string) => `${os.hostname()}:${process.pid}:${runId}`;

/** The watermark store alone: for the commands that need nothing else (`plan`, `watermark …`). */
export function openWatermarks(config: BaseConfig): Promise<WatermarkStore> {
  return openWatermarkStore(config.watermark);
}

/** Opens every backend (the database migrated). */
export async function openResources(config: BaseConfig, logger: Logger, options: { holder?: string } = {}): Promise<Resources> {
  const watermarks = await openWatermarks(config);

  let embeddedLock: FileLockHandle | null = null;
  if (config.database.backend === 'pglite') {
    const lock = await acquireFileLock(embeddedLockFile(config.database.dir), {
      holder: options.holder ?? holderName(CLI_HOLDER),
      logger,
    });
    if (!lock.acquired) throw new EmbeddedDatabaseBusyError(lock.holder, lock.since, lock.pid, lock.hostname);
    embeddedLock = lock;
  }
  let db: Database | undefined;
  try {
    db = await openDatabase(config.database, { logger });
    const { applied } = await migrate(db);
    if (applied.length > 0) logger.info({ applied }, 'applied database migrations');
    const queue = await openQueueOrExplain(config, db, logger);
    const opened = db;
    return {
      config,
      watermarks,
      db,
      queue,
      migrations: applied,
      embeddedLock,
      // Cleanup never throws: a failure here must not replace the error that ended the command.
      close: async () => {
        for (const [what, step] of [
          ['queue', () => queue.close()],
          ['database', () => opened.close()],
          ['embedded lock', async () => embeddedLock?.release()],
        ] as const) {
          await step().catch((err: unknown) => logger.warn({ err: toError(err) }, `closing the ${what} failed`));
        }
      },
    };
  } catch (err) {
    await db?.close().catch(() => {});
    await embeddedLock?.release();
    throw err;
  }
}

/** A connection string the SDK cannot parse is a configuration problem (exit 2), not a failed run. */
async function openQueueOrExplain(config: BaseConfig, db: Database, logger: Logger): Promise<WorkItemQueue> {
  try {
    return await openQueue(config.queue, { db, logger });
  } catch (err) {
    if (config.queue.backend !== 'servicebus' || err instanceof PermanentError || err instanceof ConfigError) throw err;
    const name = config.queue.connectionString ? 'AZURE_SERVICE_BUS_CONNECTION_STRING' : 'AZURE_SERVICE_BUS_NAMESPACE';
    throw new ConfigError([`${name} is not usable: ${scrub(toError(err).message)}`]);
  }
}

/** Which backends serve this invocation, for its one `backends` line: no secrets, only where things are. */
export function describeBackends(resources: Resources): Record<string, string> {
  const { database } = resources.config;
  let where: string;
  if (database.backend === 'pglite') where = `embedded PGlite in ${database.dir}`;
  else {
    const url = new URL(database.url);
    where = `PostgreSQL ${url.hostname}:${url.port || '5432'}/${decodeURIComponent(url.pathname.slice(1)) || '(default database)'}`;
  }
  return { database: where, queue: resources.queue.location, watermark: resources.watermarks.location };
}

/** The one line a skipped run leaves (exit 0): who holds the lock and since when. */
export function logSkipped(logger: Logger, holder: { holder: string; since: string } & Record<string, unknown>): void {
  // In embedded mode the holder may also be a worker (one process per PGlite directory).
  logger.info(holder, 'skipped: another scheduler (or, embedded, a worker) holds the lock');
}

/**
 * Runs `fn` while this process is the only scheduler (CONTRACT §1 step 1). Returns 'skipped'
 * when another instance holds the lock: that is a normal outcome (exit 0), logged with who
 * holds it and since when. In embedded mode the file lock taken by openResources is the lock.
 */
export async function withRunLock<T>(
  resources: Resources,
  logger: Logger,
  runId: string,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T | 'skipped'> {
  if (resources.embeddedLock) return fn(new AbortController().signal);
  const lock = await acquireLock(resources.db, {
    holder: holderName(runId),
    ttlSeconds: resources.config.lockTtlSeconds,
    logger,
  });
  if (!lock.acquired) {
    logSkipped(logger, { holder: lock.holder, since: lock.since, expiresAt: lock.expiresAt });
    return 'skipped';
  }
  try {
    return await fn(lock.signal);
  } finally {
    await lock
      .release()
      .catch((err: unknown) => logger.warn({ err: toError(err) }, 'releasing the lock failed; it expires with its lease'));
  }
}
