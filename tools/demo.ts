// `npm run demo`: the whole pipeline end to end with zero setup. It starts the Nivoda simulator
// with a realistic inventory and runs the real command line against it, with the embedded
// database, the file watermark and the local queue under .data/demo:
//   full run → workers → consolidation → the vendor changes part of its inventory →
//   incremental run → workers → consolidation,
// then compares the raw table with the simulator's exact inventory. Repeatable: it starts
// from an empty data directory every time.
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openDatabase } from '../src/db/open.js';
import { startSimulator } from './simulator/server.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dataDir = path.join(root, '.data', 'demo');
rmSync(dataDir, { recursive: true, force: true });

const STONES = Number(process.env.DEMO_STONES ?? 120_000);
const simulator = await startSimulator({ shape: 'realistic', seed: 1, size: STONES, latencyMs: 5 });
const env = {
  ...process.env,
  NIVODA_ENDPOINT: simulator.url,
  NIVODA_USERNAME: simulator.username,
  NIVODA_PASSWORD: simulator.password,
  // The simulator is local: the demo may ask faster than the real vendor allows.
  NIVODA_MAX_REQUESTS_PER_SECOND: '400',
  NIVODA_GLOBAL_REQUESTS_PER_SECOND: '400',
  NIVODA_MAX_CONCURRENCY: '8',
  SCHEDULER_DATA_DIR: dataDir,
  DATABASE_URL: '',
  AZURE_STORAGE_CONNECTION_STRING: '',
  AZURE_SERVICE_BUS_CONNECTION_STRING: '',
};
const out = (text: string) => process.stdout.write(`${text}\n`);

/** Runs the real command line; asynchronously, because the simulator answers from this process. */
async function scheduler(...args: string[]): Promise<void> {
  out(`\n$ scheduler ${args.join(' ')}`);
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src', 'index.ts'), ...args], {
    cwd: root,
    env,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (code !== 0) throw new Error(`scheduler ${args.join(' ')} exited with ${code}`);
}

/** The raw table against the simulator's exact inventory, as of the last completed run's window. */
async function reconcile(): Promise<boolean> {
  const db = await openDatabase({ backend: 'pglite', dir: path.join(dataDir, 'pglite') });
  try {
    const [last] = await db.query<{ updated_to: Date }>(
      `SELECT updated_to FROM run_metadata WHERE status = 'completed' ORDER BY started_at DESC LIMIT 1`,
    );
    if (!last) throw new Error('no run was completed');
    const rows = await db.query<{ supplier_stone_id: string; payload: { price: number; diamond: { updated: string } } }>(
      'SELECT supplier_stone_id, payload FROM raw_diamonds_nivoda',
    );
    const snapshot = simulator.snapshot();
    const until = last.updated_to.getTime();
    const expected = snapshot.stones().filter((s) => s.updatedMs <= until);
    const ingested = new Map(rows.map((r) => [r.supplier_stone_id, r.payload]));
    const missing = expected.filter((s) => !ingested.has(s.id)).length;
    const duplicated = rows.length - ingested.size;
    const stale = expected.filter((s) => {
      const row = ingested.get(s.id);
      return row !== undefined && (row.price !== s.priceCents || row.diamond.updated !== s.updated);
    }).length;
    const gone = [...ingested.keys()].filter((id) => snapshot.get(id) === undefined).length;
    out('\nThe raw table against the simulator’s exact inventory:');
    out(`  stones expected   ${expected.length.toLocaleString('en-US')}`);
    out(`  stones ingested   ${(ingested.size - gone).toLocaleString('en-US')}`);
    out(`  missing           ${missing}`);
    out(`  duplicated        ${duplicated}`);
    out(`  stale             ${stale}`);
    out(`  (removed by the vendor since the full run, kept in the raw table: ${gone})`);
    return missing === 0 && duplicated === 0 && stale === 0;
  } finally {
    await db.close();
  }
}

try {
  out(`Nivoda simulator at ${simulator.url} (realistic inventory, ${STONES.toLocaleString('en-US')} stones)`);
  await scheduler('plan');
  await scheduler('run');
  await scheduler('worker', '--concurrency', '4', '--idle-exit', '2');
  await scheduler('status');
  await scheduler('watermark', 'get');

  const changed = simulator.mutate({ reprice: 1200, touch: 400, remove: 300, add: 600 });
  out(
    `\nThe vendor changes its inventory: ${changed.repriced.length} repriced, ${changed.touched.length} updated, ` +
      `${changed.removed.length} removed, ${changed.added.length} added.`,
  );
  await scheduler('run');
  await scheduler('worker', '--concurrency', '4', '--idle-exit', '2');
  await scheduler('status');
  const exact = await reconcile();
  const stats = simulator.stats();
  out(`\nThe simulator answered ${stats.requests} requests (${stats.countQueries} count queries, ${stats.searchQueries} searches).`);
  if (!exact) process.exitCode = 1;
} finally {
  await simulator.close();
}
