// `npm run demo`: the scheduler end to end with zero setup. It starts the Nivoda simulator
// with a realistic inventory and runs the real command line against it, with the embedded
// database, the file watermark and the local queue under .data/demo.
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSimulator } from './simulator/server.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dataDir = path.join(root, '.data', 'demo');
rmSync(dataDir, { recursive: true, force: true });

const simulator = await startSimulator({ shape: 'realistic', seed: 1, latencyMs: 20 });
const env = {
  ...process.env,
  NIVODA_ENDPOINT: simulator.url,
  NIVODA_USERNAME: simulator.username,
  NIVODA_PASSWORD: simulator.password,
  NIVODA_MAX_REQUESTS_PER_SECOND: '25',
  SCHEDULER_DATA_DIR: dataDir,
  DATABASE_URL: '',
  AZURE_STORAGE_CONNECTION_STRING: '',
  AZURE_SERVICE_BUS_CONNECTION_STRING: '',
};

/** Runs the real command line; asynchronously, because the simulator answers from this process. */
async function scheduler(...args: string[]): Promise<void> {
  process.stdout.write(`\n$ scheduler ${args.join(' ')}\n`);
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

try {
  process.stdout.write(`Nivoda simulator at ${simulator.url} (realistic inventory)\n`);
  await scheduler('plan');
  await scheduler('run');
  await scheduler('status');
  await scheduler('queue', 'peek', '--limit', '3');
  // Stand in for the consolidator: the full run is done, so the watermark moves to a day ago.
  await scheduler('watermark', 'set', new Date(Date.now() - 24 * 3600_000).toISOString());
  await scheduler('run');
  await scheduler('status');
  const stats = simulator.stats();
  process.stdout.write(`\nThe simulator answered ${stats.requests} requests (${stats.countQueries} count queries).\n`);
} finally {
  await simulator.close();
}
