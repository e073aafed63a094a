// One GraphQL exchange with Nivoda over fetch, and the retries around it. One transport per
// process, so its concurrency limit and requests-per-second cap hold for the whole scheduler.
// Retries only what a retry can fix (network, timeouts, 429, 5xx) through the shared retry
// loop; any response carrying GraphQL `errors` fails at once with the server's words.
// Request variables are never logged (they carry the password and the token).
import pLimit from 'p-limit';
import type { NivodaConfig } from '../config.js';
import { NivodaAuthenticationError, NivodaGraphQLError, PermanentError, TransientError } from '../errors.js';
import { scrub, type Logger } from '../log.js';
import { parseRetryAfter, withRetry, type RetryPolicy } from '../retry.js';
import { RequestSpacer, type RequestLimiter } from './rate-limit.js';

export type Operation = 'authentication' | 'count' | 'search';

export interface GraphQLResponse {
  data?: unknown;
  errors?: { message?: unknown; extensions?: { code?: unknown } }[];
}

export interface NivodaStats {
  /** HTTP requests sent (authentications and retries included). */
  requests: number;
  /** count() calls. */
  countQueries: number;
  /** search() calls. */
  searchQueries: number;
  /** Requests repeated after a transient failure. */
  retries: number;
  /** Tokens obtained. */
  authentications: number;
  /** Time callers spent waiting: for a concurrency slot, for the rate cap and in backoff. */
  waitMs: number;
  /** Of waitMs: waiting for the requests-per-second cap. */
  rateLimitWaitMs: number;
  /** Of waitMs: sleeping between attempts (including Retry-After). */
  backoffMs: number;
  /** Responses 429 received. */
  throttled: number;
  /** Requests that hit the per-request timeout. */
  timeouts: number;
}

export const emptyStats = (): NivodaStats => ({
  requests: 0,
  countQueries: 0,
  searchQueries: 0,
  retries: 0,
  authentications: 0,
  waitMs: 0,
  rateLimitWaitMs: 0,
  backoffMs: 0,
  throttled: 0,
  timeouts: 0,
});

/** The token was refused (expired): the client handles it by one re-authentication. */
export class TokenRejected extends Error {
  override readonly name = 'TokenRejected';
}

/** Error codes in a GraphQL response that mean "try again later" rather than "your request is wrong". */
const TRANSIENT_GRAPHQL_CODES = new Set(['SERVICE_UNAVAILABLE', 'TOO_MANY_REQUESTS', 'RATE_LIMITED', 'TIMEOUT', 'GATEWAY_TIMEOUT']);

export interface Transport {
  /** Sends one document with retries; resolves with the GraphQL response, which carries no `errors`. */
  send(op: Operation, document: string, variables: Record<string, unknown>, signal?: AbortSignal): Promise<GraphQLResponse>;
  readonly stats: NivodaStats;
}

