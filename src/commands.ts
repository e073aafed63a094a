// What each command does, given its validated configuration and its logger; index.ts parses
// the command line, builds both and maps the outcome to an exit code.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  CLI_HOLDER,
  describeBackends,
  EmbeddedDatabaseBusyError,
  holderName,
  logSkipped,
  openResources,
  openWatermarks,
  withRunLock,
  type Resources,
} from './app.js';
import type { BaseConfig, Config } from './config.js';
import { abandonRun, getRun, listPartitions, listRuns } from './db/runs.js';
import { listPartitionOutcomes, withOutcomes } from './db/partitions.js';
import { ConfigError, PermanentError, toError, WatermarkFormatError } from './errors.js';
import { readLease, releaseLease } from './lease.js';
import { embeddedLockFile, readFileLock, releaseFileLock } from './lock-file.js';
import type { Logger } from './log.js';
import { createNivodaClient, type NivodaClient } from './nivoda/client.js';
import type { ProgressLine } from './progress.js';
import { isLocalQueue } from './queue/queue.js';
import { formatPlan, formatRun, formatRuns } from './report.js';
import { withRetry } from './retry.js';
import { plan, run, scanHistory, type ScanHistory } from './scheduler.js';
import type { Watermark } from './domain.js';
import type { WatermarkAdvance } from './consolidate.js';
import { unchangedSince, watermarkProblems, type StoredWatermark, type WatermarkStore } from './watermark.js';

export interface CommandContext {
  logger: Logger;
  /** A line of the command's own output (stdout). */
  out: (text: string) => void;
  /** Aborted by SIGTERM/SIGINT: a run stops at its next safe point. */
  stop: AbortSignal;
  /** A terminal's progress line, when there is one. */
  progress?: ProgressLine;
}

/** The scan's progress for a person watching: queries done, the price being probed, waits for the vendor's limits. */
function scanProgress(progress: ProgressLine | undefined, nivoda: NivodaClient): ((price: number | undefined) => void) | undefined {
  if (!progress) return undefined;
  return (price) => {
    const s = nivoda.stats();
    const waits =
      s.rateLimitWaitMs + s.backoffMs > 0 ? ` · waited ${((s.rateLimitWaitMs + s.backoffMs) / 1000).toFixed(1)} s for rate limits` : '';
    const throttled = s.throttled > 0 ? ` · ${s.throttled} × HTTP 429` : '';
    progress.update(
      `scanning: ${s.countQueries} count queries · last probe ${price === undefined ? 'the total' : `$${price.toLocaleString('en-US')}`}${waits}${throttled}`,
    );
  };
}

/** A failure to be reported with the logger and context of where it happened (a run's runId, its counters). */
export class CommandFailure extends Error {
  override readonly name = 'CommandFailure';
  constructor(
    readonly error: unknown,
    readonly logger: Logger,
    readonly context: Record<string, unknown>,
  ) {
    super('command failed', { cause: error });
  }
}

export async function runCommand(
  config: Config,
  { logger: base, stop, progress }: CommandContext,
  options: { full?: boolean; force?: boolean },
) {
  const runId = randomUUID();
  // Every line of the run carries its runId, the client's, the queue's and the failure's included.
  const logger = base.child({ runId });
  let nivoda: NivodaClient | undefined;
  try {
    const resources = await openForRun(config, logger, runId);
    if (!resources) return;
    // The vendor's limit is global: the scan shares the workers' budget (they may still be busy).
    const { vendorBudget } = await import('./nivoda/budget.js');
    nivoda = createNivodaClient(config.nivoda, logger, { budget: vendorBudget(resources.db, config.worker.globalRequestsPerSecond) });
    const onCount = scanProgress(progress, nivoda);
    try {
      logger.info(describeBackends(resources), 'backends');
      const client = nivoda;
      const outcome = await withRunLock(resources, logger, runId, (lease) =>
        run(
          { ...resources, config, nivoda: client, logger: base, onCount },
          { ...options, runId, holder: holderName(runId), signal: AbortSignal.any([stop, lease]) },
        ),
      );
      if (outcome === 'skipped') return;
      if (outcome.kind === 'finished') {
        logger.info(
          { finished: outcome.runIds, published: outcome.published, nivoda: nivoda.stats() },
          'run finished: published the rest of earlier runs',
        );
        return;
      }
      logger.info(
        { runType: outcome.plan.runType, partitions: outcome.plan.partitions.length, published: outcome.published, nivoda: nivoda.stats() },
        outcome.plan.partitions.length === 0 ? 'run finished: the window holds no stones' : 'run finished',
      );
    } finally {
      progress?.clear();
      await resources.close();
    }
  } catch (thrown) {
    throw new CommandFailure(thrown, logger, nivoda ? { nivoda: nivoda.stats() } : {});
  }
}

