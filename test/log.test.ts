import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { registerSecret, scrub } from '../src/log.js';
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
