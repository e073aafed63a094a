// The consumer side of the Service Bus queue: peek-lock receivers on the queue and on its
// dead-letter sub-queue. The worker renews locks itself (renewLock, on a timer it owns), so
// the SDK's own auto-renewal is off: one mechanism, whose failure the worker sees at once.
// The SDK's settlement errors are translated: a lost lock is LockLostError, the rest transient.
import { isServiceBusError, type ServiceBusClient, type ServiceBusReceivedMessage, type ServiceBusReceiver } from '@azure/service-bus';
import { TransientError, toError } from '../errors.js';
import { scrub, type Logger } from '../log.js';
import { LockLostError, type ReceivedWorkItem, type ReceiverOptions, type WorkItemReceiver } from './queue.js';

/** Codes that mean the lock (or the message) is gone, not that the namespace is unwell. */
const LOCK_LOST_CODES = new Set(['MessageLockLost', 'SessionLockLost', 'MessageNotFound']);

export class ServiceBusWorkItemReceiver implements WorkItemReceiver {
  private active: ServiceBusReceiver | undefined;
  private deadLetters: ServiceBusReceiver | undefined;

  constructor(
    private readonly client: ServiceBusClient,
    private readonly queueName: string,
    // maxDeliveries is the queue's own setting on Service Bus; the worker compares against it.
    _options: ReceiverOptions,
    private readonly logger: Logger,
  ) {}

  async receive(max: number, waitMs: number): Promise<ReceivedWorkItem[]> {
    this.active ??= this.client.createReceiver(this.queueName, { receiveMode: 'peekLock', maxAutoLockRenewalDurationInMs: 0 });
    return this.take(this.active, max, waitMs, () => (this.active = undefined));
  }

  async receiveDeadLetters(max: number, waitMs: number): Promise<ReceivedWorkItem[]> {
    this.deadLetters ??= this.client.createReceiver(this.queueName, {
      receiveMode: 'peekLock',
      subQueueType: 'deadLetter',
      maxAutoLockRenewalDurationInMs: 0,
    });
    return this.take(this.deadLetters, max, waitMs, () => (this.deadLetters = undefined));
  }

  async close(): Promise<void> {
    for (const receiver of [this.active, this.deadLetters]) await receiver?.close().catch(() => {});
    this.active = undefined;
    this.deadLetters = undefined;
  }

  private async take(receiver: ServiceBusReceiver, max: number, waitMs: number, reset: () => void): Promise<ReceivedWorkItem[]> {
    let messages: ServiceBusReceivedMessage[];
    try {
      messages = await receiver.receiveMessages(Math.max(1, Math.floor(max)), { maxWaitTimeInMs: Math.max(1, waitMs) });
    } catch (thrown) {
      // A broken link is replaced on the next receive.
      reset();
      await receiver.close().catch(() => {});
      throw new TransientError(`receiving from Service Bus queue "${this.queueName}" failed: ${scrub(toError(thrown).message)}`, {
        cause: thrown,
      });
    }
    return messages.map((message) => this.delivery(receiver, message));
  }

  private delivery(receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage): ReceivedWorkItem {
    const messageId = typeof message.messageId === 'string' ? message.messageId : String(message.messageId ?? '');
    const settle = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (thrown) {
        const error = toError(thrown);
        if (isServiceBusError(error) && LOCK_LOST_CODES.has(error.code)) {
          throw new LockLostError(`${what} ${messageId}: the lock was lost (${error.code})`);
        }
        // The SDK refuses a second settlement with a plain error: the message is no longer ours.
        if (/already been settled|already settled/i.test(error.message)) throw new LockLostError(`${what} ${messageId}: already settled`);
        throw new TransientError(`${what} ${messageId} failed: ${scrub(error.message)}`, { cause: error });
      }
    };
    return {
      messageId,
      body: decodeBody(message.body),
      // The broker counts earlier deliveries (0 on the first); the port counts this one too.
      deliveryCount: (message.deliveryCount ?? 0) + 1,
      lockedUntil: message.lockedUntilUtc ?? new Date(),
      ...(message.deadLetterReason !== undefined && { deadLetterReason: message.deadLetterReason }),
      ...(message.deadLetterErrorDescription !== undefined && { deadLetterDescription: message.deadLetterErrorDescription }),
      complete: () => settle('completing', () => receiver.completeMessage(message)),
      abandon: () => settle('abandoning', () => receiver.abandonMessage(message)),
      deadLetter: (reason, description) =>
        settle('dead-lettering', () =>
          receiver.deadLetterMessage(message, { deadLetterReason: reason, deadLetterErrorDescription: description.slice(0, 4000) }),
        ),
      renewLock: async () => {
        let until: Date | undefined;
        await settle('renewing the lock of', async () => {
          until = await receiver.renewMessageLock(message);
        });
        this.logger.trace({ messageId, lockedUntil: until }, 'lock renewed');
        return until ?? new Date();
      },
    };
  }
}

/** JSON arrives as a Buffer (a data section) from most senders, already parsed from some. */
function decodeBody(body: unknown): unknown {
  if (Buffer.isBuffer(body) || body instanceof Uint8Array) {
    const text = Buffer.from(body).toString('utf8');
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return body;
}
