#!/usr/bin/env node
// The command line (CONTRACT §7). Every outcome maps to an exit code here and only here:
// 0 success (also skipped and empty), 1 a failed run, 2 bad configuration or usage.
import { Command, CommanderError, Option } from 'commander';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLI_HOLDER, EmbeddedDatabaseBusyError, holderName, logSkipped, openResources, withRunLock, type Resources } from './app.js';
import { loadBaseConfig, loadConfig, loadDotEnv, type Config } from './config.js';
import { listRuns } from './db/runs.js';
import { ConfigError, toError, WatermarkFormatError } from './errors.js';
import { log, scrub, type Logger } from './log.js';
import { createNivodaClient } from './nivoda/client.js';
import { isLocalQueue } from './queue/queue.js';
import { formatPlan, formatRuns } from './report.js';
import { plan, run } from './scheduler.js';
import type { Watermark } from './domain.js';
import { openWatermarkStore, unchangedSince, watermarkProblems, type StoredWatermark, type WatermarkStore } from './watermark.js';

const out = (text: string) => process.stdout.write(`${text}\n`);

function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('scheduler')
    .description('Nivoda ingestion scheduler: density scan, balanced price partitions, work items')
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('run', { isDefault: true })
    .description('the whole run: lock, watermark, scan, partition, record, publish')
    .option('--full', 'force a full run (empties raw_diamonds_nivoda)')
    .option('--force', 'let a full run empty the raw table although earlier runs may still be worked or the scan looks suspiciously small')
    .action(async (options: { full?: boolean; force?: boolean }) => {
      const config = loadConfig();
      const runId = randomUUID();
      // Every line of the run carries its runId, the client's, the queue's and the failure's included.
      const logger = log.child({ runId });
      const nivoda = createNivodaClient(config.nivoda, logger);
      try {
        const resources = await openForRun(config, logger, runId);
        if (!resources) return;
        try {
          const outcome = await withRunLock(resources, logger, runId, (signal) =>
            run({ ...resources, config, nivoda, logger: log }, { ...options, runId, signal }),
          );
          if (outcome === 'skipped') return;
          logger.info(
            {
              runType: outcome.plan.runType,
              partitions: outcome.plan.partitions.length,
              published: outcome.published,
              nivoda: nivoda.stats(),
            },
            outcome.plan.partitions.length === 0 ? 'run finished: the window holds no stones' : 'run finished',
          );
        } finally {
          await resources.close();
        }
      } catch (thrown) {
        throw new Reported(report(thrown, logger, { nivoda: nivoda.stats() }));
      }
    });

  program
    .command('plan')
    .description('scan and partition, print the plan; writes nothing, publishes nothing')
    .option('--json', 'print the plan as one JSON object')
    .option('--full', 'plan a full run whatever the watermark says')
    .action(async (options: { json?: boolean; full?: boolean }) => {
      const config = loadConfig();
      const nivoda = createNivodaClient(config.nivoda, log);
      const planned = await plan({ config, nivoda, logger: log, watermarks: openWatermarkStore(config.watermark) }, options);
      out(options.json ? JSON.stringify(planned) : formatPlan(planned, config.heatmap.strategy));
    });

  program
    .command('status')
    .description('the last runs')
    .addOption(new Option('--limit <n>', 'how many runs').default(10).argParser(positiveInt('--limit')))
    .option('--json', 'print JSON')
    .action(async (options: { limit: number; json?: boolean }) => {
      const runs = await withResources(({ db }) => listRuns(db, options.limit));
      out(options.json ? JSON.stringify(runs, null, 2) : formatRuns(runs));
    });

  const watermark = program.command('watermark').description('read or change the watermark (operators only)');
  watermark.command('get').action(async () => {
    const watermarks = openWatermarkStore(loadBaseConfig().watermark);
    const stored = await watermarks.read();
    out(stored ? JSON.stringify(stored.watermark, null, 2) : `no watermark at ${watermarks.location}: the next run is a full run`);
  });
  watermark
    .command('set <lastUpdatedAt>')
    .description('set lastUpdatedAt (ISO-8601); the next run is incremental from it')
    .action(async (lastUpdatedAt: string) => {
      const next = watermarkFromCommandLine(lastUpdatedAt);
      const watermarks = openWatermarkStore(loadBaseConfig().watermark);
      const current = await readForRepair(watermarks);
      // Conditional on what was just read, so a consolidator writing meanwhile is not silently overwritten.
      await watermarks.write(next, current === 'malformed' ? undefined : unchangedSince(current));
      log.info(
        { before: current === 'malformed' ? current : (current?.watermark ?? null), after: next, location: watermarks.location },
        'watermark set',
      );
      out(JSON.stringify(next, null, 2));
    });
  watermark
    .command('clear')
    .description('remove the watermark: the next run is a full run')
    .action(async () => {
      const watermarks = openWatermarkStore(loadBaseConfig().watermark);
      const current = await readForRepair(watermarks);
      const removed =
        current === 'malformed' ? await watermarks.clear() : current ? await watermarks.clear({ ifMatch: current.etag }) : false;
      log.info(
        { before: current === 'malformed' ? current : (current?.watermark ?? null), location: watermarks.location },
        removed ? 'watermark cleared' : 'no watermark to clear',
      );
      out(removed ? 'watermark cleared: the next run is a full run' : 'there was no watermark');
    });

  program
    .command('queue')
    .description('the local work-item queue')
    .command('peek')
    .addOption(new Option('--limit <n>', 'how many messages').default(50).argParser(positiveInt('--limit')))
    .action(async (options: { limit: number }) => {
      const messages = await withResources(({ queue }) => {
        if (!isLocalQueue(queue)) {
          throw new ConfigError(['queue peek lists the local queue only; work items go to Azure Service Bus in this configuration']);
        }
        return queue.peek(options.limit);
      });
      for (const message of messages) out(JSON.stringify(message));
      if (messages.length === 0) out('the local queue is empty');
    });

  program
    .command('migrate')
    .description('apply the database migrations')
    .action(async () => {
      const applied = await withResources(async ({ migrations }) => migrations);
      out(applied.length ? `applied: ${applied.join(', ')}` : 'the schema is up to date');
    });

  program.hook('postAction', () => setExit(0));
  return program;
}

