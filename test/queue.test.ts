// The work-items queue port, one conformance suite run against every backend: the local queue
// (a table in the scheduler's database, on PGlite and on the real PostgreSQL server) and Azure
// Service Bus (the real @azure/service-bus SDK publishing to the in-process AMQP 1.0 peer of
// test/helpers/servicebus-peer.ts). What only one backend has (the SDK's batches, faults and
// errors; the local table's peek, logs and single transaction) is tested beside the suite.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import type { Config } from '../src/config.js';
import type { Database } from '../src/db/database.js';
import { migrate } from '../src/db/migrate.js';
import { openDatabase } from '../src/db/open.js';
import type { WorkItemMessage } from '../src/domain.js';
import { PermanentError, TransientError } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import { openQueue, type QueueDeps } from '../src/queue/open.js';
import { isLocalQueue, toEnvelope, type LocalWorkItemQueue, type WorkItemQueue } from '../src/queue/queue.js';
import { forEachBackend, runCleanups, type Backend } from './helpers/conformance.js';
import { captureLogs } from './helpers/logs.js';
import { createTestDatabase } from './helpers/postgres.js';
import {
  BATCH_MESSAGE_FORMAT,
  closedPort,
  startServiceBusPeer,
  type ReceivedMessage,
  type ServiceBusPeer,
} from './helpers/servicebus-peer.js';

const RUN_ID = '4f1c2a9e-8b7d-4c3e-9a1f-0d2e3b4c5a6f';

function workItems(count: number, runId = RUN_ID): WorkItemMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    runId,
    partitionId: `partition-${i + 1}`,
    priceMin: i * 100,
    priceMax: i === count - 1 ? 2147483647 : (i + 1) * 100,
    expectedRecords: 1000 + i,
    isIncremental: true,
    watermarkBefore: '2024-01-15T02:00:00.000Z',
    priceField: 'dollar_value',
    updatedFrom: '2024-01-15T01:45:00.000Z',
    updatedTo: '2024-01-16T02:00:00.000Z',
    partitionCount: count,
    query: {},
  }));
}

const messageIdOf = (item: WorkItemMessage): string => `${item.runId}:${item.partitionId}`;

// The Service Bus backend never touches the database; a value that fails loudly if it did.
const noDb = new Proxy({} as Database, {
  get(_target, prop) {
    throw new Error(`the Service Bus queue used the database (${String(prop)})`);
  },
});

function serviceBusConfig(connectionString: string, queueName = 'work-items'): Config['queue'] {
  return { backend: 'servicebus', connectionString, queueName };
}

/** Fast retries; the SDK makes one attempt per call so the outer retry is what is measured. */
function sbDeps(logger: Logger, extra: Partial<QueueDeps> = {}): QueueDeps {
  return {
    db: noDb,
    logger,
    retry: { attempts: 4, baseDelayMs: 5 },
    serviceBus: { maxRetries: 0, retryDelayInMs: 5, timeoutInMs: 5000 },
    ...extra,
  };
}

/** A work item as its consumer receives it: the CONTRACT §3 broker properties and the JSON body. */
type Delivered = Omit<ReceivedMessage, 'applicationProperties'> & { applicationProperties: unknown };

/** Every item delivered exactly once, in publish order, with the CONTRACT §3 envelope and its JSON body. */
function assertDelivered(delivered: Delivered[], items: WorkItemMessage[], queueName: string): void {
  assert.equal(delivered.length, items.length, 'messages delivered');
  assert.deepEqual(
    delivered.map((m) => m.messageId),
    items.map(messageIdOf),
    'each messageId once, in publish order',
  );
  const byId = new Map(delivered.map((m) => [m.messageId, m]));
  for (const item of items) {
    const got = byId.get(messageIdOf(item));
    assert.ok(got, `${item.partitionId} was delivered`);
    assert.equal(got.queue, queueName);
    assert.equal(got.subject, 'work-item');
    assert.equal(got.contentType, 'application/json');
    assert.deepEqual(got.applicationProperties, { runId: item.runId, partitionId: item.partitionId });
    assert.deepEqual(got.body, item);
  }
}

