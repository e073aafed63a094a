// The consumer side of the local queue (migration 005): the same peek-lock semantics as
// Service Bus on rows of `local_work_items`. A delivery takes a lease (lock token, locked
// until) with `FOR UPDATE SKIP LOCKED`, so any number of workers on one PostgreSQL share the
// queue without waiting on each other; an expired lease makes the row receivable again with
// its delivery count one higher; a row returned at the max delivery count is dead-lettered.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Database } from '../db/database.js';
import { LockLostError, type ReceivedWorkItem, type ReceiverOptions, type WorkItemReceiver } from './queue.js';

/** How often an empty queue is looked at again while a receive waits. */
const POLL_MS = 250;

interface LeasedRow extends Record<string, unknown> {
  message_id: string;
  body: unknown;
  delivery_count: number;
  lock_token: string;
  locked_until: Date | string;
  dead_letter_reason: string | null;
  dead_letter_description: string | null;
}

export class LocalReceiver implements WorkItemReceiver {
  constructor(
    private readonly db: Database,
    private readonly options: ReceiverOptions,
  ) {}

  async receive(max: number, waitMs: number): Promise<ReceivedWorkItem[]> {
    return this.poll(waitMs, async () => {
      // A message whose last lease ran out (or was abandoned) at the max delivery count goes to
      // the dead letters instead of out again, as Service Bus does.
      await this.db.query(
        `UPDATE local_work_items SET state = 'dead-lettered', dead_letter_reason = 'MaxDeliveryCountExceeded',
           dead_letter_description = $2, lock_token = NULL, locked_until = NULL
         WHERE state = 'active' AND delivery_count >= $1 AND (locked_until IS NULL OR locked_until < now())`,
        [this.options.maxDeliveries, `Message could not be consumed after ${this.options.maxDeliveries} delivery attempts.`],
      );
      const rows = await this.db.query<LeasedRow>(
        `UPDATE local_work_items w SET delivery_count = w.delivery_count + 1, lock_token = gen_random_uuid(),
           locked_until = now() + make_interval(secs => $2::double precision / 1000)
         FROM (SELECT message_id FROM local_work_items
                WHERE state = 'active' AND (locked_until IS NULL OR locked_until < now()) AND delivery_count < $3
                ORDER BY enqueued_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED) pick
         WHERE w.message_id = pick.message_id
         RETURNING w.message_id, w.body, w.delivery_count, w.lock_token, w.locked_until, w.dead_letter_reason, w.dead_letter_description`,
        [Math.max(1, Math.floor(max)), this.options.lockDurationMs, this.options.maxDeliveries],
      );
      return rows.map((row) => this.delivery(row, 'active'));
    });
  }

  async receiveDeadLetters(max: number, waitMs: number): Promise<ReceivedWorkItem[]> {
    return this.poll(waitMs, async () => {
      const rows = await this.db.query<LeasedRow>(
        `UPDATE local_work_items w SET lock_token = gen_random_uuid(),
           locked_until = now() + make_interval(secs => $2::double precision / 1000)
         FROM (SELECT message_id FROM local_work_items
                WHERE state = 'dead-lettered' AND dead_letter_handled_at IS NULL AND (locked_until IS NULL OR locked_until < now())
                ORDER BY enqueued_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED) pick
         WHERE w.message_id = pick.message_id
         RETURNING w.message_id, w.body, w.delivery_count, w.lock_token, w.locked_until, w.dead_letter_reason, w.dead_letter_description`,
        [Math.max(1, Math.floor(max)), this.options.lockDurationMs],
      );
      return rows.map((row) => this.delivery(row, 'dead-lettered'));
    });
  }

  async close(): Promise<void> {}

  private async poll(waitMs: number, take: () => Promise<ReceivedWorkItem[]>): Promise<ReceivedWorkItem[]> {
    const until = Date.now() + waitMs;
    for (;;) {
      const got = await take();
      if (got.length > 0 || Date.now() >= until) return got;
      await sleep(Math.min(POLL_MS, Math.max(0, until - Date.now())));
    }
  }

  private delivery(row: LeasedRow, state: 'active' | 'dead-lettered'): ReceivedWorkItem {
    const token = row.lock_token;
    const { db, options } = this;
    /** One settlement or renewal under this lease; refused (LockLostError) once the lease is someone else's or settled. */
    const underLease = async (sql: string, params: unknown[] = []): Promise<Date> => {
      const rows = await db.query<{ locked_until: Date | string | null }>(
        `UPDATE local_work_items SET ${sql} WHERE message_id = $1 AND lock_token = $2 AND state = $3 RETURNING locked_until`,
        [row.message_id, token, state, ...params],
      );
      if (rows.length === 0) throw new LockLostError(`the lock on ${row.message_id} was lost (it expired or went to another receiver)`);
      return new Date(rows[0]!.locked_until ?? Date.now());
    };
    return {
      messageId: row.message_id,
      body: typeof row.body === 'string' ? JSON.parse(row.body) : row.body,
      deliveryCount: Number(row.delivery_count),
      lockedUntil: new Date(row.locked_until),
      ...(row.dead_letter_reason !== null && { deadLetterReason: row.dead_letter_reason }),
      ...(row.dead_letter_description !== null && { deadLetterDescription: row.dead_letter_description }),
      complete: async () => {
        await underLease(
          state === 'active'
            ? `state = 'completed', settled_at = now(), lock_token = NULL, locked_until = NULL`
            : `dead_letter_handled_at = now(), lock_token = NULL, locked_until = NULL`,
        );
      },
      abandon: async () => {
        await underLease('lock_token = NULL, locked_until = NULL');
      },
      deadLetter: async (reason, description) => {
        await underLease(
          `state = 'dead-lettered', dead_letter_reason = $4, dead_letter_description = $5, settled_at = now(),
           lock_token = NULL, locked_until = NULL`,
          [reason, description],
        );
      },
      renewLock: () => underLease(`locked_until = now() + make_interval(secs => $4::double precision / 1000)`, [options.lockDurationMs]),
    };
  }
}
