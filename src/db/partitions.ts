// The worker's SQL (CONTRACT §9): claiming a partition for a delivery, committing a page (its
// raw rows and the partition's progress in ONE transaction), and the partition's outcome.
//
// A claim is a fencing token: every page commit and the finish are conditional on the
// partition still carrying the token of the delivery that commits. A worker whose lock was
// lost (the message went to another worker, which claimed the partition anew) therefore fails
// its next commit and stops; its uncommitted page is rolled back, so no page is written by two
// workers and the new claimant resumes exactly after the last committed page.
import { randomUUID } from 'node:crypto';
import { FRESH_PROGRESS, type PassProgress } from '../fetch-partition.js';
import { PermanentError } from '../errors.js';
import type { Offer } from '../nivoda/documents.js';
import { storedError, type RunStatus } from './runs.js';
import { isoOrNull, type Database, type Queryable } from './database.js';

export type PartitionStatus = 'pending' | 'working' | 'done' | 'failed';

/** Another delivery claimed the partition since (this one's lock was lost): stop, settle nothing. */
export class ClaimLostError extends PermanentError {
  override readonly name = 'ClaimLostError';
}

/** An operator abandoned the run while this delivery worked it: stop, settle the message, write nothing more. */
export class RunAbandonedError extends PermanentError {
  override readonly name = 'RunAbandonedError';
}

/** Part of every fenced write: the run is not abandoned (`abandon <runId>` stops a partition mid-way). */
const RUN_NOT_ABANDONED = `EXISTS (SELECT 1 FROM run_metadata m WHERE m.run_id = $1 AND m.status <> 'abandoned')`;

/** A fenced write changed nothing: the run was abandoned, or another delivery holds the claim. */
async function fenceFailure(db: Queryable, claim: Claim): Promise<Error> {
  const runs = await db.query<{ status: RunStatus }>('SELECT status FROM run_metadata WHERE run_id = $1', [claim.runId]);
  if (runs[0]?.status === 'abandoned') return new RunAbandonedError(`run ${claim.runId} was abandoned by an operator`);
  return new ClaimLostError(`${claim.partitionId} of run ${claim.runId} was claimed by another delivery`);
}

export interface Claim {
  runId: string;
  partitionId: string;
  token: string;
  /** Where earlier deliveries stopped. */
  progress: PassProgress;
  deliveries: number;
}

export type ClaimResult =
  | { kind: 'claimed'; claim: Claim }
  /** Settle without fetching (CONTRACT §9). */
  | { kind: 'done' }
  | { kind: 'abandoned' }
  /** No such run or partition in this database: the message belongs elsewhere (or the run was deleted). */
  | { kind: 'unknown'; why: string };

/** Takes the partition for this delivery (any earlier claim is superseded). */
export async function claimPartition(db: Database, runId: string, partitionId: string): Promise<ClaimResult> {
  return db.transaction(async (tx) => {
    const runs = await tx.query<{ status: RunStatus; recorded_at: unknown }>(
      'SELECT status, recorded_at FROM run_metadata WHERE run_id = $1',
      [runId],
    );
    const run = runs[0];
    if (!run) return { kind: 'unknown', why: `run ${runId} is not recorded in this database` };
    if (run.status === 'abandoned') return { kind: 'abandoned' };
    const rows = await tx.query<{ status: PartitionStatus; pass: number; next_offset: number; pass_state: unknown; deliveries: number }>(
      `SELECT status, pass, next_offset, pass_state, deliveries FROM run_partitions WHERE run_id = $1 AND partition_id = $2 FOR UPDATE`,
      [runId, partitionId],
    );
    const partition = rows[0];
    if (!partition) return { kind: 'unknown', why: `run ${runId} has no ${partitionId}` };
    if (partition.status === 'done') return { kind: 'done' };
    const token = randomUUID();
    await tx.query(
      `UPDATE run_partitions SET status = 'working', claim_token = $3, deliveries = deliveries + 1,
         started_at = COALESCE(started_at, now()), finished_at = NULL
       WHERE run_id = $1 AND partition_id = $2`,
      [runId, partitionId, token],
    );
    return {
      kind: 'claimed',
      claim: {
        runId,
        partitionId,
        token,
        deliveries: Number(partition.deliveries) + 1,
        progress: toProgress(partition.pass, partition.next_offset, partition.pass_state),
      },
    };
  });
}

