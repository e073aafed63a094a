// Opens the configured backends (the one place that chooses them from the config) and
// holds the single-instance lock around a run. Every command goes through here.
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import type { BaseConfig } from './config.js';
import type { Database } from './db/database.js';
import { migrate } from './db/migrate.js';
import { openDatabase } from './db/open.js';
import { PermanentError } from './errors.js';
import { acquireFileLock, acquireLock, embeddedLockFile, type FileLockHandle } from './lock.js';
import type { Logger } from './log.js';
import { openQueue, type WorkItemQueue } from './queue/queue.js';
import { openWatermarkStore, type WatermarkStore } from './watermark.js';

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

const holderName = (runId: string) => `${os.hostname()}:${process.pid}:${runId}`;

export function openResources(config: BaseConfig, logger: Logger, options: { database: false }): Promise<Pick<Resources, 'watermarks' | 'close'>>;
export function openResources(config: BaseConfig, logger: Logger, options?: { database?: true; holder?: string }): Promise<Resources>;
export async function openResources(
  config: BaseConfig,
  logger: Logger,
  options: { database?: boolean; holder?: string } = {},
): Promise<Resources | Pick<Resources, 'watermarks' | 'close'>> {
  const watermarks = openWatermarkStore(config.watermark);
  if (options.database === false) return { watermarks, close: async () => {} };

  let embeddedLock: FileLockHandle | null = null;
  if (config.database.backend === 'pglite') {
    const lock = await acquireFileLock(embeddedLockFile(config.database.dir), {
      holder: options.holder ?? holderName('cli'),
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
    const queue = openQueue(config.queue, { db, logger });
    const opened = db;
    return {
      config,
      watermarks,
      db,
      queue,
      migrations: applied,
      embeddedLock,
      close: async () => {
        await queue.close();
        await opened.close();
        await embeddedLock?.release();
      },
    };
  } catch (err) {
    await db?.close().catch(() => {});
    await embeddedLock?.release();
    throw err;
  }
}

/**
 * Runs `fn` while this process is the only scheduler (CONTRACT §1 step 1). Returns 'skipped'
 * when another instance holds the lock: that is a normal outcome (exit 0), logged with who
 * holds it and since when. In embedded mode the file lock taken by openResources is the lock.
 */
export async function withRunLock<T>(
  resources: Resources,
  logger: Logger,
  fn: (runId: string, signal: AbortSignal) => Promise<T>,
): Promise<T | 'skipped'> {
  const runId = randomUUID();
  if (resources.embeddedLock) return fn(runId, new AbortController().signal);
  const lock = await acquireLock(resources.db, {
    holder: holderName(runId),
    ttlSeconds: resources.config.lockTtlSeconds,
    logger,
  });
  if (!lock.acquired) {
    logger.info({ holder: lock.holder, since: lock.since, expiresAt: lock.expiresAt }, 'skipped: another scheduler holds the lock');
    return 'skipped';
  }
  try {
    return await fn(runId, lock.signal);
  } finally {
    await lock.release();
  }
}
