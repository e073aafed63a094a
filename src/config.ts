// Environment → one typed, validated config object. Every problem is collected and
// reported at once (ConfigError → exit 2), so an operator fixes a deployment in one go.
import { existsSync, readFileSync } from 'node:fs';
import { parseEnv } from 'node:util';
import path from 'node:path';
import { z } from 'zod';
import { PRICE_FIELDS, type PriceField } from './domain.js';
import { ConfigError } from './errors.js';

const HEATMAP_STRATEGIES = ['quantile', 'seed'] as const;
export type HeatmapStrategy = (typeof HEATMAP_STRATEGIES)[number];

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce
    .number({ error: 'must be a number' })
    .int({ error: 'must be a whole number' })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });

const positive = z.coerce.number({ error: 'must be a number' }).positive({ error: 'must be greater than 0' });
const optionalString = z.string().trim().min(1).optional();

const rangeOf = <T extends z.ZodType>(bound: T) => z.strictObject({ from: bound.optional(), to: bound.optional() });
const intRange = rangeOf(z.number().int());
const floatRange = rangeOf(z.number());
const dateRange = rangeOf(z.iso.datetime({ offset: true }));

/** NIVODA_QUERY: checked against the contract's DiamondQuery input so a typo is a config error, not a failed run at 02:00. */
const baseQuerySchema = z.strictObject({
  dollar_value: intRange.optional(),
  dollar_per_carat: intRange.optional(),
  updated: dateRange.optional(),
  sizes: floatRange.optional(),
  shapes: z.array(z.string()).optional(),
  labgrown: z.boolean().optional(),
  has_image: z.boolean().optional(),
  has_v360: z.boolean().optional(),
  availability: z.array(z.string()).optional(),
  hide_memo: z.boolean().optional(),
  excludeFairPoorCuts: z.boolean().optional(),
});
export type BaseQuery = z.infer<typeof baseQuerySchema>;

const envSchema = z.object({
  NODE_ENV: z.string().optional(),
  NIVODA_ENDPOINT: z.url({ error: 'must be an http(s) URL', protocol: /^https?$/ }).optional(),
  NIVODA_USERNAME: z.string().optional(),
  NIVODA_PASSWORD: z.string().optional(),
  NIVODA_PRICE_FIELD: z.enum(PRICE_FIELDS, { error: `must be one of ${PRICE_FIELDS.join(', ')}` }).default('dollar_value'),
  NIVODA_QUERY: z.string().optional(),
  NIVODA_REQUEST_TIMEOUT_MS: int(100).default(30_000),
  NIVODA_MAX_CONCURRENCY: int(1, 64).default(4),
  NIVODA_MAX_REQUESTS_PER_SECOND: positive.default(20),
  NIVODA_MAX_ATTEMPTS: int(1, 20).default(5),
  NIVODA_RETRY_BUDGET_MS: int(0).default(120_000),

  RUN_TYPE: z.enum(['auto', 'full', 'incremental'], { error: 'must be auto, full or incremental' }).default('auto'),
  HEATMAP_STRATEGY: z.enum(HEATMAP_STRATEGIES, { error: `must be one of ${HEATMAP_STRATEGIES.join(', ')}` }).default('quantile'),
  HEATMAP_DENSE_ZONE_THRESHOLD: int(1).default(20_000),
  HEATMAP_DENSE_ZONE_STEP: int(1).default(100),
  HEATMAP_MAX_WORKERS: int(1, 1000).default(30),
  INCREMENTAL_MAX_WORKERS: int(1, 1000).default(10),
  HEATMAP_MIN_RECORDS_PER_WORKER: int(1).default(1000),
  RECORDS_PER_WORKER: int(1).default(5000),
  HEATMAP_MAX_PRICE: int(1, 2147483646).default(250_000),
  HEATMAP_BALANCE_TOLERANCE: z.coerce
    .number({ error: 'must be a number' })
    .min(0, { error: 'must be at least 0' })
    .max(1, { error: 'must be at most 1' })
    .default(0.02),
  HEATMAP_MAX_COUNT_QUERIES: int(1, 100_000).optional(),
  INCREMENTAL_SAFETY_BUFFER_MINUTES: int(0).default(15),

  AZURE_STORAGE_CONNECTION_STRING: optionalString,
  AZURE_STORAGE_ACCOUNT_URL: z.url({ error: 'must be a URL' }).optional(),
  WATERMARK_CONTAINER: z
    .string()
    .regex(/^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$/, {
      error: 'must be a valid blob container name (3-63 lowercase letters, digits, dashes)',
    })
    .default('watermarks'),
  WATERMARK_BLOB: z.string().min(1).default('nivoda.json'),

  // Checked without echoing the value: a connection URL carries a password.
  DATABASE_URL: z
    .string()
    .refine((url) => URL.canParse(url) && /^postgres(ql)?:$/.test(new URL(url).protocol), {
      error: 'must be a postgres:// or postgresql:// URL (with any special characters in the password percent-encoded)',
    })
    .optional(),
  DATABASE_POOL_MAX: int(1, 100).default(5),
  DATABASE_AUTH: z
    .enum(['password', 'azure'], { error: 'must be password (in DATABASE_URL) or azure (an Entra ID token per connection)' })
    .default('password'),
  // The client id of a user-assigned managed identity; unset, DefaultAzureCredential picks the system-assigned one.
  AZURE_CLIENT_ID: z.guid({ error: 'must be the client id (a GUID) of the user-assigned managed identity' }).optional(),

  AZURE_SERVICE_BUS_CONNECTION_STRING: optionalString,
  AZURE_SERVICE_BUS_NAMESPACE: optionalString,
  AZURE_SERVICE_BUS_QUEUE: z.string().min(1).default('work-items'),

  SCHEDULER_DATA_DIR: z.string().min(1).default('.data'),
  SCHEDULER_LOCAL: z.enum(['0', '1'], { error: 'must be 1 (use local state in production on purpose) or 0' }).optional(),
  SCHEDULER_LOCK_TTL_SECONDS: int(1).default(300),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  // The worker (CONTRACT §9).
  WORKER_CONCURRENCY: int(1, 64).default(4),
  WORKER_MAX_DELIVERIES: int(1, 100).default(10),
  WORKER_LOCK_SECONDS: int(5, 3600).default(60),
  WORKER_MAX_PASSES: int(1, 20).default(4),
  NIVODA_GLOBAL_REQUESTS_PER_SECOND: positive.default(20),
});

