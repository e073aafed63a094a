// Runs the real command line as a child process, the way the Container Apps Job does,
// with an environment built from scratch so nothing leaks in from the developer's shell.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Simulator } from '../../tools/simulator/server.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stderr parsed as the JSON log lines it must consist of. */
  logs: Array<Record<string, unknown>>;
}

/**
 * The NIVODA_* settings that point the command line at a simulator. The rate caps are raised
 * above their production defaults so that a test is not paced by a limit meant for the vendor.
 */
export function nivodaEnv(sim: Pick<Simulator, 'url' | 'username' | 'password'>): Record<string, string> {
  return {
    NIVODA_ENDPOINT: sim.url,
    NIVODA_USERNAME: sim.username,
    NIVODA_PASSWORD: sim.password,
    NIVODA_MAX_REQUESTS_PER_SECOND: '200',
    NIVODA_GLOBAL_REQUESTS_PER_SECOND: '200',
  };
}

/** Runs the command line to its end. */
export function runCli(
  args: string[],
  env: Record<string, string | undefined>,
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<CliResult> {
  return startCli(args, env, options).result;
}

export interface RunningCli {
  child: ChildProcess;
  /** Resolves with the first JSON log line that satisfies `predicate` (rejects if the process ends first). */
  waitForLog(predicate: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  result: Promise<CliResult>;
}

/** Like runCli, but hands over the running process, so a test can signal or kill it at a chosen moment. */
export function startCli(
  args: string[],
  env: Record<string, string | undefined>,
  options: { timeoutMs?: number; cwd?: string } = {},
): RunningCli {
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(root, 'src', 'index.ts'), ...args], {
    cwd: options.cwd ?? root,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, NODE_ENV: 'test', LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<{
    predicate: (line: Record<string, unknown>) => boolean;
    resolve: (line: Record<string, unknown>) => void;
    reject: (err: Error) => void;
  }> = [];
  let pending = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => {
    const text = chunk.toString();
    stderr += text;
    pending += text;
    const parts = pending.split('\n');
    pending = parts.pop() ?? '';
    for (const part of parts) {
      if (part.trim() === '') continue;
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(part) as Record<string, unknown>;
      } catch {
        line = { unparsable: part };
      }
      lines.push(line);
      for (const waiter of [...waiters]) {
        if (waiter.predicate(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 90_000);
  const result = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      for (const waiter of waiters.splice(0))
        waiter.reject(new Error(`the process ended (code ${code}) before the awaited log line:\n${stderr}`));
      resolve({ code, stdout, stderr, logs: lines });
    });
  });
  return {
    child,
    result,
    waitForLog(predicate) {
      const seen = lines.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => waiters.push({ predicate, resolve, reject }));
    },
  };
}
