// Run records (CONTRACT §1 step 6–7, §5): what the scheduler writes about each run, and the
// questions it asks before starting one. Timestamps go in and come out as ISO-8601 strings,
// the same on both backends.
import type { Partition, PriceField, RunType } from '../domain.js';
import { PermanentError } from '../errors.js';
import { scrub } from '../log.js';
import { iso, isoOrNull, type Database, type Queryable, type Row } from './database.js';

export type RunStatus = 'scheduling' | 'published' | 'failed' | 'abandoned';

export interface RunRecord {
  runId: string;
  runType: RunType;
  status: RunStatus;
  expectedWorkers: number;
  watermarkBefore: string | null;
  updatedFrom: string | null;
  updatedTo: string;
  priceField: string;
  totalRecords: number;
  countQueries: number;
  scanDurationMs: number;
  startedAt: string;
  publishedAt: string | null;
  completedAt: string | null;
  error: string | null;
}

export interface NewRun {
  runId: string;
  runType: RunType;
  expectedWorkers: number;
  watermarkBefore: string | null;
  updatedFrom: string | null;
  updatedTo: string;
  priceField: PriceField;
  totalRecords: number;
  countQueries: number;
  scanDurationMs: number;
  /** When the run began; the database's now() when absent. */
  startedAt?: string;
}

export interface PartitionRecord extends Partition {
  publishedAt: string | null;
}

/** The run is not in the state the operation needs (or does not exist): a fact, not a hiccup to retry. */
export class RunStateError extends PermanentError {
  override readonly name = 'RunStateError';
}

/** Long enough for a stack-free message with context; bounded so a huge error body cannot bloat the table. */
const MAX_ERROR_LENGTH = 4000;

const RUN_COLUMNS = `run_id, run_type, status, expected_workers, watermark_before, updated_from, updated_to,
  price_field, total_records, count_queries, scan_duration_ms, started_at, published_at, completed_at, error`;

/**
 * Writes the run (status 'scheduling') and its partitions in ONE transaction; with
 * `emptyRawTable` (a full run) it also empties raw_diamonds_nivoda in that transaction, so
 * either all of it happens or none. TRUNCATE rather than DELETE: the table can hold millions
 * of rows, and TRUNCATE is transactional in PostgreSQL (rolled back with the rest).
 */
export async function recordRun(
  db: Database,
  run: NewRun,
  partitions: Partition[],
  options: { emptyRawTable: boolean; lockTimeoutMs?: number },
): Promise<void> {
  const lockTimeoutMs = Math.max(1, Math.floor(options.lockTimeoutMs ?? 60_000));
  await db.transaction(async (tx) => {
    // TRUNCATE waits for an ACCESS EXCLUSIVE lock: if workers hold the table, fail the run
    // with a clear error instead of hanging while the lease keeps other schedulers out.
    await tx.exec(`SET LOCAL lock_timeout = ${lockTimeoutMs}`);
    await tx.query(
      `INSERT INTO run_metadata (run_id, run_type, status, expected_workers, watermark_before, updated_from,
         updated_to, price_field, total_records, count_queries, scan_duration_ms, started_at)
       VALUES ($1, $2, 'scheduling', $3, $4, $5, $6, $7, $8, $9, $10, COALESCE($11::timestamptz, now()))`,
      [
        run.runId,
        run.runType,
        run.expectedWorkers,
        run.watermarkBefore,
        run.updatedFrom,
        run.updatedTo,
        run.priceField,
        run.totalRecords,
        run.countQueries,
        run.scanDurationMs,
        run.startedAt ?? null,
      ],
    );
    await insertPartitions(tx, run.runId, partitions);
    if (options.emptyRawTable) await tx.exec('TRUNCATE TABLE raw_diamonds_nivoda');
  });
}

async function insertPartitions(tx: Queryable, runId: string, partitions: Partition[]): Promise<void> {
  if (partitions.length === 0) return;
  // One statement for all partitions (at most a few dozen): one round trip instead of N.
  const params: unknown[] = [runId];
  const tuples = partitions.map((p) => {
    const base = params.length;
    params.push(p.partitionId, p.priceMin, p.priceMax, p.expectedRecords);
    return `($1, $${base + 1}, $${base + 2}, $${base + 3}, $${base + 4})`;
  });
  await tx.query(
    `INSERT INTO run_partitions (run_id, partition_id, price_min, price_max, expected_records) VALUES ${tuples.join(', ')}`,
    params,
  );
}

/** Every work item is on the queue: the run and its partitions become published. Throws unless the run is 'scheduling'. */
export async function markPublished(db: Database, runId: string): Promise<void> {
  await db.transaction(async (tx) => {
    const rows = await tx.query(
      // A run without work items has nothing for workers or the consolidator: it is complete at once,
      // so it never holds back a later full run.
      `UPDATE run_metadata SET status = 'published', published_at = now(),
         completed_at = CASE WHEN expected_workers = 0 THEN now() ELSE completed_at END
       WHERE run_id = $1 AND status = 'scheduling' RETURNING run_id`,
      [runId],
    );
    if (rows.length === 0) throw new RunStateError(await whyNotScheduling(tx, runId));
    await tx.query('UPDATE run_partitions SET published_at = now() WHERE run_id = $1 AND published_at IS NULL', [runId]);
  });
}

/** Records which work items the queue accepted, so the guard knows a failed run's items are out. */
export async function markPartitionsPublished(db: Queryable, runId: string, partitionIds: readonly string[]): Promise<void> {
  if (partitionIds.length === 0) return;
  await db.query(
    'UPDATE run_partitions SET published_at = now() WHERE run_id = $1 AND partition_id = ANY($2::text[]) AND published_at IS NULL',
    [runId, [...partitionIds]],
  );
}