export interface NivodaConfig {
  endpoint: string;
  username: string;
  password: string;
  priceField: PriceField;
  baseQuery: BaseQuery;
  requestTimeoutMs: number;
  maxConcurrency: number;
  maxRequestsPerSecond: number;
  maxAttempts: number;
  retryBudgetMs: number;
}

/** What the commands that never call Nivoda (status, watermark, queue, migrate) need. */
export interface BaseConfig {
  /** Present whenever the three NIVODA_* variables are set. */
  nivoda?: NivodaConfig;
  run: {
    type: 'auto' | 'full' | 'incremental';
    safetyBufferMinutes: number;
  };
  heatmap: {
    strategy: HeatmapStrategy;
    denseZoneThreshold: number;
    denseZoneStep: number;
    maxPrice: number;
    maxWorkers: number;
    incrementalMaxWorkers: number;
    minRecordsPerWorker: number;
    recordsPerWorker: number;
    /** The scan stops when the largest partition is within (1 + this) × ideal (or provably cannot be). */
    balanceTolerance: number;
    /** A cap on count queries per scan; absent = the scan's default for the partition count. */
    maxCountQueries?: number;
  };
  watermark:
    | { backend: 'blob'; connectionString?: string; accountUrl?: string; container: string; blob: string; azureClientId?: string }
    | { backend: 'file'; path: string };
  database:
    | { backend: 'postgres'; url: string; poolMax: number; auth?: 'password' | 'azure'; azureClientId?: string }
    | { backend: 'pglite'; dir: string };
  queue:
    | { backend: 'servicebus'; connectionString?: string; namespace?: string; queueName: string; azureClientId?: string }
    | { backend: 'local' };
  dataDir: string;
  lockTtlSeconds: number;
  logLevel: z.infer<typeof envSchema>['LOG_LEVEL'];
  worker: WorkerConfig;
}

