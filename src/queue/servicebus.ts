// Publishing work items to an Azure Service Bus queue. The SDK retries a few failures
// itself, but not a refused connection, and after its own retries it throws an
// AggregateError; so the whole publish is wrapped in one retry with backoff here, and
// the error that finally escapes names the real cause.
import { setTimeout as sleep } from 'node:timers/promises';
import { DefaultAzureCredential } from '@azure/identity';
import {
  ServiceBusClient,
  isServiceBusError,
  type ServiceBusMessage,
  type ServiceBusMessageBatch,
  type ServiceBusSender,
} from '@azure/service-bus';
import type { WorkItemMessage } from '../domain.js';
import { PermanentError, TransientError, toError } from '../errors.js';
import { registerSecret, scrub, type Logger } from '../log.js';
import { toEnvelope, type PublishProgress, type RetryPolicy, type WorkItemQueue } from './queue.js';

export interface ServiceBusSdkRetryOptions {
  maxRetries?: number;
  retryDelayInMs?: number;
  timeoutInMs?: number;
}

export type ServiceBusTarget = { connectionString: string; queueName: string } | { namespace: string; queueName: string };

/** Codes a retry cannot fix: a missing or disabled queue, a full namespace, an oversized message. */
const PERMANENT_CODES = new Set(['MessagingEntityNotFound', 'MessagingEntityDisabled', 'QuotaExceeded', 'MessageSizeExceeded']);

const DEFAULT_SDK_RETRY: Required<ServiceBusSdkRetryOptions> = { maxRetries: 2, retryDelayInMs: 500, timeoutInMs: 30_000 };

export class ServiceBusQueue implements WorkItemQueue {
  readonly kind = 'servicebus' as const;
  private readonly client: ServiceBusClient;
  private sender: ServiceBusSender | undefined;
  private readonly queueName: string;
  private readonly logger: Logger;
  private readonly retries: number;
  private readonly minTimeoutMs: number;
  private readonly maxTimeoutMs: number;

  constructor(target: ServiceBusTarget, deps: { logger: Logger; retry?: RetryPolicy; serviceBus?: ServiceBusSdkRetryOptions }) {
    this.queueName = target.queueName;
    this.logger = deps.logger.child({ queue: target.queueName, backend: 'servicebus' });
    this.retries = deps.retry?.retries ?? 3;
    this.minTimeoutMs = deps.retry?.minTimeoutMs ?? 1000;
    this.maxTimeoutMs = deps.retry?.maxTimeoutMs ?? 30_000;
    const retryOptions = { ...DEFAULT_SDK_RETRY, ...deps.serviceBus };
    if ('connectionString' in target) {
      // The key must never surface in a log line or an error text, whatever shape it hides in.
      registerSecret(/SharedAccessKey=([^;]+)/i.exec(target.connectionString)?.[1]);
      registerSecret(/SharedAccessSignature=([^;]+)/i.exec(target.connectionString)?.[1]);
      this.client = new ServiceBusClient(target.connectionString, { retryOptions });
    } else {
      // The SDK wants the fully qualified host; accept the bare namespace name operators tend to write.
      const host = target.namespace.includes('.') ? target.namespace : `${target.namespace}.servicebus.windows.net`;
      this.client = new ServiceBusClient(host, new DefaultAzureCredential(), { retryOptions });
    }
  }

  async publish(items: WorkItemMessage[], progress?: PublishProgress): Promise<{ published: number }> {
    if (items.length === 0) return { published: 0 };
    const attempts = this.retries + 1;
    for (let attempt = 1; ; attempt++) {
      try {
        // A retry re-sends every item, including batches that already went through before the
        // failure. That is safe: each messageId is `<runId>:<partitionId>`, so the queue's
        // duplicate detection drops the copies.
        const batches = await this.sendAll(items, progress);
        this.logger.info({ published: items.length, batches, attempt }, 'work items published');
        return { published: items.length };
      } catch (thrown) {
        const cause = toError(thrown);
        await this.resetSender();
        if (cause instanceof PermanentError) throw cause;
        const reason = describe(cause);
        if (isPermanent(cause)) {
          throw new PermanentError(
            scrub(`publishing ${items.length} work items to Service Bus queue "${this.queueName}" failed: ${reason}`),
            { cause },
          );
        }
        if (attempt >= attempts) {
          throw new TransientError(
            scrub(
              `publishing ${items.length} work items to Service Bus queue "${this.queueName}" failed after ${attempts} attempts: ${reason}`,
            ),
            { cause },
          );
        }
        const delayMs = Math.min(this.maxTimeoutMs, this.minTimeoutMs * 2 ** (attempt - 1));
        this.logger.warn({ attempt, attempts, delayMs, error: scrub(reason) }, 'publishing work items failed, retrying');
        await sleep(delayMs);
      }
    }
  }

  /** Sends every item in as few batches as fit; returns how many batches were sent. */
  private async sendAll(items: WorkItemMessage[], progress: PublishProgress | undefined): Promise<number> {
    this.sender ??= this.client.createSender(this.queueName);
    const sender = this.sender;
    let batch: ServiceBusMessageBatch = await sender.createMessageBatch();
    let inBatch: WorkItemMessage[] = [];
    let sent = 0;
    const send = async () => {
      await sender.sendMessages(batch);
      sent++;
      await progress?.onSent(inBatch);
    };
    for (const item of items) {
      const message = toServiceBusMessage(item);
      if (!batch.tryAddMessage(message)) {
        if (batch.count === 0) throw tooLarge(item, batch);
        await send();
        batch = await sender.createMessageBatch();
        inBatch = [];
        if (!batch.tryAddMessage(message)) throw tooLarge(item, batch);
      }
      inBatch.push(item);
    }
    if (batch.count > 0) await send();
    return sent;
  }

  /** After a failure the link may be dead; the next attempt opens a fresh one. */
  private async resetSender(): Promise<void> {
    const sender = this.sender;
    this.sender = undefined;
    await sender?.close().catch(() => {});
  }

  async close(): Promise<void> {
    await this.resetSender();
    await this.client.close();
  }
}

function tooLarge(item: WorkItemMessage, batch: ServiceBusMessageBatch): PermanentError {
  return new PermanentError(
    `work item ${item.partitionId} of run ${item.runId} does not fit in a Service Bus message (limit ${batch.maxSizeInBytes} bytes)`,
  );
}

function toServiceBusMessage(item: WorkItemMessage): ServiceBusMessage {
  const envelope = toEnvelope(item);
  return {
    messageId: envelope.messageId,
    subject: envelope.subject,
    contentType: envelope.contentType,
    applicationProperties: envelope.applicationProperties,
    // UTF-8 JSON in a data section, explicitly: what any consumer (not just this SDK) can read.
    body: Buffer.from(JSON.stringify(envelope.body), 'utf8'),
  };
}

function isPermanent(error: Error): boolean {
  return isServiceBusError(error) && PERMANENT_CODES.has(error.code);
}

/** The cause as an operator needs it: message plus the code that says what kind of failure it was. */
function describe(error: Error): string {
  const { code, syscall } = error as { code?: unknown; syscall?: unknown };
  const message = error.message || error.name;
  // A refused or unreachable connection comes back as a bare "GeneralError": say what it means.
  if (syscall === 'connect' || /\b(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|EAI_AGAIN)\b/.test(message)) {
    return `cannot connect to the Service Bus namespace: ${message}`;
  }
  return typeof code === 'string' && code !== '' && !message.includes(code) ? `${message} (${code})` : message;
}
