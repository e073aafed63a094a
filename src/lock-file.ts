// Embedded mode's lock: an OS-level lock file, taken before PGlite opens its directory.
// PGlite is one process, and a second process opening the same PGlite directory would
// corrupt it, so the lock must be taken before the database is opened at all; a lease row
// inside that database (lease.ts) cannot do that.
//
// The file is created atomically with its content (written to a temporary file, then
// hard-linked into place, which fails if the lock file exists), so a reader never sees a
// half-written lock. It holds {holder, pid, hostname, since}. It is stale when its pid is no
// longer alive on this host; a lock file from another host is never broken automatically
// (its pid means nothing here): an operator removes it. The same holds if the dead holder's
// pid was recycled by another process: the refusal names the pid so an operator can check. Breaking a stale lock is itself
// serialised by a short-lived `.break` file, so two instances cannot both break it and
// then both believe they hold it.
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import { link, mkdir, open, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from './log.js';
import { PermanentError, toError } from './errors.js';
import { withRetry } from './retry.js';

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

  // Each round either takes the lock, finds it held, or finds it changing under us (released,
  // being broken as stale): then the next round looks again shortly.
  return withRetry(
    async () => {
      if (await createExclusive(file, raw)) return fileHandle(file, raw, mine);
      let existingRaw: string;
      try {
        existingRaw = await readFile(file, 'utf8');
      } catch (err) {
        if (isCode(err, 'ENOENT')) throw new LockFileChanging(file); // released in the meantime
        throw err;
      }
      const existing = parseLockContent(existingRaw);
      if (existing && !isStale(existing)) return { acquired: false as const, ...existing, file };
      if (await breakStaleLock(file, existingRaw)) {
        logger.warn(
          { lockFile: file, previousHolder: existing?.holder, previousPid: existing?.pid },
          'removed a stale scheduler lock file (its process is gone)',
        );
      }
      throw new LockFileChanging(file);
    },
    {
      attempts: 20,
      baseDelayMs: 50,
      maxDelayMs: 50,
      jitter: 'none',
      retryable: (err) => err instanceof LockFileChanging,
      onGiveUp: (err) => (err instanceof LockFileChanging ? new Error(`could not take the lock file ${file}: it kept changing`) : err),
    },
  );
}

/** The lock file vanished or was being broken while we looked: look again. */
class LockFileChanging extends Error {
  override readonly name = 'LockFileChanging';
  constructor(file: string) {
    super(`the lock file ${file} changed while it was read`);
  }
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
    const now = await readFile(file, 'utf8').catch((err: unknown) => (isCode(err, 'ENOENT') ? undefined : Promise.reject(toError(err))));
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
    release(): Promise<void> {
      if (!released) {
        released = true;
        process.removeListener('exit', releaseSync);
        releaseSync();
      }
      return Promise.resolve();
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
  return isProcessGone(lock.hostname, lock.pid);
}

/** Whether `pid` on `hostname` is known to be gone. Only this host's processes can be judged. */
export function isProcessGone(hostname: string, pid: number): boolean {
  if (hostname !== os.hostname() || !Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    // EPERM: the process exists but belongs to another user — alive.
    return isCode(err, 'ESRCH');
  }
}

/** The embedded lock file as it stands (`lock` in embedded mode), or null when there is none. */
export async function readFileLock(file: string): Promise<(FileLockContent & { stale: boolean }) | null> {
  let raw: string;
  try {
    raw = await readFile(file, 'utf8');
  } catch (err) {
    if (isCode(err, 'ENOENT')) return null;
    throw err;
  }
  const content = parseLockContent(raw);
  if (!content) throw new Error(`the lock file ${file} is not a scheduler lock file; remove it by hand if no scheduler runs`);
  return { ...content, stale: isStale(content) };
}

/** Removes the embedded lock file when its process is gone, or with `force`; refuses a live holder's. */
export async function releaseFileLock(file: string, options: { force?: boolean } = {}): Promise<FileLockContent | null> {
  const lock = await readFileLock(file);
  if (!lock) return null;
  if (!lock.stale && !options.force) {
    throw new PermanentError(
      `the embedded database is held by ${lock.holder} (pid ${lock.pid} on ${lock.hostname}) since ${lock.since}; ` +
        'it may be running: release it only if you know that process is gone, with --force',
    );
  }
  await unlink(file).catch((err: unknown) => (isCode(err, 'ENOENT') ? undefined : Promise.reject(toError(err))));
  return lock;
}

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}
