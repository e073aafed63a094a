// The watermark-store port, one conformance suite run against both backends: the local file
// and Azure Blob (Azurite, test/helpers/azurite.ts), each store opened through the one factory
// (watermark/open.ts). What only one backend has (the blob's content type, leases and account
// errors; the file's content-hash etag, temporary files and atomic rename) is tested beside
// the suite, and the parser that both use is tested on its own first.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
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
import { forEachBackend, type Backend } from './helpers/conformance.js';

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

/** One watermark location nothing has written to yet: its container (blob container, directory) absent too. */
interface WatermarkTarget {
  /** Opened through openWatermarkStore, as the scheduler opens it. */
  store: WatermarkStore;
  /** What `store.location` and every error must say. */
  location: string;
  /** A second, independent store on the same location: another process, the consolidator. */
  sibling(): Promise<WatermarkStore>;
  /** Writes bytes behind the store's back (an operator's editor, a foreign writer), creating the container. */
  writeRaw(content: string | Buffer): Promise<void>;
  readRaw(): Promise<Buffer>;
  containerExists(): Promise<boolean>;
  createContainer(): Promise<void>;
}

interface WatermarkFixture {
  /** The class openWatermarkStore must choose for this backend's configuration. */
  storeClass: typeof BlobWatermarkStore | typeof FileWatermarkStore;
  fresh(): Promise<WatermarkTarget>;
  close(): Promise<void>;
}

interface BlobFixture extends WatermarkFixture {
  azurite: Azurite;
  fresh(): Promise<WatermarkTarget & { container: ContainerClient }>;
}

interface FileFixture extends WatermarkFixture {
  fresh(): Promise<WatermarkTarget & { file: string }>;
}

const blob: Backend<BlobFixture> = {
  name: 'Azure Blob (Azurite)',
  async open() {
    const azurite = await startAzurite();
    const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
    let containers = 0;
    return {
      storeClass: BlobWatermarkStore,
      azurite,
      // A fresh container name per target, so tests never see each other's watermarks.
      async fresh() {
        const config = {
          backend: 'blob',
          connectionString: azurite.connectionString,
          container: `wm-test-${++containers}`,
          blob: 'nivoda.json',
        } as const;
        const container = service.getContainerClient(config.container);
        const blockBlob = container.getBlockBlobClient(config.blob);
        return {
          store: await openWatermarkStore(config),
          location: `blob ${config.container}/${config.blob}`,
          container,
          sibling: () => openWatermarkStore(config),
          async writeRaw(content) {
            await container.createIfNotExists();
            await blockBlob.upload(content, Buffer.byteLength(content));
          },
          readRaw: () => blockBlob.downloadToBuffer(),
          containerExists: () => container.exists(),
          createContainer: async () => void (await container.create()),
        };
      },
      close: () => azurite.stop(),
    };
  },
  close: (fixture) => fixture.close(),
};

const file: Backend<FileFixture> = {
  name: 'file',
  async open() {
    const dir = await mkdtemp(path.join(tmpdir(), 'watermark-test-'));
    let files = 0;
    return {
      storeClass: FileWatermarkStore,
      // In a directory of its own that does not exist yet, as on a fresh SCHEDULER_DATA_DIR.
      async fresh() {
        const file = path.join(dir, `case-${++files}`, 'watermarks', 'nivoda.json');
        const config = { backend: 'file', path: file } as const;
        return {
          store: await openWatermarkStore(config),
          location: file,
          file,
          sibling: () => openWatermarkStore(config),
          async writeRaw(content) {
            await mkdir(path.dirname(file), { recursive: true });
            await writeFile(file, content);
          },
          readRaw: () => readFile(file),
          containerExists: async () => existsSync(path.dirname(file)),
          createContainer: async () => void (await mkdir(path.dirname(file), { recursive: true })),
        };
      },
      close: () => rm(dir, { recursive: true, force: true }),
    };
  },
  close: (fixture) => fixture.close(),
};

