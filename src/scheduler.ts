// One run, in the order of CONTRACT §1: (finish an unpublished run) → row → watermark → window →
// scan → partition → record → publish. The single-instance lock is taken by the caller
// (app.ts) before any of this.
import { randomUUID } from 'node:crypto';
import type { Config } from './config.js';
import type { Database } from './db/database.js';
import {
  beginRun,
  describeRun,
  failInterruptedScans,
  lastComparableRun,
  rawStonesByDollar,
  lastPublishedFullRun,
  listPartitions,
  markFailed,
  markPartitionsPublished,
  markPublished,
  notePublishAttempt,
  rawTableHasRows,
  recordRun,
  RunStateError,
  unfinishedRuns,
  unpublishedRuns,
  type RecordedRun,
} from './db/runs.js';
import type { CumulativePoint, DollarStones } from './density.js';
import {
  PRICE_AXIS_END,
  type BaseFilter,
  type Partition,
  type PriceField,
  type RunType,
  type UpdatedWindow,
  type Watermark,
  type WorkItemMessage,
} from './domain.js';
import { PermanentError, StoppedError, stopIfAsked, toError } from './errors.js';
import { scanDensity, warmStartFrom } from './heatmap.js';
import { scrub, type Logger } from './log.js';
import type { NivodaClient } from './nivoda/client.js';
import { diamondQuery, type QueryScope } from './nivoda/query.js';
import { planPartitions, type PartitionRules } from './partitioner.js';
import type { WorkItemQueue } from './queue/queue.js';
import { withRetry } from './retry.js';
import type { WatermarkStore } from './watermark.js';

/** What `plan --json` prints (CONTRACT §7) and what a run records and publishes. */
export interface Plan {
  runType: RunType;
  updatedFrom: string | null;
  updatedTo: string;
  watermarkBefore: string | null;
  totalRecords: number;
  priceField: PriceField;
  partitions: Partition[];
  scan: {
    countQueries: number;
    durationMs: number;
    /** Warm: started from the last comparable run's plan (boundaries and scan points); cold: from scratch. */
    start: 'warm' | 'cold';
    /** Why the scan stopped: the balance target reached, provably unreachable, or the query budget spent. */
    stopReason: string;
    /** The largest partition / ideal. */
    balance: number;
    rounds: number;
  };
  /** Every point the scan probed (inside the price axis): recorded with the run, the next scan's warm start. */
  scanPoints: readonly CumulativePoint[];
}

export interface PlanDeps {
  config: Config;
  nivoda: NivodaClient;
  watermarks: WatermarkStore;
  logger: Logger;
  now?: () => Date;
  /** Heard after every count query of the scan (the terminal's progress line). */
  onCount?: (price: number | undefined) => void;
  /** Last night's plan of the same kind, for a warm start; absent or undefined = cold scan. */
  history?: (like: { runType: RunType; priceField: PriceField; baseQuery: BaseFilter }) => Promise<ScanHistory | undefined>;
}

/** A recorded run's plan that a new scan may start from. */
export interface ScanHistory {
  runId: string;
  totalRecords: number;
  partitions: readonly Partition[];
  /** Every point that run's scan probed, when recorded. */
  points?: readonly CumulativePoint[];
  /** Full runs: the raw table's stones per whole dollar (what the workers of the runs before wrote), the scan's exact guide. */
  stones?: readonly DollarStones[];
  /** Why the raw table's stones could not be read (the scan went without them). */
  stonesUnread?: string;
}

export interface RunDeps extends PlanDeps {
  db: Database;
  queue: WorkItemQueue;
}

export interface RunOptions {
  /** `--full`: a full run whatever the watermark says. */
  full?: boolean;
  /** `--force`: let a full run empty the raw table although earlier runs are still being worked. */
  force?: boolean;
  runId?: string;
  /** How this invocation names itself (host:pid:runId) in the run row. */
  holder?: string;
  /**
   * Aborted when the process is asked to stop (SIGTERM) or lost the single-instance lock:
   * the run stops at the next safe point (between count queries, between publish batches).
   */
  signal?: AbortSignal;
}

export type RunOutcome =
  | { kind: 'published'; runId: string; plan: Plan; published: number }
  /** This invocation published the rest of runs an earlier one recorded but did not finish publishing. */
  | { kind: 'finished'; runIds: string[]; published: number };

