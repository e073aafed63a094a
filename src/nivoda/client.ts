// The Nivoda API client: GraphQL over fetch, with the behaviour a nightly run needs to be
// both polite and robust. One client per process, so its concurrency limit and its
// requests-per-second cap hold for the whole scheduler. Retries only what a retry can fix
// (network, timeouts, 429, 5xx), within `maxAttempts` and `retryBudgetMs`; everything else,
// including any response carrying GraphQL `errors`, fails at once with the server's words.
// Secrets: the password and every token are registered with the log scrubber and never
// passed to the logger; request variables are never logged.
import { setTimeout as sleep } from 'node:timers/promises';
import pLimit from 'p-limit';
import { nivodaEndpointProblem, type Config } from '../config.js';
import { ConfigError, PermanentError, TransientError } from '../errors.js';
import { registerSecret, scrub, type Logger } from '../log.js';
import type { DiamondQuery } from './query.js';
import { RequestSpacer } from './rate-limit.js';

export const MAX_SEARCH_LIMIT = 50;

export interface Certificate {
  certNumber?: string | null;
  lab?: string | null;
  shape: string;
  carats: number;
  color?: string | null;
  clarity?: string | null;
  cut?: string | null;
  labgrown?: boolean | null;
}

export interface Offer {
  id: string;
  /** US cents. */
  price: number;
  diamond: {
    id: string;
    availability: string;
    updated: string;
    image?: string | null;
    video?: string | null;
    certificate: Certificate;
  };
}

export interface SearchOrder {
  type: 'createdAt' | 'price' | 'price_per_carat' | 'size';
  direction: 'ASC' | 'DESC';
}

