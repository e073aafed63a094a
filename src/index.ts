#!/usr/bin/env node
// The command line (CONTRACT §7): parses the arguments, loads and validates the configuration,
// builds the logger from it, and hands over to commands.ts. Every outcome maps to an exit code
// here and only here: 0 success (also skipped and empty), 1 a failed run, 2 bad configuration or usage.
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import {
  abandonCommand,
  CommandFailure,
  consolidateCommand,
  lockCommand,
  lockReleaseCommand,
  migrateCommand,
  planCommand,
  queuePeekCommand,
  runCommand,
  statusCommand,
  watermarkClearCommand,
  watermarkGetCommand,
  watermarkSetCommand,
  workerCommand,
  workerRetryCommand,
  type CommandContext,
} from './commands.js';
import { loadBaseConfig, loadConfig, loadDotEnv, type BaseConfig } from './config.js';
import { ConfigError, isTransient, PermanentError, StoppedError, toError, TransientError } from './errors.js';
import { createLogger, scrub, type Logger } from './log.js';
import { progressLine } from './progress.js';

const out = (text: string) => process.stdout.write(`${text}\n`);

/**
 * Until a command has its configuration, problems are reported by a logger at the default
 * level: a bad LOG_LEVEL is itself one of the configuration problems it may have to report.
 */
let logger: Logger = createLogger();

/** SIGTERM/SIGINT abort this: a run stops at its next safe point, records why, releases its lease and exits 1. */
const stopping = new AbortController();
const progress = progressLine();

/** Validates the configuration, then builds the logger from it, then runs the command. */
function action<C extends BaseConfig, A extends unknown[]>(
  load: () => C,
  command: (config: C, ctx: CommandContext, ...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const config = load();
    logger = createLogger({ level: config.logLevel });
    logger.debug({ command: commandName(args), logLevel: config.logLevel }, 'configuration loaded');
    await command(config, { logger, out, stop: stopping.signal, progress }, ...args);
  };
}

/** Commander passes the Command object last: its name (with its parent's) identifies the command in the log. */
function commandName(args: unknown[]): string {
  const command = args.at(-1);
  if (!(command instanceof Command)) return 'unknown';
  const parent = command.parent?.name();
  return parent && parent !== 'scheduler' ? `${parent} ${command.name()}` : command.name();
}

const forNivoda = () => loadConfig();
const forOperators = () => loadBaseConfig();

function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('scheduler')
    .description('Nivoda ingestion scheduler: density scan, balanced price partitions, work items')
    .version(VERSION)
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('run', { isDefault: true })
    .description('the whole run: lock, watermark, scan, partition, record, publish')
    .option('--full', 'force a full run (empties raw_diamonds_nivoda)')
    .option('--force', 'let a full run empty the raw table although earlier runs may still be worked or the scan looks suspiciously small')
    .action(action(forNivoda, runCommand));

  program
    .command('plan')
    .description('scan and partition, print the plan; writes nothing, publishes nothing')
    .option('--json', 'print the plan as one JSON object')
    .option('--full', 'plan a full run whatever the watermark says')
    .action(action(forNivoda, planCommand));

  program
    .command('status [runId]')
    .description('the last runs, or one run with its partitions')
    .addOption(new Option('--limit <n>', 'how many runs').default(10).argParser(positiveInt('--limit')))
    .option('--json', 'print JSON')
    .action(action(forOperators, statusCommand));

  const lock = program.command('lock').description('the single-instance lock: who holds it, since when, until when');
  lock.option('--json', 'print JSON').action(action(forOperators, lockCommand));
  lock
    .command('release')
    .description('free a lock whose holder is gone or whose lease expired')
    .option('--force', 'free it even though its holder may be running')
    .action(action(forOperators, lockReleaseCommand));

  program
    .command('abandon <runId>')
    .description("an operator's decision that a run's work items are not to be worked (workers settle them without fetching)")
    .option('--reason <text>', 'why, for the run record')
    .option('--force', 'abandon a full run that emptied the raw table (the watermark is cleared: the next run is full)')
    .action(action(forOperators, abandonCommand));

  const watermark = program.command('watermark').description('read or change the watermark (operators only)');
  watermark.command('get').action(action(forOperators, watermarkGetCommand));
  watermark
    .command('set <lastUpdatedAt>')
    .description('set lastUpdatedAt (ISO-8601); the next run is incremental from it')
    .action(action(forOperators, watermarkSetCommand));
  watermark
    .command('clear')
    .description('remove the watermark: the next run is a full run')
    .action(action(forOperators, watermarkClearCommand));

  program
    .command('queue')
    .description('the local work-item queue')
    .command('peek')
    .addOption(new Option('--limit <n>', 'how many messages').default(50).argParser(positiveInt('--limit')))
    .action(action(forOperators, queuePeekCommand));

  program.command('migrate').description('apply the database migrations').action(action(forOperators, migrateCommand));

  const worker = program
    .command('worker')
    .description('consume work items: fetch each partition, write its stones, consolidate finished runs')
    .addOption(
      new Option('--concurrency <n>', 'work items at once in this process (default WORKER_CONCURRENCY)').argParser(
        positiveInt('--concurrency'),
      ),
    )
    .addOption(
      new Option('--idle-exit <seconds>', 'exit 0 once the queue has been empty this long (default: run until stopped)').argParser(
        positiveInt('--idle-exit'),
      ),
    );
  worker.action(action(forNivoda, workerCommand));
  worker.command('retry <runId>').description("re-queue a run's failed partitions").action(action(forOperators, workerRetryCommand));

  program
    .command('consolidate [runId]')
    .description('complete every run (or that run) whose partitions are all done and advance the watermark; idempotent')
    .option('--json', 'print JSON')
    .action(action(forOperators, consolidateCommand));

  program.hook('postAction', () => setExit(0));
  return program;
}