/** Timestamps passed on are UTC with `Z`, whatever offset the watermark was written with. */
const utc = (value: string): string => new Date(value).toISOString();

/** Decides the run type and window (CONTRACT §1 steps 2–3); the watermark is read once, here. */
export async function resolveWindow(
  deps: Pick<PlanDeps, 'config' | 'watermarks' | 'now'>,
  options: { full?: boolean },
): Promise<{ runType: RunType; window: UpdatedWindow; watermark: Watermark | null; watermarkEtag: string | null }> {
  const stored = await deps.watermarks.read();
  const watermark = stored?.watermark ?? null;
  const watermarkEtag = stored?.etag ?? null;
  const requested = options.full ? 'full' : deps.config.run.type;
  if (requested === 'incremental' && !watermark) {
    throw new PermanentError(
      `RUN_TYPE=incremental but there is no watermark at ${deps.watermarks.location}; ` +
        'run a full run first (or set one with `watermark set <ISO>`)',
    );
  }
  const runType: RunType = requested === 'full' || !watermark ? 'full' : 'incremental';
  const to = (deps.now ?? (() => new Date()))().toISOString();
  if (runType === 'full' || !watermark) return { runType, window: { to }, watermark, watermarkEtag };
  if (Date.parse(watermark.lastUpdatedAt) > Date.parse(to)) {
    throw new PermanentError(
      `the watermark at ${deps.watermarks.location} is in the future (lastUpdatedAt ${watermark.lastUpdatedAt}, now ${to}); ` +
        'fix it with `watermark set <ISO>`',
    );
  }
  const from = new Date(Date.parse(watermark.lastUpdatedAt) - deps.config.run.safetyBufferMinutes * 60_000);
  return { runType, window: { from: from.toISOString(), to }, watermark, watermarkEtag };
}

function rulesFor(config: Config, runType: RunType): PartitionRules {
  return {
    maxWorkers: runType === 'full' ? config.heatmap.maxWorkers : config.heatmap.incrementalMaxWorkers,
    recordsPerWorker: config.heatmap.recordsPerWorker,
    minRecordsPerWorker: config.heatmap.minRecordsPerWorker,
  };
}

/** Scans and partitions without writing or publishing anything: the `plan` command. */
export async function plan(deps: PlanDeps, options: { full?: boolean; signal?: AbortSignal } = {}): Promise<Plan> {
  return scanWindow(deps, await resolveWindow(deps, options), options.signal);
}

type ResolvedWindow = Awaited<ReturnType<typeof resolveWindow>>;

/** Scans a fixed window and partitions it (CONTRACT §1 steps 4–5). */
async function scanWindow(deps: PlanDeps, { runType, window, watermark }: ResolvedWindow, signal?: AbortSignal): Promise<Plan> {
  const { config, nivoda, logger } = deps;
  const scope: QueryScope = { baseQuery: config.nivoda.baseQuery, priceField: config.nivoda.priceField, window };
  const rules = rulesFor(config, runType);
  logger.info({ runType, window, strategy: config.heatmap.strategy }, 'scanning inventory density');

  const history = deps.history
    ? await deps.history({ runType, priceField: config.nivoda.priceField, baseQuery: config.nivoda.baseQuery })
    : undefined;
  const started = performance.now();
  const scan = await scanDensity(
    async (bounds) => {
      const count = await nivoda.count(diamondQuery(scope, bounds), signal);
      deps.onCount?.(bounds.from);
      return count;
    },
    {
      strategy: config.heatmap.strategy,
      maxPrice: config.heatmap.maxPrice,
      denseZoneThreshold: config.heatmap.denseZoneThreshold,
      denseZoneStep: config.heatmap.denseZoneStep,
      partitions: rules,
      concurrency: config.nivoda.maxConcurrency,
      balanceTolerance: config.heatmap.balanceTolerance,
      maxQueries: config.heatmap.maxCountQueries,
      warmStart: history ? warmStartFrom(history.totalRecords, history.partitions, history.points, history.stones) : undefined,
    },
  );
  const durationMs = Math.round(performance.now() - started);
  const partitions = planPartitions(scan, rules);
  logger.info(
    {
      start: scan.start,
      startReason: scan.startReason,
      ...(scan.startDetail && { startDetail: scan.startDetail }),
      ...(history && {
        historyRunId: history.runId,
        historyPoints: history.points?.length ?? 0,
        historyStoneDollars: history.stones?.length ?? 0,
        ...(history.stonesUnread !== undefined && { stonesUnread: history.stonesUnread }),
      }),
      ...(scan.start === 'warm' && { prior: scan.prior }),
    },
    scan.start === 'warm'
      ? "scan started from the last comparable run's plan (its boundaries; between them, the raw table's stones per dollar or its scan's points)"
      : 'cold scan (no usable history)',
  );
  const figures = {
    totalRecords: scan.total,
    partitions: partitions.length,
    countQueries: scan.countQueries,
    rounds: scan.rounds,
    durationMs,
    stopReason: scan.stopReason,
    balance: Number(scan.balance.toFixed(4)),
    floor: Number(scan.floor.toFixed(4)),
  };
  if (scan.stopReason === 'budget') logger.warn(figures, 'planned partitions: the count-query budget ran out before the balance target');
  else logger.info(figures, 'planned partitions');
  return {
    runType,
    updatedFrom: window.from ?? null,
    updatedTo: window.to,
    watermarkBefore: runType === 'incremental' && watermark ? utc(watermark.lastUpdatedAt) : null,
    totalRecords: scan.total,
    priceField: config.nivoda.priceField,
    partitions,
    scan: {
      countQueries: scan.countQueries,
      durationMs,
      start: scan.start,
      stopReason: scan.stopReason,
      balance: Number(scan.balance.toFixed(4)),
      rounds: scan.rounds,
    },
    scanPoints: scan.points.filter((p) => p.price > 0 && p.price < PRICE_AXIS_END),
  };
}

