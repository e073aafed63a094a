// `npm run bench:ingest`: a full ingest of the realistic inventory (437,849 stones) through the
// simulator at 100 ms latency under a 25 requests/s vendor cap, with several worker processes
// on a real PostgreSQL database (the local queue in it). It prints the search and count calls,
// the wall time, and their ratio to the floor: ceil(stones / 50) searches at 25 requests/s.
// It checks every stone landed exactly once and prints the verdict; it asserts nothing.
//
// BENCH_STONES (default 437849), BENCH_WORKERS (4), BENCH_LATENCY_MS (100), BENCH_SERVER_RPS (25).
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createTestDatabase } from '../test/helpers/postgres.js';
import { startSimulator } from '../tools/simulator/server.js';

const STONES = Number(process.env.BENCH_STONES ?? 437_849);
const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);
const LATENCY_MS = Number(process.env.BENCH_LATENCY_MS ?? 100);
const SERVER_RPS = Number(process.env.BENCH_SERVER_RPS ?? 25);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function cli(args: string[], env: NodeJS.ProcessEnv): Promise<number | null> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src', 'index.ts'), ...args], {
    cwd: root,
    env,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
}

const sim = await startSimulator({ shape: 'realistic', seed: 1, size: STONES, latencyMs: LATENCY_MS, maxRequestsPerSecond: SERVER_RPS });
const database = await createTestDatabase();
const dataDir = await mkdtemp(path.join(os.tmpdir(), 'ingest-bench-'));
try {
  // A little under the vendor's cap, shared by every worker process (the budget row in PostgreSQL).
  const rate = String(SERVER_RPS * 0.96);
  const env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LOG_LEVEL: 'warn',
    NIVODA_ENDPOINT: sim.url,
    NIVODA_USERNAME: sim.username,
    NIVODA_PASSWORD: sim.password,
    NIVODA_MAX_REQUESTS_PER_SECOND: rate,
    NIVODA_GLOBAL_REQUESTS_PER_SECOND: rate,
    NIVODA_MAX_CONCURRENCY: '8',
    DATABASE_URL: database.url,
    SCHEDULER_DATA_DIR: dataDir,
  };
  const started = performance.now();
  if ((await cli(['run'], env)) !== 0) throw new Error('the scheduler run failed');
  const scheduled = performance.now();
  const codes = await Promise.all(Array.from({ length: WORKERS }, () => cli(['worker', '--concurrency', '2', '--idle-exit', '3'], env)));
  if (codes.some((c) => c !== 0)) throw new Error(`a worker failed: exit codes ${codes.join(', ')}`);
  const seconds = (performance.now() - started) / 1000;
  const workSeconds = (performance.now() - scheduled) / 1000 - 3; // less the idle wait before exiting

  const sql = new pg.Client({ connectionString: database.url });
  await sql.connect();
  const rows = (
    await sql.query<{ n: string; ids: string }>('SELECT count(*) AS n, count(DISTINCT supplier_stone_id) AS ids FROM raw_diamonds_nivoda')
  ).rows[0]!;
  const [run] = (await sql.query<{ status: string }>('SELECT status FROM run_metadata')).rows;
  await sql.end();
  const snapshot = sim.snapshot();
  const stats = sim.stats();
  const floorCalls = Math.ceil(snapshot.size / 50);
  const floorSeconds = floorCalls / SERVER_RPS;
  const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 2 });
  process.stdout.write(
    [
      `full ingest: ${fmt(snapshot.size)} stones, ${WORKERS} worker processes × 2, ${LATENCY_MS} ms latency, vendor cap ${SERVER_RPS} req/s`,
      '',
      '| stones | rows (unique) | run | search calls | count calls | 429s | calls / floor | wall s | work s | wall / floor |',
      '|---|---|---|---|---|---|---|---|---|---|',
      `| ${fmt(snapshot.size)} | ${fmt(Number(rows.n))} (${fmt(Number(rows.ids))}) | ${run?.status} | ${fmt(stats.searchQueries)} | ${fmt(stats.countQueries)} | ${stats.rejected429} | ${fmt((stats.searchQueries + stats.countQueries) / floorCalls)} | ${fmt(seconds)} | ${fmt(workSeconds)} | ${fmt(seconds / floorSeconds)} |`,
      '',
      `floor: ${fmt(floorCalls)} searches at ${SERVER_RPS} req/s = ${fmt(floorSeconds)} s`,
      Number(rows.ids) === snapshot.size && Number(rows.n) === snapshot.size ? 'every stone exactly once' : 'NOT every stone exactly once',
      '',
    ].join('\n'),
  );
} finally {
  await sim.close();
  await database.drop();
  await rm(dataDir, { recursive: true, force: true });
}