/** Every item arrived at the peer exactly once (no copy at all), with the CONTRACT §3 envelope and its JSON body. */
function assertExactlyOnce(peer: ServiceBusPeer, items: WorkItemMessage[]): void {
  assert.equal(peer.received.length, items.length, 'messages received');
  const byId = new Map(peer.received.map((m) => [m.messageId, m]));
  assert.equal(byId.size, items.length, 'distinct messageIds');
  for (const item of items) {
    const got = byId.get(messageIdOf(item));
    assert.ok(got, `${item.partitionId} was received`);
    assert.equal(got.queue, 'work-items');
    assert.equal(got.subject, 'work-item');
    assert.equal(got.contentType, 'application/json');
    assert.deepEqual(got.applicationProperties, { runId: item.runId, partitionId: item.partitionId });
    assert.deepEqual(got.body, item);
  }
}

async function withPeer(fn: (peer: ServiceBusPeer) => Promise<void>, options?: Parameters<typeof startServiceBusPeer>[0]): Promise<void> {
  const peer = await startServiceBusPeer(options);
  try {
    await fn(peer);
  } finally {
    await peer.close();
  }
}

/** One queue on an empty destination, for one test; closed when the test ends. */
interface QueueTarget {
  queue: WorkItemQueue;
  /** What a consumer receives: each messageId once (the broker's duplicate detection), in arrival order. */
  delivered(): Promise<Delivered[]>;
  /**
   * How many messages each group the backend accepted held, in order (a Service Bus batch, a
   * local transaction), re-sent copies included: their sum is everything that reached the backend.
   */
  acceptedGroups(): number[];
  /** The queue's log lines. */
  logs(): Array<Record<string, unknown>>;
}

interface QueueFixture {
  kind: WorkItemQueue['kind'];
  /** The destination's name as delivered messages carry it. */
  queueName: string;
  open(t: TestContext): Promise<QueueTarget>;
  close(): Promise<void>;
}

interface LocalQueueFixture extends QueueFixture {
  kind: 'local';
  db: Database;
  open(t: TestContext): Promise<QueueTarget & { queue: LocalWorkItemQueue }>;
}

const LOCAL_LOG = 'work items queued locally';

interface LocalRow extends Record<string, unknown> {
  message_id: string;
  subject: string;
  content_type: string;
  body: unknown;
  application_properties: unknown;
}

/** The local queue on `config`'s database, migrated once; each test starts from an empty table. */
function localBackend(name: string, database: () => Promise<{ config: Config['database']; remove: () => Promise<void> }>) {
  const backend: Backend<LocalQueueFixture> = {
    name,
    async open() {
      const cleanups: (() => Promise<unknown>)[] = [];
      try {
        const { config, remove } = await database();
        cleanups.push(remove);
        const db = await openDatabase(config);
        cleanups.push(() => db.close());
        await migrate(db);
        return {
          kind: 'local',
          queueName: 'local_work_items',
          db,
          async open(t) {
            await db.exec('DELETE FROM local_work_items');
            const { logger, records } = captureLogs();
            const queue = await openQueue({ backend: 'local' }, { db, logger });
            t.after(() => queue.close());
            assert.ok(isLocalQueue(queue), 'the local backend opens a local queue');
            return {
              queue,
              async delivered() {
                const rows = await db.query<LocalRow>(
                  `SELECT message_id, subject, content_type, body, application_properties
                     FROM local_work_items ORDER BY enqueued_at, seq`,
                );
                return rows.map((row) => ({
                  queue: 'local_work_items',
                  messageId: row.message_id,
                  subject: row.subject,
                  contentType: row.content_type,
                  applicationProperties: row.application_properties,
                  body: row.body,
                }));
              },
              // One transaction per publish; its log line counts the rows inserted and those dropped as duplicates.
              acceptedGroups: () =>
                records()
                  .filter((l) => l.msg === LOCAL_LOG)
                  .map((l) => Number(l.inserted) + Number(l.duplicates)),
              logs: records,
            };
          },
          close: () => runCleanups(cleanups),
        };
      } catch (err) {
        await runCleanups(cleanups);
        throw err;
      }
    },
    close: (fixture) => fixture.close(),
  };
  return backend;
}