/** What a work item is built from: a plan about to be recorded, or a recorded run being finished. */
interface WorkItemSource {
  runType: RunType;
  watermarkBefore: string | null;
  updatedFrom: string | null;
  updatedTo: string;
  priceField: PriceField;
  baseQuery: BaseFilter;
}

/** The CONTRACT §3 message bodies of a run. */
export function workItems(runId: string, run: WorkItemSource, partitions: readonly Partition[]): WorkItemMessage[] {
  const incremental = run.runType === 'incremental';
  return partitions.map((p) => ({
    runId,
    partitionId: p.partitionId,
    priceMin: p.priceMin,
    priceMax: p.priceMax,
    expectedRecords: p.expectedRecords,
    isIncremental: incremental,
    ...(incremental && run.watermarkBefore ? { watermarkBefore: utc(run.watermarkBefore) } : {}),
    priceField: run.priceField,
    ...(incremental && run.updatedFrom ? { updatedFrom: utc(run.updatedFrom) } : {}),
    updatedTo: utc(run.updatedTo),
    partitionCount: partitions.length,
    query: run.baseQuery,
  }));
}

/**
 * The whole run (after the lock). A run recorded by an earlier invocation but not published
 * is finished first, and is then this invocation's whole work (CONTRACT §1). Otherwise the run
 * row is written at once ('scanning'), so every failure from here on leaves a visible 'failed'
 * row; the run and its partitions are recorded in one transaction before anything is published
 * (the table is the outbox), and the watermark, which only the consolidator advances, is not
 * touched.
 */