/**
 * The scheduler gave up on a run it recorded. Returns false (and changes nothing) when the run
 * is no longer 'scheduling' or does not exist: this is called on error paths, where throwing
 * would hide the error that matters. The message is scrubbed of secrets before it is stored.
 */
export async function markFailed(db: Database, runId: string, error: string): Promise<boolean> {
  const rows = await db.query(
    `UPDATE run_metadata SET status = 'failed', error = $2 WHERE run_id = $1 AND status = 'scheduling' RETURNING run_id`,
    [runId, scrub(error).slice(0, MAX_ERROR_LENGTH)],
  );
  return rows.length > 0;
}

/** The last runs, newest first. */
export async function listRuns(db: Queryable, limit: number): Promise<RunRecord[]> {
  const rows = await db.query(`SELECT ${RUN_COLUMNS} FROM run_metadata ORDER BY started_at DESC, run_id DESC LIMIT $1`, [limit]);
  return rows.map(toRunRecord);
}

export async function getRun(db: Queryable, runId: string): Promise<RunRecord | undefined> {
  const rows = await db.query(`SELECT ${RUN_COLUMNS} FROM run_metadata WHERE run_id = $1`, [runId]);
  return rows[0] ? toRunRecord(rows[0]) : undefined;
}

export async function listPartitions(db: Queryable, runId: string): Promise<PartitionRecord[]> {
  const rows = await db.query(
    `SELECT partition_id, price_min, price_max, expected_records, published_at FROM run_partitions
     WHERE run_id = $1 ORDER BY price_min`,
    [runId],
  );
  return rows.map((row) => ({
    partitionId: String(row.partition_id),
    priceMin: Number(row.price_min),
    priceMax: Number(row.price_max),
    expectedRecords: Number(row.expected_records),
    publishedAt: isoOrNull(row.published_at),
  }));
}

/**
 * Runs whose workers may still be writing to the raw table, so a full run must not empty it
 * (unless forced): published and not completed by the consolidator; and failed or abandoned
 * runs of the last RECENTLY_PUBLISHED_HOURS of which some work item reached the queue before
 * the failure. Runs without work items never count. Oldest first.
 */
export async function unfinishedRuns(db: Queryable): Promise<RunRecord[]> {
  const rows = await db.query(
    `SELECT ${RUN_COLUMNS} FROM run_metadata
     WHERE completed_at IS NULL AND expected_workers > 0
       AND (status = 'published'
            OR (status IN ('failed', 'abandoned') AND started_at > now() - make_interval(hours => $1)
                AND EXISTS (SELECT 1 FROM run_partitions p
                            WHERE p.run_id = run_metadata.run_id AND p.published_at IS NOT NULL)))
     ORDER BY started_at, run_id`,
    [RECENTLY_PUBLISHED_HOURS],
  );
  return rows.map(toRunRecord);
}

/** How long the work items of a failed or abandoned run are assumed to be in workers' hands. */
export const RECENTLY_PUBLISHED_HOURS = 12;

/** Whether the raw table holds anything a full run would throw away. */
export async function rawTableHasRows(db: Queryable): Promise<boolean> {
  const rows = await db.query<{ present: boolean }>('SELECT EXISTS (SELECT 1 FROM raw_diamonds_nivoda) AS present');
  return rows[0]?.present === true;
}

/** The last full run that published its work items: the yardstick for a suspiciously small full scan. */
export async function lastPublishedFullRun(db: Queryable): Promise<RunRecord | undefined> {
  const rows = await db.query(
    `SELECT ${RUN_COLUMNS} FROM run_metadata WHERE run_type = 'full' AND status = 'published'
     ORDER BY started_at DESC, run_id DESC LIMIT 1`,
  );
  return rows[0] ? toRunRecord(rows[0]) : undefined;
}

/**
 * Marks every 'scheduling' run as 'abandoned'. Call only while holding the single-instance
 * lock: then no live scheduler is writing one, so any such run was left by a crashed one.
 * Some of its work items may already be on the queue, so unfinishedRuns still counts it for a while.
 */
export async function abandonStaleRuns(db: Queryable): Promise<number> {
  const rows = await db.query(
    `UPDATE run_metadata SET status = 'abandoned',
       error = COALESCE(error, 'abandoned: the scheduler stopped before publishing every work item')
     WHERE status = 'scheduling' RETURNING run_id`,
  );
  return rows.length;
}

function toRunRecord(row: Row): RunRecord {
  return {
    runId: String(row.run_id),
    runType: row.run_type as RunType,
    status: row.status as RunStatus,
    expectedWorkers: Number(row.expected_workers),
    watermarkBefore: isoOrNull(row.watermark_before),
    updatedFrom: isoOrNull(row.updated_from),
    updatedTo: iso(row.updated_to),
    priceField: String(row.price_field),
    totalRecords: Number(row.total_records),
    countQueries: Number(row.count_queries),
    scanDurationMs: Number(row.scan_duration_ms),
    startedAt: iso(row.started_at),
    publishedAt: isoOrNull(row.published_at),
    completedAt: isoOrNull(row.completed_at),
    error: typeof row.error === 'string' ? row.error : null,
  };
}

async function whyNotScheduling(tx: Queryable, runId: string): Promise<string> {
  const rows = await tx.query('SELECT status FROM run_metadata WHERE run_id = $1', [runId]);
  return rows[0] ? `run ${runId} is ${String(rows[0].status)}, not scheduling` : `run ${runId} does not exist`;
}
