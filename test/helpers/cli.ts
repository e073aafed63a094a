// Runs the real command line as a child process, the way the Container Apps Job does,
// with an environment built from scratch so nothing leaks in from the developer's shell.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stderr parsed as the JSON log lines it must consist of. */
  logs: Array<Record<string, unknown>>;
}

export function runCli(
  args: string[],
  env: Record<string, string | undefined>,
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<CliResult> {
  // tsx by its resolved URL: a test may run the CLI from a directory of its own (a .env there).
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(root, 'src', 'index.ts'), ...args], {
    cwd: options.cwd ?? root,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, NODE_ENV: 'test', LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 90_000);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const logs = stderr
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line) => {
          try {
            return JSON.parse(line) as Record<string, unknown>;
          } catch {
            return { unparsable: line };
          }
        });
      resolve({ code, stdout, stderr, logs });
    });
  });
}