export interface WorkerConfig {
  /** Work items one process works at once (`--concurrency` overrides). */
  concurrency: number;
  /** Deliveries of one work item before it is dead-lettered; equal to the Service Bus queue's max delivery count. */
  maxDeliveries: number;
  /** The local queue's lease (Service Bus: the queue's lock duration); renewed while a partition is worked. */
  lockSeconds: number;
  /** Paging passes over one partition before its difference to the exact count is reported. */
  maxPasses: number;
  /** The vendor budget: every worker process together stays under this many Nivoda requests per second. */
  globalRequestsPerSecond: number;
}

export type DatabaseConfig = BaseConfig['database'];
export type QueueConfig = BaseConfig['queue'];
export type WatermarkConfig = BaseConfig['watermark'];

/** The configuration of the commands that talk to Nivoda (run, plan). */
export interface Config extends BaseConfig {
  nivoda: NivodaConfig;
}

type Env = Record<string, string | undefined>;

const NIVODA_REQUIRED = ['NIVODA_ENDPOINT', 'NIVODA_USERNAME', 'NIVODA_PASSWORD'] as const;

/** Parses and validates the environment for run and plan. Throws ConfigError listing every problem. */
export function loadConfig(env: Env = process.env): Config {
  const config = loadBaseConfig(env, { requireNivoda: true });
  if (!config.nivoda) throw new ConfigError(NIVODA_REQUIRED.map((name) => `${name} is required`));
  return { ...config, nivoda: config.nivoda };
}

