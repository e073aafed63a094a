import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { PermanentError, TransientError, WatermarkConflictError, WatermarkFormatError } from '../src/errors.js';
import { BlobWatermarkStore } from '../src/watermark/blob-store.js';
import { FileWatermarkStore } from '../src/watermark/file-store.js';
import { openWatermarkStore } from '../src/watermark/open.js';
import { parseWatermark, unchangedSince, watermarkProblems, type WatermarkStore } from '../src/watermark.js';
import { AZURITE_KEY, startAzurite, type Azurite } from './helpers/azurite.js';

const FULL = { lastUpdatedAt: '2024-01-15T02:00:00.000Z', lastRunId: 'abc-123-def', lastRunCompletedAt: '2024-01-15T02:45:00.000Z' };
const LATER = { lastUpdatedAt: '2024-01-16T02:00:00.000Z', lastRunId: 'run-2', lastRunCompletedAt: '2024-01-16T02:40:00.000Z' };
const OPERATOR = { lastUpdatedAt: '2024-01-10T00:00:00.000Z' };

/** Asserts that `promise` rejects with a WatermarkFormatError at `location` whose message matches `problem`. */
async function rejectsAsMalformed(promise: Promise<unknown>, location: string, problem: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof WatermarkFormatError, `expected WatermarkFormatError, got ${String(err)}`);
    assert.equal(err.location, location);
    assert.ok(err.message.includes(location), `location missing from: ${err.message}`);
    assert.match(err.message, problem);
    return true;
  });
}

/** The contract's malformed shapes, each with the words its error must contain. */
const MALFORMED: [string, string, RegExp][] = [
  ['bad JSON', '{"lastUpdatedAt": "2024-01-15T02:00:00.000Z"', /not valid JSON/],
  ['empty document', '   \n', /empty/],
  ['not an object', '["2024-01-15T02:00:00.000Z"]', /must be a JSON object \(got an array\)/],
  ['missing lastUpdatedAt', '{"lastRunId": "abc"}', /lastUpdatedAt is required/],
  ['lastUpdatedAt not a date', '{"lastUpdatedAt": "yesterday"}', /lastUpdatedAt must be an ISO-8601 date-time.*"yesterday"/],
  ['lastUpdatedAt impossible date', '{"lastUpdatedAt": "2023-02-29T00:00:00Z"}', /lastUpdatedAt must be an ISO-8601/],
  ['lastUpdatedAt a number', '{"lastUpdatedAt": 1705284000000}', /lastUpdatedAt must be an ISO-8601/],
  ['invalid lastRunCompletedAt', '{"lastUpdatedAt": "2024-01-15T02:00:00Z", "lastRunCompletedAt": "soon"}', /lastRunCompletedAt must be/],
  ['empty lastRunId', '{"lastUpdatedAt": "2024-01-15T02:00:00Z", "lastRunId": ""}', /lastRunId must not be empty/],
];

describe('parseWatermark', () => {
  it('accepts the CONTRACT §4 example and keeps exactly its fields', () => {
    assert.deepEqual(parseWatermark(JSON.stringify(FULL), 'here'), FULL);
  });

  it('accepts a document with only lastUpdatedAt, a time-zone offset, and unknown extra fields (dropped)', () => {
    const parsed = parseWatermark('\uFEFF{"lastUpdatedAt": "2024-01-15T03:00:00+01:00", "addedByConsolidator": 7}', 'here');
    assert.deepEqual(parsed, { lastUpdatedAt: '2024-01-15T03:00:00+01:00' });
  });

  it('rejects a date-time without a time zone, which would be read differently on every host', () => {
    assert.throws(() => parseWatermark('{"lastUpdatedAt": "2024-01-15T02:00:00"}', 'here'), WatermarkFormatError);
  });

  it('names every problem at once', () => {
    const problems = watermarkProblems({ lastRunId: 5, lastRunCompletedAt: 'x' });
    assert.equal(problems.length, 3, problems.join('; '));
  });

  for (const [name, text, problem] of MALFORMED) {
    it(`rejects ${name}`, () => {
      assert.throws(
        () => parseWatermark(text, 'blob watermarks/nivoda.json'),
        (err: unknown) => {
          assert.ok(err instanceof WatermarkFormatError);
          assert.match(err.message, /^watermark at blob watermarks\/nivoda\.json is malformed: /);
          assert.match(err.message, problem);
          return true;
        },
      );
    });
  }
});