export async function planCommand(
  config: Config,
  { logger, out, stop, progress }: CommandContext,
  options: { json?: boolean; full?: boolean },
) {
  const nivoda = createNivodaClient(config.nivoda, logger);
  const onCount = scanProgress(progress, nivoda);
  const planned = await plan(
    { config, nivoda, logger, onCount, watermarks: await openWatermarks(config), history: (like) => planHistory(config, logger, like) },
    { ...options, signal: stop },
  ).finally(() => progress?.clear());
  // The scan's points are for the next run's warm start, not for reading.
  const { scanPoints: _points, ...shown } = planned;
  out(options.json ? JSON.stringify(shown) : formatPlan(planned, config.heatmap.strategy));
}

export async function statusCommand(
  config: BaseConfig,
  ctx: CommandContext,
  runId: string | undefined,
  options: { limit: number; json?: boolean },
) {
  if (runId === undefined) {
    const runs = await withResources(config, ctx.logger, ({ db }) => listRuns(db, options.limit));
    ctx.out(options.json ? JSON.stringify(runs, null, 2) : formatRuns(runs));
    return;
  }
  const id = checkRunId(runId);
  const { found, partitions } = await withResources(config, ctx.logger, async ({ db }) => ({
    found: await getRun(db, id),
    partitions: withOutcomes(await listPartitions(db, id), await listPartitionOutcomes(db, id)),
  }));
  if (!found) throw new PermanentError(`no run ${id} is recorded`);
  ctx.out(options.json ? JSON.stringify({ ...found, partitions }, null, 2) : formatRun(found, partitions));
}

export async function abandonCommand(
  config: BaseConfig,
  { logger, out }: CommandContext,
  runId: string,
  options: { reason?: string; force?: boolean },
) {
  const id = checkRunId(runId);
  const reason = options.reason ?? 'no reason given';
  const { before, clearedWatermark } = await withResources(config, logger, async ({ db, watermarks }) => {
    const run = await getRun(db, id);
    // A recorded full run emptied the raw table: abandoning it leaves the table without the stones
    // it would have written, and no incremental run brings back those that do not change again.
    const emptiedRawTable = run?.runType === 'full' && run.recordedAt !== null && run.status !== 'completed' && run.status !== 'abandoned';
    if (emptiedRawTable && !options.force) {
      throw new PermanentError(
        `run ${id} is a full run that emptied raw_diamonds_nivoda; abandoning it leaves the raw table incomplete. ` +
          'Pass --force to abandon it anyway: the watermark is then cleared, so the next run is a full run again',
      );
    }
    const status = await abandonRun(db, id, reason);
    let cleared = false;
    if (emptiedRawTable) {
      const current = await watermarks.read().catch(() => null);
      cleared = current ? await watermarks.clear({ ifMatch: current.etag }) : false;
    }
    return { before: status, clearedWatermark: cleared };
  });
  logger.warn({ runId: id, before, reason, clearedWatermark }, 'run abandoned by an operator: its work items are settled without fetching');
  out(before === 'abandoned' ? `run ${id} was already abandoned` : `run ${id} abandoned (was ${before})`);
  if (clearedWatermark) out('the watermark was cleared: the next run is a full run, which fills the raw table again');
}

export async function lockCommand(config: BaseConfig, { logger, out }: CommandContext, options: { json?: boolean }) {
  const lock = await readSchedulerLock(config, logger);
  out(options.json ? JSON.stringify(lock) : lock ? formatLock(lock) : 'nobody holds the scheduler lock');
}

