// A real second process for the lock tests. Usage:
//   node --import tsx test/helpers/lock-holder.ts db <databaseUrl> <ttlSeconds> <holder>
//   node --import tsx test/helpers/lock-holder.ts file <lockFile> - <holder>
// Tries once, prints one JSON line with the result on stdout. If it got the lock, it keeps it
// (renewing) until a line "release" arrives on stdin, then releases, prints {"released":true}
// and exits 0. A refused attempt exits 0 at once.
import { createInterface } from 'node:readline';
import { openDatabase } from '../../src/db/open.js';
import { acquireLock } from '../../src/lease.js';
import { acquireFileLock } from '../../src/lock-file.js';
import { createLogger } from '../../src/log.js';

const [mode, target, ttl, holder] = process.argv.slice(2);
if (!mode || !target || !ttl || !holder) throw new Error('usage: lock-holder.ts db|file <target> <ttl> <holder>');
const logger = createLogger({ level: 'warn', pretty: false });

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function untilReleaseRequested(): Promise<void> {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) if (line.trim() === 'release') break;
  lines.close();
}

/** Prints the outcome as a JSON line; when acquired, holds the lock until the parent asks for release. */
async function holdOrReport(
  result: { acquired: true; holder: string; since: string; release(): Promise<void> } | { acquired: false },
): Promise<void> {
  if (!result.acquired) return print(result);
  print({ acquired: true, holder: result.holder, since: result.since, pid: process.pid });
  await untilReleaseRequested();
  await result.release();
  print({ released: true });
}

if (mode === 'db') {
  const db = await openDatabase({ backend: 'postgres', url: target, poolMax: 2 }, { logger });
  await holdOrReport(await acquireLock(db, { holder, ttlSeconds: Number(ttl), logger }));
  await db.close();
} else if (mode === 'file') {
  await holdOrReport(await acquireFileLock(target, { holder, logger }));
} else {
  throw new Error(`unknown mode ${mode}`);
}
