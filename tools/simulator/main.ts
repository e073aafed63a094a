// `npm run simulator`: a local Nivoda API for development and manual runs of the scheduler.
// Flags override SIMULATOR_* variables; stdout carries the URL and the credentials in the
// scheduler's own variable names, so they can be pasted into a .env file.
import { parseArgs } from 'node:util';
import { INVENTORY_SHAPES, type InventoryShape } from './inventory.js';
import { DEFAULT_CHURN_MIX, type ChurnMix } from './mutation.js';
import { startSimulator, type SimulatorOptions } from './server.js';

const USAGE = `Usage: npm run simulator -- [options]
  --port <n>              SIMULATOR_PORT              (default 4000; 0 = any free port)
  --host <addr>           SIMULATOR_HOST              (default 127.0.0.1)
  --shape <name>          SIMULATOR_SHAPE             ${INVENTORY_SHAPES.join(' | ')} (default realistic)
  --seed <n>              SIMULATOR_SEED              (default 1)
  --size <n>              SIMULATOR_SIZE              (default: the shape's own; realistic 437849)
  --latency-ms <n>        SIMULATOR_LATENCY_MS        added to every answer (default 0)
  --rate-429 <0..1>       SIMULATOR_RATE_429          fraction answered 429 + Retry-After
  --rate-5xx <0..1>       SIMULATOR_RATE_5XX          fraction answered 503
  --rate-timeout <0..1>   SIMULATOR_RATE_TIMEOUT      fraction never answered
  --retry-after <s>       SIMULATOR_RETRY_AFTER       Retry-After seconds on 429 (default 1)
  --token-lifetime-ms <n> SIMULATOR_TOKEN_LIFETIME_MS (default 6 h)
  --max-rps <n>           SIMULATOR_MAX_RPS           server-side requests-per-second cap (0 = none)
  --churn-rate <0..1>     SIMULATOR_CHURN_RATE        fraction of stones changed per 1,000 served searches (0 = none)
  --churn-every <n>       SIMULATOR_CHURN_EVERY       apply churn in a batch every n served searches (default 10)
  --churn-mix <list>      SIMULATOR_CHURN_MIX         weights, e.g. reprice=0.6,touch=0.1,remove=0.15,add=0.15
  --churn-large-share <0..1> SIMULATOR_CHURN_LARGE_SHARE share of price moves up to x3 / /3 (default 0.1; others +-10 %)
  --clock-offset-ms <n>   SIMULATOR_CLOCK_OFFSET_MS   the vendor's clock against this one (negative = behind)
  --short-page-rate <0..1> SIMULATOR_SHORT_PAGE_RATE  fraction of non-final search pages served short (a prefix)
  --username <s>          SIMULATOR_USERNAME
  --password <s>          SIMULATOR_PASSWORD
`;

const FLAGS = {
  port: 'SIMULATOR_PORT',
  host: 'SIMULATOR_HOST',
  shape: 'SIMULATOR_SHAPE',
  seed: 'SIMULATOR_SEED',
  size: 'SIMULATOR_SIZE',
  'latency-ms': 'SIMULATOR_LATENCY_MS',
  'rate-429': 'SIMULATOR_RATE_429',
  'rate-5xx': 'SIMULATOR_RATE_5XX',
  'rate-timeout': 'SIMULATOR_RATE_TIMEOUT',
  'retry-after': 'SIMULATOR_RETRY_AFTER',
  'token-lifetime-ms': 'SIMULATOR_TOKEN_LIFETIME_MS',
  'max-rps': 'SIMULATOR_MAX_RPS',
  'churn-rate': 'SIMULATOR_CHURN_RATE',
  'churn-every': 'SIMULATOR_CHURN_EVERY',
  'churn-mix': 'SIMULATOR_CHURN_MIX',
  'churn-large-share': 'SIMULATOR_CHURN_LARGE_SHARE',
  'short-page-rate': 'SIMULATOR_SHORT_PAGE_RATE',
  'clock-offset-ms': 'SIMULATOR_CLOCK_OFFSET_MS',
  username: 'SIMULATOR_USERNAME',
  password: 'SIMULATOR_PASSWORD',
} as const;
type Flag = keyof typeof FLAGS;

function fail(message: string): never {
  process.stderr.write(`${message}\n\n${USAGE}`);
  process.exit(2);
}

