// A requests-per-second cap shared by every caller of one client (one per process): each
// request takes the next free time slot, slots 1/rate apart. Spacing rather than a bursty
// token bucket, because the API's own limiter (and the simulator's) counts over a sliding
// second, and a burst at start-up is exactly what gets a 429.
import { setTimeout as sleep } from 'node:timers/promises';

/** What a request waits on before it is sent: a per-process spacer, or the vendor budget shared by every worker. */
export interface RequestLimiter {
  /** Waits for this request's turn; resolves with the milliseconds waited. */
  acquire(signal?: AbortSignal): Promise<number>;
}

export class RequestSpacer implements RequestLimiter {
  private nextSlot = 0;
  private readonly intervalMs: number;

  constructor(requestsPerSecond: number) {
    if (!(requestsPerSecond > 0)) throw new RangeError('requestsPerSecond must be greater than 0');
    this.intervalMs = 1000 / requestsPerSecond;
  }

  /** Waits for this caller's slot; resolves with the milliseconds waited. */
  async acquire(signal?: AbortSignal): Promise<number> {
    const now = performance.now();
    const slot = Math.max(now, this.nextSlot);
    this.nextSlot = slot + this.intervalMs;
    const wait = slot - now;
    // A slot given up by an aborted caller stays used: a little slower, never over the cap.
    if (wait > 0) await sleep(wait, undefined, { signal });
    return wait;
  }
}