export async function lockReleaseCommand(config: BaseConfig, { logger, out }: CommandContext, options: { force?: boolean }) {
  const released =
    config.database.backend === 'pglite'
      ? await releaseFileLock(embeddedLockFile(config.database.dir), options)
      : await withResources(config, logger, ({ db }) => releaseLease(db, options));
  if (released) logger.warn({ released, force: options.force === true }, 'scheduler lock released by an operator');
  out(released ? `released the lock of ${released.holder}` : 'nobody holds the scheduler lock');
}

/** The lease, or in embedded mode the lock file (read without opening PGlite, which the holder has open). */
async function readSchedulerLock(config: BaseConfig, logger: Logger): Promise<Record<string, unknown> | null> {
  if (config.database.backend === 'pglite') {
    const file = embeddedLockFile(config.database.dir);
    const lock = await readFileLock(file);
    return (
      lock && {
        kind: 'lock file',
        file,
        holder: lock.holder,
        acquiredAt: lock.since,
        pid: lock.pid,
        hostname: lock.hostname,
        holderGone: lock.stale,
      }
    );
  }
  const lease = await withResources(config, logger, ({ db }) => readLease(db));
  return lease && { kind: 'lease', ...lease };
}

function formatLock(lock: Record<string, unknown>): string {
  return Object.entries(lock)
    .map(([key, value]) => `${key}: ${String(value)}`)
    .join('\n');
}

const RUN_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function checkRunId(runId: string): string {
  if (!RUN_ID.test(runId)) throw new ConfigError([`"${runId}" is not a run id (a UUID, as \`status\` lists them)`]);
  return runId.toLowerCase();
}

export async function watermarkGetCommand(config: BaseConfig, { out }: CommandContext) {
  const watermarks = await openWatermarks(config);
  const stored = await watermarks.read();
  out(stored ? JSON.stringify(stored.watermark, null, 2) : `no watermark at ${watermarks.location}: the next run is a full run`);
}

export async function watermarkSetCommand(config: BaseConfig, { logger, out }: CommandContext, lastUpdatedAt: string) {
  const next = watermarkFromCommandLine(lastUpdatedAt);
  const watermarks = await openWatermarks(config);
  const current = await readForRepair(watermarks, logger);
  // Conditional on what was just read, so a consolidator writing meanwhile is not silently overwritten.
  await watermarks.write(next, current === 'malformed' ? undefined : unchangedSince(current));
  logger.info(
    { before: current === 'malformed' ? current : (current?.watermark ?? null), after: next, location: watermarks.location },
    'watermark set',
  );
  out(JSON.stringify(next, null, 2));
}

export async function watermarkClearCommand(config: BaseConfig, { logger, out }: CommandContext) {
  const watermarks = await openWatermarks(config);
  const current = await readForRepair(watermarks, logger);
  const removed = current === 'malformed' ? await watermarks.clear() : current ? await watermarks.clear({ ifMatch: current.etag }) : false;
  logger.info(
    { before: current === 'malformed' ? current : (current?.watermark ?? null), location: watermarks.location },
    removed ? 'watermark cleared' : 'no watermark to clear',
  );
  out(removed ? 'watermark cleared: the next run is a full run' : 'there was no watermark');
}

export async function queuePeekCommand(config: BaseConfig, { logger, out }: CommandContext, options: { limit: number }) {
  const messages = await withResources(config, logger, ({ queue }) => {
    if (!isLocalQueue(queue)) {
      throw new ConfigError(['queue peek lists the local queue only; work items go to Azure Service Bus in this configuration']);
    }
    return queue.peek(options.limit);
  });
  for (const message of messages) out(JSON.stringify(message));
  if (messages.length === 0) out('the local queue is empty');
}

export async function migrateCommand(config: BaseConfig, { logger, out }: CommandContext) {
  const applied = await withResources(config, logger, ({ migrations }) => Promise.resolve(migrations));
  out(applied.length ? `applied: ${applied.join(', ')}` : 'the schema is up to date');
}

