// What each command does, given its validated configuration and its logger; index.ts parses
// the command line, builds both and maps the outcome to an exit code.
import { randomUUID } from 'node:crypto';
import {
  CLI_HOLDER,
  EmbeddedDatabaseBusyError,
  holderName,
  logSkipped,
  openResources,
  openWatermarks,
  withRunLock,
  type Resources,
} from './app.js';
import type { BaseConfig, Config } from './config.js';
import { listRuns } from './db/runs.js';
import { ConfigError, WatermarkFormatError } from './errors.js';
import type { Logger } from './log.js';
import { createNivodaClient } from './nivoda/client.js';
import { isLocalQueue } from './queue/queue.js';
import { formatPlan, formatRuns } from './report.js';
import { withRetry } from './retry.js';
import { plan, run } from './scheduler.js';
import type { Watermark } from './domain.js';
import { unchangedSince, watermarkProblems, type StoredWatermark, type WatermarkStore } from './watermark.js';

export interface CommandContext {
  logger: Logger;
  /** A line of the command's own output (stdout). */
  out: (text: string) => void;
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

export async function runCommand(config: Config, { logger: base }: CommandContext, options: { full?: boolean; force?: boolean }) {
  const runId = randomUUID();
  // Every line of the run carries its runId, the client's, the queue's and the failure's included.
  const logger = base.child({ runId });
  const nivoda = createNivodaClient(config.nivoda, logger);
  try {
    const resources = await openForRun(config, logger, runId);
    if (!resources) return;
    try {
      const outcome = await withRunLock(resources, logger, runId, (signal) =>
        run({ ...resources, config, nivoda, logger: base }, { ...options, runId, signal }),
      );
      if (outcome === 'skipped') return;
      logger.info(
        { runType: outcome.plan.runType, partitions: outcome.plan.partitions.length, published: outcome.published, nivoda: nivoda.stats() },
        outcome.plan.partitions.length === 0 ? 'run finished: the window holds no stones' : 'run finished',
      );
    } finally {
      await resources.close();
    }
  } catch (thrown) {
    throw new CommandFailure(thrown, logger, { nivoda: nivoda.stats() });
  }
}

export async function planCommand(config: Config, { logger, out }: CommandContext, options: { json?: boolean; full?: boolean }) {
  const nivoda = createNivodaClient(config.nivoda, logger);
  const planned = await plan({ config, nivoda, logger, watermarks: await openWatermarks(config) }, options);
  out(options.json ? JSON.stringify(planned) : formatPlan(planned, config.heatmap.strategy));
}

export async function statusCommand(config: BaseConfig, ctx: CommandContext, options: { limit: number; json?: boolean }) {
  const runs = await withResources(config, ctx.logger, ({ db }) => listRuns(db, options.limit));
  ctx.out(options.json ? JSON.stringify(runs, null, 2) : formatRuns(runs));
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
