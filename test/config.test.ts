import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadBaseConfig, loadConfig, loadDotEnv } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

const valid = {
  NIVODA_ENDPOINT: 'https://integrations.nivoda.net/api/diamonds',
  NIVODA_USERNAME: 'user@example.com',
  NIVODA_PASSWORD: 'hunter2-secret',
};

function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail('expected the configuration to be rejected');
}

describe('config', () => {
  it('applies the seed defaults and the local backends when only Nivoda is set', () => {
    const config = loadConfig(valid);
    assert.equal(config.heatmap.denseZoneThreshold, 20000);
    assert.equal(config.heatmap.denseZoneStep, 100);
    assert.equal(config.heatmap.maxWorkers, 30);
    assert.equal(config.heatmap.incrementalMaxWorkers, 10);
    assert.equal(config.heatmap.minRecordsPerWorker, 1000);
    assert.equal(config.heatmap.recordsPerWorker, 5000);
    assert.equal(config.heatmap.maxPrice, 250000);
    assert.equal(config.run.safetyBufferMinutes, 15);
    assert.equal(config.nivoda.priceField, 'dollar_value');
    assert.equal(config.watermark.backend, 'file');
    assert.equal(config.database.backend, 'pglite');
    assert.equal(config.queue.backend, 'local');
    assert.match(config.watermark.backend === 'file' ? config.watermark.path : '', /\.data\/watermarks\/nivoda\.json$/);
  });

  it('lets every tuning constant be overridden by the variable of the same name', () => {
    const config = loadConfig({ ...valid, HEATMAP_MAX_WORKERS: '12', RECORDS_PER_WORKER: '7000', HEATMAP_MAX_PRICE: '90000' });
    assert.equal(config.heatmap.maxWorkers, 12);
    assert.equal(config.heatmap.recordsPerWorker, 7000);
    assert.equal(config.heatmap.maxPrice, 90000);
  });

  it('names all three missing NIVODA_* variables at once', () => {
    const problems = problemsOf({});
    for (const name of ['NIVODA_ENDPOINT', 'NIVODA_USERNAME', 'NIVODA_PASSWORD']) {
      assert.ok(
        problems.some((p) => p.startsWith(`${name} is required`)),
        `${name} not named in ${problems.join('; ')}`,
      );
    }
  });

  it('names every bad number together with the other problems', () => {
    const problems = problemsOf({
      ...valid,
      HEATMAP_MAX_WORKERS: 'thirty',
      RECORDS_PER_WORKER: '-5',
      HEATMAP_DENSE_ZONE_STEP: '2.5',
      NIVODA_PRICE_FIELD: 'price',
    });
    assert.equal(problems.length, 4, problems.join('; '));
    assert.ok(problems.some((p) => p.startsWith('HEATMAP_MAX_WORKERS must be a number')));
    assert.ok(problems.some((p) => p.startsWith('RECORDS_PER_WORKER must be at least 1')));
    assert.ok(problems.some((p) => p.startsWith('HEATMAP_DENSE_ZONE_STEP must be a whole number')));
    assert.ok(problems.some((p) => p.startsWith('NIVODA_PRICE_FIELD must be one of')));
  });

  it('rejects an unknown NIVODA_QUERY field by name, e.g. updatedAt', () => {
    const problems = problemsOf({ ...valid, NIVODA_QUERY: '{"labgrown": false, "updatedAt": {"from": "2024-01-01T00:00:00Z"}}' });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /NIVODA_QUERY has unknown field "updatedAt"/);
  });

  it('rejects NIVODA_QUERY values of the wrong type and bad JSON', () => {
    assert.match(problemsOf({ ...valid, NIVODA_QUERY: '{"labgrown": "no"}' })[0]!, /NIVODA_QUERY\.labgrown/);
    assert.match(problemsOf({ ...valid, NIVODA_QUERY: '{labgrown: false' })[0]!, /NIVODA_QUERY is not valid JSON/);
    assert.match(problemsOf({ ...valid, NIVODA_QUERY: '{"sizes": {"from": 1, "upto": 2}}' })[0]!, /unknown field "upto" in sizes/);
  });

  it('accepts a valid base filter', () => {
    const config = loadConfig({ ...valid, NIVODA_QUERY: '{"labgrown": false, "shapes": ["ROUND"], "sizes": {"from": 0.3}}' });
    assert.deepEqual(config.nivoda.baseQuery, { labgrown: false, shapes: ['ROUND'], sizes: { from: 0.3 } });
  });

  it('refuses plain http except on loopback', () => {
    assert.match(problemsOf({ ...valid, NIVODA_ENDPOINT: 'http://nivoda.example.com/api' })[0]!, /https/);
    assert.equal(
      loadConfig({ ...valid, NIVODA_ENDPOINT: 'http://127.0.0.1:4000/graphql' }).nivoda.endpoint,
      'http://127.0.0.1:4000/graphql',
    );
  });

  it('never puts a secret into a problem message', () => {
    const problems = problemsOf({
      ...valid,
      NIVODA_PASSWORD: 'hunter2-secret',
      DATABASE_POOL_MAX: 'x',
      AZURE_SERVICE_BUS_CONNECTION_STRING: 'Endpoint=sb://x/;SharedAccessKey=abc',
      AZURE_SERVICE_BUS_NAMESPACE: 'x.servicebus.windows.net',
    });
    const text = problems.join('\n');
    assert.doesNotMatch(text, /hunter2|SharedAccessKey=abc/);
  });

  it('picks the Azure and PostgreSQL backends when their settings are present', () => {
    const config = loadConfig({
      ...valid,
      DATABASE_URL: 'postgres://u:p@db/x',
      AZURE_STORAGE_CONNECTION_STRING: 'UseDevelopmentStorage=true',
      AZURE_SERVICE_BUS_CONNECTION_STRING: 'Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=v',
    });
    assert.equal(config.database.backend, 'postgres');
    assert.equal(config.watermark.backend, 'blob');
    assert.equal(config.queue.backend, 'servicebus');
  });

  it('lets the commands that never call Nivoda run without NIVODA_* but still checks them when set', () => {
    assert.equal(loadBaseConfig({}).nivoda, undefined);
    assert.throws(() => loadBaseConfig({ NIVODA_ENDPOINT: 'not a url' }), /NIVODA_ENDPOINT must be an http\(s\) URL/);
  });

  it('fills only unset variables from .env, in development only', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dotenv-'));
    try {
      const file = path.join(dir, '.env');
      writeFileSync(file, 'NIVODA_PASSWORD=from-file\nNIVODA_USERNAME=file-user\nLOG_LEVEL=debug\nDATABASE_URL=postgres://dev@db/dev\n');
      const env: Record<string, string | undefined> = { NIVODA_USERNAME: 'shell-user', DATABASE_URL: '' };
      loadDotEnv(env, file);
      assert.deepEqual(env, { NIVODA_PASSWORD: 'from-file', NIVODA_USERNAME: 'shell-user', LOG_LEVEL: 'debug', DATABASE_URL: '' });
      for (const NODE_ENV of ['production', 'test']) {
        const other: Record<string, string | undefined> = { NODE_ENV };
        loadDotEnv(other, file);
        assert.deepEqual(other, { NODE_ENV });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names an unusable DATABASE_URL without echoing it', () => {
    const problems = problemsOf({ ...valid, DATABASE_URL: 'postgres://user:s3cr3t/pw@127.0.0.1:1/db' });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^DATABASE_URL must be a postgres:\/\//);
    assert.doesNotMatch(problems[0]!, /s3cr3t/);
    assert.match(problemsOf({ ...valid, DATABASE_URL: 'mysql://db/x' })[0]!, /DATABASE_URL must be a postgres/);
  });
});
