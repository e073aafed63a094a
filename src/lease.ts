// The single-instance lease: at most one scheduler runs at a time (CONTRACT §1 step 1).
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
// (Embedded mode adds the lock file of lock-file.ts, taken before PGlite opens.)
import { randomUUID } from 'node:crypto';
import { iso, type Queryable } from './db/database.js';
import { PermanentError } from './errors.js';
import { isProcessGone } from './lock-file.js';
import type { Logger } from './log.js';
import { withRetry } from './retry.js';

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
  return withRetry(
    async () => {
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
      if (!held) throw new LeaseChanging();
      return { acquired: false as const, holder: held.holder, since: iso(held.acquired_at), expiresAt: iso(held.expires_at) };
    },
    {
      attempts: 3,
      baseDelayMs: 0,
      maxDelayMs: 0,
      retryable: (err) => err instanceof LeaseChanging,
      onGiveUp: (err) =>
        err instanceof LeaseChanging ? new Error(`could not acquire or read lock ${name}: it changed hands three times in a row`) : err,
    },
  );
}

/** The lease row vanished between our insert and our read: the holder released it just then. */
class LeaseChanging extends Error {
  override readonly name = 'LeaseChanging';
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

export interface LeaseInfo {
  holder: string;
  acquiredAt: string;
  renewedAt: string;
  expiresAt: string;
  /** The lease has lapsed: the next scheduler takes it over. */
  expired: boolean;
  /** The holder is a process of this host that no longer exists (a lease left by a killed scheduler). */
  holderGone: boolean;
}

interface LeaseRecord extends LeaseInfo {
  token: string;
}

/** The lease as it stands (`lock`), or null when nobody holds it. */
export async function readLease(db: Queryable, name = DEFAULT_LOCK_NAME): Promise<LeaseInfo | null> {
  const lease = await readLeaseRecord(db, name);
  if (!lease) return null;
  const { token: _token, ...info } = lease;
  return info;
}

async function readLeaseRecord(db: Queryable, name: string): Promise<LeaseRecord | null> {
  const rows = await db.query<LeaseRow & { renewed_at: unknown; expired: boolean; token: string }>(
    'SELECT holder, token, acquired_at, renewed_at, expires_at, expires_at <= now() AS expired FROM scheduler_lock WHERE name = $1',
    [name],
  );
  const row = rows[0];
  if (!row) return null;
  return {
    token: String(row.token),
    holder: row.holder,
    acquiredAt: iso(row.acquired_at),
    renewedAt: iso(row.renewed_at),
    expiresAt: iso(row.expires_at),
    expired: row.expired,
    holderGone: holderIsGone(row.holder),
  };
}

/**
 * Frees the lease (`lock release`) when its holder is gone or it has expired, or with `force`.
 * Returns what was released, or null when there was nothing; refuses (throws) a live holder's.
 */
export async function releaseLease(db: Queryable, options: { force?: boolean; name?: string } = {}): Promise<LeaseInfo | null> {
  const name = options.name ?? DEFAULT_LOCK_NAME;
  const lease = await readLeaseRecord(db, name);
  if (!lease) return null;
  if (!lease.expired && !lease.holderGone && !options.force) {
    throw new PermanentError(
      `the scheduler lock is held by ${lease.holder} until ${lease.expiresAt} (renewed ${lease.renewedAt}); ` +
        'it may be running: release it only if you know that process is gone, with --force',
    );
  }
  // Only the lease we looked at: if it changed hands meanwhile, the new holder keeps it.
  const rows = await db.query('DELETE FROM scheduler_lock WHERE name = $1 AND token = $2 RETURNING name', [name, lease.token]);
  if (rows.length === 0) throw new PermanentError('the scheduler lock changed hands while it was being released; look again with `lock`');
  const { token: _token, ...info } = lease;
  return info;
}

/** A holder named `host:pid:…` on this host whose process is gone. Another host's holder is never judged. */
function holderIsGone(holder: string): boolean {
  const [host, pid] = holder.split(':');
  return host !== undefined && Number(pid) !== process.pid && isProcessGone(host, Number(pid));
}