describe('blob watermark store (Azurite)', () => {
  let azurite: Azurite;
  let service: BlobServiceClient;
  let containers = 0;

  before(async () => {
    azurite = await startAzurite();
    service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  });
  after(async () => {
    await azurite?.stop();
  });

  /** A fresh container name per test, so tests never see each other's watermarks. */
  function fresh(): { store: BlobWatermarkStore; container: ContainerClient } {
    const name = `wm-test-${++containers}`;
    const store = BlobWatermarkStore.fromConfig({
      backend: 'blob',
      connectionString: azurite.connectionString,
      container: name,
      blob: 'nivoda.json',
    });
    return { store, container: service.getContainerClient(name) };
  }

  it('round trip: writes the document as application/json and reads back the same document and etag', async () => {
    const { store, container } = fresh();
    assert.equal(store.location, `blob ${container.containerName}/nivoda.json`);
    const written = await store.write(FULL);
    assert.deepEqual(written.watermark, FULL);
    const read = await store.read();
    assert.deepEqual(read, { watermark: FULL, etag: written.etag });
    const properties = await container.getBlobClient('nivoda.json').getProperties();
    assert.equal(properties.contentType, 'application/json');
    assert.equal(properties.etag, written.etag);
    const raw = (await container.getBlobClient('nivoda.json').downloadToBuffer()).toString('utf8');
    assert.deepEqual(JSON.parse(raw), FULL);
  });

  it('a missing blob or container reads as null, and reading creates nothing', async () => {
    const { store, container } = fresh();
    assert.equal(await store.read(), null);
    assert.equal(await container.exists(), false, 'read must not create the container');
    await container.create();
    assert.equal(await store.read(), null);
  });

  it('a plain write creates the container, then replaces the existing watermark', async () => {
    const { store, container } = fresh();
    const first = await store.write(FULL);
    assert.equal(await container.exists(), true);
    const second = await store.write(LATER);
    assert.notEqual(second.etag, first.etag);
    assert.deepEqual((await store.read())?.watermark, LATER);
  });

  it('malformed content is a WatermarkFormatError naming the blob and the problem, never null', async () => {
    const { store, container } = fresh();
    await container.create();
    const blob = container.getBlockBlobClient('nivoda.json');
    for (const [name, text, problem] of MALFORMED) {
      await blob.upload(text, Buffer.byteLength(text));
      await rejectsAsMalformed(store.read(), store.location, problem).catch((err: unknown) => {
        throw new Error(`case "${name}": ${String(err)}`);
      });
    }
    const notUtf8 = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
    await blob.upload(notUtf8, notUtf8.length);
    await rejectsAsMalformed(store.read(), store.location, /not UTF-8/);
  });

  it('a stale etag conflicts and leaves the stored value unchanged', async () => {
    const { store } = fresh();
    const first = await store.write(FULL);
    const second = await store.write(LATER, { ifMatch: first.etag });
    await assert.rejects(store.write(OPERATOR, { ifMatch: first.etag }), (err: unknown) => {
      assert.ok(err instanceof WatermarkConflictError, String(err));
      assert.match(err.message, /blob wm-test-\d+\/nivoda\.json/);
      return true;
    });
    assert.deepEqual(await store.read(), { watermark: LATER, etag: second.etag });
  });

  it("an operator's set racing a consolidator fails instead of overwriting the consolidator's value", async () => {
    const { store, container } = fresh();
    await store.write(FULL);
    const seenByOperator = await store.read();
    // The consolidator advances the watermark through its own client between the operator's read and write.
    const consolidator = BlobWatermarkStore.fromConfig({
      backend: 'blob',
      connectionString: azurite.connectionString,
      container: container.containerName,
      blob: 'nivoda.json',
    });
    await consolidator.write(LATER, unchangedSince(await consolidator.read()));
    await assert.rejects(store.write(OPERATOR, unchangedSince(seenByOperator)), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, LATER);
  });

  it('create-only (ifNoneMatch *) conflicts when a watermark exists, and ifMatch conflicts when none does', async () => {
    const { store } = fresh();
    const created = await store.write(FULL, unchangedSince(null));
    await assert.rejects(store.write(LATER, { ifNoneMatch: '*' }), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, FULL);
    await store.clear();
    await assert.rejects(store.write(LATER, { ifMatch: created.etag }), WatermarkConflictError);
    assert.equal(await store.read(), null);
    const { store: empty } = fresh();
    await assert.rejects(empty.write(LATER, { ifMatch: created.etag }), WatermarkConflictError, 'missing container');
  });

  it('a blob leased by another writer is a conflict for plain writes and clears, not an overwrite', async () => {
    const { store, container } = fresh();
    await store.write(FULL);
    const lease = container.getBlockBlobClient('nivoda.json').getBlobLeaseClient();
    await lease.acquireLease(15);
    try {
      await assert.rejects(store.write(LATER), /holds a lease/);
      await assert.rejects(store.clear(), WatermarkConflictError);
    } finally {
      await lease.releaseLease();
    }
    assert.deepEqual((await store.read())?.watermark, FULL);
  });

  it('clear deletes, reports whether there was anything, and honours ifMatch', async () => {
    const { store } = fresh();
    assert.equal(await store.clear(), false, 'nothing to clear in a missing container');
    const first = await store.write(FULL);
    const second = await store.write(LATER);
    await assert.rejects(store.clear({ ifMatch: first.etag }), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, LATER);
    assert.equal(await store.clear({ ifMatch: second.etag }), true);
    assert.equal(await store.read(), null);
    assert.equal(await store.clear(), false);
    await assert.rejects(store.clear({ ifMatch: second.etag }), WatermarkConflictError);
  });

  it('refuses to write an invalid watermark and leaves the stored one alone', async () => {
    const { store } = fresh();
    await store.write(FULL);
    await assert.rejects(store.write({ lastUpdatedAt: 'tomorrow' }), (err: unknown) => {
      assert.ok(err instanceof PermanentError);
      assert.match(err.message, /lastUpdatedAt must be/);
      return true;
    });
    assert.deepEqual((await store.read())?.watermark, FULL);
  });

  it('a rejected account key is a PermanentError that does not contain the key', async () => {
    const wrongKey = Buffer.from('not-the-azurite-key-but-64-bytes-long-enough-to-look-real!!!!!!').toString('base64');
    const connectionString = azurite.connectionString.replace(AZURITE_KEY, wrongKey);
    const store = BlobWatermarkStore.fromConfig({ backend: 'blob', connectionString, container: 'wm-auth', blob: 'nivoda.json' });
    for (const attempt of [store.read(), store.write(FULL)]) {
      await assert.rejects(attempt, (err: unknown) => {
        assert.ok(err instanceof PermanentError && !(err instanceof WatermarkFormatError), String(err));
        assert.match(err.message, /^watermark blob wm-auth\/nivoda\.json: 403 AuthorizationFailure/);
        assert.ok(!err.message.includes(wrongKey), err.message);
        assert.equal(err.cause, undefined, 'the SDK error (with its request) must not ride along');
        return true;
      });
    }
  });

  it('an unreachable endpoint is a TransientError that does not contain the connection string', async () => {
    const port = await closedPort();
    const connectionString = azurite.connectionString.replace(String(azurite.port), String(port));
    const store = BlobWatermarkStore.fromConfig(
      { backend: 'blob', connectionString, container: 'watermarks', blob: 'nivoda.json' },
      { retryOptions: { maxTries: 1 } },
    );
    await assert.rejects(store.read(), (err: unknown) => {
      assert.ok(err instanceof TransientError, String(err));
      assert.match(err.message, /^watermark blob watermarks\/nivoda\.json: /);
      assert.ok(!err.message.includes(AZURITE_KEY), err.message);
      return true;
    });
  });

  it('openWatermarkStore picks the blob backend from the configuration', async () => {
    const store: WatermarkStore = await openWatermarkStore({
      backend: 'blob',
      connectionString: azurite.connectionString,
      container: 'wm-factory',
      blob: 'nivoda.json',
    });
    assert.ok(store instanceof BlobWatermarkStore);
    assert.equal(store.location, 'blob wm-factory/nivoda.json');
    await store.write(FULL);
    assert.deepEqual((await store.read())?.watermark, FULL);
  });
});