function toProgress(pass: number, nextOffset: number, state: unknown): PassProgress {
  const stored = (typeof state === 'string' ? JSON.parse(state) : state) as Partial<PassProgress> | null;
  return { ...FRESH_PROGRESS, ...(stored ?? {}), pass: Number(pass), nextOffset: Number(nextOffset) };
}

/** The stones earlier deliveries of this partition kept: its rows in the raw table. */
export async function keptStoneIds(db: Queryable, runId: string, partitionId: string): Promise<string[]> {
  const rows = await db.query<{ supplier_stone_id: string }>(
    'SELECT supplier_stone_id FROM raw_diamonds_nivoda WHERE run_id = $1 AND partition_id = $2',
    [runId, partitionId],
  );
  return rows.map((row) => row.supplier_stone_id);
}

export interface PageWrite {
  items: Offer[];
  progress: PassProgress;
  /** Unique stones the partition has kept (fetched_records). */
  kept: number;
  calls: { search: number; count: number };
}

/**
 * Commits one page: the partition's progress (fenced by the claim) and the page's stones, in one
 * transaction. A stone is inserted, or updated when its listing changed (offer, payload, time) or
 * another run or partition now holds it, never to an older listing than the stored one.
 * Returns how many rows were written.
 */
export async function commitPage(db: Database, claim: Claim, page: PageWrite): Promise<number> {
  const { pass, nextOffset, ...state } = page.progress;
  return db.transaction(async (tx) => {
    const fenced = await tx.query(
      `UPDATE run_partitions SET pass = $4, next_offset = $5, pass_state = $6::jsonb, fetched_records = $7,
         search_calls = search_calls + $8, count_calls = count_calls + $9
       WHERE run_id = $1 AND partition_id = $2 AND claim_token = $3 AND status = 'working' AND ${RUN_NOT_ABANDONED}
       RETURNING partition_id`,
      [
        claim.runId,
        claim.partitionId,
        claim.token,
        pass,
        nextOffset,
        JSON.stringify(state),
        page.kept,
        page.calls.search,
        page.calls.count,
      ],
    );
    if (fenced.length === 0) throw await fenceFailure(tx, claim);
    if (page.items.length === 0) return 0;
    // Sorted: two transactions touching the same stones lock them in the same order.
    const rows = [...page.items]
      .sort((a, b) => (a.diamond.id < b.diamond.id ? -1 : a.diamond.id > b.diamond.id ? 1 : 0))
      .map((offer) => ({ id: offer.diamond.id, offer_id: offer.id, payload: offer, updated: offer.diamond.updated ?? null }));
    const written = await tx.query(
      `INSERT INTO raw_diamonds_nivoda AS r (supplier_stone_id, offer_id, payload, run_id, partition_id, source_updated_at)
       SELECT x.id, x.offer_id, x.payload, $2::uuid, $3, x.updated
         FROM jsonb_to_recordset($1::jsonb) AS x(id text, offer_id text, payload jsonb, updated timestamptz)
       ON CONFLICT (supplier_stone_id) DO UPDATE SET offer_id = EXCLUDED.offer_id, payload = EXCLUDED.payload,
         run_id = EXCLUDED.run_id, partition_id = EXCLUDED.partition_id, source_updated_at = EXCLUDED.source_updated_at,
         updated_at = now()
       WHERE (r.source_updated_at IS NULL OR EXCLUDED.source_updated_at IS NULL OR EXCLUDED.source_updated_at >= r.source_updated_at)
         AND (r.offer_id, r.payload, r.source_updated_at, r.run_id, r.partition_id)
             IS DISTINCT FROM (EXCLUDED.offer_id, EXCLUDED.payload, EXCLUDED.source_updated_at, EXCLUDED.run_id, EXCLUDED.partition_id)
       RETURNING 1`,
      [JSON.stringify(rows), claim.runId, claim.partitionId],
    );
    return written.length;
  });
}

