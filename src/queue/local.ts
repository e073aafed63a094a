// The durable local queue: without Service Bus, work items are rows of `local_work_items`
// in the scheduler's own database (migration 002), where `queue peek` shows them.
import type { Database } from '../db/database.js';
import { stopIfAsked } from '../errors.js';
import type { WorkItemMessage } from '../domain.js';
import type { Logger } from '../log.js';
import { LocalReceiver } from './local-receiver.js';
import {
  toEnvelope,
  type LocalWorkItemQueue,
  type PeekedWorkItem,
  type PublishProgress,
  type ReceiverOptions,
  type WorkItemReceiver,
} from './queue.js';

/** Rows per INSERT: keeps each statement's JSON parameter modest for thousands of items. */
const CHUNK = 500;

interface PeekRow extends Record<string, unknown> {
  message_id: string;
  subject: string;
  body: unknown;
  application_properties: unknown;
  enqueued_at: unknown;
}

export class LocalQueue implements LocalWorkItemQueue {
  readonly kind = 'local' as const;
  readonly location = 'local queue (table local_work_items)';
  private readonly logger: Logger;

  constructor(
    private readonly db: Database,
    logger: Logger,
  ) {
    this.logger = logger.child({ queue: 'local_work_items', backend: 'local' });
  }

  /** The table lives in the database the caller has just opened. */
  async checkReachable(): Promise<void> {
    await this.db.query('SELECT 1 FROM local_work_items LIMIT 0');
  }

  async publish(items: WorkItemMessage[], progress?: PublishProgress): Promise<{ published: number }> {
    if (items.length === 0) return { published: 0 };
    stopIfAsked(progress?.signal);
    const rows = items.map((item) => {
      const envelope = toEnvelope(item, progress?.messageId);
      return {
        message_id: envelope.messageId,
        subject: envelope.subject,
        content_type: envelope.contentType,
        body: envelope.body,
        application_properties: envelope.applicationProperties,
      };
    });
    // One transaction: a run's work items are queued all together or not at all.
    const inserted = await this.db.transaction(async (tx) => {
      let count = 0;
      for (let i = 0; i < rows.length; i += CHUNK) {
        // One JSON parameter expanded by jsonb_to_recordset: the same statement on pg and PGlite,
        // whatever the number of rows. ON CONFLICT keeps a re-published run/partition as one row.
        const result = await tx.query<{ message_id: string }>(
          `INSERT INTO local_work_items (message_id, subject, content_type, body, application_properties)
           SELECT r.message_id, r.subject, r.content_type, r.body, r.application_properties
             FROM jsonb_to_recordset($1::jsonb)
               AS r(message_id text, subject text, content_type text, body jsonb, application_properties jsonb)
           ON CONFLICT (message_id) DO NOTHING
           RETURNING message_id`,
          [JSON.stringify(rows.slice(i, i + CHUNK))],
        );
        count += result.length;
      }
      return count;
    });
    this.logger.info({ published: items.length, inserted, duplicates: items.length - inserted }, 'work items queued locally');
    await progress?.onSent?.(items);
    return { published: items.length };
  }

  async peek(limit = 100): Promise<PeekedWorkItem[]> {
    const rows = await this.db.query<PeekRow>(
      `SELECT message_id, subject, body, application_properties, enqueued_at
         FROM local_work_items
        ORDER BY enqueued_at, seq
        LIMIT $1`,
      [Math.max(0, Math.floor(limit))],
    );
    return rows.map((row) => ({
      messageId: row.message_id,
      subject: row.subject,
      body: parseJson(row.body) as WorkItemMessage,
      applicationProperties: parseJson(row.application_properties) as Record<string, string>,
      enqueuedAt: row.enqueued_at instanceof Date ? row.enqueued_at.toISOString() : String(row.enqueued_at),
    }));
  }

  openReceiver(options: ReceiverOptions): WorkItemReceiver {
    return new LocalReceiver(this.db, options);
  }

  /** The database belongs to the caller, who closes it. */
  async close(): Promise<void> {}
}

/** jsonb arrives parsed from both drivers; a string would mean a driver configured otherwise. */
function parseJson(value: unknown): unknown {
  return typeof value === 'string' ? JSON.parse(value) : value;
}
