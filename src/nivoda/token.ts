// The Nivoda token cache: one token for the whole process, one authentication in flight at a
// time however many callers need it, renewed before its documented lifetime (6 h) runs out
// and replaced once when the server refuses it.
import { registerSecret } from '../log.js';

export class TokenCache {
  private token: { value: string; obtainedAt: number } | undefined;
  private inFlight: Promise<string> | undefined;

  constructor(
    private readonly authenticate: () => Promise<string>,
    private readonly maxAgeMs: number,
  ) {}

  /** The cached token, or the one authentication every concurrent caller waits on. */
  current(): Promise<string> {
    if (this.token && Date.now() - this.token.obtainedAt < this.maxAgeMs) return Promise.resolve(this.token.value);
    // Not tied to one caller's signal: other callers share this authentication.
    this.inFlight ??= this.authenticate()
      .then((value) => {
        registerSecret(value);
        this.token = { value, obtainedAt: Date.now() };
        return value;
      })
      .finally(() => {
        this.inFlight = undefined;
      });
    return this.inFlight;
  }

  /** How long ago `value` was issued, if it is the cached token. */
  ageOf(value: string): number | undefined {
    return this.token?.value === value ? Date.now() - this.token.obtainedAt : undefined;
  }

  /** After `rejected` was refused: a new token, unless another caller already replaced it. */
  replace(rejected: string): Promise<string> {
    if (this.token?.value === rejected) this.token = undefined;
    return this.current();
  }
}

/** Lets one caller stop waiting for a shared promise (the authentication) without cancelling it for the others. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(toReason(signal.reason));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(toReason(signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

function toReason(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
