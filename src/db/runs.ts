// Run records (CONTRACT §1, §5): what the scheduler writes about each run, and the questions it
// asks before starting one. Timestamps go in and come out as ISO-8601 strings (UTC, `Z`), the
// same on both backends.
//
// A run's life: 'scanning' (written as soon as the lock is held) → 'scheduling' (recorded with
// its partitions; from here every work item counts as possibly on the queue) → 'published' →
// 'completed' (the consolidator). Any step may end in 'failed' with the cause; a run that
// failed after it was recorded (recorded_at set) is finished by the next invocation, never
// re-scanned. 'abandoned' is only ever an operator's decision.
import type { BaseQuery } from '../config.js';
import type { CumulativePoint, DollarStones } from '../density.js';
import { PRICE_AXIS_END, type Partition, type PriceField, type RunType } from '../domain.js';
import { PermanentError } from '../errors.js';
import { scrub } from '../log.js';
import { iso, isoOrNull, type Database, type Queryable, type Row } from './database.js';

export type RunStatus = 'scanning' | 'scheduling' | 'published' | 'completed' | 'failed' | 'abandoned';

export interface RunRecord {
  runId: string;
  /** Null while the run has not yet read the watermark (or failed before it could). */
  runType: RunType | null;
  status: RunStatus;
  expectedWorkers: number;
  watermarkBefore: string | null;
  updatedFrom: string | null;
  updatedTo: string | null;
  priceField: PriceField | null;
  baseQuery: BaseQuery | null;
  totalRecords: number;
  countQueries: number;
  scanDurationMs: number;
  startedAt: string;
  /** When the run and its partitions were recorded (and a full run emptied the raw table). */
  recordedAt: string | null;
  publishedAt: string | null;
  completedAt: string | null;
  publishAttempts: number;
  holder: string | null;
  error: string | null;
}

/** A recorded run: everything a work item is built from is known. */
export type RecordedRun = RunRecord & { runType: RunType; updatedTo: string; priceField: PriceField; recordedAt: string };

export interface NewRun {
  runId: string;
  runType: RunType;
  expectedWorkers: number;
  watermarkBefore: string | null;
  updatedFrom: string | null;
  updatedTo: string;
  priceField: PriceField;
  baseQuery?: BaseQuery;
  totalRecords: number;
  countQueries: number;
  scanDurationMs: number;
  /** When the run began; the database's now() when absent. */
  startedAt?: string;
  /** Every point the scan probed, for the next run's warm start. */
  scanPoints?: readonly CumulativePoint[];
}

export interface PartitionRecord extends Partition {
  publishedAt: string | null;
}

/** The run is not in the state the operation needs (or does not exist): a fact, not a hiccup to retry. */
export class RunStateError extends PermanentError {
  override readonly name = 'RunStateError';
}

/**
 * How long recording waits for the raw table's lock (workers' page transactions are short). Well
 * under the stop deadline a SIGTERM leaves, so a stopped run still records why and frees its lease.
 */
const RECORD_LOCK_TIMEOUT_MS = 10_000;

/** Long enough for a stack-free message with context; bounded so a huge error body cannot bloat the table. */
const MAX_ERROR_LENGTH = 4000;

/**
 * The text an `error` column (of a run or of a partition) stores: scrubbed of secrets, because
 * operators read it back with `status`, and bounded in length. The one rule for both tables.
 */
export function storedError(error: string): string {
  return scrub(error).slice(0, MAX_ERROR_LENGTH);
}

const RUN_COLUMNS = `run_id, run_type, status, expected_workers, watermark_before, updated_from, updated_to,
  price_field, base_query, total_records, count_queries, scan_duration_ms, started_at, recorded_at, published_at,
  completed_at, publish_attempts, holder, error`;

/** The row of a run that holds the lock and is about to read the watermark and scan. */
export async function beginRun(db: Queryable, run: { runId: string; holder: string; startedAt?: string }): Promise<void> {
  await db.query(
    `INSERT INTO run_metadata (run_id, status, holder, started_at) VALUES ($1, 'scanning', $2, COALESCE($3::timestamptz, now()))`,
    [run.runId, run.holder, run.startedAt ?? null],
  );
}

/** What the run learnt from the watermark: its type and window (before the scan, so a failed scan shows them). */
export async function describeRun(
  db: Queryable,
  runId: string,
  run: Pick<NewRun, 'runType' | 'watermarkBefore' | 'updatedFrom' | 'updatedTo' | 'priceField' | 'baseQuery'> & {
    /** The version of the watermark document the run read (null: there was none); see migration 007. */
    watermarkEtag: string | null;
  },
): Promise<void> {
  await db.query(
    `UPDATE run_metadata SET run_type = $2, watermark_before = $3, updated_from = $4, updated_to = $5, price_field = $6,
       base_query = $7::jsonb, watermark_etag = $8
     WHERE run_id = $1 AND status = 'scanning'`,
    [
      runId,
      run.runType,
      run.watermarkBefore,
      run.updatedFrom,
      run.updatedTo,
      run.priceField,
      JSON.stringify(run.baseQuery ?? {}),
      run.watermarkEtag,
    ],
  );
}

