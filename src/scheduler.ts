// One run, in the order of CONTRACT §1: watermark → window → scan → partition → record →
// publish. The single-instance lock is taken by the caller (app.ts) before any of this.
import { randomUUID } from 'node:crypto';
import type { Config } from './config.js';
import type { Database } from './db/database.js';
import {
  abandonStaleRuns,
  lastPublishedFullRun,
  markFailed,
  markPartitionsPublished,
  markPublished,
  rawTableHasRows,
  recordRun,
  RunStateError,
  unfinishedRuns,
} from './db/runs.js';
import type { Partition, PriceField, RunType, UpdatedWindow, Watermark, WorkItemMessage } from './domain.js';
import { PermanentError, toError } from './errors.js';
import { scanDensity } from './heatmap.js';
import type { Logger } from './log.js';
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
  scan: { countQueries: number; durationMs: number };
}

export interface PlanDeps {
  config: Config;
  nivoda: NivodaClient;
  watermarks: WatermarkStore;
  logger: Logger;
  now?: () => Date;
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
  /** Aborted when this process lost the single-instance lock: stop before writing as a second scheduler. */
  signal?: AbortSignal;
}

export interface RunOutcome {
  runId: string;
  plan: Plan;
  published: number;
}

/** Decides the run type and window (CONTRACT §1 steps 2–3); the watermark is read once, here. */
export async function resolveWindow(
  deps: Pick<PlanDeps, 'config' | 'watermarks' | 'now'>,
  options: { full?: boolean },
): Promise<{ runType: RunType; window: UpdatedWindow; watermark: Watermark | null }> {
  const stored = await deps.watermarks.read();
  const watermark = stored?.watermark ?? null;
  const requested = options.full ? 'full' : deps.config.run.type;
  if (requested === 'incremental' && !watermark) {
    throw new PermanentError(
      `RUN_TYPE=incremental but there is no watermark at ${deps.watermarks.location}; ` +
        'run a full run first (or set one with `watermark set <ISO>`)',
    );
  }
  const runType: RunType = requested === 'full' || !watermark ? 'full' : 'incremental';
  const to = (deps.now ?? (() => new Date()))().toISOString();
  if (runType === 'full' || !watermark) return { runType, window: { to }, watermark };
  if (Date.parse(watermark.lastUpdatedAt) > Date.parse(to)) {
    throw new PermanentError(
      `the watermark at ${deps.watermarks.location} is in the future (lastUpdatedAt ${watermark.lastUpdatedAt}, now ${to}); ` +
        'fix it with `watermark set <ISO>`',
    );
  }
  const from = new Date(Date.parse(watermark.lastUpdatedAt) - deps.config.run.safetyBufferMinutes * 60_000);
  return { runType, window: { from: from.toISOString(), to }, watermark };
}

function rulesFor(config: Config, runType: RunType): PartitionRules {
  return {
    maxWorkers: runType === 'full' ? config.heatmap.maxWorkers : config.heatmap.incrementalMaxWorkers,
    recordsPerWorker: config.heatmap.recordsPerWorker,
    minRecordsPerWorker: config.heatmap.minRecordsPerWorker,
  };
}

/** Scans and partitions without writing or publishing anything: the `plan` command. */
export async function plan(deps: PlanDeps, options: { full?: boolean } = {}): Promise<Plan> {
  return scanWindow(deps, await resolveWindow(deps, options));
}

type ResolvedWindow = Awaited<ReturnType<typeof resolveWindow>>;

/** Scans a fixed window and partitions it (CONTRACT §1 steps 4–5). */
async function scanWindow(deps: PlanDeps, { runType, window, watermark }: ResolvedWindow): Promise<Plan> {
  const { config, nivoda, logger } = deps;
  const scope: QueryScope = { baseQuery: config.nivoda.baseQuery, priceField: config.nivoda.priceField, window };
  const rules = rulesFor(config, runType);
  logger.info({ runType, window, strategy: config.heatmap.strategy }, 'scanning inventory density');

  const started = performance.now();
  const scan = await scanDensity((bounds) => nivoda.count(diamondQuery(scope, bounds)), {
    strategy: config.heatmap.strategy,
    maxPrice: config.heatmap.maxPrice,
    denseZoneThreshold: config.heatmap.denseZoneThreshold,
    denseZoneStep: config.heatmap.denseZoneStep,
    partitions: rules,
    concurrency: config.nivoda.maxConcurrency,
  });
  const durationMs = Math.round(performance.now() - started);
  const partitions = planPartitions(scan, rules);
  logger.info(
    { totalRecords: scan.total, partitions: partitions.length, countQueries: scan.countQueries, durationMs },
    'planned partitions',
  );
  return {
    runType,
    updatedFrom: window.from ?? null,
    updatedTo: window.to,
    watermarkBefore: runType === 'incremental' ? (watermark?.lastUpdatedAt ?? null) : null,
    totalRecords: scan.total,
    priceField: config.nivoda.priceField,
    partitions,
    scan: { countQueries: scan.countQueries, durationMs },
  };
}

