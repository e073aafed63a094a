// The process's logger: JSON lines on stderr (stdout is reserved for a command's own
// output), readable when stderr is a terminal, and scrubbed of secrets as the very last
// step before a line is written, so a secret inside an error message or a URL is caught too.
// It is built by the command line once the configuration is validated (its level is part
// of it); nothing here reads the environment.
import type { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

const REDACTED = '[redacted]';

/** Key names whose values are never logged, wherever they appear in a log object. */
const SECRET_KEYS = [
  'password',
  'token',
  'accessToken',
  'connectionString',
  'accountKey',
  'sharedAccessKey',
  'authorization',
  'NIVODA_PASSWORD',
  'DATABASE_URL',
  'AZURE_STORAGE_CONNECTION_STRING',
  'AZURE_SERVICE_BUS_CONNECTION_STRING',
];

/** Secret shapes inside free text: connection-string keys, SAS tokens, URL userinfo, bearer tokens. */
const SECRET_PATTERNS: [RegExp, string][] = [
  [/((?:Account|SharedAccess)Key\s*=\s*)[^;"'\s\\]+/gi, `$1${REDACTED}`],
  [/(SharedAccessSignature\s+)[^"'\\]+?(?=["'\\]|$)/gi, `$1${REDACTED}`],
  [/([?&](?:sig|se|sv|sp|skoid|sktid|password|token|code)=)[^&"'\s\\]+/gi, `$1${REDACTED}`],
  [/(\b[a-z][a-z0-9+.-]*:\/\/[^:/@\s"'\\]*:)[^@/\s"'\\]+@/gi, `$1${REDACTED}@`],
  [/(Bearer\s+)[A-Za-z0-9._~+/=-]+/g, `$1${REDACTED}`],
  [/((?:password|passwd|pwd)\s*[=:]\s*)[^;&\s"'\\]+/gi, `$1${REDACTED}`],
];

const knownSecrets = new Set<string>();

/**
 * Registers a literal secret (a password, a token once it is issued) so that it is scrubbed
 * from every later log line and error text, whatever the shape it hides in.
 */
export function registerSecret(value: string | undefined): void {
  if (value && value.length >= 4) knownSecrets.add(value);
}

/** Removes registered secrets and secret-shaped substrings from a text. Use for error messages shown to people. */
export function scrub(text: string): string {
  let out = text;
  for (const secret of knownSecrets) {
    out = out.split(secret).join(REDACTED);
    const encoded = encodeURIComponent(secret);
    if (encoded !== secret) out = out.split(encoded).join(REDACTED);
    const json = JSON.stringify(secret).slice(1, -1);
    if (json !== secret) out = out.split(json).join(REDACTED);
  }
  for (const [pattern, replacement] of SECRET_PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

export interface LoggerOptions {
  /** A pino level; validated with the rest of the configuration (LOG_LEVEL). Default info. */
  level?: string;
  /** Where lines go; default stderr. Tests pass a stream to capture them. */
  destination?: Writable;
  /** Force or forbid pretty output; default: pretty when the destination is a terminal. */
  pretty?: boolean;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const usePretty = options.pretty ?? (options.destination === undefined && process.stderr.isTTY === true);
  const destination =
    options.destination ??
    (usePretty
      ? pretty({ destination: 2, sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l' })
      : pino.destination({ fd: 2, sync: true }));
  return pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      // Level names, not numbers: the lines are read by people and log queries alike.
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: SECRET_KEYS.flatMap((k) => [k, `*.${k}`]), censor: REDACTED },
      serializers: { err: pino.stdSerializers.errWithCause },
      hooks: { streamWrite: scrub },
    },
    destination,
  );
}
