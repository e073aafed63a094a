// Consolidation (CONTRACT §9): a run whose partitions are all done becomes `completed` exactly
// once, and the watermark moves to its updatedTo, conditionally and never backwards.
//
// Completing: the worker that finishes a partition does so in one transaction that first locks
// the run row (SELECT … FOR UPDATE), so two workers finishing the last two partitions at once
// serialise and exactly one of them sees every partition done and completes the run.
//
// The watermark: lastUpdatedAt = the updatedTo of the newest completed run such that every
// earlier recorded run is completed or abandoned (or covered by a completed full run started
// after it): the watermark never jumps over a run that is still worked, failed or failing,
// whose stones would otherwise never be fetched. The write is conditional on the version read
// (a concurrent writer makes it re-read and decide again) and never moves the watermark back.
// It is made once per run: afterwards the runs it covers get `watermark_written_at`, and a
// run that has it is never written again, so an operator's later `watermark set` (a rewind to
// re-fetch) or `watermark clear` stands; so does one made while the run was being worked (a
// `watermark set` after the run started, or a cleared watermark under an incremental run).
// `consolidate` repeats both halves, idempotently, to repair a crash in between.
import { iso, type Database, type Queryable } from './db/database.js';
import { markPartitionDone, type Claim, type PartitionFinish } from './db/partitions.js';
import type { RunStatus } from './db/runs.js';
import { WatermarkConflictError } from './errors.js';
import type { Logger } from './log.js';
import { withRetry } from './retry.js';
import type { StoredWatermark, WatermarkStore } from './watermark.js';

/** Run states from which a run whose partitions are all done may be completed: recorded, and not abandoned. */
const COMPLETABLE: readonly RunStatus[] = ['scheduling', 'published', 'failed'];

/**
 * Finishes the claimed partition and, when it was the run's last, completes the run, in one
 * transaction holding the run row. Returns whether this call completed the run.
 */
export async function finishPartition(db: Database, claim: Claim, finish: PartitionFinish): Promise<{ runCompleted: boolean }> {
  return db.transaction(async (tx) => {
    await tx.query('SELECT run_id FROM run_metadata WHERE run_id = $1 FOR UPDATE', [claim.runId]);
    await markPartitionDone(tx, claim, finish);
    return { runCompleted: await completeIfAllDone(tx, claim.runId) };
  });
}

/** Completes the run when every partition is done (the caller holds the run row). Returns whether it did now. */
async function completeIfAllDone(tx: Queryable, runId: string): Promise<boolean> {
  const rows = await tx.query(
    `UPDATE run_metadata SET status = 'completed', completed_at = now(), error = NULL
     WHERE run_id = $1 AND status = ANY($2::text[]) AND recorded_at IS NOT NULL AND completed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM run_partitions p WHERE p.run_id = $1 AND p.status <> 'done')
     RETURNING run_id`,
    [runId, [...COMPLETABLE]],
  );
  return rows.length > 0;
}

export interface WatermarkAdvance {
  /** The watermark written now, or null when it was already there (or nothing is due). */
  written: string | null;
  /**
   * What was decided for the due run: written now; already written (or found past) by an
   * earlier consolidation, so left alone whatever the watermark says now; found at or past its
   * updatedTo; left as an operator changed it after the run started; nothing due.
   */
  decision: 'written' | 'already-written' | 'already-past' | 'operator-changed' | 'nothing-due';
  /** The run whose updatedTo the watermark now stands at, if any run is due. */
  runId: string | null;
  lastUpdatedAt: string | null;
  /** Why the watermark stands where it does, when a later completed run could not move it. */
  heldBackBy: string | null;
}

interface RunRow {
  runId: string;
  runType: 'full' | 'incremental';
  status: RunStatus;
  updatedTo: string;
  completedAt: string | null;
  startedAt: string;
  /** The watermark the run started from (incremental runs only). */
  watermarkBefore: string | null;
  /** The version of the watermark document the run read (null: none, or recorded before migration 007). */
  watermarkEtag: string | null;
  watermarkWrittenAt: string | null;
}

