// `npm run demo` is the first command a new user runs: it must keep working end to end.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('demo', () => {
  it('runs a full and then an incremental run against the simulator with zero setup', async () => {
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
    assert.equal(code, 0, stderr);
    assert.match(stdout, /437,849 stones → 30 partitions/);
    assert.match(stdout, /incremental\s+published\s+3\s/);
    assert.match(stdout, /full\s+published\s+30\s/);
    assert.match(stdout, /"messageId":"[0-9a-f-]{36}:partition-1"/);
  });
});
