// The Nivoda simulator: one HTTP POST endpoint serving exactly contract/nivoda.graphql with
// graphql-js, so argument types, unknown input fields and enum values are rejected the way
// the real API rejects them, plus the failure modes the client must survive (latency, 429
// with Retry-After, 503, requests that never answer, expiring tokens, a server-side rate
// limit). It counts what it sees, so tests measure the client's caps from this side.
//
// What paging a live inventory meets, deterministic from the seed and the request sequence:
// live churn (mutation.ts) driven by served searches or applied explicitly with mutate(), and
// short pages mid-stream. A short page is a PREFIX of the page: offsets keep indexing the full
// ordered result list, so the items left out are still served at their own offsets — a client
// that advances the offset by the items it received loses nothing, one that advances by
// `limit` skips them, and one that stops on a short page loses the rest of the list. Only an
// empty page ends a listing.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { buildSchema, execute, GraphQLError, parse, validate, type DocumentNode, type ExecutionResult, type GraphQLSchema } from 'graphql';
import type { DiamondQuery } from '../../src/nivoda/query.js';
import {
  AVAILABILITIES,
  cachedCount,
  CLARITIES,
  COLORS,
  countMatching,
  CUTS,
  diamondIdOf,
  generateInventory,
  LABS,
  mulberry32,
  offerIdOf,
  QueryError,
  searchPage,
  SHAPES,
  type Inventory,
  type InventoryShape,
  type Order,
} from './inventory.js';
import {
  DEFAULT_CHURN_MIX,
  mutateInventory,
  RequestChurn,
  stoneRow,
  takeSnapshot,
  type ChurnMix,
  type InventorySnapshot,
  type MutationResult,
  type MutationSpec,
} from './mutation.js';

export const SIMULATOR_PATH = '/api/diamonds';
export const MAX_LIMIT = 50;

export interface SimulatorOptions {
  inventory?: Inventory;
  shape?: InventoryShape;
  seed?: number;
  /** Inventory size (default: the shape's own). */
  size?: number;
  /** `now` for the generated inventory. */
  now?: Date;
  /** Added to every answer. */
  latencyMs?: number;
  /** Fraction of requests answered 429 (Retry-After: retryAfterSeconds). */
  rate429?: number;
  /** Fraction of requests answered 503. */
  rate5xx?: number;
  /** Fraction of requests never answered (the client's timeout must fire). */
  rateTimeout?: number;
  /** Retry-After sent with 429s (seconds). */
  retryAfterSeconds?: number;
  tokenLifetimeMs?: number;
  /** Server-side cap over a sliding second; above it, 429 with Retry-After. 0/undefined = no cap. */
  maxRequestsPerSecond?: number;
  /**
   * Live churn: fraction of the inventory changed per 1,000 served search requests (e.g. 0.01 =
   * 1 % of the stones per 1,000 pages). 0/undefined = a still inventory.
   */
  churnRate?: number;
  /** Churn is applied in a batch every this many served searches (default 10). */
  churnEveryRequests?: number;
  /** Kinds of change, as weights (default reprice 0.6, touch 0.1, remove 0.15, add 0.15). */
  churnMix?: Partial<ChurnMix>;
  /** Share of churn price moves that are large (up to ×3 or ÷3) rather than ±10 % (default 0.1). */
  churnLargeMoveShare?: number;
  /** Fraction of non-final search pages served short (a prefix of the page; see the top of this file). */
  shortPageRate?: number;
  /** The simulator's now (ms since epoch) for `updated` of changed stones; default Date.now + clockOffsetMs. */
  clock?: () => number;
  /**
   * The vendor's clock against this machine's (ms, may be negative; ignored with `clock`). Behind
   * (< 0), changed and new listings carry an `updated` inside a window that ends at this
   * machine's now, so they enter it mid-paging, as with a vendor clock that lags.
   */
  clockOffsetMs?: number;
  username?: string;
  password?: string;
  port?: number;
  host?: string;
}

/** A scripted answer for the next request(s), ahead of the random knobs: deterministic tests. */
export type Fault =
  | { kind: 'status'; status: number; retryAfterSeconds?: number; body?: string }
  | { kind: 'timeout' }
  | { kind: 'graphql-error'; message: string; code?: string }
  /** Answered as usual: holds a place in the queue, so a later fault hits a chosen request. */
  | { kind: 'none' };

