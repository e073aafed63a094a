// `npm run bench`: the heatmap strategies side by side against the simulator over HTTP,
// with the realistic inventory at 100 ms latency under a 25 requests/s server limit, for a
// full run (30 workers) and an incremental one (10). It prints figures; it asserts nothing.
//
// For every plan the "true" count of each partition comes from applying the CONTRACT §2
// worker rule to every stone of the simulator's inventory in the window, so `est. error`
// measures what a worker would actually find against what the plan promised.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, type Config, type HeatmapStrategy } from '../src/config.js';
import { PRICE_AXIS_END, type Partition } from '../src/domain.js';
import { createLogger } from '../src/log.js';
import { createNivodaClient } from '../src/nivoda/client.js';
import { diamondQuery } from '../src/nivoda/query.js';
import { partitionCount } from '../src/partitioner.js';
import { plan, resolveWindow, type Plan } from '../src/scheduler.js';
import { startSimulator, type Simulator } from '../tools/simulator/server.js';
import { openWatermarkStore } from '../src/watermark/open.js';

const LATENCY_MS = Number(process.env.BENCH_LATENCY_MS ?? 100);
const SERVER_RPS = Number(process.env.BENCH_SERVER_RPS ?? 25);
const SEED = Number(process.env.BENCH_SEED ?? 1);

interface Row {
  run: string;
  strategy: string;
  partitions: number;
  countQueries: number;
  requests: number;
  throttled: number;
  seconds: number;
  maxOverIdeal: number;
  minOverIdeal: number;
  sumError: number;
  worstError: number;
}

/** What the worker rule yields for each partition: stones in the window with priceMin <= price < priceMax. */
function trueCounts(sim: Simulator, partitions: Partition[], from: number, to: number): number[] {
  const { priceCents, updatedMs, size } = sim.inventory;
  const counts = new Array<number>(partitions.length).fill(0);
  for (let i = 0; i < size; i++) {
    const t = updatedMs[i]!;
    if (t < from || t > to) continue;
    const dollars = priceCents[i]! / 100;
    let lo = 0;
    let hi = partitions.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (partitions[mid]!.priceMin <= dollars) lo = mid;
      else hi = mid - 1;
    }
    counts[lo]!++;
  }
  return counts;
}

function measure(run: string, strategy: string, planned: Plan, sim: Simulator, requests: number, throttled: number, seconds: number): Row {
  const from = planned.updatedFrom ? Date.parse(planned.updatedFrom) : -Infinity;
  const actual = trueCounts(sim, planned.partitions, from, Date.parse(planned.updatedTo));
  const windowTotal = actual.reduce((a, b) => a + b, 0);
  const ideal = windowTotal / planned.partitions.length;
  const estimates = planned.partitions.map((p) => p.expectedRecords);
  const worst = Math.max(...actual.map((a, i) => Math.abs(estimates[i]! - a) / Math.max(1, a)));
  return {
    run,
    strategy,
    partitions: planned.partitions.length,
    countQueries: planned.scan.countQueries,
    requests,
    throttled,
    seconds,
    maxOverIdeal: Math.max(...actual) / ideal,
    minOverIdeal: Math.min(...actual) / ideal,
    sumError: Math.abs(estimates.reduce((a, b) => a + b, 0) - windowTotal) / windowTotal,
    worstError: worst,
  };
}

/** The naive baseline: one total, then equal-width ranges up to the ceiling, each assumed to hold total / N. */
async function equalWidthPlan(config: Config, full: boolean): Promise<{ planned: Plan; requests: number; seconds: number }> {
  const logger = createLogger({ level: 'silent' });
  const client = createNivodaClient(config.nivoda, logger);
  const watermarks = await openWatermarkStore(config.watermark);
  const started = performance.now();
  const { runType, window, watermark } = await resolveWindow({ config, watermarks }, { full });
  const total = await client.count(diamondQuery({ baseQuery: {}, priceField: config.nivoda.priceField, window }));
  const rules = {
    maxWorkers: full ? config.heatmap.maxWorkers : config.heatmap.incrementalMaxWorkers,
    recordsPerWorker: config.heatmap.recordsPerWorker,
    minRecordsPerWorker: config.heatmap.minRecordsPerWorker,
  };
  const n = partitionCount(total, rules);
  const width = Math.ceil(config.heatmap.maxPrice / n);
  const partitions: Partition[] = Array.from({ length: n }, (_, i) => ({
    partitionId: `partition-${i + 1}`,
    priceMin: i * width,
    priceMax: i === n - 1 ? PRICE_AXIS_END : (i + 1) * width,
    expectedRecords: Math.round(total / n),
  }));
  const seconds = (performance.now() - started) / 1000;
  const planned: Plan = {
    runType,
    updatedFrom: window.from ?? null,
    updatedTo: window.to,
    watermarkBefore: watermark?.lastUpdatedAt ?? null,
    totalRecords: total,
    priceField: config.nivoda.priceField,
    partitions,
    scan: { countQueries: 1, durationMs: seconds * 1000, start: 'cold', stopReason: 'equal-width', balance: 0, rounds: 1 },
    scanPoints: [],
  };
  return { planned, requests: client.stats().requests, seconds };
}

