#!/usr/bin/env node
// The command line (CONTRACT §7): parses the arguments, loads and validates the configuration,
// builds the logger from it, and hands over to commands.ts. Every outcome maps to an exit code
// here and only here: 0 success (also skipped and empty), 1 a failed run, 2 bad configuration or usage.
import { Command, CommanderError, Option } from 'commander';
import {
  CommandFailure,
  migrateCommand,
  planCommand,
  queuePeekCommand,
  runCommand,
  statusCommand,
  watermarkClearCommand,
  watermarkGetCommand,
  watermarkSetCommand,
  type CommandContext,
} from './commands.js';
import { loadBaseConfig, loadConfig, loadDotEnv, type BaseConfig } from './config.js';
import { ConfigError, toError } from './errors.js';
import { createLogger, scrub, type Logger } from './log.js';

const out = (text: string) => process.stdout.write(`${text}\n`);

/**
 * Until a command has its configuration, problems are reported by a logger at the default
 * level: a bad LOG_LEVEL is itself one of the configuration problems it may have to report.
 */
let logger: Logger = createLogger();

/** Validates the configuration, then builds the logger from it, then runs the command. */
function action<C extends BaseConfig, A extends unknown[]>(
  load: () => C,
  command: (config: C, ctx: CommandContext, ...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const config = load();
    logger = createLogger({ level: config.logLevel });
    logger.debug({ command: commandName(args), logLevel: config.logLevel }, 'configuration loaded');
    await command(config, { logger, out }, ...args);
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
    .command('status')
    .description('the last runs')
    .addOption(new Option('--limit <n>', 'how many runs').default(10).argParser(positiveInt('--limit')))
    .option('--json', 'print JSON')
    .action(action(forOperators, statusCommand));

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

/** Logs a failure once and maps it to its exit code: 2 configuration or usage, 1 a failed run. */
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
  log.error({ err: error, ...context }, `failed: ${scrub(error.message)}`);
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
    return report(thrown, logger);
  }
}

// A stopped job (SIGTERM from Container Apps, Ctrl-C) exits 1 through process.exit, so the
// exit hooks still run (the embedded lock file is removed); a lease row simply expires.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    logger.warn({ signal }, 'stopped by a signal before the command finished');
    process.exit(1);
  });
}
process.exit(await main());