export interface SimulatorStats {
  /** Every HTTP request received, answered or not. */
  requests: number;
  countQueries: number;
  searchQueries: number;
  /** Successful authentications (tokens issued). */
  authentications: number;
  failedAuthentications: number;
  /** `as(token:)` calls refused because the token was unknown or expired. */
  unauthenticated: number;
  rejected429: number;
  rejected5xx: number;
  timedOut: number;
  /** Requests answered with GraphQL `errors` (validation or execution). */
  graphqlErrors: number;
  inFlight: number;
  maxInFlight: number;
  /** Search pages served short (fewer than `limit` items although more followed). */
  shortPages: number;
  /** Mutation batches applied (churn and mutate()) and what they changed. */
  mutationBatches: number;
  repriced: number;
  touched: number;
  removed: number;
  added: number;
  /** Stones now, and the inventory's revision (bumped by every mutation batch). */
  inventorySize: number;
  revision: number;
  /** Requests by arrival second since start (or the last reset). */
  perSecond: number[];
  /** Most requests that arrived within any sliding 1,000 ms window. */
  maxInAnySecond: number;
}

export interface Simulator {
  /** The GraphQL endpoint, e.g. http://127.0.0.1:41234/api/diamonds */
  url: string;
  username: string;
  password: string;
  /** The live inventory: mutated in place by churn and mutate(), so it always reads the current state. */
  inventory: Inventory;
  stats(): SimulatorStats;
  resetStats(): void;
  configure(knobs: Partial<SimulatorOptions>): void;
  /** Makes every token issued so far invalid, as if its lifetime had passed. */
  expireTokens(): void;
  /** Tokens issued so far (tests check none leaks into logs). */
  issuedTokens(): string[];
  /** Queues scripted answers for the next requests, in order. */
  injectFaults(...faults: Fault[]): void;
  /** Arrival times (ms since epoch) of the requests since start or the last reset. */
  arrivals(): number[];
  /** Applies a batch of changes at once (stones drawn from the churn stream); says what changed. */
  mutate(spec: MutationSpec): MutationResult;
  /** Every mutation batch since start (churn and mutate()), in order. */
  mutations(): MutationResult[];
  /** The exact inventory now: a private copy, unaffected by later mutations. */
  snapshot(): InventorySnapshot;
  /** The simulator's now (the `updated` that changed stones get). */
  now(): Date;
  close(): Promise<void>;
}

const DEFAULT_USERNAME = 'simulator@example.com';
const DEFAULT_PASSWORD = 'simulator-password-42';

let schemaCache: GraphQLSchema | undefined;
/** The contract, loaded from the repo's copy (../../contract from src/ or dist/). */
export function contractSchema(): GraphQLSchema {
  schemaCache ??= buildSchema(readFileSync(fileURLToPath(new URL('../../contract/nivoda.graphql', import.meta.url)), 'utf8'));
  return schemaCache;
}

function gqlError(message: string, code: string): GraphQLError {
  return new GraphQLError(message, { extensions: { code } });
}

interface Knobs {
  latencyMs: number;
  rate429: number;
  rate5xx: number;
  rateTimeout: number;
  retryAfterSeconds: number;
  tokenLifetimeMs: number;
  maxRequestsPerSecond: number;
  churnRate: number;
  churnEveryRequests: number;
  churnLargeMoveShare: number;
  shortPageRate: number;
}

