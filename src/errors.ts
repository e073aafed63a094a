// A few typed errors decide retries and exit codes in one place (index.ts), instead of
// string matching scattered over the code.

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