const localPglite = localBackend('local queue on PGlite', async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'queue-test-'));
  return { config: { backend: 'pglite', dir: path.join(root, 'pglite') }, remove: () => rm(root, { recursive: true, force: true }) };
});

const localPostgres = localBackend('local queue on PostgreSQL', async () => {
  const target = await createTestDatabase();
  return { config: { backend: 'postgres', url: target.url, poolMax: 4 }, remove: () => target.drop() };
});

/**
 * Service Bus with duplicate detection on the queue (CONTRACT §3) drops a message whose
 * messageId it has already taken; the peer keeps every copy, so the consumer's view applies
 * that rule to what the peer received: the first copy of each messageId, in arrival order.
 */
function afterDuplicateDetection(received: ReceivedMessage[]): ReceivedMessage[] {
  const seen = new Set<string | undefined>();
  return received.filter((m) => !seen.has(m.messageId) && seen.add(m.messageId));
}

const serviceBus: Backend<QueueFixture> = {
  name: 'Service Bus peer',
  async open() {
    return {
      kind: 'servicebus',
      queueName: 'work-items',
      // A peer per test: each starts with nothing received and no fault armed.
      async open(t) {
        const peer = await startServiceBusPeer();
        const { logger, records } = captureLogs();
        const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger)).catch(async (err: unknown) => {
          await peer.close();
          throw err;
        });
        t.after(async () => {
          await queue.close();
          await peer.close();
        });
        return {
          queue,
          delivered: async () => afterDuplicateDetection(peer.received),
          acceptedGroups: () => peer.deliveries.filter((d) => d.outcome === 'accepted').map((d) => d.messages),
          logs: records,
        };
      },
      close: async () => {},
    };
  },
  close: (fixture) => fixture.close(),
};

const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0);

describe('toEnvelope', () => {
  test('builds the CONTRACT §3 broker properties from the work item', () => {
    const [item] = workItems(1) as [WorkItemMessage];
    assert.deepEqual(toEnvelope(item), {
      messageId: `${RUN_ID}:partition-1`,
      subject: 'work-item',
      contentType: 'application/json',
      applicationProperties: { runId: RUN_ID, partitionId: 'partition-1' },
      body: item,
    });
  });
});

forEachBackend<QueueFixture>('queue port', [localPglite, localPostgres, serviceBus], (suite) => {
  for (const count of [1, 30, 5000]) {
    suite.test(`publishes ${count} item(s): each delivered exactly once, in order, with the CONTRACT §3 envelope`, async (fixture, t) => {
      const { queue, delivered, acceptedGroups } = await fixture.open(t);
      assert.equal(queue.kind, fixture.kind);
      assert.equal(isLocalQueue(queue), fixture.kind === 'local');
      const items = workItems(count);
      assert.deepEqual(await queue.publish(items), { published: count });
      assertDelivered(await delivered(), items, fixture.queueName);
      assert.equal(sum(acceptedGroups()), count, 'no copy was sent');
    });
  }

  suite.test('progress hears of every accepted group as it is accepted: all items, in order, each once', async (fixture, t) => {
    const { queue, acceptedGroups } = await fixture.open(t);
    const items = workItems(5000);
    const reported: string[][] = [];
    const progress = {
      onSent: async (sent: WorkItemMessage[]) => {
        // Called once the group is accepted, before the next one is sent.
        assert.equal(acceptedGroups().length, reported.length + 1, 'reported right after its group was accepted');
        reported.push(sent.map((i) => i.partitionId));
      },
    };
    assert.deepEqual(await queue.publish(items, progress), { published: 5000 });
    assert.deepEqual(
      reported.map((group) => group.length),
      acceptedGroups(),
      'one report per accepted group, of its size',
    );
    assert.deepEqual(
      reported.flat(),
      items.map((i) => i.partitionId),
    );
  });

  suite.test('a re-publish of the same run/partitions reaches the backend and is dropped by messageId', async (fixture, t) => {
    const { queue, delivered, acceptedGroups } = await fixture.open(t);
    const items = workItems(1200);
    assert.deepEqual(await queue.publish(items), { published: 1200 });
    assert.deepEqual(await queue.publish(items), { published: 1200 });
    assert.equal(sum(acceptedGroups()), 2400, 'both publishes were accepted in full');
    assertDelivered(await delivered(), items, fixture.queueName);
  });

  suite.test('an empty publish sends nothing and reports no progress', async (fixture, t) => {
    const { queue, delivered, acceptedGroups } = await fixture.open(t);
    let reports = 0;
    assert.deepEqual(await queue.publish([], { onSent: async () => void reports++ }), { published: 0 });
    assert.equal(reports, 0);
    assert.deepEqual(acceptedGroups(), []);
    assert.deepEqual(await delivered(), []);
  });
});