export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const schema = contractSchema();
  const inventory =
    options.inventory ?? generateInventory(options.shape ?? 'realistic', { seed: options.seed, size: options.size, now: options.now });
  const username = options.username ?? DEFAULT_USERNAME;
  const password = options.password ?? DEFAULT_PASSWORD;
  const knobs: Knobs = {
    latencyMs: 0,
    rate429: 0,
    rate5xx: 0,
    rateTimeout: 0,
    retryAfterSeconds: 1,
    tokenLifetimeMs: 6 * 3_600_000,
    maxRequestsPerSecond: 0,
    churnRate: 0,
    churnEveryRequests: 10,
    churnLargeMoveShare: 0.1,
    shortPageRate: 0,
  };
  let churnMix: ChurnMix = { ...DEFAULT_CHURN_MIX };
  let clockOffsetMs = 0;
  const configure = (next: Partial<SimulatorOptions>): void => {
    for (const key of Object.keys(knobs) as (keyof Knobs)[]) {
      const value = next[key];
      if (typeof value === 'number') {
        if (!Number.isFinite(value) || value < 0)
          throw new RangeError(`simulator option ${key} must be a finite number >= 0, got ${value}`);
        knobs[key] = value;
      }
    }
    if (next.churnMix) churnMix = { ...churnMix, ...next.churnMix };
    if (next.clockOffsetMs !== undefined) {
      if (!Number.isFinite(next.clockOffsetMs)) throw new RangeError(`simulator option clockOffsetMs must be a finite number`);
      clockOffsetMs = next.clockOffsetMs;
    }
  };
  configure(options);
  const clock = options.clock ?? (() => Date.now() + clockOffsetMs);

  // Random knobs draw from their own seeded stream: a failing test replays the same faults.
  const rand = mulberry32((options.seed ?? 1) ^ 0x5eed);
  // Churn and short pages have streams of their own, so turning faults on or off does not
  // change which stones churn picks or which pages come short.
  const streamSeed = options.seed ?? inventory.seed;
  const churnRand = mulberry32(streamSeed ^ 0xc4a2);
  const shortRand = mulberry32(streamSeed ^ 0x5407);
  const churn = new RequestChurn();
  const mutationLog: MutationResult[] = [];
  const tokens = new Map<string, number>(); // token -> expiry (ms)
  const issued: string[] = [];
  const faults: Fault[] = [];
  const parsedDocuments = new Map<string, DocumentNode | readonly GraphQLError[]>();

  let startedAt = Date.now();
  let arrivals: number[] = [];
  /** Accepted (not rate-limited) arrivals in the last second, for the server-side cap. */
  let recentAccepted: number[] = [];
  const counters = {
    requests: 0,
    countQueries: 0,
    searchQueries: 0,
    authentications: 0,
    failedAuthentications: 0,
    unauthenticated: 0,
    rejected429: 0,
    rejected5xx: 0,
    timedOut: 0,
    graphqlErrors: 0,
    inFlight: 0,
    maxInFlight: 0,
    shortPages: 0,
    mutationBatches: 0,
    repriced: 0,
    touched: 0,
    removed: 0,
    added: 0,
  };

  function mutate(spec: MutationSpec): MutationResult {
    const result = mutateInventory(inventory, spec, churnRand, clock());
    mutationLog.push(result);
    counters.mutationBatches++;
    counters.repriced += result.repriced.length;
    counters.touched += result.touched.length;
    counters.removed += result.removed.length;
    counters.added += result.added.length;
    return result;
  }
  const resetStats = (): void => {
    for (const key of Object.keys(counters) as (keyof typeof counters)[]) {
      if (key !== 'inFlight') counters[key] = 0;
    }
    counters.maxInFlight = counters.inFlight;
    arrivals = [];
    startedAt = Date.now();
  };

  const rootValue = {
    authenticate: () => ({
      username_and_password: (args: { username: string; password: string }) => {
        if (args.username !== username || args.password !== password) {
          counters.failedAuthentications++;
          throw gqlError('invalid credentials', 'UNAUTHENTICATED');
        }
        counters.authentications++;
        const token = randomBytes(24).toString('base64url');
        tokens.set(token, Date.now() + knobs.tokenLifetimeMs);
        issued.push(token);
        return { token };
      },
    }),
    as: (args: { token: string }) => {
      const expiry = tokens.get(args.token);
      if (expiry === undefined || expiry <= Date.now()) {
        counters.unauthenticated++;
        throw gqlError('token is invalid or has expired', 'UNAUTHENTICATED');
      }
      return {
        diamonds_by_query_count: (a: { query: DiamondQuery }) => {
          counters.countQueries++;
          return withQueryErrors(() => countMatching(inventory, a.query));
        },
        diamonds_by_query: (a: { query: DiamondQuery; offset?: number | null; limit?: number | null; order?: Order | null }) => {
          counters.searchQueries++;
          const offset = a.offset ?? 0;
          const limit = a.limit ?? MAX_LIMIT;
          if (limit > MAX_LIMIT) throw gqlError(`limit must be at most ${MAX_LIMIT}`, 'BAD_USER_INPUT');
          if (limit < 0 || offset < 0) throw gqlError('offset and limit must not be negative', 'BAD_USER_INPUT');
          return withQueryErrors(() => {
            const page = searchPage(inventory, a.query, { offset, limit, order: a.order ?? undefined });
            let rows = page.rows;
            if (knobs.shortPageRate > 0 && limit >= 2 && offset + limit < page.matching && shortRand() < knobs.shortPageRate) {
              // A prefix of at least one item: an empty page would mean the end of the list.
              rows = rows.slice(0, 1 + Math.floor(shortRand() * (limit - 1)));
              counters.shortPages++;
            }
            // total_count deliberately ignores the `updated` filter: the contract says it is
            // not the size of the result set, and this makes relying on it visibly wrong.
            const { updated: _ignored, ...withoutUpdated } = a.query;
            // Offers are built now, before churn below changes the inventory under them.
            const result = { total_count: cachedCount(inventory, withoutUpdated), items: rows.map((i) => offer(inventory, i)) };
            const due = churn.onSearch({ ...knobs, churnMix }, inventory.size, churnRand);
            if (due) mutate(due);
            return result;
          });
        },
      };
    },
  };

  function withQueryErrors<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof QueryError) throw gqlError(err.message, 'BAD_USER_INPUT');
      throw err;
    }
  }

  function documentFor(source: string): DocumentNode | readonly GraphQLError[] {
    // Clients send the same few documents thousands of times: parse and validate once each.
    let cached = parsedDocuments.get(source);
    if (!cached) {
      try {
        const document = parse(source);
        const errors = validate(schema, document);
        cached = errors.length > 0 ? errors.map((e) => withCode(e, 'GRAPHQL_VALIDATION_FAILED')) : document;
      } catch (err) {
        cached = [withCode(err instanceof GraphQLError ? err : new GraphQLError(String(err)), 'GRAPHQL_PARSE_FAILED')];
      }
      if (parsedDocuments.size < 1000) parsedDocuments.set(source, cached);
    }
    return cached;
  }

  function handleGraphQL(body: string): ExecutionResult {
    let request: { query?: unknown; variables?: unknown; operationName?: unknown };
    try {
      request = JSON.parse(body) as typeof request;
    } catch {
      return { errors: [gqlError('request body is not valid JSON', 'BAD_REQUEST')] };
    }
    if (request === null || typeof request !== 'object' || typeof request.query !== 'string') {
      return { errors: [gqlError('request body must have a "query" string', 'BAD_REQUEST')] };
    }
    const document = documentFor(request.query);
    if (!('kind' in document)) return { errors: document };
    const result = execute({
      schema,
      document,
      rootValue,
      variableValues: (request.variables ?? undefined) as Record<string, unknown> | undefined,
      operationName: typeof request.operationName === 'string' ? request.operationName : undefined,
    }) as ExecutionResult; // every resolver is synchronous
    if (result.errors) {
      // Variable coercion errors (unknown input field, Int out of range) come before execution,
      // without a path or a code; an error with a path and no code is a resolver bug.
      const coded = result.errors.map((e) => (e.extensions.code ? e : withCode(e, e.path ? 'INTERNAL_SERVER_ERROR' : 'BAD_USER_INPUT')));
      return { ...result, errors: coded };
    }
    return result;
  }

  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const later = (ms: number, fn: () => void): void => {
    if (ms <= 0) return fn();
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
  };

  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/stats') {
      sendJson(res, 200, stats());
      return;
    }
    if (req.method === 'GET' && req.url === '/inventory') {
      void sendInventory(res, takeSnapshot(inventory, clock()));
      return;
    }
    if (req.url?.split('?')[0] !== SIMULATOR_PATH) {
      sendJson(res, 404, { error: `not found; POST GraphQL to ${SIMULATOR_PATH}` });
      return;
    }
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      sendJson(res, 405, { error: 'use POST' });
      return;
    }
    const arrivedAt = Date.now();
    counters.requests++;
    arrivals.push(arrivedAt);
    counters.inFlight++;
    counters.maxInFlight = Math.max(counters.maxInFlight, counters.inFlight);
    res.on('close', () => counters.inFlight--);

    readBody(req).then(
      (body) => answer(res, body, arrivedAt),
      () => res.destroy(),
    );
  });

  function answer(res: ServerResponse, body: string, arrivedAt: number): void {
    const fault = faults.shift();
    if (fault?.kind === 'timeout' || (!fault && knobs.rateTimeout > 0 && rand() < knobs.rateTimeout)) {
      counters.timedOut++;
      return; // never answered; the socket closes when the client gives up or on close()
    }
    if (fault?.kind === 'status') {
      if (fault.status === 429) counters.rejected429++;
      if (fault.status >= 500) counters.rejected5xx++;
      if (fault.retryAfterSeconds !== undefined) res.setHeader('retry-after', String(fault.retryAfterSeconds));
      later(knobs.latencyMs, () => sendJson(res, fault.status, fault.body ?? { error: `simulated HTTP ${fault.status}` }));
      return;
    }
    if (fault?.kind === 'graphql-error') {
      counters.graphqlErrors++;
      later(knobs.latencyMs, () =>
        sendJson(res, 200, {
          errors: [{ message: fault.message, extensions: { code: fault.code ?? 'INTERNAL_SERVER_ERROR' } }],
          data: null,
        }),
      );
      return;
    }
    recentAccepted = recentAccepted.filter((t) => t > arrivedAt - 1000);
    if (
      (knobs.maxRequestsPerSecond > 0 && recentAccepted.length >= knobs.maxRequestsPerSecond) ||
      (knobs.rate429 > 0 && rand() < knobs.rate429)
    ) {
      counters.rejected429++;
      res.setHeader('retry-after', String(knobs.retryAfterSeconds));
      later(knobs.latencyMs, () => sendJson(res, 429, { error: 'Too Many Requests' }));
      return;
    }
    recentAccepted.push(arrivedAt);
    if (knobs.rate5xx > 0 && rand() < knobs.rate5xx) {
      counters.rejected5xx++;
      later(knobs.latencyMs, () => sendJson(res, 503, { error: 'Service Unavailable' }));
      return;
    }
    later(knobs.latencyMs, () => {
      if (res.destroyed) return;
      let result: ExecutionResult;
      try {
        result = handleGraphQL(body);
      } catch (err) {
        // graphql-js throws (rather than reporting) on some malformed requests, e.g. variables
        // that are not an object; a simulator that crashes on them would hide client bugs.
        result = { errors: [gqlError(err instanceof Error ? err.message : String(err), 'BAD_REQUEST')] };
      }
      if (result.errors?.length) counters.graphqlErrors++;
      sendJson(res, 200, result);
    });
  }

  function stats(): SimulatorStats {
    const perSecond: number[] = [];
    for (const t of arrivals) {
      const second = Math.floor((t - startedAt) / 1000);
      while (perSecond.length <= second) perSecond.push(0);
      perSecond[second]!++;
    }
    let maxInAnySecond = 0;
    for (let i = 0, j = 0; i < arrivals.length; i++) {
      while (arrivals[i]! - arrivals[j]! >= 1000) j++;
      maxInAnySecond = Math.max(maxInAnySecond, i - j + 1);
    }
    return { ...counters, inventorySize: inventory.size, revision: inventory.revision, perSecond, maxInAnySecond };
  }

  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  return {
    url: `http://${host}:${address.port}${SIMULATOR_PATH}`,
    username,
    password,
    inventory,
    stats,
    resetStats,
    configure,
    expireTokens: () => {
      for (const token of tokens.keys()) tokens.set(token, 0);
    },
    issuedTokens: () => [...issued],
    injectFaults: (...more) => {
      faults.push(...more);
    },
    arrivals: () => [...arrivals],
    mutate,
    mutations: () => [...mutationLog],
    snapshot: () => takeSnapshot(inventory, clock()),
    now: () => new Date(clock()),
    close: async () => {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Hung ("timeout") requests and keep-alive sockets would keep close() waiting forever.
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

function withCode(error: GraphQLError, code: string): GraphQLError {
  return new GraphQLError(error.message, {
    nodes: error.nodes,
    source: error.source,
    positions: error.positions,
    path: error.path,
    originalError: error.originalError,
    extensions: { ...error.extensions, code },
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.destroyed || res.writableEnded) return;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > 1_000_000) {
        reject(new Error('body too large'));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** GET /inventory: the exact inventory now, one JSON stone per line (StoneRow), price order. */
async function sendInventory(res: ServerResponse, snapshot: InventorySnapshot): Promise<void> {
  res.writeHead(200, {
    'content-type': 'application/x-ndjson; charset=utf-8',
    'x-inventory-revision': String(snapshot.revision),
    'x-inventory-taken-at': snapshot.takenAt,
  });
  const inv = snapshot.inventory;
  for (let start = 0; start < inv.size && !res.destroyed; start += 2000) {
    let chunk = '';
    for (let i = start; i < Math.min(inv.size, start + 2000); i++) chunk += `${JSON.stringify(stoneRow(inv, i))}\n`;
    if (!res.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    }
  }
  res.end();
}

function offer(inv: Inventory, i: number): Record<string, unknown> {
  const id = inv.ids[i]!;
  const stoneId = id.toString(16).padStart(8, '0');
  return {
    id: offerIdOf(id),
    price: inv.priceCents[i],
    diamond: {
      id: diamondIdOf(id),
      availability: AVAILABILITIES[inv.availability[i]!],
      updated: new Date(inv.updatedMs[i]!).toISOString(),
      image: inv.hasImage[i] ? `https://images.example.com/${stoneId}.jpg` : null,
      video: inv.hasV360[i] ? `https://v360.example.com/${stoneId}` : null,
      certificate: {
        certNumber: String(1_000_000_000 + id),
        lab: LABS[inv.lab[i]!],
        shape: SHAPES[inv.shapeIndex[i]!],
        carats: inv.carats[i],
        color: COLORS[inv.color[i]!],
        clarity: CLARITIES[inv.clarity[i]!],
        cut: CUTS[inv.cut[i]!],
        labgrown: inv.labgrown[i] === 1,
      },
    },
  };
}
