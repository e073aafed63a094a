// The work-items queue port: one interface, served by Azure Service Bus (servicebus.ts) or
// by a durable table in the scheduler's own database (local.ts), chosen in open.ts. The rest
// of the scheduler only ever calls publish(), so a run is the same whichever backend serves it.
import type { WorkItemMessage } from '../domain.js';
import { PermanentError } from '../errors.js';

export interface WorkItemQueue {
  readonly kind: 'servicebus' | 'local';
  /** Where the work items go, for the log line naming a run's backends; never contains secrets. */
  readonly location: string;
  /**
   * Proves the queue can take messages now (connects and opens a sender), so a dead broker
   * fails a run before anything is recorded or emptied.
   */
  checkReachable(): Promise<void>;
  /**
   * Publishes every item, or throws; a re-publish of the same run/partition is dropped as a
   * duplicate by messageId. `onSent` hears of every group of items the broker has accepted.
   * When `signal` aborts, publishing stops after the batch in flight and throws its reason.
   */
  publish(items: WorkItemMessage[], progress?: PublishProgress): Promise<{ published: number }>;
  /** The consumer side (CONTRACT §9): peek-lock deliveries of work items. */
  openReceiver(options: ReceiverOptions): WorkItemReceiver;
  close(): Promise<void>;
}

export interface PublishProgress {
  onSent?(items: WorkItemMessage[]): Promise<void>;
  /** Stop between batches (SIGTERM, a lost lease). */
  signal?: AbortSignal;
  /** The broker messageId of an item, when not `<runId>:<partitionId>` (a re-queued item must not be dropped as a duplicate). */
  messageId?: (item: WorkItemMessage) => string;
}

export interface ReceiverOptions {
  /** Deliveries before a message is dead-lettered (Service Bus: the queue's own max delivery count, which must match). */
  maxDeliveries: number;
  /** How long a local lease lasts unless renewed (Service Bus: the queue's lock duration decides). */
  lockDurationMs: number;
}

/** One peek-locked delivery. Settle it exactly once; a settlement after the lock was lost throws LockLostError. */
export interface ReceivedWorkItem {
  messageId: string;
  /** The body as received (JSON); the worker validates it. */
  body: unknown;
  /** 1 on the first delivery, one more for every abandon or lost lock. */
  deliveryCount: number;
  /** Until when the lock holds unless renewed. */
  lockedUntil: Date;
  /** Dead letters only: why the message was dead-lettered. */
  deadLetterReason?: string;
  deadLetterDescription?: string;
  complete(): Promise<void>;
  /** Back to the queue for another delivery (the delivery count goes up). */
  abandon(): Promise<void>;
  deadLetter(reason: string, description: string): Promise<void>;
  /** Extends the lock; resolves with its new end. */
  renewLock(): Promise<Date>;
}

export interface WorkItemReceiver {
  /** Up to `max` deliveries, waiting at most `waitMs` for the first; [] when the queue stays empty. */
  receive(max: number, waitMs: number): Promise<ReceivedWorkItem[]>;
  /** Up to `max` messages of the dead-letter queue, locked like any other; complete() removes one. */
  receiveDeadLetters(max: number, waitMs: number): Promise<ReceivedWorkItem[]>;
  close(): Promise<void>;
}

/** A settlement or renewal refused because the lock is gone (expired, or the message went to another receiver). */
export class LockLostError extends PermanentError {
  override readonly name = 'LockLostError';
  readonly code = 'MessageLockLost';
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
export function toEnvelope(item: WorkItemMessage, messageId?: (item: WorkItemMessage) => string): WorkItemEnvelope {
  return {
    messageId: messageId ? messageId(item) : `${item.runId}:${item.partitionId}`,
    subject: WORK_ITEM_SUBJECT,
    contentType: WORK_ITEM_CONTENT_TYPE,
    applicationProperties: { runId: item.runId, partitionId: item.partitionId },
    body: item,
  };
}
