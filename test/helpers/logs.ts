// One way for tests to read back what was logged.
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { createLogger, type Logger } from '../../src/log.js';

export interface CapturedLogs {
  logger: Logger;
  /** The raw lines written so far. */
  lines(): string[];
  /** The same lines parsed as the JSON objects they must be. */
  records(): Array<Record<string, unknown>>;
}

/**
 * A logger whose lines are kept. By default it is the application's own logger (redaction and
 * scrubbing included). With `scrubbed: false` it is a plain pino logger: a secret found in those
 * lines was handed to the logger, not merely masked on the way out. `level` defaults to trace;
 * a test that talks to a vendor over HTTP asks for less (trace is a line per request).
 */
export function captureLogs(options: { scrubbed?: boolean; level?: string } = {}): CapturedLogs {
  const level = options.level ?? 'trace';
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString('utf8'));
      done();
    },
  });
  const logger =
    options.scrubbed === false ? pino({ level, base: undefined }, destination) : createLogger({ level, destination, pretty: false });
  const lines = () =>
    chunks
      .join('')
      .split('\n')
      .filter((line) => line.trim() !== '');
  return { logger, lines, records: () => lines().map((line) => JSON.parse(line) as Record<string, unknown>) };
}