/** Parses and validates the environment; Nivoda settings are checked when present and required only on request. */
export function loadBaseConfig(env: Env = process.env, options: { requireNivoda?: boolean } = {}): BaseConfig {
  // Empty strings are what a blank line in a deployment manifest produces: treat them as unset.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const problems: string[] = [];
  const parsed = envSchema.safeParse(cleaned);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const name = issue.path.join('.');
      const message = issue.code === 'invalid_type' && cleaned[name] === undefined ? 'is required' : issue.message;
      problems.push(`${name} ${message}`);
    }
  }
  if (options.requireNivoda) {
    for (const name of NIVODA_REQUIRED) if (cleaned[name] === undefined) problems.push(`${name} is required`);
  }
  const baseQuery = parseBaseQuery(cleaned.NIVODA_QUERY, problems);
  if (!parsed.success) throw new ConfigError(problems);
  const e = parsed.data;

  const endpointProblem = e.NIVODA_ENDPOINT && nivodaEndpointProblem(e.NIVODA_ENDPOINT);
  if (endpointProblem) problems.push(endpointProblem);
  if (e.HEATMAP_MIN_RECORDS_PER_WORKER > e.RECORDS_PER_WORKER) {
    problems.push('HEATMAP_MIN_RECORDS_PER_WORKER must not exceed RECORDS_PER_WORKER');
  }
  if (e.HEATMAP_DENSE_ZONE_THRESHOLD > e.HEATMAP_MAX_PRICE) {
    problems.push('HEATMAP_DENSE_ZONE_THRESHOLD must not exceed HEATMAP_MAX_PRICE');
  }
  if (baseQuery?.[e.NIVODA_PRICE_FIELD] || baseQuery?.updated) {
    problems.push(`NIVODA_QUERY must not set ${e.NIVODA_PRICE_FIELD} or updated: the scheduler owns those filters`);
  }
  if (e.AZURE_SERVICE_BUS_CONNECTION_STRING && e.AZURE_SERVICE_BUS_NAMESPACE) {
    problems.push('set only one of AZURE_SERVICE_BUS_CONNECTION_STRING and AZURE_SERVICE_BUS_NAMESPACE');
  }
  if (e.AZURE_STORAGE_CONNECTION_STRING && e.AZURE_STORAGE_ACCOUNT_URL) {
    problems.push('set only one of AZURE_STORAGE_CONNECTION_STRING and AZURE_STORAGE_ACCOUNT_URL');
  }
  // Checked here (not only when the SDK first parses it), so `plan` rejects it too; the value is never echoed.
  if (e.AZURE_SERVICE_BUS_CONNECTION_STRING && !SERVICE_BUS_CONNECTION_STRING.test(e.AZURE_SERVICE_BUS_CONNECTION_STRING)) {
    problems.push(
      'AZURE_SERVICE_BUS_CONNECTION_STRING must look like Endpoint=sb://<namespace>/;SharedAccessKeyName=<name>;SharedAccessKey=<key> (or SharedAccessSignature=…)',
    );
  }
  problems.push(...databaseAuthProblems(e));
  problems.push(...productionFallbacks(e));
  if (problems.length > 0) throw new ConfigError(problems);

  const dataDir = path.resolve(e.SCHEDULER_DATA_DIR);
  const { NIVODA_ENDPOINT: endpoint, NIVODA_USERNAME: username, NIVODA_PASSWORD: password } = e;
  return {
    nivoda:
      endpoint && username && password
        ? {
            endpoint,
            username,
            password,
            priceField: e.NIVODA_PRICE_FIELD,
            baseQuery: baseQuery ?? {},
            requestTimeoutMs: e.NIVODA_REQUEST_TIMEOUT_MS,
            maxConcurrency: e.NIVODA_MAX_CONCURRENCY,
            maxRequestsPerSecond: e.NIVODA_MAX_REQUESTS_PER_SECOND,
            maxAttempts: e.NIVODA_MAX_ATTEMPTS,
            retryBudgetMs: e.NIVODA_RETRY_BUDGET_MS,
          }
        : undefined,
    run: { type: e.RUN_TYPE, safetyBufferMinutes: e.INCREMENTAL_SAFETY_BUFFER_MINUTES },
    heatmap: {
      strategy: e.HEATMAP_STRATEGY,
      denseZoneThreshold: e.HEATMAP_DENSE_ZONE_THRESHOLD,
      denseZoneStep: e.HEATMAP_DENSE_ZONE_STEP,
      maxPrice: e.HEATMAP_MAX_PRICE,
      maxWorkers: e.HEATMAP_MAX_WORKERS,
      incrementalMaxWorkers: e.INCREMENTAL_MAX_WORKERS,
      minRecordsPerWorker: e.HEATMAP_MIN_RECORDS_PER_WORKER,
      recordsPerWorker: e.RECORDS_PER_WORKER,
      balanceTolerance: e.HEATMAP_BALANCE_TOLERANCE,
      maxCountQueries: e.HEATMAP_MAX_COUNT_QUERIES,
    },
    watermark:
      e.AZURE_STORAGE_CONNECTION_STRING || e.AZURE_STORAGE_ACCOUNT_URL
        ? {
            backend: 'blob',
            connectionString: e.AZURE_STORAGE_CONNECTION_STRING,
            accountUrl: e.AZURE_STORAGE_ACCOUNT_URL,
            container: e.WATERMARK_CONTAINER,
            blob: e.WATERMARK_BLOB,
            azureClientId: e.AZURE_CLIENT_ID,
          }
        : { backend: 'file', path: path.join(dataDir, e.WATERMARK_CONTAINER, e.WATERMARK_BLOB) },
    database: e.DATABASE_URL
      ? { backend: 'postgres', url: e.DATABASE_URL, poolMax: e.DATABASE_POOL_MAX, auth: e.DATABASE_AUTH, azureClientId: e.AZURE_CLIENT_ID }
      : { backend: 'pglite', dir: path.join(dataDir, 'pglite') },
    queue:
      e.AZURE_SERVICE_BUS_CONNECTION_STRING || e.AZURE_SERVICE_BUS_NAMESPACE
        ? {
            backend: 'servicebus',
            connectionString: e.AZURE_SERVICE_BUS_CONNECTION_STRING,
            namespace: e.AZURE_SERVICE_BUS_NAMESPACE,
            queueName: e.AZURE_SERVICE_BUS_QUEUE,
            azureClientId: e.AZURE_CLIENT_ID,
          }
        : { backend: 'local' },
    dataDir,
    lockTtlSeconds: e.SCHEDULER_LOCK_TTL_SECONDS,
    logLevel: e.LOG_LEVEL,
    worker: {
      concurrency: e.WORKER_CONCURRENCY,
      maxDeliveries: e.WORKER_MAX_DELIVERIES,
      lockSeconds: e.WORKER_LOCK_SECONDS,
      maxPasses: e.WORKER_MAX_PASSES,
      globalRequestsPerSecond: e.NIVODA_GLOBAL_REQUESTS_PER_SECOND,
    },
  };
}

const SERVICE_BUS_CONNECTION_STRING = /^(?=.*\bEndpoint=sb:\/\/[^;]+)(?=.*\b(SharedAccessKey|SharedAccessSignature)=[^;]+)/i;

/**
 * With Entra ID authentication the password is a token fetched per connection: DATABASE_URL names
 * the server and the Entra user (the managed identity's name) and must not carry a password of its own.
 */