describe('file watermark store', () => {
  let dir: string;
  let files = 0;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'watermark-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A watermark path in a directory of its own that does not exist yet, as on a fresh SCHEDULER_DATA_DIR. */
  function freshPath(): string {
    return path.join(dir, `case-${++files}`, 'watermarks', 'nivoda.json');
  }

  it('openWatermarkStore picks the file backend; round trip through the file', async () => {
    const file = freshPath();
    const store = await openWatermarkStore({ backend: 'file', path: file });
    assert.ok(store instanceof FileWatermarkStore);
    assert.equal(store.location, file);
    const written = await store.write(FULL);
    assert.deepEqual(await store.read(), { watermark: FULL, etag: written.etag });
    assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), FULL);
  });

  it('a missing file (and directory) reads as null; clear reports false', async () => {
    const store = new FileWatermarkStore(freshPath());
    assert.equal(await store.read(), null);
    assert.equal(await store.clear(), false);
  });

  it('malformed content is a WatermarkFormatError naming the file and the problem', async () => {
    const file = freshPath();
    const store = new FileWatermarkStore(file);
    await store.write(FULL);
    for (const [name, text, problem] of MALFORMED) {
      await writeFile(file, text);
      await rejectsAsMalformed(store.read(), file, problem).catch((err: unknown) => {
        throw new Error(`case "${name}": ${String(err)}`);
      });
    }
  });

  it('the etag follows the content: equal for an identical rewrite, different for a change', async () => {
    const store = new FileWatermarkStore(freshPath());
    const a = await store.write(FULL);
    const b = await store.write(FULL);
    const c = await store.write(LATER);
    assert.equal(a.etag, b.etag);
    assert.notEqual(b.etag, c.etag);
  });

  it('conditional writes and clears: a stale etag or a broken create-only expectation conflicts and changes nothing', async () => {
    const file = freshPath();
    const store = new FileWatermarkStore(file);
    const first = await store.write(FULL, { ifNoneMatch: '*' });
    await assert.rejects(store.write(LATER, { ifNoneMatch: '*' }), WatermarkConflictError);
    // Someone else (another process, an editor) changes the file behind the store's back.
    await writeFile(file, JSON.stringify(LATER));
    await assert.rejects(store.write(OPERATOR, { ifMatch: first.etag }), (err: unknown) => {
      assert.ok(err instanceof WatermarkConflictError);
      assert.ok(err.message.includes(file));
      return true;
    });
    await assert.rejects(store.clear({ ifMatch: first.etag }), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, LATER);
    const current = await store.read();
    assert.equal(await store.clear(unchangedSince(current)), true);
    await assert.rejects(store.write(FULL, { ifMatch: first.etag }), WatermarkConflictError, 'ifMatch on a missing file');
    assert.equal(await store.read(), null);
    assert.deepEqual(await readdir(path.dirname(file)), [], 'a refused write leaves no temporary file');
  });

  it('two writers with the same expected etag in one process: exactly one wins', async () => {
    const store = new FileWatermarkStore(freshPath());
    const base = await store.write(FULL);
    const results = await Promise.allSettled([store.write(LATER, { ifMatch: base.etag }), store.write(OPERATOR, { ifMatch: base.etag })]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    assert.ok(lost[0]?.reason instanceof WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, LATER, 'the first writer in line wins');
  });

  it('atomic replace: a concurrent reader never sees a missing or partial document, and no temporary file is left', async () => {
    const file = freshPath();
    const store = new FileWatermarkStore(file);
    await store.write(FULL);
    // A reader on another thread, so its reads truly overlap the writes at the file-system level.
    const stop = new Int32Array(new SharedArrayBuffer(4));
    const reader = new Worker(
      `
      const { readFileSync } = require('node:fs');
      const { workerData, parentPort } = require('node:worker_threads');
      const stop = workerData.stop;
      let reads = 0, missing = 0, torn = 0, sample = '';
      while (Atomics.load(stop, 0) === 0) {
        let text;
        try { text = readFileSync(workerData.file, 'utf8'); } catch (e) { missing++; continue; }
        reads++;
        try {
          const doc = JSON.parse(text);
          // The padding length is encoded in the id, so a mix of two versions is detected too.
          const [, n, pad] = /^run-(\\d+)-(x*)$/.exec(doc.lastRunId ?? 'run-0-') ?? [];
          if (typeof doc.lastUpdatedAt !== 'string' || (n !== undefined && pad.length !== Number(n) % 97)) throw new Error('mixed');
        } catch (e) { torn++; sample = text; }
      }
      parentPort.postMessage({ reads, missing, torn, sample });
      `,
      { eval: true, workerData: { file, stop } },
    );
    const report = new Promise<{ reads: number; missing: number; torn: number; sample: string }>((resolve, reject) => {
      reader.once('message', resolve);
      reader.once('error', reject);
    });
    try {
      for (let n = 1; n <= 300; n++) {
        // Sizes vary from write to write, so a truncate-then-write writer would be caught.
        await store.write({
          lastUpdatedAt: new Date(Date.UTC(2024, 0, 1, 0, n)).toISOString(),
          lastRunId: `run-${n}-${'x'.repeat(n % 97)}`,
        });
      }
    } finally {
      Atomics.store(stop, 0, 1);
    }
    const { reads, missing, torn, sample } = await report;
    await reader.terminate();
    assert.ok(reads > 50, `the reader should have overlapped the writes (reads: ${reads})`);
    assert.equal(missing, 0, 'the file must never be absent during a replace');
    assert.equal(torn, 0, `partial document seen: ${JSON.stringify(sample)}`);
    assert.deepEqual((await store.read())?.watermark.lastRunId, `run-300-${'x'.repeat(300 % 97)}`);
    assert.deepEqual(await readdir(path.dirname(file)), ['nivoda.json']);
  });
});

/** A local port nothing listens on: bound by the OS, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(address !== null && typeof address === 'object');
  return address.port;
}