/** The CONTRACT §3 message bodies of a planned run. */
export function workItems(runId: string, planned: Plan): WorkItemMessage[] {
  const incremental = planned.runType === 'incremental';
  return planned.partitions.map((p) => ({
    runId,
    partitionId: p.partitionId,
    priceMin: p.priceMin,
    priceMax: p.priceMax,
    expectedRecords: p.expectedRecords,
    isIncremental: incremental,
    ...(incremental && planned.watermarkBefore ? { watermarkBefore: planned.watermarkBefore } : {}),
    priceField: planned.priceField,
    ...(incremental && planned.updatedFrom ? { updatedFrom: planned.updatedFrom } : {}),
    updatedTo: planned.updatedTo,
    partitionCount: planned.partitions.length,
  }));
}

/**
 * The whole run (after the lock). The run and its partitions are recorded in one transaction before
 * anything is published (the table is the outbox): a crash between the two leaves a
 * 'scheduling' run that the next run marks abandoned, and the watermark, which only the
 * consolidator advances, still covers its window.
 */
export async function run(deps: RunDeps, options: RunOptions = {}): Promise<RunOutcome> {
  const runId = options.runId ?? randomUUID();
  const logger = deps.logger.child({ runId });
  const { db, queue } = deps;

  const resolved = await resolveWindow(deps, options);
  const full = resolved.runType === 'full';
  // We hold the lock, so a run still 'scheduling' was left by a crashed scheduler. Marked
  // before the guard below, which must see it if some of its work items went out.
  const abandoned = await abandonStaleRuns(db);
  if (abandoned > 0) logger.warn({ abandoned }, 'marked runs left unpublished by a crashed scheduler as abandoned');
  // Before the scan, so a refused run spends none of the vendor's quota.
  if (full && !options.force) await refuseWhileRunsAreWorked(db);

  const planned = await scanWindow({ ...deps, logger }, resolved);
  if (full && !options.force) await refuseSuspiciousFullScan(db, planned);

  assertStillLocked(options.signal);
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
      totalRecords: planned.totalRecords,
      countQueries: planned.scan.countQueries,
      scanDurationMs: planned.scan.durationMs,
    },
    planned.partitions,
    { emptyRawTable: full },
  );
  logger.info({ runType: planned.runType, partitions: planned.partitions.length, emptiedRawTable: full }, 'run recorded');

  let published: number;
  try {
    assertStillLocked(options.signal);
    const progress = {
      // Bookkeeping only: a failure to note it must not fail a publish that succeeded.
      onSent: (items: WorkItemMessage[]) =>
        markPartitionsPublished(
          db,
          runId,
          items.map((item) => item.partitionId),
        ).catch((err: unknown) => logger.warn({ err: toError(err) }, 'could not record which work items were published')),
    };
    published = (await queue.publish(workItems(runId, planned), progress)).published;
  } catch (thrown) {
    const error = toError(thrown);
    await markFailed(db, runId, error.message).catch((markError: unknown) =>
      logger.error({ err: toError(markError) }, 'could not record the run as failed'),
    );
    const emptied = full ? '; raw_diamonds_nivoda was already emptied, so run `run --full --force` once the queue is back' : '';
    throw new Error(`publishing the work items of run ${runId} failed: ${error.message}${emptied}`, { cause: thrown });
  }
  await markPublishedPatiently(db, runId, logger);
  logger.info({ published, queue: queue.kind }, 'run published');
  return { runId, plan: planned, published };
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
      new Error(`every work item of run ${runId} was published, but recording it failed: ${toError(err).message}`, { cause: err }),
  });
}

/** A full run empties the raw table: not while workers of an earlier run may still be writing to it. */
async function refuseWhileRunsAreWorked(db: Database): Promise<void> {
  const busy = await unfinishedRuns(db);
  if (busy.length === 0) return;
  throw new PermanentError(
    `a full run would empty raw_diamonds_nivoda while ${busy.length} earlier run(s) may still be worked ` +
      `(${busy.map((r) => `${r.runId} ${r.status} ${r.startedAt}`).join(', ')}); wait for them or pass --force`,
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

function assertStillLocked(signal: AbortSignal | undefined): void {
  if (signal?.aborted)
    throw new Error('lost the single-instance lock during the run (lease expired and taken over); stopped before writing');
}
