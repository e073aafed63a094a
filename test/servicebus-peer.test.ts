// The receiver side of the Service Bus test peer (test/helpers/servicebus-peer.ts), driven by the
// real @azure/service-bus SDK in peek-lock mode: deliveries, settlement, lock expiry and renewal,
// the max delivery count, the dead-letter queue, and competing receivers.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';
import {
  ServiceBusClient,
  type ServiceBusReceivedMessage,
  type ServiceBusReceiver,
  type ServiceBusReceiverOptions,
} from '@azure/service-bus';
import { startServiceBusPeer, type ServiceBusPeer, type ServiceBusPeerOptions } from './helpers/servicebus-peer.js';

const QUEUE = 'work-items';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Harness {
  peer: ServiceBusPeer;
  client: ServiceBusClient;
  /** A peek-lock receiver, closed with the harness; auto-renewal off unless asked for. */
  receiver: (options?: ServiceBusReceiverOptions) => ServiceBusReceiver;
  /** Sends `count` JSON messages `{ n }` in SDK batches; message ids are `m-<n>`. */
  send: (count: number, from?: number) => Promise<void>;
}

/** A peer and an SDK client for one test; everything is closed afterwards so the file exits promptly. */
async function withPeer(options: ServiceBusPeerOptions, fn: (h: Harness) => Promise<void>): Promise<void> {
  const peer = await startServiceBusPeer(options);
  const client = new ServiceBusClient(peer.connectionString(), {
    retryOptions: { maxRetries: 2, retryDelayInMs: 50, timeoutInMs: 10_000 },
  });
  const receivers: ServiceBusReceiver[] = [];
  const harness: Harness = {
    peer,
    client,
    receiver: (receiverOptions = {}) => {
      const receiver = client.createReceiver(QUEUE, { receiveMode: 'peekLock', maxAutoLockRenewalDurationInMs: 0, ...receiverOptions });
      receivers.push(receiver);
      return receiver;
    },
    send: async (count, from = 1) => {
      const sender = client.createSender(QUEUE);
      try {
        let batch = await sender.createMessageBatch();
        for (let n = from; n < from + count; n++) {
          const message = { body: { n }, messageId: `m-${n}`, contentType: 'application/json', applicationProperties: { n } };
          if (!batch.tryAddMessage(message)) {
            await sender.sendMessages(batch);
            batch = await sender.createMessageBatch();
            assert.ok(batch.tryAddMessage(message), 'a message fits an empty batch');
          }
        }
        if (batch.count > 0) await sender.sendMessages(batch);
      } finally {
        await sender.close();
      }
    },
  };
  try {
    await fn(harness);
  } finally {
    for (const receiver of receivers) await receiver.close();
    await client.close();
    await peer.close();
  }
}

/** Receives until `count` messages arrived (or a few empty rounds), without settling them. */
async function receiveAll(receiver: ServiceBusReceiver, count: number): Promise<ServiceBusReceivedMessage[]> {
  const got: ServiceBusReceivedMessage[] = [];
  for (let empty = 0; got.length < count && empty < 3;) {
    const batch = await receiver.receiveMessages(count - got.length, { maxWaitTimeInMs: 2000 });
    if (batch.length === 0) empty++;
    got.push(...batch);
  }
  return got;
}

function bodyN(message: ServiceBusReceivedMessage): number {
  return (message.body as { n: number }).n;
}

