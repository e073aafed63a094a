// The work-items queue port: one interface, served by Azure Service Bus (servicebus.ts) or
// by a durable table in the scheduler's own database (local.ts), chosen in open.ts. The rest
// of the scheduler only ever calls publish(), so a run is the same whichever backend serves it.
import type { WorkItemMessage } from '../domain.js';

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
  close(): Promise<void>;
}

export interface PublishProgress {
  onSent?(items: WorkItemMessage[]): Promise<void>;
  /** Stop between batches (SIGTERM, a lost lease). */
  signal?: AbortSignal;
}

/** Throws the stop reason when `signal` has aborted: called between batches, never mid-batch. */
export function stopIfAsked(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason));
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