/** The operator commands' database session: open (migrated), use, close. */
async function withResources<T>(fn: (resources: Resources) => Promise<T>): Promise<T> {
  const resources = await openResources(loadBaseConfig(), log);
  try {
    return await fn(resources);
  } finally {
    await resources.close();
  }
}

/**
 * Opens the backends for a run, or returns null when another scheduler holds the embedded
 * database (a normal skip). An operator's short command (status, queue peek) holding it is
 * waited for, so it cannot make the nightly run skip.
 */
async function openForRun(config: Config, logger: Logger, runId: string): Promise<Resources | null> {
  for (let waited = 0; ; waited += 2) {
    try {
      return await openResources(config, logger, { holder: holderName(runId) });
    } catch (thrown) {
      if (!(thrown instanceof EmbeddedDatabaseBusyError)) throw thrown;
      if (thrown.holder.endsWith(`:${CLI_HOLDER}`) && waited < 60) {
        await sleep(2000);
        continue;
      }
      logSkipped(logger, { holder: thrown.holder, since: thrown.since, pid: thrown.pid });
      return null;
    }
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
async function readForRepair(watermarks: WatermarkStore): Promise<StoredWatermark | null | 'malformed'> {
  try {
    return await watermarks.read();
  } catch (thrown) {
    if (!(thrown instanceof WatermarkFormatError)) throw thrown;
    log.warn({ problem: thrown.message }, 'replacing a malformed watermark');
    return 'malformed';
  }
}

function positiveInt(flag: string) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new ConfigError([`${flag} must be a whole number of at least 1, got "${value}"`]);
    return n;
  };
}

/** An error already logged (with its run's context); carries the exit code it maps to. */
class Reported extends Error {
  constructor(readonly exitCode: number) {
    super('reported');
  }
}

/** Logs a failure once and maps it to its exit code: 2 configuration or usage, 1 a failed run. */
function report(thrown: unknown, logger: Logger, context: Record<string, unknown> = {}): number {
  if (thrown instanceof Reported) return thrown.exitCode;
  if (thrown instanceof CommanderError) {
    return thrown.code === 'commander.helpDisplayed' || thrown.code === 'commander.version' || thrown.exitCode === 0 ? 0 : 2;
  }
  if (thrown instanceof ConfigError) {
    logger.error({ problems: thrown.problems, ...context }, thrown.message);
    return 2;
  }
  const error = toError(thrown);
  logger.error({ err: error, ...context }, `failed: ${scrub(error.message)}`);
  return 1;
}

/** Runs the command line and returns the exit code. */
async function main(argv: string[] = process.argv): Promise<number> {
  let exitCode = 1;
  try {
    loadDotEnv();
    await buildProgram((code) => (exitCode = code)).parseAsync(argv);
    return exitCode;
  } catch (thrown) {
    return report(thrown, log);
  }
}

// A stopped job (SIGTERM from Container Apps, Ctrl-C) exits 1 through process.exit, so the
// exit hooks still run (the embedded lock file is removed); a lease row simply expires.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    log.warn({ signal }, 'stopped by a signal before the command finished');
    process.exit(1);
  });
}
process.exit(await main());
