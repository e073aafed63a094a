// The vendor budget (CONTRACT §9): Nivoda's rate limit is global, so every worker process
// together stays under NIVODA_GLOBAL_REQUESTS_PER_SECOND.
//
// Decision: with PostgreSQL (DATABASE_URL: the deployment, any number of worker replicas) a
// token bucket in one row of `vendor_budget`, shared by every process, one UPDATE … RETURNING
// per request. Each request takes a token even when none is left and waits for the moment its
// token is due (a reservation), so requests leave in the order they asked, spaced 1/rate apart
// across all processes, whatever the number of replicas or their concurrency; no share has to
// be derived from a replica count that KEDA may change. The burst is one token, because the
// vendor (like the simulator) counts over a sliding second: spacing, not bursts. Time is the
// database's clock_timestamp(), the one clock every process agrees on. A crashed process's
// reservations only leave a few slots unused. Embedded mode (PGlite) is one process by
// construction, so the in-process spacer at the global rate is the same budget.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Queryable } from '../db/database.js';
import { RequestSpacer, type RequestLimiter } from './rate-limit.js';

export const BUDGET_NAME = 'nivoda';

export class SharedTokenBucket implements RequestLimiter {
  constructor(
    private readonly db: Queryable,
    private readonly requestsPerSecond: number,
    private readonly name = BUDGET_NAME,
    /** Tokens that may accumulate while nobody asks (1: no burst). */
    private readonly burst = 1,
  ) {
    if (!(requestsPerSecond > 0)) throw new RangeError('requestsPerSecond must be greater than 0');
  }

  async acquire(signal?: AbortSignal): Promise<number> {
    const rows = await this.db.query<{ tokens: number }>(
      `INSERT INTO vendor_budget AS b (name, tokens, refilled_at) VALUES ($1, $3::double precision - 1, clock_timestamp())
       ON CONFLICT (name) DO UPDATE SET
         tokens = LEAST($3::double precision,
                        b.tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.refilled_at)::double precision) * $2) - 1,
         refilled_at = clock_timestamp()
       RETURNING tokens`,
      [this.name, this.requestsPerSecond, this.burst],
    );
    const tokens = Number(rows[0]?.tokens ?? 0);
    const waitMs = tokens < 0 ? (-tokens / this.requestsPerSecond) * 1000 : 0;
    // A reservation given up by an aborted caller stays taken: a little slower, never over the budget.
    if (waitMs > 0) await sleep(waitMs, undefined, { signal });
    return waitMs;
  }
}

/** The budget for this process: shared through PostgreSQL, or the in-process spacer in embedded mode. */
export function vendorBudget(db: Queryable & { backend: 'postgres' | 'pglite' }, requestsPerSecond: number): RequestLimiter {
  return db.backend === 'postgres' ? new SharedTokenBucket(db, requestsPerSecond) : new RequestSpacer(requestsPerSecond);
}
