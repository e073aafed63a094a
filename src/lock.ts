// The single-instance lock: at most one scheduler runs at a time (CONTRACT §1 step 1).
//
// Design: a LEASE ROW, not a session advisory lock. A session-level pg_advisory_lock lives on
// one server connection; behind a transaction-mode pooler (PgBouncer, Azure's built-in one)
// the next statement may run on another connection, and the lock would be held by a
// connection nobody controls, or released under us. A row in `scheduler_lock` holds no
// session state at all:
//   - acquire: one INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now() RETURNING.
//     It succeeds if the row is absent or its lease has expired, atomically, and row locking
//     makes two simultaneous acquirers resolve to exactly one winner.
//   - renew: while held, an unref'd timer pushes expires_at forward every ttl/3, matching our
//     random `token` (not the holder text, which two processes could share).
//   - release: DELETE of our row (only if the token is still ours), so the next instance
//     can start at once.
//   - crash: nothing renews any more; once expires_at passes, the next acquirer takes over.
// All times are the database server's now(), so clock skew between hosts does not matter.
// If a renewal finds the row gone or taken (we were paused past the TTL), the handle's
// `signal` aborts so the run can stop before it writes as a second scheduler.
//
// Embedded mode adds a FILE LOCK (acquireFileLock): PGlite is one process, and a second
// process opening the same PGlite directory would corrupt it, so the lock must be taken
// before the database is opened at all; a lease row inside that database cannot do that.
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import { link, mkdir, open, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { iso, type Queryable } from './db/database.js';
import type { Logger } from './log.js';

export const DEFAULT_LOCK_NAME = 'scheduler';

export interface LockRefusal {
  acquired: false;
  /** Who holds it, as that instance described itself (e.g. hostname:pid:runId). */
  holder: string;
  /** ISO time the holder acquired it. */
  since: string;
  /** ISO time the lease lapses unless renewed. */
  expiresAt: string;
}

export interface LockHandle {
  acquired: true;
  holder: string;
  since: string;
  /** Aborts if the lease is lost while running (not renewed in time and taken, or removed). */
  signal: AbortSignal;
  /** Stops renewing and deletes the lease if it is still ours. Idempotent. */
  release(): Promise<void>;
}

export type LockResult = LockHandle | LockRefusal;

export interface AcquireLockOptions {
  holder: string;
  ttlSeconds: number;
  logger: Logger;
  /** Lock name (row key); one per independent singleton. */
  name?: string;
}

interface LeaseRow extends Record<string, unknown> {
  holder: string;
  acquired_at: unknown;
  expires_at: unknown;
}

export async function acquireLock(db: Queryable, options: AcquireLockOptions): Promise<LockResult> {
  const { holder, ttlSeconds, logger } = options;
  const name = options.name ?? DEFAULT_LOCK_NAME;
  if (!(ttlSeconds > 0)) throw new RangeError(`lock TTL must be positive, got ${ttlSeconds}`);
  const token = randomUUID();

  // A refusal can race with the holder's release (the row vanishes between our two
  // statements); then simply try again. Three rounds are plenty: each one has a winner.
  for (let attempt = 0; attempt < 3; attempt++) {
    const won = await db.query<LeaseRow & { previous_holder: string | null; previous_expires_at: unknown }>(
      `WITH previous AS (SELECT holder, expires_at FROM scheduler_lock WHERE name = $1)
       INSERT INTO scheduler_lock AS l (name, holder, token, acquired_at, renewed_at, expires_at)
       VALUES ($1, $2, $3, now(), now(), now() + $4::double precision * interval '1 second')
       ON CONFLICT (name) DO UPDATE
         SET holder = EXCLUDED.holder, token = EXCLUDED.token, acquired_at = EXCLUDED.acquired_at,
             renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at
         WHERE l.expires_at <= now()
       RETURNING l.holder, l.acquired_at, l.expires_at,
         (SELECT holder FROM previous) AS previous_holder, (SELECT expires_at FROM previous) AS previous_expires_at`,
      [name, holder, token, ttlSeconds],
    );
    const row = won[0];
    if (row) {
      if (row.previous_holder !== null && row.previous_holder !== undefined) {
        logger.warn(
          { lock: name, previousHolder: row.previous_holder, expiredAt: iso(row.previous_expires_at) },
          'took over an expired scheduler lock (its holder stopped without releasing it)',
        );
      }
      return startLease(db, { name, holder, token, ttlSeconds, logger, since: iso(row.acquired_at) });
    }
    const current = await db.query<LeaseRow>('SELECT holder, acquired_at, expires_at FROM scheduler_lock WHERE name = $1', [name]);
    const held = current[0];
    if (held) {
      return { acquired: false, holder: held.holder, since: iso(held.acquired_at), expiresAt: iso(held.expires_at) };
    }
  }
  throw new Error(`could not acquire or read lock ${name}: it changed hands three times in a row`);
}

interface LeaseState {
  name: string;
  holder: string;
  token: string;
  ttlSeconds: number;
  logger: Logger;
  since: string;
}

function startLease(db: Queryable, lease: LeaseState): LockHandle {
  const { name, token, ttlSeconds, logger } = lease;
  const ttlMs = ttlSeconds * 1000;
  const controller = new AbortController();
  let lastRenewedAt = performance.now();
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<void> = Promise.resolve();
  let stopped = false;

  const lose = (reason: string): void => {
    if (controller.signal.aborted) return;
    stopped = true;
    logger.error({ lock: name, holder: lease.holder }, `scheduler lock lost: ${reason}`);
    controller.abort(new Error(`scheduler lock lost: ${reason}`));
  };

  const renew = async (): Promise<void> => {
    try {
      const rows = await db.query(
        `UPDATE scheduler_lock SET renewed_at = now(), expires_at = now() + $3::double precision * interval '1 second'
         WHERE name = $1 AND token = $2 RETURNING expires_at`,
        [name, token, ttlSeconds],
      );
      if (rows.length === 0) {
        lose('the lease row is gone or belongs to another instance');
        return;
      }
      lastRenewedAt = performance.now();
    } catch (err) {
      // A blip is survivable while the lease still runs; past the TTL another instance may own it.
      if (performance.now() - lastRenewedAt >= ttlMs) lose('could not renew it within its TTL');
      else logger.warn({ err, lock: name }, 'could not renew the scheduler lock; will retry');
    }
  };

  const schedule = (): void => {
    if (stopped) return;
    // setTimeout chain rather than setInterval: a slow renewal never overlaps the next one.
    timer = setTimeout(() => {
      inFlight = renew().finally(schedule);
    }, ttlMs / 3);
    // The lease must never be the reason a finished process stays alive.
    timer.unref();
  };
  schedule();

  let released: Promise<void> | undefined;
  return {
    acquired: true,
    holder: lease.holder,
    since: lease.since,
    signal: controller.signal,
    release(): Promise<void> {
      released ??= (async () => {
        stopped = true;
        clearTimeout(timer);
        await inFlight;
        await db.query('DELETE FROM scheduler_lock WHERE name = $1 AND token = $2', [name, token]);
      })();
      return released;
    },
  };
}

// ---------------------------------------------------------------------------------------
// Embedded mode: an OS-level lock file, taken before PGlite opens its directory.
//
// The file is created atomically with its content (written to a temporary file, then
// hard-linked into place, which fails if the lock file exists), so a reader never sees a
// half-written lock. It holds {holder, pid, hostname, since}. It is stale when its pid is no
// longer alive on this host; a lock file from another host is never broken automatically
// (its pid means nothing here): an operator removes it. The same holds if the dead holder's
// pid was recycled by another process: the refusal names the pid so an operator can check. Breaking a stale lock is itself
// serialised by a short-lived `.break` file, so two instances cannot both break it and
// then both believe they hold it.

export interface FileLockContent {
  holder: string;
  pid: number;
  hostname: string;
  since: string;
}

export interface FileLockHandle {
  acquired: true;
  holder: string;
  since: string;
  file: string;
  /** Deletes the lock file if it is still ours. Idempotent; also done synchronously on process exit. */
  release(): Promise<void>;
}

export interface FileLockRefusal {
  acquired: false;
  holder: string;
  since: string;
  pid: number;
  hostname: string;
  file: string;
}

export type FileLockResult = FileLockHandle | FileLockRefusal;

/** Where the lock file of a PGlite directory lives: beside it, so PGlite's own directory holds only its files. */
export function embeddedLockFile(pgliteDir: string): string {
  return `${path.resolve(pgliteDir)}.lock`;
}

/** A `.break` file older than this was left by an instance that died while breaking a stale lock. */
const BREAK_STALE_MS = 10_000;

export async function acquireFileLock(file: string, options: { holder: string; logger: Logger }): Promise<FileLockResult> {
  const { holder, logger } = options;
  await mkdir(path.dirname(file), { recursive: true });
  const mine: FileLockContent = { holder, pid: process.pid, hostname: os.hostname(), since: new Date().toISOString() };
  const raw = `${JSON.stringify(mine)}\n`;

  for (let attempt = 0; attempt < 20; attempt++) {
    if (await createExclusive(file, raw)) return fileHandle(file, raw, mine);

    let existingRaw: string;
    try {
      existingRaw = await readFile(file, 'utf8');
    } catch (err) {
      if (isCode(err, 'ENOENT')) continue; // released in the meantime
      throw err;
    }
    const existing = parseLockContent(existingRaw);
    if (existing && !isStale(existing)) {
      return { acquired: false, ...existing, file };
    }
    if (await breakStaleLock(file, existingRaw)) {
      logger.warn(
        { lockFile: file, previousHolder: existing?.holder, previousPid: existing?.pid },
        'removed a stale scheduler lock file (its process is gone)',
      );
    } else {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error(`could not take the lock file ${file}: it kept changing`);
}

async function createExclusive(file: string, raw: string): Promise<boolean> {
  const temp = `${file}.${process.pid}.${randomUUID()}.tmp`;
  await writeFile(temp, raw, { flag: 'wx' });
  try {
    await link(temp, file);
    return true;
  } catch (err) {
    if (isCode(err, 'EEXIST')) return false;
    throw err;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

/** Removes `file` if it still holds exactly `staleRaw`. Returns false when another instance is breaking it. */
async function breakStaleLock(file: string, staleRaw: string): Promise<boolean> {
  const breaker = `${file}.break`;
  let handle;
  try {
    handle = await open(breaker, 'wx');
  } catch (err) {
    if (!isCode(err, 'EEXIST')) throw err;
    const info = await stat(breaker).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > BREAK_STALE_MS) await unlink(breaker).catch(() => undefined);
    return false;
  }
  try {
    const now = await readFile(file, 'utf8').catch((err: unknown) => (isCode(err, 'ENOENT') ? undefined : Promise.reject(err)));
    // Someone may have broken it and taken a fresh lock while we looked: then it is not stale any more.
    if (now !== staleRaw) return false;
    await unlink(file);
    return true;
  } finally {
    await handle.close();
    await unlink(breaker).catch(() => undefined);
  }
}

function fileHandle(file: string, raw: string, mine: FileLockContent): FileLockHandle {
  const releaseSync = (): void => {
    // Only our own file: after a crash-and-takeover it may belong to someone else now.
    try {
      if (existsSync(file) && readFileSync(file, 'utf8') === raw) unlinkSync(file);
    } catch {
      // At exit there is no one to report to; a leftover file is detected as stale by pid.
    }
  };
  process.once('exit', releaseSync);
  let released = false;
  return {
    acquired: true,
    holder: mine.holder,
    since: mine.since,
    file,
    async release(): Promise<void> {
      if (released) return;
      released = true;
      process.removeListener('exit', releaseSync);
      releaseSync();
    },
  };
}

function parseLockContent(raw: string): FileLockContent | undefined {
  try {
    const value: unknown = JSON.parse(raw);
    if (typeof value !== 'object' || value === null) return undefined;
    const v = value as Record<string, unknown>;
    if (typeof v.holder === 'string' && typeof v.pid === 'number' && typeof v.hostname === 'string' && typeof v.since === 'string') {
      return { holder: v.holder, pid: v.pid, hostname: v.hostname, since: v.since };
    }
  } catch {
    // fall through: unreadable content
  }
  // Our files appear atomically and complete, so unreadable content was not written by a scheduler.
  return undefined;
}

function isStale(lock: FileLockContent): boolean {
  if (lock.hostname !== os.hostname()) return false;
  // Our own pid in a lock we do not hold: a restarted container reuses pids (often pid 1), so
  // the file was left by an earlier life of this host, not by a live scheduler.
  if (lock.pid === process.pid) return true;
  try {
    process.kill(lock.pid, 0);
    return false;
  } catch (err) {
    // EPERM: the process exists but belongs to another user — alive.
    return isCode(err, 'ESRCH');
  }
}

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}