export interface PartitionFinish {
  kept: number;
  count: number;
  discrepancy: number;
  calls: { search: number; count: number };
}

/** Marks the claimed partition done (inside the caller's transaction, which holds the run row). */
export async function markPartitionDone(tx: Queryable, claim: Claim, finish: PartitionFinish): Promise<void> {
  const rows = await tx.query(
    `UPDATE run_partitions SET status = 'done', finished_at = now(), fetched_records = $4, verified_count = $5,
       discrepancy = $6, claim_token = NULL, error = NULL, search_calls = search_calls + $7, count_calls = count_calls + $8
     WHERE run_id = $1 AND partition_id = $2 AND claim_token = $3 AND status = 'working' AND ${RUN_NOT_ABANDONED}
     RETURNING partition_id`,
    [claim.runId, claim.partitionId, claim.token, finish.kept, finish.count, finish.discrepancy, finish.calls.search, finish.calls.count],
  );
  if (rows.length === 0) throw await fenceFailure(tx, claim);
}

/** A partition that did not verify after its last pass: failed, so its run neither completes nor moves the watermark. */
export class UnverifiedPartitionError extends PermanentError {
  override readonly name = 'UnverifiedPartitionError';
}

/**
 * The claimed partition did not verify (CONTRACT §9: its unique stones still differ from the
 * exact count after the last pass): failed with the cause and its figures, fenced by the claim.
 * Its paging starts over on the next delivery (`worker retry`); the stones it kept stay kept.
 */
export async function markPartitionUnverified(db: Queryable, claim: Claim, finish: PartitionFinish, error: string): Promise<void> {
  const rows = await db.query(
    `UPDATE run_partitions SET status = 'failed', finished_at = now(), fetched_records = $4, verified_count = $5,
       discrepancy = $6, claim_token = NULL, error = $7, search_calls = search_calls + $8, count_calls = count_calls + $9,
       pass = 1, next_offset = 0, pass_state = NULL
     WHERE run_id = $1 AND partition_id = $2 AND claim_token = $3 AND status = 'working' AND ${RUN_NOT_ABANDONED}
     RETURNING partition_id`,
    [
      claim.runId,
      claim.partitionId,
      claim.token,
      finish.kept,
      finish.count,
      finish.discrepancy,
      storedError(error),
      finish.calls.search,
      finish.calls.count,
    ],
  );
  if (rows.length === 0) throw await fenceFailure(db, claim);
}

/**
 * A delivery gave up for now (abandoned for redelivery): the partition waits for the next one,
 * with the cause shown. Only while this delivery still holds the claim.
 */
export async function releasePartition(db: Queryable, claim: Claim, error: string): Promise<void> {
  await db.query(
    `UPDATE run_partitions SET status = 'pending', claim_token = NULL, error = $4
     WHERE run_id = $1 AND partition_id = $2 AND claim_token = $3 AND status = 'working'`,
    [claim.runId, claim.partitionId, claim.token, storedError(error)],
  );
}

/** The work item was dead-lettered: its partition failed with the cause (unless it is done). Returns whether it changed. */
export async function failPartition(
  db: Queryable,
  runId: string,
  partitionId: string,
  error: string,
  options: { generation?: number } = {},
): Promise<boolean> {
  // A dead letter of an earlier generation (a work item `worker retry` has since re-queued) says
  // nothing about the retry being worked now: only the current generation may fail it.
  const rows = await db.query(
    `UPDATE run_partitions SET status = 'failed', finished_at = now(), claim_token = NULL, error = $3
     WHERE run_id = $1 AND partition_id = $2 AND status IN ('pending', 'working') AND retries <= $4 RETURNING partition_id`,
    [runId, partitionId, storedError(error), options.generation ?? Number.MAX_SAFE_INTEGER],
  );
  return rows.length > 0;
}

/** Which re-queue of its partition a work item is: n for `<runId>:<partitionId>:retry-<n>`, 0 for the original. */
export function retryGeneration(messageId: string | undefined): number {
  const match = /:retry-(\d+)$/.exec(messageId ?? '');
  return match ? Number(match[1]) : 0;
}

