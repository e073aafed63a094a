// What ships: `npm run build` puts only the scheduler into dist/, the production dependencies
// carry nothing the tools need, and the built CLI runs a whole local run with plain node.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { startSimulator } from '../tools/simulator/server.js';

const root = path.resolve(import.meta.dirname, '..');
const dist = path.join(root, 'dist');

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

describe('the build', () => {
  it('production dependencies hold no tool-only package', async () => {
    const pkg = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    for (const tool of ['graphql', 'azurite', 'rhea', 'tsx', 'typescript', 'fast-check']) {
      assert.equal(pkg.dependencies[tool], undefined, `${tool} must be a dev dependency`);
    }
    for (const version of Object.values(pkg.dependencies)) assert.match(version, /^\d+\.\d+\.\d+$/, 'exact pins');
  });

  it('dist/ holds only the scheduler, and the built CLI runs a local run with plain node', async (t) => {
    if (!existsSync(path.join(dist, 'index.js'))) {
      t.skip('dist/ is not built (npm run build; .ci/run builds before testing)');
      return;
    }
    const files = await filesUnder(dist);
    assert.ok(
      files.some((f) => f.endsWith(path.join('db', 'migrations', '001_initial.sql'))),
      'migrations ship with it',
    );
    for (const file of files.filter((f) => f.endsWith('.js'))) {
      const text = await readFile(file, 'utf8');
      assert.doesNotMatch(text, /from ['"](graphql|tsx|azurite|rhea)['"]|tools\/simulator/, `${path.relative(root, file)} imports a tool`);
    }
    assert.ok(!files.some((f) => f.includes(`${path.sep}simulator${path.sep}`) || f.endsWith('demo.js')), 'no simulator or demo in dist/');

    const sim = await startSimulator({ shape: 'realistic', seed: 3, size: 15_000 });
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'scheduler-build-'));
    try {
      const env = {
        PATH: process.env.PATH,
        NIVODA_ENDPOINT: sim.url,
        NIVODA_USERNAME: sim.username,
        NIVODA_PASSWORD: sim.password,
        SCHEDULER_DATA_DIR: dataDir,
        NODE_ENV: 'production',
        SCHEDULER_LOCAL: '1',
      };
      const run = promisify(execFile);
      await run(process.execPath, [path.join(dist, 'index.js'), 'run'], { env, cwd: dataDir });
      const { stdout } = await run(process.execPath, [path.join(dist, 'index.js'), 'status', '--json'], { env, cwd: dataDir });
      const [latest] = JSON.parse(stdout) as Array<{ status: string; expectedWorkers: number }>;
      assert.equal(latest?.status, 'published');
      assert.equal(latest?.expectedWorkers, 3);
    } finally {
      await sim.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