export interface SearchPage {
  offset: number;
  limit: number;
  order?: SearchOrder;
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

export interface NivodaClient {
  /** diamonds_by_query_count: the exact number of stones matching `query`. */
  count(query: DiamondQuery, signal?: AbortSignal): Promise<number>;
  /** diamonds_by_query: one page (limit ≤ 50). `totalCount` is NOT the result-set size (see the contract). */
  search(query: DiamondQuery, page: SearchPage, signal?: AbortSignal): Promise<{ totalCount: number; items: Offer[] }>;
  /** Authenticates now unless a token is cached (a run checks credentials before its scan). */
  authenticate(signal?: AbortSignal): Promise<void>;
  stats(): NivodaStats;
}

/** Bad credentials (or an authentication the server refuses): no retry can fix it. */
export class NivodaAuthenticationError extends PermanentError {
  override readonly name = 'NivodaAuthenticationError';
}

/** The server answered with GraphQL `errors` (validation, bad input, execution). */
export class NivodaGraphQLError extends PermanentError {
  override readonly name = 'NivodaGraphQLError';
  constructor(
    message: string,
    readonly codes: string[],
  ) {
    super(message);
  }
}

/** The token was refused (expired): handled inside the client by one re-authentication. */
class TokenRejected extends Error {
  override readonly name = 'TokenRejected';
}

export interface NivodaClientTuning {
  /** First backoff step; attempt n waits up to base·2^(n-1) (full jitter). Default 500 ms. */
  baseDelayMs?: number;
  /** Largest backoff step. Default 30 s. */
  maxDelayMs?: number;
  /** Re-authenticate proactively after this age; the documented lifetime is 6 h. Default 5 h. */
  tokenMaxAgeMs?: number;
}

/** Error codes in a GraphQL response that mean "try again later" rather than "your request is wrong". */
const TRANSIENT_GRAPHQL_CODES = new Set(['SERVICE_UNAVAILABLE', 'TOO_MANY_REQUESTS', 'RATE_LIMITED', 'TIMEOUT', 'GATEWAY_TIMEOUT']);

const AUTH_DOCUMENT = `query Authenticate($username: String!, $password: String!) {
  authenticate { username_and_password(username: $username, password: $password) { token } }
}`;
const COUNT_DOCUMENT = `query DiamondsCount($token: String!, $query: DiamondQuery!) {
  as(token: $token) { diamonds_by_query_count(query: $query) }
}`;
const SEARCH_DOCUMENT = `query Diamonds($token: String!, $query: DiamondQuery!, $offset: Int, $limit: Int, $order: DiamondOrder) {
  as(token: $token) {
    diamonds_by_query(query: $query, offset: $offset, limit: $limit, order: $order) {
      total_count
      items {
        id price
        diamond {
          id availability updated image video
          certificate { certNumber lab shape carats color clarity cut labgrown }
        }
      }
    }
  }
}`;

type Operation = 'authentication' | 'count' | 'search';

interface GraphQLResponse {
  data?: unknown;
  errors?: { message?: unknown; extensions?: { code?: unknown } }[];
}

export function createNivodaClient(options: Config['nivoda'], logger: Logger, tuning: NivodaClientTuning = {}): NivodaClient {
  const endpoint = checkEndpoint(options.endpoint);
  registerSecret(options.password);
  const log = logger.child({ component: 'nivoda' });
  const baseDelayMs = tuning.baseDelayMs ?? 500;
  const maxDelayMs = tuning.maxDelayMs ?? 30_000;
  const tokenMaxAgeMs = tuning.tokenMaxAgeMs ?? 5 * 3_600_000;
  const limit = pLimit(options.maxConcurrency);
  const spacer = new RequestSpacer(options.maxRequestsPerSecond);
  const stats: NivodaStats = {
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
  };

  let token: { value: string; obtainedAt: number } | undefined;
  let authInFlight: Promise<string> | undefined;

  /** One HTTP exchange, inside the concurrency limit and the rate cap. */
  function exchange(op: Operation, body: string, signal: AbortSignal | undefined): Promise<GraphQLResponse> {
    const queuedAt = performance.now();
    return limit(async () => {
      stats.waitMs += performance.now() - queuedAt;
      const rateWait = await spacer.acquire(signal);
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
          throw new TransientError(`request timed out after ${options.requestTimeoutMs} ms`);
        }
        throw new TransientError(`network error: ${describeNetworkError(err)}`, { cause: err });
      }
      log.trace({ op, status, durationMs: Math.round(performance.now() - started) }, 'Nivoda response');
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

  /** exchange() with retries: full-jitter exponential backoff, honouring Retry-After, bounded. */
  async function send(op: Operation, variables: Record<string, unknown>, document: string, signal?: AbortSignal) {
    const body = JSON.stringify({ query: document, variables });
    const started = performance.now();
    for (let attempt = 1; ; attempt++) {
      try {
        return await exchange(op, body, signal);
      } catch (err) {
        if (!(err instanceof TransientError) || signal?.aborted) throw err;
        const step = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
        const delay = Math.max(Math.random() * step, err.retryAfterMs ?? 0);
        const elapsed = performance.now() - started;
        if (attempt >= options.maxAttempts || elapsed + delay > options.retryBudgetMs) {
          const why =
            attempt >= options.maxAttempts ? `${attempt} attempts` : `${attempt} attempts (retry budget ${options.retryBudgetMs} ms spent)`;
          throw new TransientError(`${err.message} (gave up after ${why})`, { cause: err, retryAfterMs: err.retryAfterMs });
        }
        stats.retries++;
        log.debug({ op, attempt, delayMs: Math.round(delay), reason: scrub(err.message) }, 'retrying Nivoda request');
        await sleep(delay, undefined, { signal });
        stats.waitMs += delay;
        stats.backoffMs += delay;
      }
    }
  }

  async function authenticateNow(): Promise<string> {
    const started = performance.now();
    log.info('authenticating with Nivoda');
    let response: GraphQLResponse;
    try {
      response = await send('authentication', { username: options.username, password: options.password }, AUTH_DOCUMENT);
    } catch (err) {
      if (err instanceof NivodaAuthenticationError) {
        throw new NivodaAuthenticationError(`Nivoda authentication failed: ${err.message}`);
      }
      throw wrap('authentication', err);
    }
    const value = dig(response.data, ['authenticate', 'username_and_password', 'token']);
    if (typeof value !== 'string' || value === '') {
      throw new NivodaAuthenticationError('Nivoda authentication failed: the response carried no token');
    }
    registerSecret(value);
    token = { value, obtainedAt: Date.now() };
    stats.authentications++;
    log.info({ durationMs: Math.round(performance.now() - started) }, 'authenticated with Nivoda');
    return value;
  }

  /** The cached token, or the one authentication every concurrent caller waits on. */
  function currentToken(): Promise<string> {
    if (token && Date.now() - token.obtainedAt < tokenMaxAgeMs) return Promise.resolve(token.value);
    // Not tied to one caller's signal: other callers share this authentication.
    authInFlight ??= authenticateNow().finally(() => {
      authInFlight = undefined;
    });
    return authInFlight;
  }

  /** After `rejected` was refused: re-authenticate, unless another caller already did. */
  function replaceToken(rejected: string): Promise<string> {
    if (token?.value === rejected) token = undefined;
    return currentToken();
  }

  async function authenticated(op: 'count' | 'search', document: string, variables: Record<string, unknown>, signal?: AbortSignal) {
    const first = await abortable(currentToken(), signal);
    try {
      return await send(op, { ...variables, token: first }, document, signal);
    } catch (err) {
      if (!(err instanceof TokenRejected)) throw wrap(op, err);
      log.info({ op, reason: scrub(err.message) }, 'Nivoda token refused; re-authenticating');
    }
    const second = await abortable(replaceToken(first), signal);
    try {
      return await send(op, { ...variables, token: second }, document, signal);
    } catch (err) {
      if (err instanceof TokenRejected) {
        throw new NivodaAuthenticationError(
          `Nivoda ${op} failed: token refused again right after re-authenticating (${scrub(err.message)})`,
        );
      }
      throw wrap(op, err);
    }
  }

  return {
    async count(query, signal) {
      stats.countQueries++;
      const response = await authenticated('count', COUNT_DOCUMENT, { query }, signal);
      const value = dig(response.data, ['as', 'diamonds_by_query_count']);
      // Never let a missing answer turn into a zero: a zero-count partition loses stones.
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
        throw new PermanentError(`Nivoda count failed: malformed response (diamonds_by_query_count = ${JSON.stringify(value)})`);
      }
      return value;
    },

    async search(query, page, signal) {
      if (!Number.isInteger(page.limit) || page.limit < 1 || page.limit > MAX_SEARCH_LIMIT) {
        throw new PermanentError(`Nivoda search: limit must be a whole number from 1 to ${MAX_SEARCH_LIMIT}, got ${page.limit}`);
      }
      if (!Number.isInteger(page.offset) || page.offset < 0) {
        throw new PermanentError(`Nivoda search: offset must be a whole number ≥ 0, got ${page.offset}`);
      }
      stats.searchQueries++;
      const response = await authenticated(
        'search',
        SEARCH_DOCUMENT,
        { query, offset: page.offset, limit: page.limit, order: page.order },
        signal,
      );
      const result = dig(response.data, ['as', 'diamonds_by_query']) as { total_count?: unknown; items?: unknown } | undefined;
      if (!result || typeof result.total_count !== 'number' || !Array.isArray(result.items)) {
        throw new PermanentError('Nivoda search failed: malformed response (no diamonds_by_query result)');
      }
      return { totalCount: result.total_count, items: result.items as Offer[] };
    },

    async authenticate(signal) {
      await abortable(currentToken(), signal);
    },

    stats: () => ({
      ...stats,
      waitMs: Math.round(stats.waitMs),
      rateLimitWaitMs: Math.round(stats.rateLimitWaitMs),
      backoffMs: Math.round(stats.backoffMs),
    }),
  };
}

/** Lets one caller stop waiting for a shared promise (the authentication) without cancelling it for the others. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Adds the operation to a failure's message, keeping its class (and so its retry meaning). */
function wrap(op: Operation, err: unknown): Error {
  if (!(err instanceof Error)) return new PermanentError(`Nivoda ${op} failed: ${scrub(String(err))}`);
  if (err.name === 'AbortError' || err.name === 'TimeoutError') return err;
  const message = `Nivoda ${op} failed: ${scrub(err.message)}`;
  if (err instanceof TransientError) return new TransientError(message, { cause: err, retryAfterMs: err.retryAfterMs });
  if (err instanceof NivodaGraphQLError) return new NivodaGraphQLError(message, err.codes);
  if (err instanceof NivodaAuthenticationError) return new NivodaAuthenticationError(message);
  if (err instanceof PermanentError) return new PermanentError(message);
  return err;
}

/** The configuration checks this too; a client built another way (tests, tools) must not send credentials in clear either. */
function checkEndpoint(endpoint: string): string {
  const problem = nivodaEndpointProblem(endpoint);
  if (problem) throw new ConfigError([problem]);
  return new URL(endpoint).href;
}

/** Retry-After: delta-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
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

function dig(value: unknown, path: string[]): unknown {
  let current = value;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}