describe('Service Bus only: the SDK on the wire, its faults and errors (against the AMQP peer)', () => {
  test('authorised through $cbs, every transfer a batch; 1 and 30 items in one transfer, 5,000 in several', async () => {
    for (const count of [1, 30, 5000]) {
      await withPeer(async (peer) => {
        const { logger } = captureLogs();
        const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger));
        try {
          const items = workItems(count);
          assert.deepEqual(await queue.publish(items), { published: count });
          assertExactlyOnce(peer, items);
          assert.ok(peer.cbsRequests >= 1, 'the SDK authorised through $cbs');
          assert.ok(peer.deliveries.every((d) => d.outcome === 'accepted' && d.format === BATCH_MESSAGE_FORMAT));
          if (count === 5000) {
            assert.ok(peer.deliveries.length > 1, `5,000 items span several batches (got ${peer.deliveries.length})`);
          } else {
            assert.equal(peer.deliveries.length, 1, `${count} item(s) in one batch`);
          }
        } finally {
          await queue.close();
        }
      });
    }
  });

  test('a full batch is sent and a new one started: small size limit, every item once', async () => {
    await withPeer(
      async (peer) => {
        const { logger } = captureLogs();
        const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger));
        try {
          const items = workItems(30);
          await queue.publish(items);
          assertExactlyOnce(peer, items);
          assert.ok(peer.deliveries.length >= 5, `30 items in 2 KB batches need several (got ${peer.deliveries.length})`);
          assert.equal(
            peer.deliveries.reduce((sum, d) => sum + d.messages, 0),
            30,
          );
        } finally {
          await queue.close();
        }
      },
      { maxMessageSize: 2048 },
    );
  });

  test('a message that does not fit an empty batch is a permanent error naming the partition', async () => {
    await withPeer(
      async (peer) => {
        const { logger, records: lines } = captureLogs();
        const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger));
        try {
          await assert.rejects(queue.publish(workItems(3)), (err: Error) => {
            assert.ok(err instanceof PermanentError, `PermanentError, got ${err.name}`);
            assert.match(err.message, /partition-1/);
            return true;
          });
          assert.equal(peer.deliveries.length, 0);
          assert.equal(lines().filter((l) => l.msg === 'publishing work items failed, retrying').length, 0, 'not retried');
        } finally {
          await queue.close();
        }
      },
      { maxMessageSize: 200 },
    );
  });

  test('two transient failures, then success: every item still exactly once', async () => {
    await withPeer(async (peer) => {
      const { logger, records: lines } = captureLogs();
      const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger));
      try {
        peer.rejectNext(2, 'com.microsoft:server-busy');
        const items = workItems(30);
        assert.deepEqual(await queue.publish(items), { published: 30 });
        assertExactlyOnce(peer, items);
        assert.deepEqual(
          peer.deliveries.map((d) => d.outcome),
          ['rejected', 'rejected', 'accepted'],
        );
        const retries = lines().filter((l) => l.msg === 'publishing work items failed, retrying');
        assert.deepEqual(
          retries.map((l) => [l.attempt, l.delayMs]),
          [
            [1, 5],
            [2, 10],
          ],
          'exponential backoff between attempts',
        );
        assert.match(String(retries[0]?.error), /ServiceBusy/);
      } finally {
        await queue.close();
      }
    });
  });

  test('a failure after some batches went through: the retry re-sends all, duplicates only of what was accepted', async () => {
    await withPeer(async (peer) => {
      const { logger } = captureLogs();
      const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger));
      try {
        peer.rejectNext(1, 'com.microsoft:server-busy', { skip: 1 });
        const items = workItems(5000);
        const reported: string[][] = [];
        const progress = { onSent: async (sent: WorkItemMessage[]) => void reported.push(sent.map((i) => i.partitionId)) };
        assert.deepEqual(await queue.publish(items, progress), { published: 5000 });
        const [firstBatch, failed] = peer.deliveries;
        // Progress names exactly what each accepted batch held, the first attempt's included.
        assert.deepEqual(
          reported.map((batch) => batch.length),
          peer.deliveries.filter((d) => d.outcome === 'accepted').map((d) => d.messages),
        );
        assert.deepEqual(
          reported[0],
          items.slice(0, firstBatch!.messages).map((i) => i.partitionId),
        );
        assert.equal(firstBatch?.outcome, 'accepted');
        assert.equal(failed?.outcome, 'rejected');
        // Attempt 1 delivered its first batch; attempt 2 delivered everything once more. Service Bus
        // duplicate detection drops those copies by messageId; the peer keeps them to show they are only those.
        assert.equal(peer.received.length, 5000 + firstBatch.messages);
        const counts = new Map<string | undefined, number>();
        for (const m of peer.received) counts.set(m.messageId, (counts.get(m.messageId) ?? 0) + 1);
        assert.equal(counts.size, 5000);
        const twice = items.slice(0, firstBatch.messages).map((i) => `${i.runId}:${i.partitionId}`);
        for (const [id, n] of counts) assert.equal(n, twice.includes(id ?? '') ? 2 : 1, `copies of ${id}`);
      } finally {
        await queue.close();
      }
    });
  });

  test('a failure that persists: error after 3 retries, naming the real cause (not the AggregateError)', async () => {
    await withPeer(async (peer) => {
      const { logger } = captureLogs();
      // The SDK retries once itself here, so each attempt ends in its AggregateError.
      const queue = await openQueue(
        serviceBusConfig(peer.connectionString()),
        sbDeps(logger, { serviceBus: { maxRetries: 1, retryDelayInMs: 5, timeoutInMs: 5000 } }),
      );
      try {
        peer.rejectNext(1000, 'com.microsoft:server-busy', {
          description: 'The request was terminated because the entity is being throttled',
        });
        await assert.rejects(queue.publish(workItems(5)), (err: Error) => {
          assert.ok(err instanceof TransientError, `TransientError, got ${err.name}`);
          assert.match(err.message, /after 4 attempts/);
          assert.match(err.message, /entity is being throttled/);
          assert.match(err.message, /ServiceBusy/);
          assert.doesNotMatch(err.message, /AggregateError/);
          assert.equal((err.cause as { code?: string }).code, 'ServiceBusy');
          return true;
        });
        assert.equal(peer.deliveries.length, 8, '4 attempts × 2 SDK tries');
        assert.equal(peer.received.length, 0);
      } finally {
        await queue.close();
      }
    });
  });

  test('an unknown queue is permanent: one attempt, the entity named', async () => {
    await withPeer(async (peer) => {
      const { logger, records: lines } = captureLogs();
      const queue = await openQueue(serviceBusConfig(peer.connectionString(), 'no-such-queue'), sbDeps(logger));
      try {
        await assert.rejects(queue.publish(workItems(2)), (err: Error) => {
          assert.ok(err instanceof PermanentError, `PermanentError, got ${err.name}`);
          assert.match(err.message, /no-such-queue/);
          assert.match(err.message, /MessagingEntityNotFound/);
          return true;
        });
        assert.equal(lines().filter((l) => l.msg === 'publishing work items failed, retrying').length, 0);
      } finally {
        await queue.close();
      }
    });
  });

  test('broker not listening: retried, then a clear error without the key', async () => {
    const port = await closedPort();
    const secret = 'Zm9vYmFyLXRlc3Qta2V5LTEyMzQ1Njc4OTA=';
    const connectionString = `Endpoint=sb://127.0.0.1:${port};SharedAccessKeyName=test;SharedAccessKey=${secret};UseDevelopmentEmulator=true`;
    const { logger, records: lines } = captureLogs();
    const queue = await openQueue(serviceBusConfig(connectionString), sbDeps(logger));
    try {
      await assert.rejects(queue.publish(workItems(3)), (err: Error) => {
        assert.ok(err instanceof TransientError, `TransientError, got ${err.name}`);
        assert.match(err.message, /cannot connect to the Service Bus namespace/);
        assert.match(err.message, /ECONNREFUSED/);
        assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
        assert.match(err.message, /after 4 attempts/);
        assert.ok(!err.message.includes(secret));
        return true;
      });
      const retries = lines().filter((l) => l.msg === 'publishing work items failed, retrying');
      assert.deepEqual(
        retries.map((l) => l.attempt),
        [1, 2, 3],
        'three retries after the first attempt',
      );
      assert.ok(!JSON.stringify(lines()).includes(secret), 'the key never reaches a log line');
    } finally {
      await queue.close();
    }
  });

  test('retries: 0 means a single attempt', async () => {
    const port = await closedPort();
    const { logger, records: lines } = captureLogs();
    const queue = await openQueue(
      serviceBusConfig(`Endpoint=sb://127.0.0.1:${port};SharedAccessKeyName=test;SharedAccessKey=k;UseDevelopmentEmulator=true`),
      sbDeps(logger, { retry: { attempts: 1, baseDelayMs: 5 } }),
    );
    try {
      await assert.rejects(queue.publish(workItems(1)), /after 1 attempts/);
      assert.equal(lines().filter((l) => l.msg === 'publishing work items failed, retrying').length, 0);
    } finally {
      await queue.close();
    }
  });
});