function main(): Promise<void> {
  let values: Partial<Record<Flag | 'help', string | boolean>>;
  try {
    const options = Object.fromEntries(Object.keys(FLAGS).map((k) => [k, { type: 'string' as const }]));
    values = parseArgs({ options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true }).values;
  } catch (err) {
    fail((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return Promise.resolve();
  }
  const text = (flag: Flag): string | undefined => {
    const v = values[flag] ?? process.env[FLAGS[flag]];
    return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
  };
  const num = (flag: Flag, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined => {
    const v = text(flag);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) fail(`--${flag} (${FLAGS[flag]}) must be a number in [${min}, ${max}], got "${v}"`);
    return n;
  };
  const shape = text('shape') ?? 'realistic';
  if (!INVENTORY_SHAPES.includes(shape as InventoryShape)) fail(`--shape must be one of ${INVENTORY_SHAPES.join(', ')}`);

  const churnMix = (): Partial<ChurnMix> | undefined => {
    const v = text('churn-mix');
    if (v === undefined) return undefined;
    const mix: Partial<ChurnMix> = {};
    for (const part of v.split(',')) {
      const [name, weight] = part.split('=').map((x) => x.trim());
      const w = Number(weight);
      if (!name || !(name in DEFAULT_CHURN_MIX) || weight === undefined || !Number.isFinite(w) || w < 0) {
        fail(`--churn-mix (SIMULATOR_CHURN_MIX) must be a list like reprice=0.6,touch=0.1,remove=0.15,add=0.15; got "${v}"`);
      }
      mix[name as keyof ChurnMix] = w;
    }
    return mix;
  };

  const options: SimulatorOptions = {
    port: num('port', 0, 65535) ?? 4000,
    host: text('host') ?? '127.0.0.1',
    shape: shape as InventoryShape,
    seed: num('seed', 0, 2 ** 32 - 1) ?? 1,
    size: num('size', 0, 5_000_000),
    latencyMs: num('latency-ms', 0),
    rate429: num('rate-429', 0, 1),
    rate5xx: num('rate-5xx', 0, 1),
    rateTimeout: num('rate-timeout', 0, 1),
    retryAfterSeconds: num('retry-after', 0),
    tokenLifetimeMs: num('token-lifetime-ms', 1),
    maxRequestsPerSecond: num('max-rps', 0),
    churnRate: num('churn-rate', 0, 1),
    churnEveryRequests: num('churn-every', 1),
    churnMix: churnMix(),
    churnLargeMoveShare: num('churn-large-share', 0, 1),
    shortPageRate: num('short-page-rate', 0, 1),
    clockOffsetMs: num('clock-offset-ms', -Number.MAX_SAFE_INTEGER),
    username: text('username'),
    password: text('password'),
  };
  return run(options);
}

async function run(options: SimulatorOptions): Promise<void> {
  const started = Date.now();
  const sim = await startSimulator(options);
  const out = process.stdout;
  out.write(`Nivoda simulator listening on ${sim.url}\n`);
  out.write(`  inventory: ${options.shape}, ${sim.inventory.size} stones, seed ${options.seed} (ready in ${Date.now() - started} ms)\n`);
  out.write(
    `  stats: GET ${new URL('/stats', sim.url).href}; exact inventory (JSON lines): GET ${new URL('/inventory', sim.url).href}\n\n`,
  );
  // The simulator's credentials are not secrets: printing them is the point.
  out.write(`NIVODA_ENDPOINT=${sim.url}\nNIVODA_USERNAME=${sim.username}\nNIVODA_PASSWORD=${sim.password}\n\n`);

  const report = (): void => {
    const s = sim.stats();
    out.write(
      `requests ${s.requests}, count queries ${s.countQueries}, search queries ${s.searchQueries}, ` +
        `authentications ${s.authentications}, 429s ${s.rejected429}, 5xx ${s.rejected5xx}, ` +
        `timeouts ${s.timedOut}, errors ${s.graphqlErrors}, max in flight ${s.maxInFlight}, short pages ${s.shortPages}, ` +
        `stones ${s.inventorySize} (revision ${s.revision}: ${s.repriced} repriced, ${s.touched} touched, ${s.removed} removed, ${s.added} added)\n`,
    );
  };
  let lastRequests = 0;
  const ticker = setInterval(() => {
    // Report totals after a burst of traffic, not every few seconds while idle.
    const { requests } = sim.stats();
    if (requests !== lastRequests) {
      lastRequests = requests;
      report();
    }
  }, 5000);
  const stop = (): void => {
    clearInterval(ticker);
    report();
    void sim.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`simulator failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
