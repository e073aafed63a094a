// The Nivoda client against the simulator over real HTTP on 127.0.0.1. Caps (concurrency,
// requests per second) are measured on the simulator's side, with generous margins.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConfigError, NivodaAuthenticationError, NivodaGraphQLError, PermanentError, TransientError } from '../src/errors.js';
import { createNivodaClient, type NivodaClientTuning } from '../src/nivoda/client.js';
import { parseRetryAfter } from '../src/retry.js';
import type { DiamondQuery } from '../src/nivoda/query.js';
import { countMatching } from '../tools/simulator/inventory.js';
import { startSimulator, type Simulator } from '../tools/simulator/server.js';
import { captureLogs } from './helpers/logs.js';
import { clientConfig } from './helpers/simulator.js';
import type { Config } from '../src/config.js';

const NOW = new Date('2026-02-12T19:00:00.000Z');
const WINDOW: DiamondQuery = { updated: { to: NOW.toISOString() } };
const FAST: NivodaClientTuning = { baseDelayMs: 10, maxDelayMs: 50 };

describe('Nivoda client against the simulator', () => {
  let sim: Simulator;
  const otherSims: Simulator[] = [];
  const logs = captureLogs({ scrubbed: false });
  const { logger } = logs;
  const client = (overrides: Partial<Config['nivoda']> = {}, tuning: NivodaClientTuning = FAST) =>
    createNivodaClient(clientConfig(sim, overrides), logger, tuning);

  before(async () => {
    sim = await startSimulator({ shape: 'realistic', size: 20_000, seed: 3, now: NOW });
  });
  after(async () => {
    await sim.close();
    await Promise.all(otherSims.map((s) => s.close()));
  });
  const fresh = () => {
    sim.configure({ latencyMs: 0, rate429: 0, rate5xx: 0, rateTimeout: 0, maxRequestsPerSecond: 0, retryAfterSeconds: 1 });
    sim.resetStats();
  };

  it('counts exactly what the inventory holds, and reuses its token', async () => {
    fresh();
    const nivoda = client();
    const queries: DiamondQuery[] = [
      WINDOW,
      { ...WINDOW, dollar_value: { from: 500, to: 999 } },
      { ...WINDOW, dollar_value: { from: 1000 }, labgrown: true },
    ];
    for (const q of queries) assert.equal(await nivoda.count(q), countMatching(sim.inventory, q));
    assert.equal(sim.stats().authentications, 1, 'one authentication for three calls');
    assert.equal(sim.stats().countQueries, 3);
    const stats = nivoda.stats();
    assert.equal(stats.authentications, 1);
    assert.equal(stats.countQueries, 3);
    assert.equal(stats.requests, 4);
    assert.equal(stats.retries, 0);
  });

  it('makes concurrent callers share one authentication', async () => {
    fresh();
    sim.configure({ latencyMs: 30 });
    const nivoda = client({ maxConcurrency: 8 });
    const counts = await Promise.all(
      Array.from({ length: 12 }, (_, i) => nivoda.count({ ...WINDOW, dollar_value: { from: i * 100, to: i * 100 + 99 } })),
    );
    assert.equal(sim.stats().authentications, 1);
    assert.equal(sim.stats().countQueries, 12);
    assert.equal(counts[3], countMatching(sim.inventory, { ...WINDOW, dollar_value: { from: 300, to: 399 } }));
  });

  it('re-authenticates exactly once when the token has expired, and the call succeeds', async () => {
    fresh();
    const nivoda = client();
    await nivoda.count(WINDOW);
    sim.expireTokens();
    assert.equal(await nivoda.count(WINDOW), countMatching(sim.inventory, WINDOW));
    assert.equal(sim.stats().authentications, 2);
    assert.equal(sim.stats().unauthenticated, 1);

    // Several calls refused at once still cause one re-authentication between them.
    sim.configure({ latencyMs: 20 });
    sim.expireTokens();
    await Promise.all(Array.from({ length: 6 }, () => nivoda.count(WINDOW)));
    assert.equal(sim.stats().authentications, 3);
    assert.equal(nivoda.stats().authentications, 3);
  });

  it('fails clearly when the token is refused again right after re-authenticating', async () => {
    fresh();
    const nivoda = client();
    await nivoda.authenticate();
    sim.configure({ tokenLifetimeMs: 0 }); // every new token is born expired
    sim.expireTokens();
    try {
      await assert.rejects(nivoda.count(WINDOW), (err: Error) => {
        assert.ok(err instanceof NivodaAuthenticationError);
        assert.match(err.message, /Nivoda count failed: token refused again/);
        return true;
      });
      assert.equal(sim.stats().authentications, 2, 'one re-authentication, not a loop');
    } finally {
      sim.configure({ tokenLifetimeMs: 6 * 3_600_000 });
    }
  });

  it('replaces a token again when the new one expired during retries (short token lifetime, slow retries)', async () => {
    fresh();
    const nivoda = client({ requestTimeoutMs: 500 });
    sim.configure({ tokenLifetimeMs: 400 });
    try {
      await nivoda.authenticate();
      sim.resetStats();
      // The count waits out a 503 (Retry-After 1 s), so its token has expired when it is retried;
      // the replacement token then waits out another one and expires too.
      sim.injectFaults(
        { kind: 'status', status: 503, retryAfterSeconds: 1 },
        { kind: 'none' }, // the retry, refused: token expired
        { kind: 'none' }, // the re-authentication
        { kind: 'status', status: 503, retryAfterSeconds: 1 },
      );
      assert.equal(await nivoda.count(WINDOW), countMatching(sim.inventory, WINDOW));
      assert.equal(sim.stats().unauthenticated, 2, 'both tokens expired while their requests were retried');
      assert.equal(sim.stats().authentications, 2, 'each was replaced');
    } finally {
      sim.configure({ tokenLifetimeMs: 6 * 3_600_000 });
    }
  });

  it('retries a 429 after its Retry-After and succeeds', async () => {
    fresh();
    const nivoda = client();
    await nivoda.authenticate();
    sim.resetStats();
    sim.injectFaults({ kind: 'status', status: 429, retryAfterSeconds: 1 });
    assert.equal(await nivoda.count(WINDOW), countMatching(sim.inventory, WINDOW));
    const arrivals = sim.arrivals();
    assert.equal(arrivals.length, 2);
    assert.ok(arrivals[1]! - arrivals[0]! >= 950, `retried after ${arrivals[1]! - arrivals[0]!} ms, not after Retry-After`);
    assert.equal(sim.stats().rejected429, 1);
    assert.equal(nivoda.stats().retries, 1);
    assert.equal(nivoda.stats().throttled, 1);
    assert.ok(nivoda.stats().backoffMs >= 950);
  });

  it('retries 503s and succeeds', async () => {
    fresh();
    const nivoda = client();
    sim.injectFaults({ kind: 'status', status: 503 }, { kind: 'status', status: 503 });
    // The first two requests (the authentication among them) are refused.
    assert.equal(await nivoda.count(WINDOW), countMatching(sim.inventory, WINDOW));
    assert.equal(sim.stats().rejected5xx, 2);
    assert.equal(nivoda.stats().retries, 2);
  });

  it('does not hammer a web firewall: a 403 fails at once and says why', async () => {
    fresh();
    const nivoda = client();
    await nivoda.count(WINDOW); // authenticated, so the next request is the count itself
    sim.injectFaults({ kind: 'status', status: 403, body: '<html>Access denied</html>' });
    const before = sim.stats().requests;
    await assert.rejects(nivoda.count(WINDOW), /HTTP 403 Forbidden \(a web application firewall/);
    assert.equal(sim.stats().requests - before, 1);
    assert.equal(nivoda.stats().retries, 0);
  });

  it('gives up on transient failures after maxAttempts', async () => {
    fresh();
    const nivoda = client({ maxAttempts: 3 });
    await nivoda.authenticate();
    sim.resetStats();
    sim.configure({ rate5xx: 1 });
    await assert.rejects(nivoda.count(WINDOW), (err: Error) => {
      assert.ok(err instanceof TransientError);
      assert.match(err.message, /^Nivoda count failed: HTTP 503.*gave up after 3 attempts/);
      return true;
    });
    assert.equal(sim.stats().requests, 3);
  });

  it('stops retrying when the retry budget would be exceeded', async () => {
    fresh();
    const nivoda = client({ retryBudgetMs: 500 });
    await nivoda.authenticate();
    sim.resetStats();
    sim.injectFaults({ kind: 'status', status: 429, retryAfterSeconds: 5 });
    const started = Date.now();
    await assert.rejects(nivoda.count(WINDOW), /HTTP 429.*retry budget 500 ms/);
    assert.ok(Date.now() - started < 1000, 'did not sleep through a Retry-After beyond the budget');
    assert.equal(sim.stats().requests, 1);
  });

  it('treats a response carrying errors as a failure with the server message, never a 0', async () => {
    fresh();
    const nivoda = client();
    await nivoda.authenticate();
    sim.resetStats();
    sim.injectFaults({ kind: 'graphql-error', message: 'shard 7 is unavailable', code: 'INTERNAL_SERVER_ERROR' });
    await assert.rejects(nivoda.count(WINDOW), (err: Error) => {
      assert.ok(err instanceof NivodaGraphQLError);
      assert.equal(err.message, 'Nivoda count failed: shard 7 is unavailable');
      return true;
    });
    // An execution error from the schema's own semantics (a date that does not parse).
    await assert.rejects(nivoda.count({ updated: { from: 'yesterday' } }), /Nivoda count failed: Invalid date "yesterday"/);
    assert.equal(sim.stats().requests, 2, 'neither was retried');
  });

  it('does not retry GraphQL validation errors', async () => {
    fresh();
    const nivoda = client();
    await nivoda.authenticate();
    sim.resetStats();
    const unknownField = { ...WINDOW, colour: ['D'] } as unknown as DiamondQuery;
    await assert.rejects(nivoda.count(unknownField), (err: Error) => {
      assert.ok(err instanceof PermanentError);
      assert.match(err.message, /^Nivoda count failed: .*Field "colour" is not defined by type "DiamondQuery"/);
      return true;
    });
    await assert.rejects(nivoda.count({ dollar_value: { from: 0, to: 2147483648 } }), /Int cannot represent non 32-bit signed integer/);
    const badOrder = { type: 'cheapest', direction: 'ASC' } as unknown as { type: 'price'; direction: 'ASC' };
    await assert.rejects(nivoda.search(WINDOW, { offset: 0, limit: 5, order: badOrder }), /Nivoda search failed: .*cheapest/);
    assert.equal(sim.stats().requests, 3);
    assert.equal(nivoda.stats().retries, 0);
  });

  it('fails fast and clearly on bad credentials, without the password', async () => {
    fresh();
    const password = 'wrong-password-xyz-123';
    const nivoda = client({ password });
    const started = Date.now();
    await assert.rejects(nivoda.count(WINDOW), (err: Error) => {
      assert.ok(err instanceof NivodaAuthenticationError);
      assert.equal(err.message, 'Nivoda authentication failed: invalid credentials');
      assert.ok(!err.message.includes(password));
      return true;
    });
    assert.ok(Date.now() - started < 1000);
    assert.equal(sim.stats().requests, 1, 'bad credentials are not retried');
    assert.equal(sim.stats().failedAuthentications, 1);
    assert.equal(sim.stats().countQueries, 0);
  });

  it('holds its concurrency limit (measured by the simulator)', async () => {
    fresh();
    sim.configure({ latencyMs: 40 });
    const nivoda = client({ maxConcurrency: 3 });
    await Promise.all(Array.from({ length: 24 }, (_, i) => nivoda.count({ ...WINDOW, dollar_value: { from: i } })));
    const { maxInFlight, countQueries } = sim.stats();
    assert.equal(countQueries, 24);
    assert.ok(maxInFlight <= 3, `max in flight ${maxInFlight} > 3`);
    assert.ok(maxInFlight >= 2, `max in flight ${maxInFlight}: the calls did not run in parallel at all`);
    assert.ok(nivoda.stats().waitMs > 0);
  });

  it('holds its requests-per-second cap (measured by the simulator)', async () => {
    fresh();
    const rps = 20;
    const nivoda = client({ maxConcurrency: 16, maxRequestsPerSecond: rps });
    const started = Date.now();
    await Promise.all(Array.from({ length: 40 }, () => nivoda.count(WINDOW)));
    const elapsed = Date.now() - started;
    const { maxInAnySecond, requests } = sim.stats();
    assert.equal(requests, 41);
    assert.ok(maxInAnySecond <= rps + 2, `${maxInAnySecond} requests within one second, cap ${rps}`);
    assert.ok(elapsed >= 1800, `41 requests at ${rps}/s took only ${elapsed} ms`);
    assert.ok(nivoda.stats().rateLimitWaitMs > 0);
  });

  it('is not pushed over a server-side rate limit for long: 429s are retried until served', async () => {
    fresh();
    sim.configure({ maxRequestsPerSecond: 5, retryAfterSeconds: 1 });
    const nivoda = client({ maxConcurrency: 8 });
    const counts = await Promise.all(Array.from({ length: 8 }, () => nivoda.count(WINDOW)));
    assert.ok(counts.every((c) => c === countMatching(sim.inventory, WINDOW)));
    assert.ok(sim.stats().rejected429 > 0, 'the server limit was hit');
    assert.ok(nivoda.stats().retries >= sim.stats().rejected429);
  });

  it('times out a request that never answers, retries it, then gives up', async () => {
    fresh();
    const nivoda = client({ requestTimeoutMs: 150, maxAttempts: 2 });
    await nivoda.authenticate();
    sim.resetStats();
    sim.configure({ rateTimeout: 1 });
    const started = Date.now();
    await assert.rejects(nivoda.count(WINDOW), (err: Error) => {
      assert.ok(err instanceof TransientError);
      const { host } = new URL(sim.url);
      assert.ok(
        err.message.startsWith(`Nivoda count failed: request to ${host} timed out after 150 ms (gave up after 2 attempts)`),
        err.message,
      );
      return true;
    });
    assert.ok(Date.now() - started < 2000);
    assert.equal(sim.stats().timedOut, 2);
    assert.equal(nivoda.stats().timeouts, 2);
    sim.configure({ rateTimeout: 0 });
    // A timeout followed by an answer is just a retry.
    sim.injectFaults({ kind: 'timeout' });
    assert.equal(await nivoda.count(WINDOW), countMatching(sim.inventory, WINDOW));
  });

  it('stops at once when the caller aborts', async () => {
    fresh();
    const nivoda = client();
    await nivoda.authenticate();
    sim.configure({ latencyMs: 2000 });
    const controller = new AbortController();
    const pending = nivoda.count(WINDOW, controller.signal);
    setTimeout(() => controller.abort(), 100);
    const started = Date.now();
    await assert.rejects(pending, (err: Error) => err.name === 'AbortError');
    assert.ok(Date.now() - started < 1000);
    assert.equal(nivoda.stats().retries, 0);
  });

  it('retries network errors (connection refused) and reports the cause', async () => {
    const gone = await startSimulator({ shape: 'empty' });
    const url = gone.url;
    await gone.close();
    const nivoda = createNivodaClient({ ...clientConfig(sim, { maxAttempts: 3 }), endpoint: url }, logger, FAST);
    await assert.rejects(nivoda.count(WINDOW), (err: Error) => {
      assert.ok(err instanceof TransientError);
      // The host and port are named: an operator sees at once which endpoint was unreachable.
      const { host } = new URL(url);
      assert.ok(
        err.message.startsWith(`Nivoda authentication failed: network error reaching ${host}: ECONNREFUSED (gave up after 3 attempts)`),
        err.message,
      );
      return true;
    });
    assert.equal(nivoda.stats().retries, 2);
  });

  it('searches one page in the requested order, at most 50 items', async () => {
    fresh();
    const nivoda = client();
    const query: DiamondQuery = { ...WINDOW, dollar_value: { from: 1000, to: 2000 } };
    const page = await nivoda.search(query, { offset: 0, limit: 50, order: { type: 'price', direction: 'DESC' } });
    assert.equal(page.items.length, 50);
    const prices = page.items.map((o) => o.price);
    assert.deepEqual(
      prices,
      [...prices].sort((a, b) => b - a),
    );
    assert.ok(prices.every((p) => p >= 100_000 && p <= 200_000));
    assert.equal(typeof page.items[0]!.diamond.certificate.carats, 'number');
    assert.equal(typeof page.totalCount, 'number');
    const next = await nivoda.search(query, { offset: 50, limit: 10, order: { type: 'price', direction: 'DESC' } });
    assert.ok(next.items[0]!.price <= prices.at(-1)!);
    await assert.rejects(nivoda.search(query, { offset: 0, limit: 51 }), /limit must be a whole number from 1 to 50/);
    assert.equal(sim.stats().searchQueries, 2, 'an over-limit page is refused before it is sent');
  });

  it('refuses plain http except on loopback', () => {
    const base = clientConfig(sim);
    assert.throws(() => createNivodaClient({ ...base, endpoint: 'http://api.example.com/api/diamonds' }, logger), ConfigError);
    assert.throws(() => createNivodaClient({ ...base, endpoint: 'ftp://127.0.0.1/x' }, logger), ConfigError);
    assert.doesNotThrow(() => createNivodaClient({ ...base, endpoint: 'http://localhost:1/api/diamonds' }, logger));
    assert.doesNotThrow(() => createNivodaClient({ ...base, endpoint: 'https://integrations.nivoda.net/api/diamonds' }, logger));
  });

  it('parses Retry-After as seconds or an HTTP date', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter('soon'), undefined);
    const inTwoSeconds = new Date(Date.now() + 2000).toUTCString();
    const ms = parseRetryAfter(inTwoSeconds)!;
    assert.ok(ms > 500 && ms <= 2000, String(ms));
  });

  it('never wrote a password or a token into a log line', () => {
    const secrets = [sim.password, 'wrong-password-xyz-123', ...sim.issuedTokens()];
    assert.ok(sim.issuedTokens().length >= 10, 'the tests above issued tokens');
    assert.ok(
      logs.lines().some((l) => l.includes('retrying Nivoda request')),
      'retries were logged',
    );
    assert.ok(
      logs.lines().some((l) => l.includes('authenticated with Nivoda')),
      'authentications were logged',
    );
    for (const line of logs.lines()) {
      for (const secret of secrets) assert.ok(!line.includes(secret), `a secret leaked into: ${line}`);
    }
  });
});