forEachBackend<LocalQueueFixture>('local queue only', [localPglite, localPostgres], (suite) => {
  suite.test('peek lists the queued work items oldest first, with their envelope and enqueue time', async (fixture, t) => {
    const { queue } = await fixture.open(t);
    const first = workItems(3, '00000000-0000-4000-8000-000000000001');
    const second = workItems(2, '00000000-0000-4000-8000-000000000002');
    assert.deepEqual(await queue.publish(first), { published: 3 });
    assert.deepEqual(await queue.publish(second), { published: 2 });

    const peeked = await queue.peek();
    assert.deepEqual(
      peeked.map((p) => p.messageId),
      [...first, ...second].map(messageIdOf),
    );
    const [head] = peeked;
    assert.ok(head);
    assert.equal(head.subject, 'work-item');
    assert.deepEqual(head.body, first[0]);
    assert.deepEqual(head.applicationProperties, { runId: first[0]?.runId, partitionId: 'partition-1' });
    assert.ok(!Number.isNaN(Date.parse(head.enqueuedAt)), `enqueuedAt is a timestamp: ${head.enqueuedAt}`);
    assert.deepEqual(
      (await queue.peek(2)).map((p) => p.messageId),
      peeked.slice(0, 2).map((p) => p.messageId),
    );
  });

  suite.test('each publish logs how many rows it inserted and how many it dropped as duplicates', async (fixture, t) => {
    const { queue, logs } = await fixture.open(t);
    const runId = '00000000-0000-4000-8000-000000000003';
    const items = workItems(1200, runId);
    await queue.publish(items);
    await queue.publish(items);
    const rows = await fixture.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM local_work_items WHERE application_properties->>'runId' = $1`,
      [runId],
    );
    assert.equal(rows[0]?.n, 1200);
    const logged = logs().filter((l) => l.msg === LOCAL_LOG);
    assert.deepEqual(
      logged.map((l) => [l.inserted, l.duplicates]),
      [
        [1200, 0],
        [0, 1200],
      ],
    );
  });

  suite.test('a failed publish queues nothing (one transaction)', async (fixture, t) => {
    const { queue } = await fixture.open(t);
    const runId = '00000000-0000-4000-8000-000000000004';
    const items = workItems(700, runId);
    // A body the table cannot hold (NUL in jsonb text) in the second chunk makes the publish fail midway.
    const bad = items[650] as WorkItemMessage;
    items[650] = { ...bad, watermarkBefore: 'bad\u0000value' };
    await assert.rejects(queue.publish(items));
    const rows = await fixture.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM local_work_items WHERE application_properties->>'runId' = $1`,
      [runId],
    );
    assert.equal(rows[0]?.n, 0);
  });
});
