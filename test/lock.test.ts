// The single-instance lock with real processes: the lease row on the real PostgreSQL server
// (refusal names the holder, release on exit, recovery after SIGKILL once the TTL passes,
// renewal, loss), and the embedded-mode lock file.
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Database } from '../src/db/database.js';
import { migrate } from '../src/db/migrate.js';
import { openDatabase } from '../src/db/open.js';
import { acquireLock, type LockResult } from '../src/lease.js';
import { acquireFileLock, embeddedLockFile } from '../src/lock-file.js';
import { captureLogs } from './helpers/logs.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

const HELPER = fileURLToPath(new URL('./helpers/lock-holder.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));

const children = new Set<ChildProcessWithoutNullStreams>();
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Holder {
  child: ChildProcessWithoutNullStreams;
  next(): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

/** Starts test/helpers/lock-holder.ts as a real process and reads its JSON lines. */
function startHolder(args: string[]): Holder {
  const child = spawn(process.execPath, ['--import', 'tsx', HELPER, ...args], { cwd: ROOT });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    child,
    exited,
    async next() {
      const timeout = sleep(30_000).then(() => {
        throw new Error(`lock holder sent no line within 30 s; stderr: ${stderr}`);
      });
      const line = await Promise.race([lines.next(), timeout]);
      if (line.done) throw new Error(`lock holder exited without a line; stderr: ${stderr}`);
      return JSON.parse(line.value) as Record<string, unknown>;
    },
  };
}

describe('lease lock on the real PostgreSQL server', () => {
  let target: TestDatabase;
  let db: Database;
  before(async () => {
    target = await createTestDatabase();
    cleanups.push(() => target.drop());
    db = await openDatabase({ backend: 'postgres', url: target.url, poolMax: 4 });
    cleanups.push(() => db.close());
    await migrate(db);
  });

  test('two processes: one gets it, the other is told who holds it and since when; released on exit', async () => {
    const first = startHolder(['db', target.url, '30', 'host-a:111:run-a']);
    const got = await first.next();
    assert.equal(got.acquired, true);
    assert.equal(typeof got.since, 'string');

    const second = startHolder(['db', target.url, '30', 'host-b:222:run-b']);
    const refused = await second.next();
    assert.equal(refused.acquired, false);
    assert.equal(refused.holder, 'host-a:111:run-a');
    assert.equal(refused.since, got.since);
    assert.ok(Date.parse(String(refused.expiresAt)) > Date.now(), 'the lease is still running');
    assert.equal(await second.exited, 0, 'a refused instance exits normally');

    first.child.stdin.write('release\n');
    assert.deepEqual(await first.next(), { released: true });
    assert.equal(await first.exited, 0);

    // With a 30 s TTL, only the release (not expiry) can free it this quickly.
    const third = startHolder(['db', target.url, '30', 'host-c:333:run-c']);
    const next = await third.next();
    assert.equal(next.acquired, true);
    assert.equal(next.holder, 'host-c:333:run-c');
    third.child.stdin.write('release\n');
    assert.equal(await third.exited, 0);
    assert.equal((await db.query('SELECT * FROM scheduler_lock')).length, 0);
  });

  test('a killed holder keeps it until its TTL passes, then the next instance recovers it', async () => {
    const ttl = 2;
    const holder = startHolder(['db', target.url, String(ttl), 'host-k:444:run-k']);
    const got = await holder.next();
    assert.equal(got.acquired, true);
    holder.child.kill('SIGKILL');
    await holder.exited;

    const { logger, records } = captureLogs();
    const killedAt = Date.now();
    const early = await acquireLock(db, { holder: 'host-r:555:run-r', ttlSeconds: 30, logger });
    assert.equal(early.acquired, false, 'right after the crash the lease still runs');
    if (early.acquired) return;
    assert.equal(early.holder, 'host-k:444:run-k');

    let recovered: LockResult = early;
    while (!recovered.acquired) {
      assert.ok(Date.now() - killedAt < (ttl + 10) * 1000, 'recovered within the TTL plus a margin');
      await sleep(200);
      recovered = await acquireLock(db, { holder: 'host-r:555:run-r', ttlSeconds: 30, logger });
    }
    assert.ok(
      records().some((l) => l.previousHolder === 'host-k:444:run-k' && /expired scheduler lock/.test(String(l.msg))),
      'the take-over is logged with the crashed holder',
    );
    await recovered.release();
  });

  test('a running holder renews its lease beyond the TTL; a lost lease aborts its signal', async () => {
    const { logger } = captureLogs();
    // A 3 s lease renewed every second: a loaded 2-core machine may stall for a while without losing it.
    const held = await acquireLock(db, { holder: 'renewer', ttlSeconds: 3, logger });
    assert.ok(held.acquired);
    if (!held.acquired) return;
    await sleep(7000);
    const other = await acquireLock(db, { holder: 'other', ttlSeconds: 3, logger });
    if (other.acquired) await other.release(); // keep a failure here from cascading into the next test
    assert.equal(other.acquired, false, 'renewal kept the lease alive past 2 TTLs');
    assert.equal(held.signal.aborted, false);

    // Someone removes the row (an operator, or a take-over after a long pause): the holder must learn of it.
    await db.query('DELETE FROM scheduler_lock');
    const deadline = Date.now() + 5000;
    while (!held.signal.aborted && Date.now() < deadline) await sleep(100);
    assert.equal(held.signal.aborted, true);
    await held.release();
  });

  test('simultaneous acquirers on separate pools: exactly one wins', async () => {
    const { logger } = captureLogs();
    const pools = await Promise.all(Array.from({ length: 5 }, () => openDatabase({ backend: 'postgres', url: target.url, poolMax: 1 })));
    try {
      const results = await Promise.all(pools.map((p, i) => acquireLock(p, { holder: `racer-${i}`, ttlSeconds: 30, logger })));
      const winners = results.filter((r) => r.acquired);
      assert.equal(winners.length, 1);
      const winner = winners[0]!;
      for (const r of results) if (!r.acquired) assert.equal(r.holder, winner.holder);
      if (winner.acquired) await winner.release();
    } finally {
      await Promise.all(pools.map((p) => p.close()));
    }
  });
});

describe('embedded-mode lock file', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'lockfile-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
  });

  test('two processes: one gets it, the other is told who and since; released on exit', async () => {
    const file = embeddedLockFile(path.join(dir, 'one', 'pglite'));
    assert.equal(file, path.join(dir, 'one', 'pglite.lock'));
    const first = startHolder(['file', file, '-', 'host-a:1:run-a']);
    const got = await first.next();
    assert.equal(got.acquired, true);

    const second = startHolder(['file', file, '-', 'host-b:2:run-b']);
    const refused = await second.next();
    assert.equal(refused.acquired, false);
    assert.equal(refused.holder, 'host-a:1:run-a');
    assert.equal(refused.since, got.since);
    assert.equal(refused.pid, first.child.pid);
    assert.equal(await second.exited, 0);

    first.child.stdin.write('release\n');
    assert.equal(await first.exited, 0);
    assert.equal(existsSync(file), false, 'the lock file is gone after a normal exit');
  });

  test('a lock file left by a killed process is recovered; one from another host is not broken', async () => {
    const file = embeddedLockFile(path.join(dir, 'two', 'pglite'));
    const victim = startHolder(['file', file, '-', 'host-k:9:run-k']);
    assert.equal((await victim.next()).acquired, true);
    victim.child.kill('SIGKILL');
    await victim.exited;
    assert.equal(existsSync(file), true, 'SIGKILL leaves the file behind');

    const { logger, records } = captureLogs();
    const recovered = await acquireFileLock(file, { holder: 'recoverer', logger });
    assert.equal(recovered.acquired, true);
    assert.ok(records().some((l) => l.previousHolder === 'host-k:9:run-k'));
    assert.equal(JSON.parse(await readFile(file, 'utf8')).holder, 'recoverer');
    if (recovered.acquired) await recovered.release();
    assert.equal(existsSync(file), false);

    // A pid on another host cannot be checked from here, so its lock stands.
    const foreign = { holder: 'elsewhere', pid: 1, hostname: `not-${os.hostname()}`, since: '2024-01-01T00:00:00.000Z' };
    await writeFile(file, JSON.stringify(foreign));
    const refused = await acquireFileLock(file, { holder: 'me', logger });
    assert.equal(refused.acquired, false);
    if (!refused.acquired) assert.equal(refused.hostname, foreign.hostname);
  });
});