async function recordedRuns(db: Queryable): Promise<RunRow[]> {
  const rows = await db.query(
    `SELECT run_id, run_type, status, updated_to, completed_at, started_at, watermark_before, watermark_etag, watermark_written_at
       FROM run_metadata
      WHERE recorded_at IS NOT NULL AND status <> 'abandoned'
      ORDER BY started_at, run_id`,
  );
  return rows.map((row) => ({
    runId: String(row.run_id),
    runType: row.run_type as RunRow['runType'],
    status: row.status as RunStatus,
    updatedTo: iso(row.updated_to),
    completedAt: row.completed_at ? iso(row.completed_at) : null,
    startedAt: iso(row.started_at),
    watermarkBefore: row.watermark_before ? iso(row.watermark_before) : null,
    watermarkEtag: typeof row.watermark_etag === 'string' ? row.watermark_etag : null,
    watermarkWrittenAt: row.watermark_written_at ? iso(row.watermark_written_at) : null,
  }));
}

/** The newest completed run not preceded by a run that is still open (a completed full run covers what came before it). */
export function watermarkTarget<R extends Pick<RunRow, 'runType' | 'status'>>(runs: readonly R[]): { due: R | null; heldBackBy: R | null } {
  let due: R | null = null;
  let open: R | null = null;
  for (const run of runs) {
    if (run.status === 'completed') {
      if (run.runType === 'full') open = null;
      if (!open) due = run;
    } else {
      open ??= run;
    }
  }
  return { due, heldBackBy: open };
}

/** `watermark set` writes this lastRunId (src/commands.ts). */
const OPERATOR_RUN_ID = 'manual';

/**
 * Why the stored watermark must be left as it is for `due` although it is earlier: an operator
 * changed it after the run started (a rewind to re-fetch, or a clear under an incremental run,
 * which started from a watermark that is now gone). Null when the run's write may go ahead.
 *
 * The document the run read decides first: a run that read the operator's very document (same
 * etag) has fetched from it, so moving it on is what the operator asked for. Any other document
 * falls back to the times, which come from two clocks (the operator's host, the database) and tie
 * within a millisecond; a tie counts as the operator's, so it errs towards fetching again. An
 * equal value is not the same document: an operator may set again, after the run started, the
 * value it started from (to fetch again from there).
 */
function operatorChange(due: RunRow, stored: StoredWatermark | null): string | null {
  if (!stored) return due.watermarkBefore !== null ? 'the watermark was cleared after the run started' : null;
  const { lastRunId, lastRunCompletedAt } = stored.watermark;
  if (lastRunId !== OPERATOR_RUN_ID || lastRunCompletedAt === undefined) return null;
  if (due.watermarkEtag !== null && due.watermarkEtag === stored.etag) return null;
  if (Date.parse(lastRunCompletedAt) >= Date.parse(due.startedAt))
    return `an operator set the watermark at ${lastRunCompletedAt}, after the run started`;
  return null;
}

/**
 * Moves the watermark to where the completed runs allow (see the top of this file): read,
 * compare, write conditionally on what was read; a conflict re-reads and decides again. A run
 * whose watermark was written (or found past) before is never written again.
 */