function positiveInt(flag: string) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new ConfigError([`${flag} must be a whole number of at least 1, got "${value}"`]);
    return n;
  };
}

/**
 * Logs a failure once and maps it to its exit code: 2 configuration or usage, 1 a failed run.
 * An expected failure (the API, the database, the queue, a guard) is one clear line; its stack
 * goes to debug. Only an unexpected error (a bug) carries its stack at error level.
 */
function report(thrown: unknown, log: Logger, context: Record<string, unknown> = {}): number {
  if (thrown instanceof CommandFailure) return report(thrown.error, thrown.logger, { ...thrown.context, ...context });
  if (thrown instanceof CommanderError) {
    return thrown.code === 'commander.helpDisplayed' || thrown.code === 'commander.version' || thrown.exitCode === 0 ? 0 : 2;
  }
  if (thrown instanceof ConfigError) {
    log.error({ problems: thrown.problems, ...context }, thrown.message);
    return 2;
  }
  const error = toError(thrown);
  const expected = error instanceof PermanentError || error instanceof TransientError || isTransient(error);
  if (expected) {
    log.debug({ err: error }, 'the failure in full');
    log.error({ error: scrub(error.message), kind: error.name, ...context }, `failed: ${scrub(error.message)}`);
  } else {
    log.error({ err: error, ...context }, `failed: ${scrub(error.message)}`);
  }
  return 1;
}

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/**
 * Commander hands an unknown first word to the default command (`run`), which then complains
 * of "too many arguments for 'run'". Say what is wrong instead.
 */
function unknownCommand(program: Command, argv: string[]): ConfigError | undefined {
  const first = argv[2];
  if (first === undefined || first.startsWith('-')) return undefined;
  const names = program.commands.map((c) => c.name());
  if (names.includes(first) || first === 'help') return undefined;
  return new ConfigError([`unknown command "${first}" (commands: ${names.join(', ')}; see --help)`]);
}

/** Runs the command line and returns the exit code. */
async function main(argv: string[] = process.argv): Promise<number> {
  let exitCode = 1;
  try {
    loadDotEnv();
    const program = buildProgram((code) => (exitCode = code));
    const unknown = unknownCommand(program, argv);
    if (unknown) throw unknown;
    await program.parseAsync(argv);
    return exitCode;
  } catch (thrown) {
    return report(thrown, logger);
  } finally {
    progress?.clear();
  }
}

// Node prints its own warnings (pg's SSL-mode notice among them) as plain text on stderr,
// which would break the JSON log stream: they become log lines instead.
process.removeAllListeners('warning');
process.on('warning', (warning) => logger.warn({ warning: warning.name, detail: scrub(warning.message) }, 'runtime warning'));

/** Within the 30 s a container platform gives between SIGTERM and SIGKILL. */
const STOP_DEADLINE_MS = 20_000;

// A stopped job (SIGTERM from Container Apps, Ctrl-C): the command stops at its next safe point
// (a run records why and releases its lease) and exits 1. A second signal, or the deadline,
// exits at once; the exit hooks still run (the embedded lock file is removed).
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping.signal.aborted) process.exit(1);
    logger.warn({ signal }, 'stopping: the command ends at its next safe point');
    stopping.abort(new StoppedError(`stopped by ${signal}`));
    setTimeout(() => {
      logger.error({ signal, deadlineMs: STOP_DEADLINE_MS }, 'did not stop in time; exiting');
      process.exit(1);
    }, STOP_DEADLINE_MS).unref();
  });
}
const code = await main();
process.exit(stopping.signal.aborted ? 1 : code);