export function createTransport(
  endpoint: string,
  options: NivodaConfig,
  logger: Logger,
  backoff: Pick<RetryPolicy, 'baseDelayMs' | 'maxDelayMs'>,
  /** Waited on after this process's own cap, by every attempt (retries and authentications too). */
  budget?: RequestLimiter,
): Transport {
  const limit = pLimit(options.maxConcurrency);
  const spacer = new RequestSpacer(options.maxRequestsPerSecond);
  const stats = emptyStats();
  const { host } = new URL(endpoint);

  /** One HTTP exchange, inside the concurrency limit and the rate cap. */
  function exchange(op: Operation, body: string, signal: AbortSignal | undefined): Promise<GraphQLResponse> {
    const queuedAt = performance.now();
    return limit(async () => {
      stats.waitMs += performance.now() - queuedAt;
      const rateWait = (await spacer.acquire(signal)) + ((await budget?.acquire(signal)) ?? 0);
      stats.waitMs += rateWait;
      stats.rateLimitWaitMs += rateWait;
      stats.requests++;
      const timeout = AbortSignal.timeout(options.requestTimeoutMs);
      const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
      const started = performance.now();
      let status: number;
      let text: string;
      let retryAfter: string | null;
      try {
        const response = await fetch(endpoint, {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json' },
          body,
          signal: combined,
        });
        status = response.status;
        retryAfter = response.headers.get('retry-after');
        text = await response.text();
      } catch (err) {
        if (signal?.aborted) throw signal.reason ?? err;
        if (timeout.aborted) {
          stats.timeouts++;
          throw new TransientError(`request to ${host} timed out after ${options.requestTimeoutMs} ms`);
        }
        throw new TransientError(`network error reaching ${host}: ${describeNetworkError(err)}`, { cause: err });
      }
      logger.trace({ op, status, durationMs: Math.round(performance.now() - started) }, 'Nivoda response');
      return interpret(op, status, text, retryAfter);
    });
  }

  function interpret(op: Operation, status: number, text: string, retryAfter: string | null): GraphQLResponse {
    if (status === 429) {
      stats.throttled++;
      throw new TransientError('HTTP 429 Too Many Requests', { retryAfterMs: parseRetryAfter(retryAfter) });
    }
    if (status >= 500 || status === 408) {
      throw new TransientError(`HTTP ${status}${snippet(text)}`, { retryAfterMs: parseRetryAfter(retryAfter) });
    }
    if (status === 401 && op !== 'authentication') throw new TokenRejected(`HTTP 401${snippet(text)}`);
    if (status === 403) {
      throw new PermanentError(`HTTP 403 Forbidden (a web application firewall may be blocking this client)${snippet(text)}`);
    }
    if (status < 200 || status >= 300) throw new PermanentError(`HTTP ${status}${snippet(text)}`);
    let parsed: GraphQLResponse;
    try {
      parsed = JSON.parse(text) as GraphQLResponse;
    } catch {
      // A 200 with a non-JSON body is a proxy or a cut connection, not an answer.
      throw new TransientError(`response is not JSON${snippet(text)}`);
    }
    if (parsed === null || typeof parsed !== 'object') throw new TransientError('response is not a GraphQL result');
    if (Array.isArray(parsed.errors) && parsed.errors.length > 0) {
      const codes = parsed.errors.map((e) => (typeof e?.extensions?.code === 'string' ? e.extensions.code : ''));
      const message = parsed.errors.map((e) => (typeof e?.message === 'string' ? e.message : JSON.stringify(e))).join('; ');
      if (op === 'authentication') throw new NivodaAuthenticationError(scrub(message));
      if (codes.includes('UNAUTHENTICATED')) throw new TokenRejected(message);
      if (codes.some((c) => TRANSIENT_GRAPHQL_CODES.has(c))) throw new TransientError(message);
      throw new NivodaGraphQLError(
        message,
        codes.filter((c) => c !== ''),
      );
    }
    return parsed;
  }

  return {
    stats,
    send(op, document, variables, signal) {
      const body = JSON.stringify({ query: document, variables });
      return withRetry(() => exchange(op, body, signal), {
        attempts: options.maxAttempts,
        budgetMs: options.retryBudgetMs,
        ...backoff,
        signal,
        retryable: (err) => err instanceof TransientError && !signal?.aborted,
        onRetry: ({ attempt, delayMs, error }) => {
          stats.retries++;
          stats.waitMs += delayMs;
          stats.backoffMs += delayMs;
          logger.debug({ op, attempt, delayMs: Math.round(delayMs), reason: scrub((error as Error).message) }, 'retrying Nivoda request');
        },
        onGiveUp: (error, { attempts, reason }) => {
          if (!(error instanceof TransientError) || reason === 'permanent') return error;
          const why =
            reason === 'attempts' ? `${attempts} attempts` : `${attempts} attempts (retry budget ${options.retryBudgetMs} ms spent)`;
          return new TransientError(`${error.message} (gave up after ${why})`, { cause: error, retryAfterMs: error.retryAfterMs });
        },
      });
    },
  };
}

function describeNetworkError(err: unknown): string {
  // fetch's "fetch failed" hides the useful part (ECONNREFUSED, ECONNRESET…) in its cause.
  const cause = (err as { cause?: { code?: unknown; message?: unknown } } | undefined)?.cause;
  if (cause && typeof cause.code === 'string') return cause.code;
  if (cause && typeof cause.message === 'string') return cause.message;
  return err instanceof Error ? err.message : String(err);
}

function snippet(text: string): string {
  const trimmed = text.trim().replace(/\s+/g, ' ');
  return trimmed ? `: ${scrub(trimmed.slice(0, 200))}` : '';
}
