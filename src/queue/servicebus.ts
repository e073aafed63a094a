// Publishing work items to an Azure Service Bus queue. The SDK retries a few failures
// itself, but not a refused connection, and after its own retries it throws an
// AggregateError; so the whole publish is wrapped in one retry with backoff here, and
// the error that finally escapes names the real cause.
import {
  ServiceBusClient,
  isServiceBusError,
  type ServiceBusMessage,
  type ServiceBusMessageBatch,
  type ServiceBusSender,
} from '@azure/service-bus';
import type { WorkItemMessage } from '../domain.js';
import { azureCredential, type TokenCredential } from '../identity.js';
import { isTransient, PermanentError, stopIfAsked, TransientError, toError } from '../errors.js';
import { registerSecret, scrub, type Logger } from '../log.js';
import { withRetry, type RetryPolicy } from '../retry.js';
import { ServiceBusWorkItemReceiver } from './servicebus-receiver.js';
import { toEnvelope, type PublishProgress, type ReceiverOptions, type WorkItemQueue, type WorkItemReceiver } from './queue.js';

export interface ServiceBusSdkRetryOptions {
  maxRetries?: number;
  retryDelayInMs?: number;
  timeoutInMs?: number;
}

export type ServiceBusTarget =
  { connectionString: string; queueName: string } | { namespace: string; queueName: string; azureClientId?: string };

/** Codes a retry cannot fix: a missing or disabled queue, a full namespace, an oversized message. */
const PERMANENT_CODES = new Set(['MessagingEntityNotFound', 'MessagingEntityDisabled', 'QuotaExceeded', 'MessageSizeExceeded']);

/** Around the whole publish (CONTRACT §1: retried 3 times with backoff), on top of the SDK's own few retries. */
const DEFAULT_PUBLISH_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 1000, maxDelayMs: 30_000, jitter: 'none' };

const DEFAULT_SDK_RETRY: Required<ServiceBusSdkRetryOptions> = { maxRetries: 2, retryDelayInMs: 500, timeoutInMs: 30_000 };

export class ServiceBusQueue implements WorkItemQueue {
  readonly kind = 'servicebus' as const;
  readonly location: string;
  private readonly client: ServiceBusClient;
  private sender: ServiceBusSender | undefined;
  private readonly queueName: string;
  private readonly logger: Logger;
  private readonly retry: RetryPolicy;

  constructor(
    target: ServiceBusTarget,
    deps: {
      logger: Logger;
      retry?: Partial<RetryPolicy>;
      serviceBus?: ServiceBusSdkRetryOptions;
      /** With a namespace: the credential to use instead of azureCredential() (tests pass their own). */
      credential?: TokenCredential;
    },
  ) {
    this.queueName = target.queueName;
    this.logger = deps.logger.child({ queue: target.queueName, backend: 'servicebus' });
    this.retry = { ...DEFAULT_PUBLISH_RETRY, ...deps.retry };
    const retryOptions = { ...DEFAULT_SDK_RETRY, ...deps.serviceBus };
    const host = 'connectionString' in target ? endpointHost(target.connectionString) : namespaceHost(target.namespace);
    this.location = `Service Bus queue "${target.queueName}" in ${host}`;
    if ('connectionString' in target) {
      // The key must never surface in a log line or an error text, whatever shape it hides in.
      registerSecret(/SharedAccessKey=([^;]+)/i.exec(target.connectionString)?.[1]);
      registerSecret(/SharedAccessSignature=([^;]+)/i.exec(target.connectionString)?.[1]);
      this.client = new ServiceBusClient(target.connectionString, { retryOptions });
    } else {
      const credential = deps.credential ?? azureCredential({ azureClientId: target.azureClientId });
      this.client = new ServiceBusClient(host, credential, { retryOptions });
    }
  }

  async checkReachable(): Promise<void> {
    await withRetry(
      async () => {
        try {
          this.sender ??= this.client.createSender(this.queueName);
          // Creating a batch needs the connection, the token exchange and the sender link: the whole path.
          await this.sender.createMessageBatch();
        } catch (thrown) {
          await this.resetSender();
          throw classify(toError(thrown));
        }
      },
      {
        ...this.retry,
        onRetry: ({ attempt, delayMs, error }) =>
          this.logger.warn(
            { attempt, delayMs: Math.round(delayMs), error: scrub(toError(error).message) },
            'Service Bus not reachable yet, retrying',
          ),
        onGiveUp: (error) => {
          const cause = toError(error);
          const message = scrub(`${this.location} is not reachable: ${cause.message}`);
          return cause instanceof TransientError
            ? new TransientError(message, { cause: cause.cause ?? cause })
            : new PermanentError(message, { cause });
        },
      },
    );
  }

