// `npm run demo` is the first command a new user runs: it must keep working end to end, and
// again on the same checkout (it starts from an empty data directory each time).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

async function demo(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'tools', 'demo.ts')], {
    cwd: root,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stdout, stderr };
}

describe('demo', () => {
  it('runs the whole pipeline twice with zero setup: every stone ingested once, with its latest listing', async () => {
    for (let round = 1; round <= 2; round++) {
      const { code, stdout, stderr } = await demo();
      assert.equal(code, 0, `round ${round}: ${stderr}\n${stdout}`);
      assert.match(stdout, /120,000 stones → 24 partitions/);
      assert.match(stdout, /full\s+completed\s+24\s/);
      assert.match(stdout, /incremental\s+completed\s+\d+\s/);
      assert.match(stdout, /"lastRunId": "[0-9a-f-]{36}"/);
      assert.match(stdout, /stones expected\s+120,300\n\s+stones ingested\s+120,300\n\s+missing\s+0\n\s+duplicated\s+0\n\s+stale\s+0\n/);
    }
  });
});