describe('Service Bus peer: receiver side (real SDK, peek-lock)', () => {
  test('sent messages are delivered once each with lock tokens and broker properties, and complete empties the queue', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(25);
      assert.equal(peer.received.length, 25, 'the sender-side record is kept');
      assert.equal(peer.activeCount(QUEUE), 25);

      const r = receiver();
      const before = Date.now();
      const got = await receiveAll(r, 25);
      assert.deepEqual(
        got.map(bodyN).sort((a, b) => a - b),
        Array.from({ length: 25 }, (_, i) => i + 1),
      );
      assert.equal(new Set(got.map((m) => m.lockToken)).size, 25, 'one lock token per message');
      for (const m of got) {
        assert.match(m.lockToken ?? '', UUID);
        assert.equal(m.deliveryCount, 0);
        assert.equal(m.messageId, `m-${bodyN(m)}`);
        assert.equal(m.contentType, 'application/json');
        assert.deepEqual(m.applicationProperties, { n: bodyN(m) });
        assert.ok(m.enqueuedTimeUtc instanceof Date);
        assert.ok((m.lockedUntilUtc?.getTime() ?? 0) > before, 'locked into the future');
      }
      assert.deepEqual(
        got.map((m) => m.sequenceNumber?.toNumber()).sort((a, b) => (a ?? 0) - (b ?? 0)),
        Array.from({ length: 25 }, (_, i) => i + 1),
        'sequence numbers 1..25',
      );
      // The peer's view of each lock is the SDK's.
      const byToken = new Map(peer.messages(QUEUE).map((m) => [m.lockToken, m]));
      for (const m of got) {
        const stored = byToken.get(m.lockToken);
        assert.equal(stored?.state, 'locked');
        assert.equal(stored?.messageId, m.messageId);
        assert.equal(stored?.lockedUntil?.getTime(), m.lockedUntilUtc?.getTime());
      }
      assert.equal(peer.lockedCount(QUEUE), 25);

      for (const m of got) await r.completeMessage(m);
      assert.equal(peer.counters.completes, 25);
      assert.equal(peer.activeCount(QUEUE), 0);
      assert.equal(peer.lockedCount(QUEUE), 0);
      assert.ok(peer.messages(QUEUE).every((m) => m.state === 'completed'));
      assert.deepEqual(await r.receiveMessages(5, { maxWaitTimeInMs: 300 }), [], 'nothing left to receive');
      assert.equal(peer.counters.delivered, 25, 'no message went out twice');
    });
  });

  test('abandon returns the message with its delivery count one higher and a new lock', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(1);
      const r = receiver();
      const [first] = await receiveAll(r, 1);
      assert.ok(first);
      await r.abandonMessage(first);
      assert.equal(peer.counters.abandons, 1);
      const [again] = await receiveAll(r, 1);
      assert.ok(again);
      assert.equal(again.messageId, 'm-1');
      assert.equal(again.deliveryCount, 1);
      assert.notEqual(again.lockToken, first.lockToken);
      assert.equal(again.sequenceNumber?.toNumber(), first.sequenceNumber?.toNumber());
      await assert.rejects(r.completeMessage(first), /already settled/, 'the SDK refuses a second settlement');
      await r.completeMessage(again);
      assert.deepEqual(
        peer.messages(QUEUE).map((m) => [m.state, m.deliveryCount]),
        [['completed', 1]],
      );
    });
  });

  test('deadLetterMessage moves the message to the dead-letter queue with its reason and description', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(2);
      const r = receiver();
      const got = await receiveAll(r, 2);
      const victim = got.find((m) => bodyN(m) === 2);
      assert.ok(victim);
      await r.deadLetterMessage(victim, { deadLetterReason: 'PartitionFailed', deadLetterErrorDescription: 'the vendor said no' });
      for (const m of got) if (m !== victim) await r.completeMessage(m);
      assert.equal(peer.counters.deadLetters, 1);
      assert.equal(peer.activeCount(QUEUE), 0);
      assert.deepEqual(
        peer.deadLetters(QUEUE).map((m) => [m.messageId, m.deadLetterReason, m.deadLetterErrorDescription]),
        [['m-2', 'PartitionFailed', 'the vendor said no']],
      );
      assert.equal(peer.messages(QUEUE).find((m) => m.messageId === 'm-2')?.state, 'dead-lettered');

      const dlq = receiver({ subQueueType: 'deadLetter' });
      const [dead] = await receiveAll(dlq, 1);
      assert.ok(dead);
      assert.equal(dead.messageId, 'm-2');
      assert.deepEqual(dead.body, { n: 2 });
      assert.equal(dead.deadLetterReason, 'PartitionFailed');
      assert.equal(dead.deadLetterErrorDescription, 'the vendor said no');
      assert.equal(dead.sequenceNumber?.toNumber(), victim.sequenceNumber?.toNumber());
      await dlq.completeMessage(dead);
      assert.deepEqual(peer.deadLetters(QUEUE), [], 'completed in the dead-letter queue');
    });
  });

  test('a lock that runs out returns the message, and settling with the lost lock fails with MessageLockLost', async () => {
    await withPeer({ lockDurationMs: 1500 }, async ({ peer, send, receiver }) => {
      await send(1);
      const r = receiver();
      const [first] = await receiveAll(r, 1);
      assert.ok(first);
      // Wait for the redelivery itself: it comes only once the lock has expired.
      const [again] = await receiveAll(r, 1);
      assert.ok(again, 'redelivered after the lock expired');
      assert.equal(again.messageId, 'm-1');
      assert.equal(again.deliveryCount, 1);
      assert.equal(peer.counters.lockExpiries, 1);
      await assert.rejects(r.completeMessage(first), { code: 'MessageLockLost' });
      await r.completeMessage(again);
      assert.equal(peer.counters.completes, 1);
      assert.equal(peer.counters.lockLost, 1);
    });
  });

  test('expireLocks() ends every lock at once (a worker that lost its lock)', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(3);
      const r = receiver();
      const got = await receiveAll(r, 3);
      assert.equal(peer.expireLocks(QUEUE), 3);
      assert.equal(peer.activeCount(QUEUE), 3);
      await assert.rejects(r.renewMessageLock(got[0] as ServiceBusReceivedMessage), { code: 'MessageLockLost' });
      const again = await receiveAll(r, 3);
      assert.deepEqual(
        again.map((m) => m.deliveryCount),
        [1, 1, 1],
      );
      for (const m of again) await r.completeMessage(m);
      assert.equal(peer.activeCount(QUEUE), 0);
    });
  });

  test('at the max delivery count the peer dead-letters the message itself (MaxDeliveryCountExceeded)', async () => {
    await withPeer({ queueOptions: { [QUEUE]: { maxDeliveryCount: 3 } } }, async ({ peer, send, receiver }) => {
      await send(1);
      const r = receiver();
      const counts: number[] = [];
      for (let i = 0; i < 3; i++) {
        const [m] = await receiveAll(r, 1);
        assert.ok(m, `delivery ${i + 1}`);
        counts.push(m.deliveryCount ?? -1);
        await r.abandonMessage(m);
      }
      assert.deepEqual(counts, [0, 1, 2]);
      assert.deepEqual(await r.receiveMessages(1, { maxWaitTimeInMs: 300 }), [], 'not delivered a fourth time');
      assert.equal(peer.counters.maxDeliveryDeadLetters, 1);
      const [dead] = peer.deadLetters(QUEUE);
      assert.equal(dead?.deadLetterReason, 'MaxDeliveryCountExceeded');
      assert.equal(dead?.deliveryCount, 3);

      const dlq = receiver({ subQueueType: 'deadLetter' });
      const [fromDlq] = await receiveAll(dlq, 1);
      assert.equal(fromDlq?.messageId, 'm-1');
      assert.equal(fromDlq?.deadLetterReason, 'MaxDeliveryCountExceeded');
      assert.equal(fromDlq?.deliveryCount, 3);
      assert.ok(fromDlq);
      await dlq.completeMessage(fromDlq);
    });
  });

  test('renewMessageLock goes through $management and moves lockedUntil forward', async () => {
    await withPeer({ lockDurationMs: 5000 }, async ({ peer, send, receiver }) => {
      await send(1);
      const r = receiver();
      const [m] = await receiveAll(r, 1);
      assert.ok(m);
      const original = m.lockedUntilUtc?.getTime() ?? 0;
      await sleep(20);
      const renewed = await r.renewMessageLock(m);
      assert.ok(renewed.getTime() > original, `renewed ${renewed.toISOString()} after ${new Date(original).toISOString()}`);
      assert.equal(m.lockedUntilUtc?.getTime(), renewed.getTime(), 'the SDK updates the message');
      assert.equal(peer.messages(QUEUE)[0]?.lockedUntil?.getTime(), renewed.getTime());
      assert.equal(peer.counters.renewals, 1);
      await r.completeMessage(m);
    });
  });

  test('a message whose receiver link is gone is settled through $management (update-disposition)', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(2);
      const first = receiver();
      const got = await receiveAll(first, 2);
      await first.close();
      const other = receiver();
      const requestsBefore = peer.counters.managementRequests;
      const [a, b] = got;
      assert.ok(a && b);
      await other.completeMessage(a);
      await other.deadLetterMessage(b, { deadLetterReason: 'ByManagement', deadLetterErrorDescription: 'link gone' });
      assert.equal(peer.counters.managementRequests - requestsBefore, 2, 'both settled on the management link');
      assert.equal(peer.counters.completes, 1);
      assert.deepEqual(
        peer.deadLetters(QUEUE).map((m) => m.deadLetterReason),
        ['ByManagement'],
      );
      await assert.rejects(other.completeMessage(a), { code: 'MessageLockLost' }, 'a settled lock is gone');
    });
  });

  test('peekMessages sees active and locked messages without locking them', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(4);
      const r = receiver();
      const [locked] = await receiveAll(r, 1);
      assert.ok(locked);
      const peeked = await r.peekMessages(10);
      assert.deepEqual(
        peeked.map((m) => m.messageId),
        ['m-1', 'm-2', 'm-3', 'm-4'],
      );
      assert.ok(peeked.every((m) => m.lockToken === undefined));
      assert.equal(peer.lockedCount(QUEUE), 1, 'peeking locks nothing');
      assert.deepEqual(await r.peekMessages(10), [], 'the SDK peeks on from the last sequence number');
      await r.completeMessage(locked);
    });
  });

  test('subscribe() with auto-renewal holds the lock through processing longer than the lock duration', async () => {
    // The SDK renews halfway through a short lock: with 3 s that leaves a busy machine 1.5 s of slack.
    await withPeer({ lockDurationMs: 3000 }, async ({ peer, send, receiver }) => {
      await send(1);
      const r = receiver({ maxAutoLockRenewalDurationInMs: 60_000 });
      let resolveDone: (m: ServiceBusReceivedMessage) => void = () => {};
      const done = new Promise<ServiceBusReceivedMessage>((resolve) => (resolveDone = resolve));
      const errors: Error[] = [];
      const subscription = r.subscribe(
        {
          processMessage: async (m) => {
            await sleep(6500); // more than two lock durations
            await r.completeMessage(m);
            resolveDone(m);
          },
          processError: (args) => {
            errors.push(args.error);
            return Promise.resolve();
          },
        },
        { autoCompleteMessages: false, maxConcurrentCalls: 1 },
      );
      const m = await done;
      await subscription.close();
      assert.equal(m.messageId, 'm-1');
      assert.deepEqual(errors, []);
      assert.equal(peer.counters.delivered, 1, 'never redelivered');
      assert.equal(peer.counters.lockExpiries, 0);
      assert.ok(peer.counters.renewals >= 2, `renewed ${peer.counters.renewals} times`);
      assert.equal(peer.counters.completes, 1);
    });
  });

  test('competing receivers never hold the same message at once, and every message is completed once', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      const total = 40;
      await send(total);
      const receivers = [receiver(), receiver()];
      const heldBy = new Map<string, number>();
      const completed: string[] = [];
      const perReceiver = [0, 0];
      await Promise.all(
        receivers.map(async (r, index) => {
          for (let empty = 0; empty < 2;) {
            const batch = await r.receiveMessages(5, { maxWaitTimeInMs: 500 });
            if (batch.length === 0) {
              empty++;
              continue;
            }
            for (const m of batch) {
              const id = m.messageId as string;
              assert.equal(heldBy.get(id), undefined, `${id} is already held by receiver ${heldBy.get(id)}`);
              heldBy.set(id, index);
            }
            await sleep(30); // hold the locks while the other receiver takes its batch
            for (const m of batch) {
              heldBy.delete(m.messageId as string);
              await r.completeMessage(m);
              completed.push(m.messageId as string);
            }
            perReceiver[index] = (perReceiver[index] ?? 0) + batch.length;
          }
        }),
      );
      assert.equal(completed.length, total);
      assert.equal(new Set(completed).size, total, 'each message completed once');
      assert.ok(
        perReceiver.every((n) => n > 0),
        `both receivers got work (${perReceiver.join(' / ')})`,
      );
      assert.equal(peer.counters.delivered, total, 'no redelivery');
      assert.equal(peer.activeCount(QUEUE), 0);
    });
  });

  test('a receiver process killed (SIGKILL) while holding a lock: the message comes back once the lock runs out', async () => {
    await withPeer({ lockDurationMs: 1500 }, async ({ peer, send, receiver }) => {
      await send(1);
      // A separate process receives and then hangs, holding the lock, until it is killed.
      const script = `
        import { ServiceBusClient } from '@azure/service-bus';
        const client = new ServiceBusClient(process.env.SB_CONNECTION_STRING);
        const receiver = client.createReceiver('${QUEUE}', { maxAutoLockRenewalDurationInMs: 60000 });
        const [m] = await receiver.receiveMessages(1, { maxWaitTimeInMs: 10000 });
        process.stdout.write((m?.lockToken ?? 'none') + '\\n');
        setInterval(() => {}, 1000);
      `;
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        env: { ...process.env, SB_CONNECTION_STRING: peer.connectionString() },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      try {
        const [chunk] = (await once(child.stdout, 'data')) as [Buffer];
        const childLock = chunk.toString('utf8').trim();
        assert.match(childLock, UUID, 'the child received the message');
        assert.equal(peer.lockedCount(QUEUE), 1);
        child.kill('SIGKILL');
        await once(child, 'exit');

        const r = receiver();
        const [again] = await receiveAll(r, 1);
        assert.ok(again, 'redelivered after the dead process lock ran out');
        assert.equal(again.messageId, 'm-1');
        assert.equal(again.deliveryCount, 1);
        assert.notEqual(again.lockToken, childLock);
        await r.completeMessage(again);
        assert.equal(peer.counters.lockExpiries, 1);
        assert.equal(peer.counters.delivered, 2);
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    });
  });

  test('after dropConnections() the SDK reconnects and receives what is still queued', async () => {
    await withPeer({}, async ({ peer, send, receiver }) => {
      await send(2);
      const r = receiver();
      const [first] = await r.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      assert.ok(first);
      await r.completeMessage(first);
      peer.dropConnections();
      // A receive that meets the disconnection fails (a consumer retries it); later ones reconnect.
      let second: ServiceBusReceivedMessage | undefined;
      const failures: unknown[] = [];
      for (let attempt = 0; !second && attempt < 5; attempt++) {
        try {
          [second] = await r.receiveMessages(1, { maxWaitTimeInMs: 2000 });
        } catch (error) {
          failures.push(error);
        }
      }
      assert.ok(second, `the second message arrives over a new connection (failures: ${failures.length})`);
      assert.equal(second.messageId, 'm-2');
      assert.equal(second.deliveryCount, 0, 'it was never delivered before');
      await r.completeMessage(second);
      assert.equal(peer.counters.completes, 2);
      assert.equal(peer.activeCount(QUEUE), 0);
    });
  });
});