async function main(): Promise<void> {
  const sim = await startSimulator({ shape: 'realistic', seed: SEED, latencyMs: LATENCY_MS, maxRequestsPerSecond: SERVER_RPS });
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'scheduler-bench-'));
  const rows: Row[] = [];
  try {
    for (const run of ['full', 'incremental'] as const) {
      const watermarkPath = path.join(dataDir, 'watermarks', 'nivoda.json');
      const env = {
        NIVODA_ENDPOINT: sim.url,
        NIVODA_USERNAME: sim.username,
        NIVODA_PASSWORD: sim.password,
        // Just under the server's limit: the client spaces requests evenly, the server counts a sliding second.
        NIVODA_MAX_REQUESTS_PER_SECOND: String(SERVER_RPS - 1),
        NIVODA_MAX_CONCURRENCY: '8',
        SCHEDULER_DATA_DIR: dataDir,
      };
      if (run === 'incremental') {
        const store = await openWatermarkStore({ backend: 'file', path: watermarkPath });
        const current = await store.read();
        await store.write(
          { lastUpdatedAt: new Date(sim.inventory.nowMs - 24 * 3600_000).toISOString(), lastRunId: 'bench' },
          current ? { ifMatch: current.etag } : { ifNoneMatch: '*' },
        );
      }
      for (const strategy of ['quantile', 'seed'] as HeatmapStrategy[]) {
        const config = loadConfig({ ...env, HEATMAP_STRATEGY: strategy });
        const client = createNivodaClient(config.nivoda, createLogger({ level: 'silent' }));
        const watermarks = await openWatermarkStore(config.watermark);
        const started = performance.now();
        const planned = await plan(
          { config, nivoda: client, watermarks, logger: createLogger({ level: 'silent' }) },
          { full: run === 'full' },
        );
        const seconds = (performance.now() - started) / 1000;
        const stats = client.stats();
        rows.push(measure(run, strategy, planned, sim, stats.requests, stats.throttled, seconds));
      }
      const config = loadConfig(env);
      const naive = await equalWidthPlan(config, run === 'full');
      rows.push(measure(run, 'equal-width', naive.planned, sim, naive.requests, 0, naive.seconds));
    }
  } finally {
    await sim.close();
    await rm(dataDir, { recursive: true, force: true });
  }

  const header = [
    'run',
    'strategy',
    'partitions',
    'count queries',
    'HTTP requests',
    '429s',
    'scan s',
    'max/ideal',
    'min/ideal',
    'sum est. error',
    'worst partition est. error',
  ];
  const cells = rows.map((r) => [
    r.run,
    r.strategy,
    String(r.partitions),
    String(r.countQueries),
    String(r.requests),
    String(r.throttled),
    r.seconds.toFixed(2),
    r.maxOverIdeal.toFixed(3),
    r.minOverIdeal.toFixed(3),
    `${(r.sumError * 100).toFixed(2)} %`,
    `${(r.worstError * 100).toFixed(2)} %`,
  ]);
  process.stdout.write(
    `Heatmap benchmark: realistic inventory (${sim.inventory.size.toLocaleString('en-US')} stones, seed ${SEED}), ` +
      `${LATENCY_MS} ms latency, server limit ${SERVER_RPS} requests/s\n\n`,
  );
  process.stdout.write(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|\n`);
  for (const row of cells) process.stdout.write(`| ${row.join(' | ')} |\n`);
}

await main();