export async function run(deps: RunDeps, options: RunOptions = {}): Promise<RunOutcome> {
  const runId = options.runId ?? randomUUID();
  const holder = options.holder ?? runId;
  const logger = deps.logger.child({ runId });
  const { db } = deps;

  // We hold the lock, so a run still 'scanning' was left by a scheduler killed mid-scan.
  const interrupted = await failInterruptedScans(db);
  if (interrupted > 0) logger.warn({ interrupted }, 'marked runs left scanning by a stopped scheduler as failed');
  const unpublished = await unpublishedRuns(db);
  if (unpublished.length > 0) return finishUnpublished(deps, unpublished, holder, options.signal);

  await beginRun(db, { runId, holder });
  const withHistory: RunDeps = { ...deps, history: deps.history ?? ((like) => scanHistory(db, like)) };
  let planned: Plan;
  try {
    stopIfAsked(options.signal);
    const resolved = await resolveWindow(deps, options);
    await describeRun(db, runId, {
      runType: resolved.runType,
      watermarkBefore: resolved.watermark && resolved.runType === 'incremental' ? utc(resolved.watermark.lastUpdatedAt) : null,
      watermarkEtag: resolved.watermarkEtag,
      updatedFrom: resolved.window.from ?? null,
      updatedTo: resolved.window.to,
      priceField: deps.config.nivoda.priceField,
      baseQuery: deps.config.nivoda.baseQuery,
    });
    const full = resolved.runType === 'full';
    // Before the scan, so a refused run spends none of the vendor's quota.
    if (full && !options.force) await refuseWhileRunsAreWorked(db);
    planned = await scanWindow({ ...withHistory, logger }, resolved, options.signal);
    if (full && !options.force) await refuseSuspiciousFullScan(db, planned);
    stopIfAsked(options.signal);
    // A dead broker fails the run here, before the raw table is emptied.
    await deps.queue.checkReachable();
    stopIfAsked(options.signal);
    await recordRun(
      db,
      {
        runId,
        runType: planned.runType,
        expectedWorkers: planned.partitions.length,
        watermarkBefore: planned.watermarkBefore,
        updatedFrom: planned.updatedFrom,
        updatedTo: planned.updatedTo,
        priceField: planned.priceField,
        baseQuery: deps.config.nivoda.baseQuery,
        totalRecords: planned.totalRecords,
        countQueries: planned.scan.countQueries,
        scanDurationMs: planned.scan.durationMs,
        scanPoints: planned.scanPoints,
      },
      planned.partitions,
      { emptyRawTable: full },
    );
  } catch (thrown) {
    await markFailed(db, runId, failureCause(thrown, options.signal)).catch((markError: unknown) =>
      logger.error({ err: toError(markError) }, 'could not record the run as failed'),
    );
    throw thrown;
  }
  logger.info(
    { runType: planned.runType, partitions: planned.partitions.length, emptiedRawTable: planned.runType === 'full' },
    'run recorded',
  );
  const items = workItems(runId, { ...planned, baseQuery: deps.config.nivoda.baseQuery }, planned.partitions);
  const published = await publishRecorded(deps, logger, runId, holder, items, options.signal);
  return { kind: 'published', runId, plan: planned, published };
}

/** Publishes every work item of runs recorded earlier (same run id, same message ids), oldest first. */
async function finishUnpublished(deps: RunDeps, runs: RecordedRun[], holder: string, signal: AbortSignal | undefined): Promise<RunOutcome> {
  let published = 0;
  for (const recorded of runs) {
    const logger = deps.logger.child({ runId: recorded.runId });
    logger.warn(
      { status: recorded.status, recordedAt: recorded.recordedAt, publishAttempts: recorded.publishAttempts, error: recorded.error },
      'finishing a run recorded by an earlier invocation whose work items were not all published (no new scan, raw table untouched)',
    );
    const partitions = await listPartitions(deps.db, recorded.runId);
    const items = workItems(recorded.runId, { ...recorded, baseQuery: recorded.baseQuery ?? {} }, partitions);
    published += await publishRecorded(deps, logger, recorded.runId, holder, items, signal);
  }
  return { kind: 'finished', runIds: runs.map((r) => r.runId), published };
}

/**
 * Publishes a recorded run's work items and marks it published. A failure (after the queue's
 * retries), a stop or a lost lease marks it failed with the cause; it stays recorded, so the
 * next invocation publishes it again and the queue drops what already arrived.
 */
async function publishRecorded(
  deps: RunDeps,
  logger: Logger,
  runId: string,
  holder: string,
  items: WorkItemMessage[],
  signal: AbortSignal | undefined,
): Promise<number> {
  const { db, queue } = deps;
  await notePublishAttempt(db, runId, holder);
  try {
    await queue.publish(items, {
      signal,
      // Bookkeeping only: a failure to note it must not fail a publish that succeeded.
      onSent: (sent) =>
        markPartitionsPublished(
          db,
          runId,
          sent.map((item) => item.partitionId),
        ).catch((err: unknown) => logger.warn({ err: toError(err) }, 'could not record which work items were acknowledged')),
    });
  } catch (thrown) {
    const cause = failureCause(thrown, signal);
    await markFailed(db, runId, cause).catch((markError: unknown) =>
      logger.error({ err: toError(markError) }, 'could not record the run as failed'),
    );
    const error = new Error(
      `publishing the work items of run ${runId} stopped: ${cause}; the run stays recorded and the next invocation ` +
        'publishes its work items again under the same run id (the queue drops the copies of those already out)',
      { cause: thrown },
    );
    throw signal?.aborted ? new StoppedError(error.message, { cause: thrown }) : error;
  }
  await markPublishedPatiently(db, runId, logger);
  logger.info({ published: items.length, queue: queue.kind }, 'run published');
  return items.length;
}

