// The error vocabulary: a few typed errors decide retries (retry.ts) and exit codes
// (index.ts), instead of string matching scattered over the code. Adapters translate what
// their SDK throws into these at their boundary; isTransient() is the one verdict on
// whether trying again can help.

/** Bad configuration or usage: exit 2. `problems` lists every problem found, not just the first. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
}

/** A run failed for a reason worth retrying later (network, 5xx, 429, timeouts). */
export class TransientError extends Error {
  override readonly name = 'TransientError';
  constructor(message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(message, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
  readonly retryAfterMs: number | undefined;
}

/** A failure that a retry cannot fix (GraphQL validation error, bad credentials, malformed data). */
export class PermanentError extends Error {
  override readonly name: string = 'PermanentError';
}

/** The stored watermark exists but is not the CONTRACT §4 shape: a run must stop, never fall back to a full run. */
export class WatermarkFormatError extends PermanentError {
  override readonly name = 'WatermarkFormatError';
  constructor(
    readonly location: string,
    problem: string,
  ) {
    super(`watermark at ${location} is malformed: ${problem}`);
  }
}

/**
 * The process was asked to stop (SIGTERM from the platform, Ctrl-C) or lost its lease: the
 * run stops at the next safe point, records why, and exits 1. Not retried.
 */
export class StoppedError extends PermanentError {
  override readonly name = 'StoppedError';
}

/** Throws a StoppedError carrying the stop's reason once `signal` has aborted: called at safe points only. */
export function stopIfAsked(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const reason: unknown = signal.reason;
  if (reason instanceof StoppedError) throw reason;
  throw new StoppedError(reason instanceof Error ? reason.message : String(reason), { cause: reason });
}

/** Normalises anything thrown into an Error, unwrapping the AggregateError some SDKs throw after retries. */
export function toError(thrown: unknown): Error {
  if (thrown instanceof AggregateError && thrown.errors.length > 0) {
    return toError(thrown.errors.at(-1));
  }
  if (thrown instanceof Error) return thrown;
  return new Error(typeof thrown === 'string' ? thrown : JSON.stringify(thrown));
}

/**
 * A conditional watermark write or clear lost a race: the stored watermark changed (or
 * appeared, or vanished) since the caller read it. Nothing was written; re-read and decide.
 */
export class WatermarkConflictError extends PermanentError {
  override readonly name = 'WatermarkConflictError';
  constructor(
    readonly location: string,
    problem: string,
  ) {
    super(`conflicting update of the watermark at ${location}, nothing written: ${problem}`);
  }
}

/** Bad credentials (or an authentication the server refuses): no retry can fix it. */
export class NivodaAuthenticationError extends PermanentError {
  override readonly name = 'NivodaAuthenticationError';
}

/** The Nivoda server answered with GraphQL `errors` (validation, bad input, execution). */
export class NivodaGraphQLError extends PermanentError {
  override readonly name = 'NivodaGraphQLError';
  constructor(
    message: string,
    readonly codes: string[],
  ) {
    super(message);
  }
}

/** Socket-level failures: the peer went away or could not be reached for a moment. */
const TRANSIENT_SYSTEM_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * PostgreSQL SQLSTATEs a retry can outlive: connection exceptions (class 08), the server
 * shutting down or restarting (57P01–57P03), serialization failures and deadlocks, too many
 * connections.
 */
const TRANSIENT_SQLSTATE = /^(08...|57P0[123]|40001|40P01|53300)$/;

/** Whether trying the same thing again may succeed. Unknown errors are not retried. */
export function isTransient(thrown: unknown): boolean {
  if (thrown instanceof AggregateError && thrown.errors.length > 0) return isTransient(thrown.errors.at(-1));
  if (thrown instanceof TransientError) return true;
  if (thrown instanceof PermanentError || thrown instanceof ConfigError) return false;
  if (!(thrown instanceof Error)) return false;
  const code = (thrown as { code?: unknown }).code;
  if (typeof code === 'string' && (TRANSIENT_SYSTEM_CODES.has(code) || TRANSIENT_SQLSTATE.test(code))) return true;
  // pg reports a connection dropped mid-query without a code.
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect/i.test(thrown.message);
}