/**
 * Records the run (status 'scheduling') and its partitions in ONE transaction; with
 * `emptyRawTable` (a full run) it also empties raw_diamonds_nivoda in that transaction, so
 * either all of it happens or none. TRUNCATE rather than DELETE: the table can hold millions
 * of rows, and TRUNCATE is transactional in PostgreSQL (rolled back with the rest). The run's
 * 'scanning' row is completed; without one (beginRun not called) the row is created.
 */
export async function recordRun(
  db: Database,
  run: NewRun,
  partitions: Partition[],
  options: { emptyRawTable: boolean; lockTimeoutMs?: number },
): Promise<void> {
  const lockTimeoutMs = Math.max(1, Math.floor(options.lockTimeoutMs ?? RECORD_LOCK_TIMEOUT_MS));
  await db.transaction(async (tx) => {
    // TRUNCATE waits for an ACCESS EXCLUSIVE lock: if workers hold the table, fail the run
    // with a clear error instead of hanging while the lease keeps other schedulers out.
    await tx.exec(`SET LOCAL lock_timeout = ${lockTimeoutMs}`);
    const rows = await tx.query(
      `INSERT INTO run_metadata AS r (run_id, run_type, status, expected_workers, watermark_before, updated_from,
         updated_to, price_field, base_query, total_records, count_queries, scan_duration_ms, started_at, recorded_at, scan_points)
       VALUES ($1, $2, 'scheduling', $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, COALESCE($12::timestamptz, now()), now(), $13::jsonb)
       ON CONFLICT (run_id) DO UPDATE SET run_type = EXCLUDED.run_type, status = 'scheduling',
         expected_workers = EXCLUDED.expected_workers, watermark_before = EXCLUDED.watermark_before,
         updated_from = EXCLUDED.updated_from, updated_to = EXCLUDED.updated_to, price_field = EXCLUDED.price_field,
         base_query = EXCLUDED.base_query, total_records = EXCLUDED.total_records, count_queries = EXCLUDED.count_queries,
         scan_duration_ms = EXCLUDED.scan_duration_ms, recorded_at = now(), scan_points = EXCLUDED.scan_points
       WHERE r.status = 'scanning'
       RETURNING run_id`,
      [
        run.runId,
        run.runType,
        run.expectedWorkers,
        run.watermarkBefore,
        run.updatedFrom,
        run.updatedTo,
        run.priceField,
        JSON.stringify(run.baseQuery ?? {}),
        run.totalRecords,
        run.countQueries,
        run.scanDurationMs,
        run.startedAt ?? null,
        run.scanPoints ? JSON.stringify(run.scanPoints.map((p) => [p.price, p.below])) : null,
      ],
    );
    if (rows.length === 0) throw new RunStateError(await whyNot(tx, run.runId, 'scanning'));
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

/** One more invocation is publishing this recorded run's work items (the first, or one finishing it). */
export async function notePublishAttempt(db: Queryable, runId: string, holder: string): Promise<void> {
  await db.query(
    `UPDATE run_metadata SET publish_attempts = publish_attempts + 1, holder = $2, status = 'scheduling'
     WHERE run_id = $1 AND recorded_at IS NOT NULL AND status IN ('scheduling', 'failed')`,
    [runId, holder],
  );
}

/**
 * Every work item is on the queue: the run and its partitions become published. A run that
 * failed after it was recorded may be published too (it is being finished), and one that the
 * workers already completed stays completed. Throws RunStateError for any other state.
 */
export async function markPublished(db: Database, runId: string): Promise<void> {
  await db.transaction(async (tx) => {
    const rows = await tx.query(
      // A run without work items has nothing for workers or the consolidator: it is complete at once,
      // so it never holds back a later full run.
      `UPDATE run_metadata SET published_at = now(), error = NULL,
         status = CASE WHEN expected_workers = 0 THEN 'completed' ELSE 'published' END,
         completed_at = CASE WHEN expected_workers = 0 THEN now() ELSE completed_at END
       WHERE run_id = $1 AND recorded_at IS NOT NULL AND status IN ('scheduling', 'failed') RETURNING run_id`,
      [runId],
    );
    if (rows.length === 0) {
      // Workers may finish every partition before the scheduler records the run published
      // (CONTRACT §9): then the run is already completed, which is more than published.
      const completed = await tx.query(
        `UPDATE run_metadata SET published_at = COALESCE(published_at, now()) WHERE run_id = $1 AND status = 'completed' RETURNING run_id`,
        [runId],
      );
      if (completed.length === 0) throw new RunStateError(await whyNot(tx, runId, 'scheduling'));
    }
    await tx.query('UPDATE run_partitions SET published_at = now() WHERE run_id = $1 AND published_at IS NULL', [runId]);
  });
}

/** Records which work items the queue acknowledged (information for operators: an unacknowledged one may be out too). */
export async function markPartitionsPublished(db: Queryable, runId: string, partitionIds: readonly string[]): Promise<void> {
  if (partitionIds.length === 0) return;
  await db.query(
    'UPDATE run_partitions SET published_at = now() WHERE run_id = $1 AND partition_id = ANY($2::text[]) AND published_at IS NULL',
    [runId, [...partitionIds]],
  );
}

/**
 * The run stopped with `error` ('scanning' or 'scheduling' → 'failed'). Returns false (and
 * changes nothing) when the run is in another state or does not exist: this is called on error
 * paths, where throwing would hide the error that matters. The message is scrubbed of secrets.
 */
export async function markFailed(db: Queryable, runId: string, error: string): Promise<boolean> {
  const rows = await db.query(
    `UPDATE run_metadata SET status = 'failed', error = $2 WHERE run_id = $1 AND status IN ('scanning', 'scheduling') RETURNING run_id`,
    [runId, storedError(error)],
  );
  return rows.length > 0;
}

/**
 * Marks every 'scanning' run failed. Call only while holding the single-instance lock: then
 * no live scheduler is scanning, so such a run was left by one that was killed during its
 * scan. Nothing of it was recorded or published.
 */
export async function failInterruptedScans(db: Queryable): Promise<number> {
  const rows = await db.query(
    `UPDATE run_metadata SET status = 'failed',
       error = COALESCE(error, 'the scheduler stopped during the scan (killed or crashed); nothing was recorded or published')
     WHERE status = 'scanning' RETURNING run_id`,
  );
  return rows.length;
}

/** Recorded runs whose work items were not all published (publish failed, process killed or stopped), oldest first. */
export async function unpublishedRuns(db: Queryable): Promise<RecordedRun[]> {
  const rows = await db.query(
    `SELECT ${RUN_COLUMNS} FROM run_metadata WHERE recorded_at IS NOT NULL AND status IN ('scheduling', 'failed')
     ORDER BY started_at, run_id`,
  );
  return rows.map(toRunRecord) as RecordedRun[];
}

/**
 * An operator's decision that a run's work items are not to be worked (workers settle them
 * without fetching, and the run never moves the watermark). The only way a run becomes
 * 'abandoned'. A completed run cannot be abandoned. Returns the status it had.
 */
export async function abandonRun(db: Database, runId: string, reason: string): Promise<RunStatus> {
  return db.transaction(async (tx) => {
    const rows = await tx.query<{ status: RunStatus }>('SELECT status FROM run_metadata WHERE run_id = $1 FOR UPDATE', [runId]);
    const before = rows[0]?.status;
    if (!before) throw new RunStateError(`run ${runId} does not exist`);
    if (before === 'completed') throw new RunStateError(`run ${runId} is completed; there is nothing to abandon`);
    if (before === 'abandoned') return before;
    await tx.query(`UPDATE run_metadata SET status = 'abandoned', error = $2 WHERE run_id = $1`, [
      runId,
      storedError(`abandoned by an operator: ${reason}`),
    ]);
    return before;
  });
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
 * (unless forced): every recorded run with work items that is neither completed nor abandoned.
 * An acknowledgement that never arrived proves nothing, so it does not matter how many of its
 * items the queue confirmed. Oldest first.
 */
export async function unfinishedRuns(db: Queryable): Promise<RunRecord[]> {
  const rows = await db.query(
    `SELECT ${RUN_COLUMNS} FROM run_metadata
     WHERE recorded_at IS NOT NULL AND completed_at IS NULL AND expected_workers > 0
       AND status IN ('scheduling', 'published', 'failed')
     ORDER BY started_at, run_id`,
  );
  return rows.map(toRunRecord);
}

/** Whether the raw table holds anything a full run would throw away. */
export async function rawTableHasRows(db: Queryable): Promise<boolean> {
  const rows = await db.query<{ present: boolean }>('SELECT EXISTS (SELECT 1 FROM raw_diamonds_nivoda) AS present');
  return rows[0]?.present === true;
}

/**
 * The raw table's stones per whole dollar of the price field, as the workers' filter reads it
 * (dollar_value: price / 100; dollar_per_carat: that over the carats): last night's exact shape,
 * a full scan's guide between its probes. Rows without a usable price are left out; prices past
 * the price axis are counted at its end.
 */
export async function rawStonesByDollar(db: Queryable, priceField: PriceField): Promise<DollarStones[]> {
  // CASE, not WHERE, guards the casts: SQL does not promise to test a WHERE's conditions in order.
  const number = (path: string): string =>
    `CASE WHEN jsonb_typeof(payload #> '${path}') = 'number' THEN (payload #>> '${path}')::numeric END`;
  const dollars = priceField === 'dollar_value' ? 'cents / 100' : 'cents / 100 / carats';
  const rows = await db.query<{ dollar: unknown; stones: unknown }>(
    `SELECT least(floor(${dollars}), ${PRICE_AXIS_END}) AS dollar, count(*) AS stones
       FROM (SELECT ${number('{price}')} AS cents, ${number('{diamond,certificate,carats}')} AS carats FROM raw_diamonds_nivoda) AS raw
      WHERE cents >= 0 ${priceField === 'dollar_value' ? '' : 'AND carats > 0'}
      GROUP BY 1 ORDER BY 1`,
  );
  return rows.map((row) => ({ dollar: Number(row.dollar), stones: Number(row.stones) }));
}

/** The last full run that published its work items: the yardstick for a suspiciously small full scan. */
export async function lastPublishedFullRun(db: Queryable): Promise<RunRecord | undefined> {
  const rows = await db.query(
    `SELECT ${RUN_COLUMNS} FROM run_metadata WHERE run_type = 'full' AND status IN ('published', 'completed')
     ORDER BY started_at DESC, run_id DESC LIMIT 1`,
  );
  return rows[0] ? toRunRecord(rows[0]) : undefined;
}

/**
 * The scan history a new scan may start from: the last run recorded and published (whether or
 * not its workers have finished) of the same type, price field and base filter, with its partitions.
 */
export async function lastComparableRun(
  db: Queryable,
  like: { runType: RunType; priceField: PriceField; baseQuery: BaseQuery },
): Promise<{ run: RunRecord; partitions: PartitionRecord[]; scanPoints?: CumulativePoint[] } | undefined> {
  const rows = await db.query(
    `SELECT ${RUN_COLUMNS}, scan_points FROM run_metadata
     WHERE run_type = $1 AND price_field = $2 AND base_query = $3::jsonb AND published_at IS NOT NULL
       AND status IN ('published', 'completed') AND expected_workers > 0
     ORDER BY started_at DESC, run_id DESC LIMIT 1`,
    [like.runType, like.priceField, JSON.stringify(like.baseQuery)],
  );
  if (!rows[0]) return undefined;
  const run = toRunRecord(rows[0]);
  const scanPoints = toScanPoints(rows[0].scan_points);
  return { run, partitions: await listPartitions(db, run.runId), ...(scanPoints && { scanPoints }) };
}

/** Stored scan points, or undefined when absent or not [price, below] pairs of counts (then the boundaries alone warm the scan). */
function toScanPoints(stored: unknown): CumulativePoint[] | undefined {
  // Both drivers hand jsonb over parsed: anything but an array of pairs (a JSON string too) is none.
  if (!Array.isArray(stored)) return undefined;
  const points: CumulativePoint[] = [];
  for (const pair of stored as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2 || !pair.every((n) => Number.isInteger(n) && (n as number) >= 0)) return undefined;
    points.push({ price: pair[0] as number, below: pair[1] as number });
  }
  return points;
}

function toRunRecord(row: Row): RunRecord {
  return {
    runId: String(row.run_id),
    runType: (row.run_type ?? null) as RunType | null,
    status: row.status as RunStatus,
    expectedWorkers: Number(row.expected_workers),
    watermarkBefore: isoOrNull(row.watermark_before),
    updatedFrom: isoOrNull(row.updated_from),
    updatedTo: isoOrNull(row.updated_to),
    priceField: (row.price_field ?? null) as PriceField | null,
    baseQuery: (typeof row.base_query === 'string' ? JSON.parse(row.base_query) : (row.base_query ?? null)) as BaseQuery | null,
    totalRecords: Number(row.total_records),
    countQueries: Number(row.count_queries),
    scanDurationMs: Number(row.scan_duration_ms),
    startedAt: iso(row.started_at),
    recordedAt: isoOrNull(row.recorded_at),
    publishedAt: isoOrNull(row.published_at),
    completedAt: isoOrNull(row.completed_at),
    publishAttempts: Number(row.publish_attempts),
    holder: typeof row.holder === 'string' ? row.holder : null,
    error: typeof row.error === 'string' ? row.error : null,
  };
}

async function whyNot(tx: Queryable, runId: string, wanted: string): Promise<string> {
  const rows = await tx.query('SELECT status FROM run_metadata WHERE run_id = $1', [runId]);
  return rows[0] ? `run ${runId} is ${String(rows[0].status)}, not ${wanted}` : `run ${runId} does not exist`;
}