  async publish(items: WorkItemMessage[], progress?: PublishProgress): Promise<{ published: number }> {
    if (items.length === 0) return { published: 0 };
    const what = `publishing ${items.length} work items to Service Bus queue "${this.queueName}"`;
    // A retry re-sends every item, including batches that already went through before the
    // failure. That is safe: each messageId is `<runId>:<partitionId>`, so the queue's
    // duplicate detection drops the copies.
    const batches = await withRetry(
      async () => {
        try {
          return await this.sendAll(items, progress);
        } catch (thrown) {
          await this.resetSender();
          throw classify(toError(thrown));
        }
      },
      {
        ...this.retry,
        // A stop between batches is not a failure to retry.
        retryable: (error) => isTransient(error) && !progress?.signal?.aborted,
        onRetry: ({ attempt, delayMs, error }) =>
          this.logger.warn(
            { attempt, attempts: this.retry.attempts, delayMs: Math.round(delayMs), error: scrub(toError(error).message) },
            'publishing work items failed, retrying',
          ),
        onGiveUp: (error, { attempts, reason }) => {
          const cause = toError(error);
          if (progress?.signal?.aborted) return progress.signal.reason as unknown;
          if (cause instanceof PermanentError && !(cause instanceof ServiceBusFailure)) return cause;
          const message = scrub(`${what} failed${reason === 'permanent' ? '' : ` after ${attempts} attempts`}: ${cause.message}`);
          // The SDK's own error stays the cause: its code is what an operator searches for.
          const original = cause.cause ?? cause;
          return cause instanceof TransientError
            ? new TransientError(message, { cause: original })
            : new PermanentError(message, { cause: original });
        },
      },
    );
    this.logger.info({ published: items.length, batches }, 'work items published');
    return { published: items.length };
  }

  /** Sends every item in as few batches as fit; returns how many batches were sent. */
  private async sendAll(items: WorkItemMessage[], progress: PublishProgress | undefined): Promise<number> {
    this.sender ??= this.client.createSender(this.queueName);
    const sender = this.sender;
    let batch: ServiceBusMessageBatch = await sender.createMessageBatch();
    let inBatch: WorkItemMessage[] = [];
    let sent = 0;
    // A stop lets the batch in flight finish, but not for longer than the grace a container platform leaves.
    const abortSignal = progress?.signal && afterGrace(progress.signal, IN_FLIGHT_GRACE_MS);
    const send = async () => {
      stopIfAsked(progress?.signal);
      await sender.sendMessages(batch, { abortSignal });
      sent++;
      await progress?.onSent?.(inBatch);
    };
    for (const item of items) {
      const message = toServiceBusMessage(item, progress?.messageId);
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

  openReceiver(options: ReceiverOptions): WorkItemReceiver {
    return new ServiceBusWorkItemReceiver(this.client, this.queueName, options, this.logger);
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

function toServiceBusMessage(item: WorkItemMessage, messageId?: (item: WorkItemMessage) => string): ServiceBusMessage {
  const envelope = toEnvelope(item, messageId);
  return {
    messageId: envelope.messageId,
    subject: envelope.subject,
    contentType: envelope.contentType,
    applicationProperties: envelope.applicationProperties,
    // UTF-8 JSON in a data section, explicitly: what any consumer (not just this SDK) can read.
    body: Buffer.from(JSON.stringify(envelope.body), 'utf8'),
  };
}

/** An SDK error translated into the error vocabulary, its message naming the real cause. */
class ServiceBusFailure extends PermanentError {
  override readonly name = 'ServiceBusFailure';
}

/** Translates what the SDK threw: the codes a retry cannot fix are permanent, the rest transient. */
function classify(error: Error): Error {
  if (error instanceof PermanentError || error instanceof TransientError) return error;
  // A bug of ours (a TypeError, say) is not the broker's hiccup: it is neither retried nor renamed.
  if (!fromTheBroker(error)) return error;
  const reason = describe(error);
  return isServiceBusError(error) && PERMANENT_CODES.has(error.code)
    ? new ServiceBusFailure(reason, { cause: error })
    : new TransientError(reason, { cause: error });
}

/** The SDK's errors (ServiceBusError, core-amqp's MessagingError: both say whether they are retryable) and socket errors. */
function fromTheBroker(error: Error): boolean {
  return isServiceBusError(error) || typeof (error as { retryable?: unknown }).retryable === 'boolean' || isTransient(error);
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

/** The namespace host of a connection string, for messages (the key is never part of it). */
function endpointHost(connectionString: string): string {
  const endpoint = /Endpoint=([^;]+)/i.exec(connectionString)?.[1];
  return endpoint && URL.canParse(endpoint) ? new URL(endpoint).host : '(unparsable endpoint)';
}

/** The SDK wants the fully qualified host; accept the bare namespace name operators tend to write. */
function namespaceHost(namespace: string): string {
  return namespace.includes('.') ? namespace : `${namespace}.servicebus.windows.net`;
}

/** How long the batch in flight may still take after a stop (SIGTERM leaves 30 s in all). */
const IN_FLIGHT_GRACE_MS = 10_000;

/** A signal that aborts `ms` after `signal` does. */
function afterGrace(signal: AbortSignal, ms: number): AbortSignal {
  const controller = new AbortController();
  const arm = () => setTimeout(() => controller.abort(signal.reason), ms).unref();
  if (signal.aborted) arm();
  else signal.addEventListener('abort', arm, { once: true });
  return controller.signal;
}
