// The work-items queue: the real @azure/service-bus SDK publishing to an in-process AMQP 1.0
// peer (test/helpers/servicebus-peer.ts), and the local queue on an embedded database.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Config } from '../src/config.js';
import type { Database } from '../src/db/database.js';
import { migrate } from '../src/db/migrate.js';
import { openPglite } from '../src/db/pglite.js';
import type { WorkItemMessage } from '../src/domain.js';
import { PermanentError, TransientError } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import { openQueue, type QueueDeps } from '../src/queue/open.js';
import { isLocalQueue, toEnvelope } from '../src/queue/queue.js';
import { BATCH_MESSAGE_FORMAT, closedPort, startServiceBusPeer, type ServiceBusPeer } from './helpers/servicebus-peer.js';
import { captureLogs } from './helpers/logs.js';

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

/** Every item arrived exactly once, with the CONTRACT §3 envelope and its JSON body. */
function assertExactlyOnce(peer: ServiceBusPeer, items: WorkItemMessage[]): void {
  assert.equal(peer.received.length, items.length, 'messages received');
  const byId = new Map(peer.received.map((m) => [m.messageId, m]));
  assert.equal(byId.size, items.length, 'distinct messageIds');
  for (const item of items) {
    const got = byId.get(`${item.runId}:${item.partitionId}`);
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

describe('Service Bus queue (real SDK against the AMQP peer)', () => {
  for (const count of [1, 30, 5000]) {
    test(`publishes ${count} item(s), each received exactly once`, async () => {
      await withPeer(async (peer) => {
        const { logger } = captureLogs();
        const queue = await openQueue(serviceBusConfig(peer.connectionString()), sbDeps(logger));
        try {
          assert.equal(queue.kind, 'servicebus');
          const items = workItems(count);
          assert.deepEqual(await queue.publish(items), { published: count });
          assertExactlyOnce(peer, items);
          assert.ok(peer.cbsRequests >= 1, 'the SDK authorised through $cbs');
          assert.ok(peer.deliveries.every((d) => d.outcome === 'accepted' && d.format === BATCH_MESSAGE_FORMAT));
          if (count === 5000) {
            assert.ok(peer.deliveries.length > 1, `5,000 items span several batches (got ${peer.deliveries.length})`);
          } else {
            assert.equal(peer.deliveries.length, 1);
          }
        } finally {
          await queue.close();
        }
      });
    });
  }

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

describe('local queue (PGlite)', () => {
  let dir: string;
  let db: Database;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'queue-test-'));
    db = await openPglite(path.join(dir, 'pglite'));
    await migrate(db);
  });

  after(async () => {
    await db?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('without Service Bus configuration, work items go to the durable table and peek lists them oldest first', async () => {
    const { logger } = captureLogs();
    const queue = await openQueue({ backend: 'local' }, { db, logger });
    assert.equal(queue.kind, 'local');
    assert.ok(isLocalQueue(queue));

    const first = workItems(3, '00000000-0000-4000-8000-000000000001');
    const second = workItems(2, '00000000-0000-4000-8000-000000000002');
    assert.deepEqual(await queue.publish(first), { published: 3 });
    assert.deepEqual(await queue.publish(second), { published: 2 });

    const peeked = await queue.peek();
    assert.deepEqual(
      peeked.map((p) => p.messageId),
      [...first, ...second].map((i) => `${i.runId}:${i.partitionId}`),
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
    await queue.close();
  });

  test('re-publishing the same run/partitions is idempotent; thousands of items in one call', async () => {
    const { logger, records: lines } = captureLogs();
    const queue = await openQueue({ backend: 'local' }, { db, logger });
    assert.ok(isLocalQueue(queue));
    const runId = '00000000-0000-4000-8000-000000000003';
    const items = workItems(1200, runId);
    await queue.publish(items);
    await queue.publish(items);
    const rows = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM local_work_items WHERE application_properties->>'runId' = $1`,
      [runId],
    );
    assert.equal(rows[0]?.n, 1200);
    const logged = lines().filter((l) => l.msg === 'work items queued locally');
    assert.deepEqual(
      logged.map((l) => [l.inserted, l.duplicates]),
      [
        [1200, 0],
        [0, 1200],
      ],
    );
  });

  test('a failed publish queues nothing (one transaction)', async () => {
    const { logger } = captureLogs();
    const queue = await openQueue({ backend: 'local' }, { db, logger });
    const runId = '00000000-0000-4000-8000-000000000004';
    const items = workItems(700, runId);
    // A body the table cannot hold (NUL in jsonb text) in the second chunk makes the publish fail midway.
    const bad = items[650] as WorkItemMessage;
    items[650] = { ...bad, watermarkBefore: 'bad\u0000value' };
    await assert.rejects(queue.publish(items));
    const rows = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM local_work_items WHERE application_properties->>'runId' = $1`,
      [runId],
    );
    assert.equal(rows[0]?.n, 0);
  });
});