forEachBackend<WatermarkFixture>('watermark port', [file, blob], (suite) => {
  suite.test('openWatermarkStore picks the backend from the configuration; it names its location', async (fixture) => {
    const { store, location } = await fixture.fresh();
    assert.ok(store instanceof fixture.storeClass, `a ${fixture.storeClass.name}`);
    assert.equal(store.location, location);
    await store.write(FULL);
    assert.deepEqual((await store.read())?.watermark, FULL);
  });

  suite.test('round trip: reads back the same document and etag it wrote; the stored text is that document', async (fixture) => {
    const { store, readRaw } = await fixture.fresh();
    const written = await store.write(FULL);
    assert.deepEqual(written.watermark, FULL);
    assert.deepEqual(await store.read(), { watermark: FULL, etag: written.etag });
    assert.deepEqual(JSON.parse((await readRaw()).toString('utf8')), FULL);
  });

  suite.test('a missing watermark (and container) reads as null and clears as false, and neither creates anything', async (fixture) => {
    const { store, containerExists, createContainer } = await fixture.fresh();
    assert.equal(await store.read(), null);
    assert.equal(await containerExists(), false, 'read must not create the container');
    assert.equal(await store.clear(), false, 'nothing to clear in a missing container');
    assert.equal(await containerExists(), false, 'clear must not create the container');
    await createContainer();
    assert.equal(await store.read(), null);
  });

  suite.test('a plain write creates the container, then replaces the existing watermark', async (fixture) => {
    const { store, containerExists } = await fixture.fresh();
    const first = await store.write(FULL);
    assert.equal(await containerExists(), true);
    const second = await store.write(LATER);
    assert.notEqual(second.etag, first.etag);
    assert.deepEqual((await store.read())?.watermark, LATER);
  });

  suite.test('malformed content is a WatermarkFormatError naming the location and the problem, never null', async (fixture) => {
    const { store, location, writeRaw } = await fixture.fresh();
    for (const [name, text, problem] of MALFORMED) {
      await writeRaw(text);
      await rejectsAsMalformed(store.read(), location, problem).catch((err: unknown) => {
        throw new Error(`case "${name}": ${String(err)}`);
      });
    }
    await writeRaw(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
    await rejectsAsMalformed(store.read(), location, /not UTF-8/);
  });

  suite.test('a stale etag conflicts, naming the location, and leaves the stored value unchanged', async (fixture) => {
    const { store, location } = await fixture.fresh();
    const first = await store.write(FULL);
    const second = await store.write(LATER, { ifMatch: first.etag });
    await assert.rejects(store.write(OPERATOR, { ifMatch: first.etag }), (err: unknown) => {
      assert.ok(err instanceof WatermarkConflictError, String(err));
      assert.ok(err.message.includes(location), err.message);
      return true;
    });
    assert.deepEqual(await store.read(), { watermark: LATER, etag: second.etag });
  });

  suite.test("an operator's set racing a consolidator fails instead of overwriting the consolidator's value", async (fixture) => {
    const { store, sibling } = await fixture.fresh();
    await store.write(FULL);
    const seenByOperator = await store.read();
    // The consolidator advances the watermark through its own store between the operator's read and write.
    const consolidator = await sibling();
    await consolidator.write(LATER, unchangedSince(await consolidator.read()));
    await assert.rejects(store.write(OPERATOR, unchangedSince(seenByOperator)), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, LATER);
  });

  suite.test("a change made behind the store's back makes conditional writes and clears conflict and changes nothing", async (fixture) => {
    const { store, location, writeRaw } = await fixture.fresh();
    const first = await store.write(FULL, { ifNoneMatch: '*' });
    await assert.rejects(store.write(LATER, { ifNoneMatch: '*' }), WatermarkConflictError);
    // Someone else (another process, an editor, a portal upload) changes the document.
    await writeRaw(JSON.stringify(LATER));
    await assert.rejects(store.write(OPERATOR, { ifMatch: first.etag }), (err: unknown) => {
      assert.ok(err instanceof WatermarkConflictError);
      assert.ok(err.message.includes(location));
      return true;
    });
    await assert.rejects(store.clear({ ifMatch: first.etag }), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, LATER);
    const current = await store.read();
    assert.equal(await store.clear(unchangedSince(current)), true);
    await assert.rejects(store.write(FULL, { ifMatch: first.etag }), WatermarkConflictError, 'ifMatch on a missing watermark');
    assert.equal(await store.read(), null);
  });

  suite.test('create-only (ifNoneMatch *) conflicts when a watermark exists, and ifMatch conflicts when none does', async (fixture) => {
    const { store } = await fixture.fresh();
    const created = await store.write(FULL, unchangedSince(null));
    await assert.rejects(store.write(LATER, { ifNoneMatch: '*' }), WatermarkConflictError);
    assert.deepEqual((await store.read())?.watermark, FULL);
    await store.clear();
    await assert.rejects(store.write(LATER, { ifMatch: created.etag }), WatermarkConflictError);
    assert.equal(await store.read(), null);
    const { store: empty } = await fixture.fresh();
    await assert.rejects(empty.write(LATER, { ifMatch: created.etag }), WatermarkConflictError, 'missing container');
  });

  suite.test('clear deletes, reports whether there was anything, and honours ifMatch', async (fixture) => {
    const { store } = await fixture.fresh();
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

  suite.test('two writers racing with the same expected etag: exactly one wins, and its document is the one stored', async (fixture) => {
    const { store, sibling } = await fixture.fresh();
    const other = await sibling();
    const base = await store.write(FULL);
    const contenders = [LATER, OPERATOR];
    const results = await Promise.allSettled([
      store.write(contenders[0]!, { ifMatch: base.etag }),
      other.write(contenders[1]!, { ifMatch: base.etag }),
    ]);
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [{ index: i, stored: r.value }] : []));
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    assert.ok(lost[0]?.reason instanceof WatermarkConflictError, String(lost[0]?.reason));
    assert.deepEqual(await store.read(), { watermark: contenders[won[0]!.index], etag: won[0]!.stored.etag });
  });

  suite.test('refuses to write an invalid watermark and leaves the stored one alone', async (fixture) => {
    const { store } = await fixture.fresh();
    await store.write(FULL);
    await assert.rejects(store.write({ lastUpdatedAt: 'tomorrow' }), (err: unknown) => {
      assert.ok(err instanceof PermanentError);
      assert.match(err.message, /lastUpdatedAt must be/);
      return true;
    });
    assert.deepEqual((await store.read())?.watermark, FULL);
  });
});

forEachBackend<BlobFixture>('blob store only', [blob], (suite) => {
  suite.test('the blob is written as application/json, with the etag the store reports', async (fixture) => {
    const { store, container } = await fixture.fresh();
    const written = await store.write(FULL);
    const properties = await container.getBlobClient('nivoda.json').getProperties();
    assert.equal(properties.contentType, 'application/json');
    assert.equal(properties.etag, written.etag);
  });

  suite.test('a blob leased by another writer is a conflict for plain writes and clears, not an overwrite', async (fixture) => {
    const { store, container } = await fixture.fresh();
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

  suite.test('a rejected account key is a PermanentError that does not contain the key', async ({ azurite }) => {
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

  suite.test('an unreachable endpoint is a TransientError that does not contain the connection string', async ({ azurite }) => {
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
});

describe('file store only', () => {
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

  it('the etag follows the content: equal for an identical rewrite, different for a change', async () => {
    const store = new FileWatermarkStore(freshPath());
    const a = await store.write(FULL);
    const b = await store.write(FULL);
    const c = await store.write(LATER);
    assert.equal(a.etag, b.etag);
    assert.notEqual(b.etag, c.etag);
  });

  it('a refused conditional write leaves no temporary file', async () => {
    const file = freshPath();
    const store = new FileWatermarkStore(file);
    const first = await store.write(FULL, { ifNoneMatch: '*' });
    await assert.rejects(store.write(LATER, { ifNoneMatch: '*' }), WatermarkConflictError);
    assert.deepEqual(await readdir(path.dirname(file)), ['nivoda.json'], 'a refused create-only write leaves no temporary file');
    assert.equal(await store.clear(), true);
    await assert.rejects(store.write(FULL, { ifMatch: first.etag }), WatermarkConflictError, 'ifMatch on a missing file');
    assert.equal(await store.read(), null);
    assert.deepEqual(await readdir(path.dirname(file)), [], 'a refused write leaves no temporary file');
  });

  it('two writers with the same expected etag in one process are served in turn: the first in line wins', async () => {
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