export async function advanceWatermark(db: Queryable, watermarks: WatermarkStore, logger: Logger): Promise<WatermarkAdvance> {
  const { due, heldBackBy } = watermarkTarget(await recordedRuns(db));
  if (heldBackBy) {
    logger.debug({ heldBackBy: heldBackBy.runId, status: heldBackBy.status }, 'the watermark waits for an earlier run');
  }
  const held = heldBackBy?.runId ?? null;
  if (!due) return { written: null, decision: 'nothing-due', runId: null, lastUpdatedAt: null, heldBackBy: held };
  let decision: WatermarkAdvance['decision'] = 'already-written';
  let written: string | null = null;
  if (due.watermarkWrittenAt === null) {
    [decision, written] = await withRetry(
      async (): Promise<[WatermarkAdvance['decision'], string | null]> => {
        const stored = await watermarks.read();
        const current = stored?.watermark.lastUpdatedAt;
        // Never backwards: an operator (or another consolidator) may already have moved it further.
        if (current !== undefined && Date.parse(current) >= Date.parse(due.updatedTo)) return ['already-past', null];
        const change = operatorChange(due, stored);
        if (change) {
          logger.warn(
            {
              runId: due.runId,
              stored: stored?.watermark ?? null,
              runUpdatedTo: due.updatedTo,
              why: change,
              location: watermarks.location,
            },
            'watermark left as the operator changed it; not written for this run',
          );
          return ['operator-changed', null];
        }
        const watermark = {
          lastUpdatedAt: due.updatedTo,
          lastRunId: due.runId,
          lastRunCompletedAt: due.completedAt ?? new Date().toISOString(),
        };
        await watermarks.write(watermark, stored ? { ifMatch: stored.etag } : { ifNoneMatch: '*' });
        logger.info(
          { before: current ?? null, after: due.updatedTo, lastRunId: due.runId, location: watermarks.location },
          'watermark advanced',
        );
        return ['written', due.updatedTo];
      },
      {
        attempts: 5,
        baseDelayMs: 50,
        maxDelayMs: 1000,
        retryable: (err) => err instanceof WatermarkConflictError,
        onRetry: ({ attempt, error }) =>
          logger.info({ attempt, reason: (error as Error).message }, 'the watermark changed meanwhile; deciding again'),
      },
    );
  }
  // Every completed run up to the one the watermark now covers has had its decision: never again.
  await db.query(
    `UPDATE run_metadata SET watermark_written_at = now()
      WHERE status = 'completed' AND watermark_written_at IS NULL AND updated_to <= $1::timestamptz`,
    [due.updatedTo],
  );
  return { written, decision, runId: due.runId, lastUpdatedAt: due.updatedTo, heldBackBy: held };
}

export interface ConsolidationReport {
  /** Runs this call completed (their partitions were all done, the completion had not happened). */
  completed: string[];
  /** Runs looked at that are not complete, with their partitions' states. */
  incomplete: { runId: string; status: RunStatus; partitions: Record<string, number> }[];
  watermark: WatermarkAdvance;
}

/**
 * `consolidate [runId]`: completes every run (or that run) whose partitions are all done, then
 * advances the watermark. Idempotent: a second call changes nothing.
 */
export async function consolidate(db: Database, watermarks: WatermarkStore, logger: Logger, runId?: string): Promise<ConsolidationReport> {
  const candidates = await db.query<{ run_id: string; status: RunStatus }>(
    `SELECT run_id, status FROM run_metadata
      WHERE recorded_at IS NOT NULL AND completed_at IS NULL AND status = ANY($1::text[]) AND ($2::uuid IS NULL OR run_id = $2::uuid)
      ORDER BY started_at, run_id`,
    [[...COMPLETABLE], runId ?? null],
  );
  const completed: string[] = [];
  const incomplete: ConsolidationReport['incomplete'] = [];
  for (const candidate of candidates) {
    const done = await db.transaction(async (tx) => {
      await tx.query('SELECT run_id FROM run_metadata WHERE run_id = $1 FOR UPDATE', [candidate.run_id]);
      return completeIfAllDone(tx, candidate.run_id);
    });
    if (done) {
      completed.push(candidate.run_id);
      logger.info({ runId: candidate.run_id }, 'run completed by consolidation');
      continue;
    }
    const states = await db.query<{ status: string; n: number }>(
      'SELECT status, count(*)::int AS n FROM run_partitions WHERE run_id = $1 GROUP BY status',
      [candidate.run_id],
    );
    incomplete.push({
      runId: candidate.run_id,
      status: candidate.status,
      partitions: Object.fromEntries(states.map((s) => [s.status, Number(s.n)])),
    });
  }
  return { completed, incomplete, watermark: await advanceWatermark(db, watermarks, logger) };
}