export interface FailedPartition {
  partitionId: string;
  /** How often it was re-queued before. */
  retries: number;
}

/** `worker retry`: the run's failed partitions (the run must exist and not be abandoned). */
export async function failedPartitions(db: Queryable, runId: string): Promise<FailedPartition[]> {
  const runs = await db.query<{ status: RunStatus }>('SELECT status FROM run_metadata WHERE run_id = $1', [runId]);
  const status = runs[0]?.status;
  if (!status) throw new PermanentError(`no run ${runId} is recorded`);
  if (status === 'abandoned') throw new PermanentError(`run ${runId} was abandoned by an operator; its work items are not to be worked`);
  const rows = await db.query<{ partition_id: string; retries: number }>(
    `SELECT partition_id, retries FROM run_partitions WHERE run_id = $1 AND status = 'failed' ORDER BY price_min`,
    [runId],
  );
  return rows.map((row) => ({ partitionId: row.partition_id, retries: Number(row.retries) }));
}

/**
 * Before their work items go out again: each failed partition counts one more retry, committed
 * first, so the retry's message id (`…:retry-<n>`) is new even if the publish or the process
 * fails after it (a reused id would be dropped by duplicate detection). Returns the new counts.
 */
export async function reserveRetries(db: Queryable, runId: string): Promise<FailedPartition[]> {
  const rows = await db.query<{ partition_id: string; retries: number }>(
    `UPDATE run_partitions SET retries = retries + 1 WHERE run_id = $1 AND status = 'failed' RETURNING partition_id, retries`,
    [runId],
  );
  return rows.map((row) => ({ partitionId: row.partition_id, retries: Number(row.retries) }));
}

/**
 * After their work items went out again: those still failed become pending (the error is kept
 * as history). A worker may have claimed one already.
 */
export async function markRequeued(db: Queryable, runId: string, partitionIds: readonly string[]): Promise<void> {
  await db.query(
    `UPDATE run_partitions SET
       status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END,
       finished_at = CASE WHEN status = 'failed' THEN NULL ELSE finished_at END
     WHERE run_id = $1 AND partition_id = ANY($2::text[])`,
    [runId, [...partitionIds]],
  );
}

export interface PartitionOutcome {
  partitionId: string;
  status: PartitionStatus;
  fetchedRecords: number;
  deliveries: number;
  retries: number;
  verifiedCount: number | null;
  discrepancy: number | null;
  searchCalls: number;
  countCalls: number;
  startedAt: string | null;
  finishedAt: string | null;
  error: string | null;
}

/** Every partition's outcome, in price order (`status <runId>`). */
export async function listPartitionOutcomes(db: Queryable, runId: string): Promise<PartitionOutcome[]> {
  const rows = await db.query(
    `SELECT partition_id, status, fetched_records, deliveries, retries, verified_count, discrepancy, search_calls, count_calls,
            started_at, finished_at, error
       FROM run_partitions WHERE run_id = $1 ORDER BY price_min`,
    [runId],
  );
  return rows.map((row) => ({
    partitionId: String(row.partition_id),
    status: row.status as PartitionStatus,
    fetchedRecords: Number(row.fetched_records),
    deliveries: Number(row.deliveries),
    retries: Number(row.retries),
    verifiedCount: row.verified_count === null ? null : Number(row.verified_count),
    discrepancy: row.discrepancy === null ? null : Number(row.discrepancy),
    searchCalls: Number(row.search_calls),
    countCalls: Number(row.count_calls),
    startedAt: isoOrNull(row.started_at),
    finishedAt: isoOrNull(row.finished_at),
    error: typeof row.error === 'string' ? row.error : null,
  }));
}

/** The scheduler's partition records with the workers' outcomes beside them (`status <runId>`). */
export function withOutcomes<P extends { partitionId: string }>(
  partitions: P[],
  outcomes: PartitionOutcome[],
): (P & Partial<PartitionOutcome>)[] {
  const byId = new Map(outcomes.map((o) => [o.partitionId, o]));
  return partitions.map((p) => ({ ...byId.get(p.partitionId), ...p }));
}
