import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { registerSecret, scrub } from '../src/log.js';
import { runCli } from './helpers/cli.js';
import { captureLogs } from './helpers/logs.js';

describe('log', () => {
  it('writes one JSON object per line with the child bindings', () => {
    const out = captureLogs();
    const { logger } = out;
    logger.child({ runId: 'r-1' }).info({ partitions: 3 }, 'planned');
    const [line] = out.lines();
    const parsed = JSON.parse(line!) as Record<string, unknown>;
    assert.equal(parsed.runId, 'r-1');
    assert.equal(parsed.partitions, 3);
    assert.equal(parsed.msg, 'planned');
  });

  it('redacts secret-named fields, secrets inside messages, URLs and error texts', () => {
    const out = captureLogs();
    const { logger } = out;
    registerSecret('s3cr3t-pa55word');
    logger.info({ password: 'plain-field-secret', nested: { connectionString: 'Endpoint=sb://x/;SharedAccessKey=abcDEF123=' } }, 'fields');
    logger.info('connecting to postgres://scheduler:pgPassw0rd@db.internal:5432/app');
    logger.error(
      { err: new Error('login failed for s3cr3t-pa55word', { cause: new Error('AccountKey=Zm9vYmFyYmF6cXV4;EndpointSuffix=core') }) },
      'boom',
    );
    logger.warn({ authorization: 'Bearer eyJhbGciOi.payload.sig', header: 'Authorization: Bearer eyJhbGciOi.payload.sig' }, 'auth header');
    const text = out.lines().join('\n');
    for (const secret of ['eyJhbGciOi', 'plain-field-secret', 'abcDEF123', 'pgPassw0rd', 's3cr3t-pa55word', 'Zm9vYmFyYmF6cXV4']) {
      assert.ok(!text.includes(secret), `${secret} leaked: ${text}`);
    }
    assert.match(text, /postgres:\/\/scheduler:\[redacted\]@db\.internal/);
  });

  it('scrubs texts shown to people, such as error messages', () => {
    assert.equal(
      scrub('DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc+/def==;'),
      'DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=[redacted];',
    );
    assert.equal(
      scrub('https://acct.blob.core.windows.net/c?sv=2024&sig=abc%2Bdef'),
      'https://acct.blob.core.windows.net/c?sv=[redacted]&sig=[redacted]',
    );
    assert.equal(scrub('nothing secret here'), 'nothing secret here');
  });
});

describe('the logger is built from the validated configuration (real process)', () => {
  it('LOG_LEVEL=verbose is one more configuration problem: exit 2 listing it with the others, no stack trace', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'scheduler-log-'));
    try {
      const result = await runCli(['watermark', 'get'], { LOG_LEVEL: 'verbose', RUN_TYPE: 'sometimes', SCHEDULER_DATA_DIR: dir });
      assert.equal(result.code, 2, result.stderr);
      const line = result.logs.find((l) => Array.isArray(l.problems));
      assert.ok(line, result.stderr);
      const problems = line.problems as string[];
      assert.ok(
        problems.some((p) => p.startsWith('LOG_LEVEL ')),
        problems.join('; '),
      );
      assert.ok(
        problems.some((p) => p.startsWith('RUN_TYPE ')),
        'every problem at once',
      );
      assert.ok(
        result.logs.every((l) => !('unparsable' in l)),
        'JSON lines only',
      );
      assert.doesNotMatch(result.stderr, /at \S+ \(/, 'no stack trace');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('LOG_LEVEL=debug in .env shows debug lines; without it they are not written', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'scheduler-log-'));
    try {
      const env = { LOG_LEVEL: undefined, NODE_ENV: undefined, SCHEDULER_DATA_DIR: path.join(dir, 'data') };
      const quiet = await runCli(['watermark', 'get'], env, { cwd: dir });
      assert.equal(quiet.code, 0, quiet.stderr);
      assert.ok(!quiet.logs.some((l) => l.level === 'debug'), quiet.stderr);
      await writeFile(path.join(dir, '.env'), 'LOG_LEVEL=debug\n');
      const verbose = await runCli(['watermark', 'get'], env, { cwd: dir });
      assert.equal(verbose.code, 0, verbose.stderr);
      assert.ok(
        verbose.logs.some((l) => l.level === 'debug' && l.msg === 'configuration loaded'),
        verbose.stderr,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