function databaseAuthProblems(e: z.infer<typeof envSchema>): string[] {
  if (e.DATABASE_AUTH !== 'azure') return [];
  if (!e.DATABASE_URL) return ['DATABASE_AUTH=azure needs DATABASE_URL (server, database and the Entra ID user, no password)'];
  const url = new URL(e.DATABASE_URL);
  const problems: string[] = [];
  if (!url.username)
    problems.push('DATABASE_URL must name the Entra ID user (postgres://<user>@<server>/<database>) when DATABASE_AUTH=azure');
  if (url.password) problems.push('DATABASE_URL must not carry a password when DATABASE_AUTH=azure: the password is an Entra ID token');
  return problems;
}

/**
 * In production the embedded database, the file watermark and the local queue live inside an
 * ephemeral container: work items would vanish with it. Falling back to them there is a
 * configuration error unless SCHEDULER_LOCAL=1 says it is meant.
 */
function productionFallbacks(e: z.infer<typeof envSchema>): string[] {
  if (e.NODE_ENV !== 'production' || e.SCHEDULER_LOCAL === '1') return [];
  const problems: string[] = [];
  const deliberately = '(or set SCHEDULER_LOCAL=1 to run with local state on purpose)';
  if (!e.DATABASE_URL)
    problems.push(`DATABASE_URL is required in production: without it the embedded PGlite database would be used ${deliberately}`);
  if (!e.AZURE_STORAGE_CONNECTION_STRING && !e.AZURE_STORAGE_ACCOUNT_URL) {
    problems.push(
      `AZURE_STORAGE_ACCOUNT_URL (managed identity) or AZURE_STORAGE_CONNECTION_STRING is required in production: without it the watermark would be a local file ${deliberately}`,
    );
  }
  if (!e.AZURE_SERVICE_BUS_CONNECTION_STRING && !e.AZURE_SERVICE_BUS_NAMESPACE) {
    problems.push(
      `AZURE_SERVICE_BUS_NAMESPACE (managed identity) or AZURE_SERVICE_BUS_CONNECTION_STRING is required in production: without it work items would go to the local queue ${deliberately}`,
    );
  }
  return problems;
}

function parseBaseQuery(raw: string | undefined, problems: string[]): BaseQuery | undefined {
  if (raw === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (err) {
    problems.push(`NIVODA_QUERY is not valid JSON (${(err as Error).message})`);
    return undefined;
  }
  const result = baseQuerySchema.safeParse(json);
  if (result.success) return result.data;
  for (const issue of result.error.issues) {
    if (issue.code === 'unrecognized_keys') {
      const where = issue.path.length ? ` in ${issue.path.join('.')}` : '';
      for (const key of issue.keys) {
        problems.push(
          `NIVODA_QUERY has unknown field "${key}"${where} (DiamondQuery fields: ${Object.keys(baseQuerySchema.shape).join(', ')})`,
        );
      }
    } else {
      problems.push(`NIVODA_QUERY.${issue.path.join('.')} ${issue.message}`);
    }
  }
  return undefined;
}

/** Why an endpoint may not carry the credentials, or undefined: https, or plain http on loopback only. */
export function nivodaEndpointProblem(endpoint: string): string | undefined {
  if (!URL.canParse(endpoint)) return 'NIVODA_ENDPOINT must be an http(s) URL';
  const { protocol } = new URL(endpoint);
  if (protocol === 'https:' || (protocol === 'http:' && isLoopback(endpoint))) return undefined;
  return 'NIVODA_ENDPOINT must use https (plain http is allowed only on loopback)';
}

function isLoopback(url: string): boolean {
  const host = new URL(url).hostname;
  return host === 'localhost' || host === '[::1]' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * In development only (NODE_ENV unset or `development`), a `.env` file in the working
 * directory fills the variables that are not set at all. A variable set to an empty value
 * stays empty (unset, to the parser): that is how a command blanks a setting on purpose.
 */
export function loadDotEnv(env: Env = process.env, file = '.env'): void {
  if ((env.NODE_ENV ?? 'development') !== 'development' || !existsSync(file)) return;
  for (const [name, value] of Object.entries(parseEnv(readFileSync(file, 'utf8')))) {
    if (env[name] === undefined) env[name] = value;
  }
}
