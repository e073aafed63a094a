// The one retry loop. Every place that tries again (Nivoda requests, Service Bus publishing,
// database bookkeeping, waiting for a lock) goes through here, so backoff, jitter, attempt
// limits, time budgets and Retry-After mean the same thing everywhere.
import { setTimeout as sleep } from 'node:timers/promises';
import { isTransient, TransientError } from './errors.js';

export interface RetryPolicy {
  /** Attempts in all, the first included (≥ 1). */
  attempts: number;
  /** Delay before the first retry; attempt n waits up to base·2^(n−1). */
  baseDelayMs: number;
  /** Cap on one delay. */
  maxDelayMs: number;
  /** Total time the loop may spend; a retry that would end past it is not started. Default: unbounded. */
  budgetMs?: number;
  /**
   * 'full': a random delay in [0, step] (many clients backing off from one server spread out);
   * 'none': exactly the step (a lone process waiting for a resource of its own).
   */
  jitter?: 'full' | 'none';
}

export interface GiveUp {
  attempts: number;
  elapsedMs: number;
  /** Why the loop stopped: the error was not retryable, the attempts ran out, or the time budget did. */
  reason: 'permanent' | 'attempts' | 'budget';
}

export interface RetryOptions extends RetryPolicy {
  /** What a retry can fix. Default: the transient errors of errors.ts. */
  retryable?: (error: unknown) => boolean;
  /** Heard before each wait (a log line, a counter). */
  onRetry?: (info: { attempt: number; delayMs: number; error: unknown }) => void;
  /** The error the caller sees when the loop stops; default: the last error itself. */
  onGiveUp?: (error: unknown, info: GiveUp) => unknown;
  /** Stops waiting between attempts (and the loop) at once. */
  signal?: AbortSignal;
}

/** Runs `fn` until it succeeds, the error is not retryable, or the policy's attempts or budget run out. */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions): Promise<T> {
  const retryable = options.retryable ?? isTransient;
  const started = performance.now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (error) {
      const elapsedMs = performance.now() - started;
      const giveUp = (reason: GiveUp['reason']) => {
        throw options.onGiveUp ? options.onGiveUp(error, { attempts: attempt, elapsedMs, reason }) : error;
      };
      if (options.signal?.aborted || !retryable(error)) giveUp('permanent');
      if (attempt >= options.attempts) giveUp('attempts');
      const delayMs = retryDelay(options, attempt, retryAfterOf(error));
      if (options.budgetMs !== undefined && elapsedMs + delayMs > options.budgetMs) giveUp('budget');
      options.onRetry?.({ attempt, delayMs, error });
      await sleep(delayMs, undefined, { signal: options.signal });
    }
  }
}

/** The wait before retry number `attempt`: exponential, capped, jittered, never shorter than the server asked. */
export function retryDelay(policy: RetryPolicy, attempt: number, retryAfterMs?: number): number {
  const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  const delay = (policy.jitter ?? 'full') === 'full' ? Math.random() * step : step;
  return Math.max(delay, retryAfterMs ?? 0);
}

function retryAfterOf(error: unknown): number | undefined {
  return error instanceof TransientError ? error.retryAfterMs : undefined;
}

/** Retry-After: delta-seconds or an HTTP date (RFC 9110 §10.2.3), in milliseconds from now. */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}