/**
 * `plan` starts from the same history a run would, when it can read it: a database that does not
 * exist yet (a fresh embedded directory) is not created for it, and one that is busy or down
 * means a cold scan, logged, not a failed plan.
 */
async function planHistory(config: Config, logger: Logger, like: Parameters<typeof scanHistory>[1]): Promise<ScanHistory | undefined> {
  if (config.database.backend === 'pglite' && !existsSync(config.database.dir)) return undefined;
  try {
    return await withResources(config, logger, ({ db }) => scanHistory(db, like));
  } catch (err) {
    logger.info({ reason: toError(err).message }, 'the scan history is not readable now: planning from scratch');
    return undefined;
  }
}

/** The operator commands' database session: open (migrated), use, close. */
async function withResources<T>(config: BaseConfig, logger: Logger, fn: (resources: Resources) => Promise<T>): Promise<T> {
  const resources = await openResources(config, logger);
  try {
    return await fn(resources);
  } finally {
    await resources.close();
  }
}

/** How long a run waits for an operator's short command (status, queue peek) to free the embedded database. */
const OPERATOR_WAIT = { attempts: 31, baseDelayMs: 2000, maxDelayMs: 2000, jitter: 'none' } as const;

/**
 * Opens the backends for a run, or returns null when another scheduler holds the embedded
 * database (a normal skip). An operator's short command holding it is waited for, so it
 * cannot make the nightly run skip.
 */
async function openForRun(config: Config, logger: Logger, runId: string): Promise<Resources | null> {
  try {
    return await withRetry(() => openResources(config, logger, { holder: holderName(runId) }), {
      ...OPERATOR_WAIT,
      retryable: (err) => err instanceof EmbeddedDatabaseBusyError && err.holder.endsWith(`:${CLI_HOLDER}`),
    });
  } catch (thrown) {
    if (!(thrown instanceof EmbeddedDatabaseBusyError)) throw thrown;
    logSkipped(logger, { holder: thrown.holder, since: thrown.since, pid: thrown.pid });
    return null;
  }
}

/** What an operator typed: a bad or future date is a usage error (exit 2), caught before anything is read or written. */
function watermarkFromCommandLine(lastUpdatedAt: string): Watermark {
  const now = new Date().toISOString();
  const candidate = { lastUpdatedAt, lastRunId: 'manual', lastRunCompletedAt: now };
  const problems = watermarkProblems(candidate).map((p) => `watermark set: ${p}`);
  if (problems.length === 0 && Date.parse(lastUpdatedAt) > Date.parse(now))
    problems.push(`watermark set: ${lastUpdatedAt} is in the future`);
  if (problems.length > 0) throw new ConfigError(problems);
  return candidate;
}

/** `set` and `clear` are how an operator repairs a damaged watermark, so a malformed one must not stop them. */
async function readForRepair(watermarks: WatermarkStore, logger: Logger): Promise<StoredWatermark | null | 'malformed'> {
  try {
    return await watermarks.read();
  } catch (thrown) {
    if (!(thrown instanceof WatermarkFormatError)) throw thrown;
    logger.warn({ problem: thrown.message }, 'replacing a malformed watermark');
    return 'malformed';
  }
}

/** `worker`: consumes work items (CONTRACT §9) until stopped, or until the queue stays empty for `--idle-exit` seconds. */
export async function workerCommand(config: Config, ctx: CommandContext, options: { concurrency?: number; idleExit?: number }) {
  const { runWorker } = await import('./worker.js');
  const { vendorBudget } = await import('./nivoda/budget.js');
  const logger = ctx.logger.child({ component: 'worker' });
  const resources = await openResources(config, logger, { holder: holderName('worker') });
  try {
    logger.info(
      {
        ...describeBackends(resources),
        vendorBudget: `${config.worker.globalRequestsPerSecond} requests/s (${resources.db.backend === 'postgres' ? 'shared by every worker through PostgreSQL' : 'this process'})`,
      },
      'backends',
    );
    const nivoda = createNivodaClient(config.nivoda, logger, { budget: vendorBudget(resources.db, config.worker.globalRequestsPerSecond) });
    const summary = await runWorker(
      { db: resources.db, queue: resources.queue, watermarks: resources.watermarks, nivoda, logger, config: config.worker },
      {
        concurrency: options.concurrency ?? config.worker.concurrency,
        idleExitMs: options.idleExit === undefined ? undefined : options.idleExit * 1000,
        signal: ctx.stop,
      },
    );
    logger.info({ nivoda: nivoda.stats(), ...summary }, 'worker exiting');
  } finally {
    await resources.close();
  }
}