/** Why a run stopped, as stored on its row: the stop or lease loss that aborted it, else the error itself. */
function failureCause(thrown: unknown, signal: AbortSignal | undefined): string {
  if (signal?.aborted) return `stopped: ${toError(signal.reason).message}`;
  return toError(thrown).message;
}

/**
 * Every work item is out by now; a database hiccup here must not turn a delivered run into a
 * failed one, so the status update is retried before the run gives up with a precise message.
 */
async function markPublishedPatiently(db: Database, runId: string, logger: Logger): Promise<void> {
  await withRetry(() => markPublished(db, runId), {
    attempts: 3,
    baseDelayMs: 1000,
    maxDelayMs: 2000,
    jitter: 'none',
    // A database hiccup is what this is for; a run in another state is an answer, not a hiccup.
    retryable: (err) => !(err instanceof RunStateError),
    onRetry: ({ attempt, error }) => logger.warn({ err: toError(error), attempt }, 'recording the run as published failed, retrying'),
    onGiveUp: (err) =>
      new Error(
        `every work item of run ${runId} was published, but recording it failed: ${toError(err).message}; ` +
          'the next invocation publishes them again (duplicates are dropped) and records it',
        { cause: err },
      ),
  });
}

/** A full run empties the raw table: not while workers of an earlier run may still be writing to it. */
async function refuseWhileRunsAreWorked(db: Database): Promise<void> {
  const busy = await unfinishedRuns(db);
  if (busy.length === 0) return;
  throw new PermanentError(
    `a full run would empty raw_diamonds_nivoda while ${busy.length} earlier run(s) may still be worked ` +
      `(${busy.map((r) => `${r.runId} ${r.status} ${r.startedAt}`).join(', ')}); wait for them to complete, ` +
      '`abandon <runId>` a run that will never be worked, or pass --force',
  );
}

/** A full scan this small is far likelier a broken filter or a vendor fault than an emptied inventory. */
const SUSPICIOUS_SHRINK = 0.5;

async function refuseSuspiciousFullScan(db: Database, planned: Plan): Promise<void> {
  // With nothing in the raw table there is nothing to lose: an empty inventory is a normal, empty run.
  if (!(await rawTableHasRows(db))) return;
  if (planned.totalRecords === 0) {
    throw new PermanentError(
      'the full scan found no stones at all; refusing to empty raw_diamonds_nivoda (check NIVODA_QUERY and the account), or pass --force',
    );
  }
  const last = await lastPublishedFullRun(db);
  if (last && planned.totalRecords < last.totalRecords * SUSPICIOUS_SHRINK) {
    throw new PermanentError(
      `the full scan found ${planned.totalRecords} stones, less than half of the last full run's ${last.totalRecords} ` +
        `(${last.runId}); refusing to empty raw_diamonds_nivoda, or pass --force`,
    );
  }
}

/** The last comparable recorded and published run, as a scan's starting point. */
export async function scanHistory(
  db: Database,
  like: { runType: RunType; priceField: PriceField; baseQuery: BaseFilter },
): Promise<ScanHistory | undefined> {
  const last = await lastComparableRun(db, like);
  if (!last) return undefined;
  // A full window is the whole inventory, as the raw table holds it; an incremental one is the
  // stones updated since the watermark, which the raw table does not tell apart.
  // The shape is only a guide: a failed read leaves the scan to last run's points, and says why.
  let stones: DollarStones[] = [];
  let stonesUnread: string | undefined;
  if (like.runType === 'full') {
    try {
      stones = await rawStonesByDollar(db, like.priceField);
    } catch (err) {
      stonesUnread = scrub(toError(err).message);
    }
  }
  return {
    runId: last.run.runId,
    totalRecords: last.run.totalRecords,
    partitions: last.partitions,
    ...(last.scanPoints && { points: last.scanPoints }),
    ...(stones.length > 0 && { stones }),
    ...(stonesUnread !== undefined && { stonesUnread }),
  };
}
