// The work-items queue behind one interface: Azure Service Bus when it is configured,
// otherwise a durable table in the scheduler's own database. The rest of the scheduler
// only ever calls publish(), so the run is the same whichever backend serves it.
import type { Config } from '../config.js';
import type { Database } from '../db/database.js';
import type { WorkItemMessage } from '../domain.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import { LocalQueue } from './local.js';
import { ServiceBusQueue, type ServiceBusSdkRetryOptions } from './servicebus.js';

export interface WorkItemQueue {
  readonly kind: 'servicebus' | 'local';
  /**
   * Publishes every item, or throws; a re-publish of the same run/partition is dropped as a
   * duplicate by messageId. `onSent` hears of every group of items the broker has accepted, so a
   * failed publish still tells which work items are out.
   */
  publish(items: WorkItemMessage[], progress?: PublishProgress): Promise<{ published: number }>;
  close(): Promise<void>;
}

export interface PublishProgress {
  onSent(items: WorkItemMessage[]): Promise<void>;
}

export interface PeekedWorkItem {
  messageId: string;
  subject: string;
  body: WorkItemMessage;
  applicationProperties: Record<string, string>;
  enqueuedAt: string;
}

export interface LocalWorkItemQueue extends WorkItemQueue {
  readonly kind: 'local';
  /** The queued work items, oldest first (`queue peek`). */
  peek(limit?: number): Promise<PeekedWorkItem[]>;
}

export function isLocalQueue(queue: WorkItemQueue): queue is LocalWorkItemQueue {
  return queue.kind === 'local';
}

/** CONTRACT §3: what the broker carries besides the JSON body. */
export const WORK_ITEM_SUBJECT = 'work-item';
export const WORK_ITEM_CONTENT_TYPE = 'application/json';

export interface WorkItemEnvelope {
  /** `<runId>:<partitionId>`: Service Bus duplicate detection (and the local table's key) drops a re-send. */
  messageId: string;
  subject: typeof WORK_ITEM_SUBJECT;
  contentType: typeof WORK_ITEM_CONTENT_TYPE;
  applicationProperties: { runId: string; partitionId: string };
  body: WorkItemMessage;
}

/** The one place the broker envelope of a work item is built, so both backends carry the same thing. */
export function toEnvelope(item: WorkItemMessage): WorkItemEnvelope {
  return {
    messageId: `${item.runId}:${item.partitionId}`,
    subject: WORK_ITEM_SUBJECT,
    contentType: WORK_ITEM_CONTENT_TYPE,
    applicationProperties: { runId: item.runId, partitionId: item.partitionId },
    body: item,
  };
}

export interface RetryPolicy {
  /** Retries after the first attempt (default 3, so 4 attempts). */
  retries?: number;
  /** Delay before the first retry; doubles each time (default 1000 ms). */
  minTimeoutMs?: number;
  /** Cap on one delay (default 30 s). */
  maxTimeoutMs?: number;
}

export interface QueueDeps {
  db: Database;
  logger: Logger;
  /** The retry around a whole publish. */
  retry?: RetryPolicy;
  /** The SDK's own per-operation retries and timeout; small, because the outer retry does the real work. */
  serviceBus?: ServiceBusSdkRetryOptions;
}

/** The one place that chooses the queue backend from the configuration. */
export function openQueue(config: Config['queue'], deps: QueueDeps): WorkItemQueue {
  if (config.backend === 'local') {
    return new LocalQueue(deps.db, deps.logger);
  }
  const { connectionString, namespace, queueName } = config;
  if (connectionString) {
    return new ServiceBusQueue({ connectionString, queueName }, deps);
  }
  if (namespace) {
    return new ServiceBusQueue({ namespace, queueName }, deps);
  }
  throw new ConfigError(['AZURE_SERVICE_BUS_CONNECTION_STRING or AZURE_SERVICE_BUS_NAMESPACE is required for Service Bus']);
}