/** `worker retry <runId>`: re-queues the run's failed partitions (new message ids, so duplicate detection keeps them). */
export async function workerRetryCommand(config: BaseConfig, { logger, out }: CommandContext, runId: string) {
  const { reserveRetries, markRequeued } = await import('./db/partitions.js');
  const { workItems } = await import('./scheduler.js');
  const id = checkRunId(runId);
  const requeued = await withResources(config, logger, async ({ db, queue }) => {
    const run = await getRun(db, id);
    if (!run?.runType || !run.updatedTo || !run.priceField) throw new PermanentError(`run ${id} was never recorded; it has no work items`);
    const failed = await reserveRetries(db, id);
    if (failed.length === 0) return [];
    const retries = new Map(failed.map((p) => [p.partitionId, p.retries]));
    const { runType, watermarkBefore, updatedFrom, updatedTo, priceField } = run;
    // Built from all of the run's partitions, so partitionCount stays the run's own.
    const items = workItems(
      id,
      { runType, watermarkBefore, updatedFrom, updatedTo, priceField, baseQuery: run.baseQuery ?? {} },
      await listPartitions(db, id),
    ).filter((item) => retries.has(item.partitionId));
    // Published first: a partition still marked failed is claimed by the worker that receives it all the same.
    await queue.publish(items, { messageId: (item) => `${item.runId}:${item.partitionId}:retry-${retries.get(item.partitionId)}` });
    await markRequeued(
      db,
      id,
      items.map((item) => item.partitionId),
    );
    return items.map((item) => item.partitionId);
  });
  logger.info({ runId: id, requeued }, requeued.length ? 'failed partitions re-queued' : 'no failed partitions to re-queue');
  out(
    requeued.length
      ? `re-queued ${requeued.length} failed partition(s) of run ${id}: ${requeued.join(', ')}`
      : `run ${id} has no failed partitions`,
  );
}

function watermarkLine(w: WatermarkAdvance): string {
  switch (w.decision) {
    case 'written':
      return `watermark advanced to ${w.written} (run ${w.runId})`;
    case 'already-past':
      return `watermark already at or past ${w.lastUpdatedAt} (run ${w.runId})`;
    case 'already-written':
      return `watermark already written for run ${w.runId} (${w.lastUpdatedAt}); a later operator change stands`;
    case 'operator-changed':
      return `watermark left as an operator changed it after run ${w.runId} started (not moved to ${w.lastUpdatedAt})`;
    case 'nothing-due':
      return 'no completed run moves the watermark';
  }
}

/** `consolidate [runId]`: completes the runs whose partitions are all done and advances the watermark; idempotent. */
export async function consolidateCommand(
  config: BaseConfig,
  { logger, out }: CommandContext,
  runId: string | undefined,
  options: { json?: boolean },
) {
  const { consolidate } = await import('./consolidate.js');
  const id = runId === undefined ? undefined : checkRunId(runId);
  const report = await withResources(config, logger, ({ db, watermarks }) => consolidate(db, watermarks, logger, id));
  if (options.json) {
    out(JSON.stringify(report, null, 2));
    return;
  }
  const lines = [
    report.completed.length ? `completed: ${report.completed.join(', ')}` : 'no run became complete',
    ...report.incomplete.map((r) => `not complete: ${r.runId} (${r.status}) partitions ${JSON.stringify(r.partitions)}`),
    watermarkLine(report.watermark),
  ];
  if (report.watermark.heldBackBy) lines.push(`the watermark waits for run ${report.watermark.heldBackBy}`);
  out(lines.join('\n'));
}
