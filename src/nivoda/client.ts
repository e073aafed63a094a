// The Nivoda API client: authenticated count and search calls over the shared transport
// (transport.ts: caps and retries) with the token cache (token.ts). Secrets: the password
// and every token are registered with the log scrubber and never passed to the logger.
import { nivodaEndpointProblem, type NivodaConfig } from '../config.js';
import { ConfigError, NivodaAuthenticationError, NivodaGraphQLError, PermanentError, TransientError } from '../errors.js';
import { registerSecret, scrub, type Logger } from '../log.js';
import { AUTH_DOCUMENT, COUNT_DOCUMENT, dig, MAX_SEARCH_LIMIT, SEARCH_DOCUMENT, type Offer, type SearchPage } from './documents.js';
import type { DiamondQuery } from './query.js';
import type { RequestLimiter } from './rate-limit.js';
import { abortable, TokenCache } from './token.js';
import { createTransport, TokenRejected, type NivodaStats, type Operation } from './transport.js';

export type { NivodaStats } from './transport.js';

/** Refusals one call accepts before it fails (each replaced the token). */
const MAX_TOKEN_REFUSALS = 4;

export interface NivodaClient {
  /** diamonds_by_query_count: the exact number of stones matching `query`. */
  count(query: DiamondQuery, signal?: AbortSignal): Promise<number>;
  /** diamonds_by_query: one page (limit ≤ 50). `totalCount` is NOT the result-set size (see the contract). */
  search(query: DiamondQuery, page: SearchPage, signal?: AbortSignal): Promise<{ totalCount: number; items: Offer[] }>;
  /** Authenticates now unless a token is cached (a run checks credentials before its scan). */
  authenticate(signal?: AbortSignal): Promise<void>;
  stats(): NivodaStats;
}

export interface NivodaClientTuning {
  /** First backoff step; attempt n waits up to base·2^(n-1) (full jitter). Default 500 ms. */
  baseDelayMs?: number;
  /** Largest backoff step. Default 30 s. */
  maxDelayMs?: number;
  /** Re-authenticate proactively after this age; the documented lifetime is 6 h. Default 5 h. */
  tokenMaxAgeMs?: number;
  /** A budget shared beyond this process (the workers' vendor budget), waited on by every request. */
  budget?: RequestLimiter;
}

export function createNivodaClient(options: NivodaConfig, logger: Logger, tuning: NivodaClientTuning = {}): NivodaClient {
  const endpoint = checkEndpoint(options.endpoint);
  registerSecret(options.password);
  const log = logger.child({ component: 'nivoda' });
  const transport = createTransport(
    endpoint,
    options,
    log,
    {
      baseDelayMs: tuning.baseDelayMs ?? 500,
      maxDelayMs: tuning.maxDelayMs ?? 30_000,
    },
    tuning.budget,
  );
  const stats = transport.stats;

  const tokens = new TokenCache(
    async () => {
      const started = performance.now();
      log.info('authenticating with Nivoda');
      let response;
      try {
        response = await transport.send('authentication', AUTH_DOCUMENT, { username: options.username, password: options.password });
      } catch (err) {
        if (err instanceof NivodaAuthenticationError) throw new NivodaAuthenticationError(`Nivoda authentication failed: ${err.message}`);
        throw wrap('authentication', err);
      }
      const value = dig(response.data, ['authenticate', 'username_and_password', 'token']);
      if (typeof value !== 'string' || value === '') {
        throw new NivodaAuthenticationError('Nivoda authentication failed: the response carried no token');
      }
      registerSecret(value);
      stats.authentications++;
      log.info({ durationMs: Math.round(performance.now() - started) }, 'authenticated with Nivoda');
      return value;
    },
    tuning.tokenMaxAgeMs ?? 5 * 3_600_000,
  );

  /**
   * One call with the current token; a refused token is replaced. A token is good for hours, but
   * one request may spend longer than that in retries (a test's lifetime is seconds), so a
   * replacement that was refused later is replaced too. A replacement refused within one
   * request timeout of being issued was never good (the account or the vendor is at fault):
   * that fails at once, and so does a call whose token is refused MAX_TOKEN_REFUSALS times.
   */
  async function authenticated(op: 'count' | 'search', document: string, variables: Record<string, unknown>, signal?: AbortSignal) {
    for (let refusals = 0; ;) {
      const token = await abortable(tokens.current(), signal);
      try {
        return await transport.send(op, document, { ...variables, token }, signal);
      } catch (err) {
        if (!(err instanceof TokenRejected)) throw wrap(op, err);
        refusals++;
        const age = tokens.ageOf(token);
        const stillborn = refusals > 1 && age !== undefined && age < options.requestTimeoutMs;
        if (stillborn || refusals >= MAX_TOKEN_REFUSALS) {
          const why = stillborn ? `${age} ms after it was issued` : `${refusals} times in a row`;
          throw new NivodaAuthenticationError(`Nivoda ${op} failed: token refused again, ${why} (${scrub(err.message)})`);
        }
        log.info({ op, refusals, tokenAgeMs: age ?? null, reason: scrub(err.message) }, 'Nivoda token refused; re-authenticating');
        await abortable(tokens.replace(token), signal);
      }
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
      await abortable(tokens.current(), signal);
    },

    stats: () => ({
      ...stats,
      waitMs: Math.round(stats.waitMs),
      rateLimitWaitMs: Math.round(stats.rateLimitWaitMs),
      backoffMs: Math.round(stats.backoffMs),
    }),
  };
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
