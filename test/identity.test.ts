// Managed identity, proven against real peers: the token paths of the three Azure adapters.
// Blob: Azurite over HTTPS with `--oauth basic` (checks each bearer token's issuer, audience and
// lifetime). Service Bus: the rhea peer over TLS, recording each $cbs put-token. PostgreSQL: a
// throwaway cluster that demands a SCRAM password on 127.0.0.1 (the machine's server trusts
// every TCP login, so it would never ask for the token). And the real command line in production
// mode with DefaultAzureCredential, which gets its tokens from a local stand-in for the managed
// identity endpoint of Container Apps (IDENTITY_ENDPOINT / IDENTITY_HEADER).
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { chown, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { AccessToken, GetTokenOptions, TokenCredential } from '@azure/identity';
import pg from 'pg';
import { loadBaseConfig } from '../src/config.js';
import { openDatabase } from '../src/db/open.js';
import type { Database } from '../src/db/database.js';
import { ConfigError, PermanentError } from '../src/errors.js';
import { POSTGRES_TOKEN_SCOPE } from '../src/identity.js';
import { openWatermarkStore } from '../src/watermark/open.js';
import { startSimulator, type Simulator } from '../tools/simulator/server.js';
import { createTestCertificate, startAzurite, type Azurite, type TestCertificate } from './helpers/azurite.js';
import { nivodaEnv, runCli } from './helpers/cli.js';
import { closedPort, startServiceBusPeer, type ServiceBusPeer } from './helpers/servicebus-peer.js';

const run = promisify(execFile);

const STORAGE_SCOPE = 'https://storage.azure.com/.default';
const SERVICE_BUS_SCOPE = 'https://servicebus.azure.net//.default';
const TENANT = '00000000-0000-4000-8000-0000000000aa';

const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A token shaped like Entra ID's (header.payload.signature) for `audience`; the signature is not a real one. */
function jwt(audience: string, subject = 'test-identity'): string {
  const now = Math.floor(Date.now() / 1000);
  const payload = { aud: audience, iss: `https://sts.windows.net/${TENANT}/`, iat: now - 60, nbf: now - 60, exp: now + 3600, sub: subject };
  return `${base64url({ typ: 'JWT', alg: 'RS256' })}.${base64url(payload)}.${Buffer.from(`sig-${randomUUID()}`).toString('base64url')}`;
}

/** The resource (audience) of a `.default` scope, as the managed identity endpoint is asked for it. */
const resourceOf = (scope: string) => scope.replace(/\/\.default$/, '');

/**
 * A TokenCredential that records every scope it is asked for and answers with one fixed token
 * per scope (the PostgreSQL role's password must be known in advance). `audience` overrides
 * the token's audience, to show a peer that checks it refusing the token.
 */
class TestCredential implements TokenCredential {
  readonly scopes: string[] = [];
  private readonly tokens = new Map<string, string>();

  constructor(private readonly options: { audience?: string } = {}) {}

  tokenFor(scope: string): string {
    let token = this.tokens.get(scope);
    if (token === undefined) {
      token = jwt(this.options.audience ?? resourceOf(scope));
      this.tokens.set(scope, token);
    }
    return token;
  }

  getToken(scopes: string | string[], _options?: GetTokenOptions): Promise<AccessToken> {
    const list = Array.isArray(scopes) ? scopes : [scopes];
    this.scopes.push(...list);
    return Promise.resolve({ token: this.tokenFor(list[0] ?? ''), expiresOnTimestamp: Date.now() + 3_600_000 });
  }
}

// ---- a PostgreSQL cluster that checks passwords ---------------------------------------------

interface ScramCluster {
  port: number;
  /** Superuser over the Unix socket (trust there), for setting up roles and looking at what was written. */
  admin(database?: string): pg.Client;
  stop(): Promise<void>;
}

async function postgresBin(): Promise<string | undefined> {
  const root = '/usr/lib/postgresql';
  const versions = await readdir(root).catch(() => [] as string[]);
  const newest = versions.filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? undefined : path.join(root, newest, 'bin');
}

/**
 * Runs a server tool with its output in a file: `pg_ctl start` leaves the server running with
 * the tool's stdout and stderr, so a pipe there would never close.
 */
async function runTool(command: string, args: string[], dir: string): Promise<void> {
  const file = path.join(dir, 'tools.log');
  const out = openSync(file, 'a');
  try {
    const child = spawn(command, args, { stdio: ['ignore', out, out] });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (exitCode) => resolve(exitCode));
    });
    if (code !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${code}:\n${await readFile(file, 'utf8')}`);
  } finally {
    closeSync(out);
  }
}

/** initdb + pg_ctl in a temporary directory: SCRAM on 127.0.0.1, trust on the socket only. */
async function startScramCluster(bin: string): Promise<ScramCluster> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pg-scram-'));
  const data = path.join(dir, 'data');
  // initdb refuses to run as root: run the server tools as the postgres user then.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
    await chown(dir, Number(uid.stdout.trim()), Number(gid.stdout.trim()));
  }
  const tool = (name: string, args: string[]) =>
    asRoot ? runTool('runuser', ['-u', 'postgres', '--', path.join(bin, name), ...args], dir) : runTool(path.join(bin, name), args, dir);
  const port = await closedPort();
  await tool('initdb', ['-D', data, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', '-E', 'UTF8', '--no-sync']);
  const settings = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off`;
  await tool('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-o', settings, 'start']);
  let stopped = false;
  return {
    port,
    admin: (database = 'postgres') => new pg.Client({ host: dir, port, user: 'postgres', database }),
    async stop() {
      if (stopped) return;
      stopped = true;
      await tool('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A login role whose password is `password`, owning a database of the same name. */
async function createRole(cluster: ScramCluster, name: string, password: string): Promise<void> {
  const admin = cluster.admin();
  await admin.connect();
  try {
    // JWTs are base64url and dots: nothing in them needs escaping inside a literal.
    assert.match(password, /^[A-Za-z0-9_.-]+$/);
    await admin.query(`CREATE ROLE "${name}" LOGIN PASSWORD '${password}'`);
    await admin.query(`CREATE DATABASE "${name}" OWNER "${name}"`);
  } finally {
    await admin.end();
  }
}

// ---- a stand-in for the managed identity endpoint --------------------------------------------

interface IdentityRequest {
  resource: string | null;
  clientId: string | null;
  apiVersion: string | null;
  header: string | undefined;
}

/**
 * The App Service / Container Apps managed identity protocol (api-version 2019-08-01): GET
 * IDENTITY_ENDPOINT?resource=…&client_id=… with the X-IDENTITY-HEADER secret, answered with a
 * token for that resource. One fixed token per resource, so a test can make one a role's password.
 */
async function startIdentityEndpoint(secret: string) {
  const requests: IdentityRequest[] = [];
  const tokens = new Map<string, string>();
  const tokenFor = (resource: string) => {
    let token = tokens.get(resource);
    if (token === undefined) {
      token = jwt(resource, 'user-assigned-identity');
      tokens.set(resource, token);
    }
    return token;
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const header = req.headers['x-identity-header'];
    const request: IdentityRequest = {
      resource: url.searchParams.get('resource'),
      clientId: url.searchParams.get('client_id'),
      apiVersion: url.searchParams.get('api-version'),
      header: typeof header === 'string' ? header : undefined,
    };
    requests.push(request);
    res.setHeader('content-type', 'application/json');
    if (request.header !== secret || !request.resource) {
      res.statusCode = 400;
      res.end(JSON.stringify({ error: 'invalid_request', error_description: 'missing header or resource' }));
      return;
    }
    const expiresOn = Math.floor(Date.now() / 1000) + 3600;
    res.end(
      JSON.stringify({
        access_token: tokenFor(request.resource),
        expires_on: String(expiresOn),
        resource: request.resource,
        token_type: 'Bearer',
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/msi/token`,
    requests,
    tokenFor,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---- the tests -------------------------------------------------------------------------------

describe('managed identity: Blob with OAuth (Azurite over HTTPS, --oauth basic)', () => {
  let cert: TestCertificate;
  let azurite: Azurite;

  before(async () => {
    cert = await createTestCertificate();
    azurite = await startAzurite({ https: cert, oauth: 'basic' });
  });
  after(async () => {
    await azurite?.stop();
    await cert?.remove();
  });

  const blobConfig = (blob: string) => ({ backend: 'blob', accountUrl: azurite.blobEndpoint, container: 'watermarks', blob }) as const;

  it('the blob watermark store round-trips through bearer tokens asked for the storage scope', async () => {
    assert.match(azurite.blobEndpoint, /^https:\/\//);
    const credential = new TestCredential();
    const store = await openWatermarkStore(blobConfig('nivoda.json'), {
      credential,
      tls: { ca: cert.cert },
      retryOptions: { maxTries: 1 },
    });
    assert.equal(await store.read(), null);
    const written = await store.write({ lastUpdatedAt: '2026-01-02T03:04:05.000Z', lastRunId: 'run-1' });
    const read = await store.read();
    assert.deepEqual(read?.watermark, { lastUpdatedAt: '2026-01-02T03:04:05.000Z', lastRunId: 'run-1' });
    assert.equal(read?.etag, written.etag);
    assert.ok(credential.scopes.length > 0, 'the credential was asked for a token');
    assert.deepEqual([...new Set(credential.scopes)], [STORAGE_SCOPE]);
  });

  it('Azurite checks the token: one for another audience is refused, permanently', async () => {
    const credential = new TestCredential({ audience: 'https://vault.azure.net' });
    const store = await openWatermarkStore(blobConfig('other.json'), { credential, tls: { ca: cert.cert }, retryOptions: { maxTries: 1 } });
    const err = await store.read().then(
      () => assert.fail('a token for another audience was accepted'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof PermanentError, String(err));
    assert.match(err.message, /\b(401|403)\b/);
    assert.deepEqual([...new Set(credential.scopes)], [STORAGE_SCOPE]);
  });

  it('the certificate is really checked: without the test CA the endpoint is not trusted', async () => {
    const store = await openWatermarkStore(blobConfig('nivoda.json'), { credential: new TestCredential(), retryOptions: { maxTries: 1 } });
    await assert.rejects(store.read(), /certificate/i);
  });
});

/**
 * Publishes through a ServiceBusQueue built from a namespace and a test credential, in a child
 * process: the SDK's credential constructor always speaks TLS and takes no certificate
 * authority, so only a process started with NODE_EXTRA_CA_CERTS trusts the peer's certificate.
 * Prints `{ scopes, published }` on stdout.
 */
const PUBLISH_WITH_TEST_CREDENTIAL = `
const { ServiceBusQueue } = await import(process.env.SERVICEBUS_MODULE);
const { createLogger } = await import(process.env.LOG_MODULE);
const scopes = [];
const credential = {
  async getToken(requested) {
    scopes.push(...[].concat(requested));
    return { token: process.env.TEST_TOKEN, expiresOnTimestamp: Date.now() + 3600000 };
  },
};
const queue = new ServiceBusQueue(
  { namespace: process.env.NAMESPACE, queueName: 'work-items' },
  { logger: createLogger({ level: 'silent' }), credential, retry: { attempts: 1 } },
);
const item = {
  runId: 'run-identity', partitionId: 'partition-1', priceMin: 0, priceMax: 2147483647, expectedRecords: 10,
  isIncremental: false, priceField: 'dollar_value', updatedTo: '2026-01-01T00:00:00.000Z', partitionCount: 1, query: {},
};
const { published } = await queue.publish([item]);
await queue.close();
process.stdout.write(JSON.stringify({ scopes, published }));
`;

describe('managed identity: Service Bus with a token (the peer over TLS, a JWT put-token on $cbs)', () => {
  let cert: TestCertificate;
  let peer: ServiceBusPeer;

  before(async () => {
    cert = await createTestCertificate();
    peer = await startServiceBusPeer({ tls: { key: cert.key, cert: cert.cert } });
  });
  after(async () => {
    await peer?.close();
    await cert?.remove();
  });

  it('a ServiceBusQueue built from a namespace and a credential publishes, with a JWT put-token for the queue', async () => {
    const token = jwt(resourceOf(SERVICE_BUS_SCOPE));
    const child = spawn(
      process.execPath,
      ['--import', import.meta.resolve('tsx'), '--input-type=module', '-e', PUBLISH_WITH_TEST_CREDENTIAL],
      {
        env: {
          PATH: process.env.PATH,
          NODE_EXTRA_CA_CERTS: cert.certFile,
          SERVICEBUS_MODULE: new URL('../src/queue/servicebus.ts', import.meta.url).href,
          LOG_MODULE: new URL('../src/log.ts', import.meta.url).href,
          NAMESPACE: peer.namespace,
          TEST_TOKEN: token,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    assert.equal(code, 0, stderr);
    const report = JSON.parse(stdout) as { scopes: string[]; published: number };
    assert.equal(report.published, 1);
    assert.ok(report.scopes.length > 0);
    assert.deepEqual([...new Set(report.scopes)], [SERVICE_BUS_SCOPE]);
    assert.deepEqual(peer.cbsTokens, [{ type: 'jwt', audience: `sb://${peer.namespace}/work-items`, token }]);
    assert.deepEqual(
      peer.received.map((m) => m.messageId),
      ['run-identity:partition-1'],
    );
  });
});

describe('managed identity: PostgreSQL with Entra ID (DATABASE_AUTH=azure)', async () => {
  const bin = await postgresBin();
  let cluster: ScramCluster | undefined;
  const credential = new TestCredential();
  const role = 'scheduler-identity';
  const url = () => `postgres://${role}@127.0.0.1:${cluster!.port}/${role}`;

  before(async () => {
    if (!bin) return;
    cluster = await startScramCluster(bin);
    await createRole(cluster, role, credential.tokenFor(POSTGRES_TOKEN_SCOPE));
  });
  after(() => cluster?.stop());

  it('every new connection takes its password from a token for the ossrdbms-aad scope, as the URL user', async (t) => {
    if (!bin) return t.skip('no PostgreSQL server binaries under /usr/lib/postgresql');
    const db: Database = await openDatabase({ backend: 'postgres', url: url(), poolMax: 3, auth: 'azure' }, { credential });
    try {
      const [who] = await db.query<{ user: string }>('SELECT current_user AS user');
      assert.equal(who?.user, role);
      // Three transactions held open at once: the pool needs three connections.
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let open = 0;
      let allOpen!: () => void;
      const opened = new Promise<void>((resolve) => (allOpen = resolve));
      const held = Array.from({ length: 3 }, () =>
        db.transaction(async (tx) => {
          await tx.query('SELECT 1');
          if (++open === 3) allOpen();
          await gate;
        }),
      );
      await opened;
      // The pool is full now: count its sessions from outside.
      const admin = cluster!.admin();
      await admin.connect();
      const sessions = await admin
        .query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1', [role])
        .finally(() => admin.end());
      release();
      await Promise.all(held);
      assert.equal(sessions.rows[0]?.n, 3);
      assert.equal(credential.scopes.length, 3, 'one token per new connection');
      assert.deepEqual([...new Set(credential.scopes)], [POSTGRES_TOKEN_SCOPE]);
    } finally {
      await db.close();
    }
  });

  it('the server really checks: another token, or password mode without a password, is refused', async (t) => {
    if (!bin) return t.skip('no PostgreSQL server binaries under /usr/lib/postgresql');
    const stranger = new TestCredential();
    await assert.rejects(
      openDatabase({ backend: 'postgres', url: url(), poolMax: 1, auth: 'azure' }, { credential: stranger }),
      /password authentication failed/,
    );
    assert.deepEqual(stranger.scopes, [POSTGRES_TOKEN_SCOPE]);
    await assert.rejects(openDatabase({ backend: 'postgres', url: url(), poolMax: 1, auth: 'password' }), /password/);
  });
});

describe('managed identity: the real command line in production', async () => {
  const bin = await postgresBin();
  const clientId = randomUUID();
  const identitySecret = `identity-header-${randomUUID()}`;
  let cert: TestCertificate;
  let azurite: Azurite;
  let peer: ServiceBusPeer;
  let sim: Simulator;
  let identity: Awaited<ReturnType<typeof startIdentityEndpoint>>;
  let cluster: ScramCluster | undefined;
  let tmp: string;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'identity-cli-'));
    cert = await createTestCertificate();
    const started = await Promise.allSettled([
      startAzurite({ https: cert, oauth: 'basic' }).then((a) => (azurite = a)),
      startServiceBusPeer({ tls: { key: cert.key, cert: cert.cert } }).then((p) => (peer = p)),
      startSimulator({ shape: 'realistic', seed: 9, size: 3_000 }).then((s) => (sim = s)),
      startIdentityEndpoint(identitySecret).then((i) => (identity = i)),
      bin ? startScramCluster(bin).then((c) => (cluster = c)) : Promise.resolve(undefined),
    ]);
    const failure = started.find((r) => r.status === 'rejected');
    if (failure) throw failure.reason;
  });
  after(async () => {
    await Promise.allSettled([azurite?.stop(), peer?.close(), sim?.close(), identity?.close(), cluster?.stop()]);
    await cert?.remove();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('run: DefaultAzureCredential gets the user-assigned identity tokens for Blob, Service Bus and PostgreSQL', async (t) => {
    if (!cluster) return t.skip('no PostgreSQL server binaries under /usr/lib/postgresql');
    const role = 'scheduler-mi';
    await createRole(cluster, role, identity.tokenFor(resourceOf(POSTGRES_TOKEN_SCOPE)));
    const result = await runCli(['run'], {
      ...nivodaEnv(sim),
      NODE_ENV: 'production',
      // The child trusts the test certificate from its start: Azurite and the peer both serve it.
      NODE_EXTRA_CA_CERTS: cert.certFile,
      IDENTITY_ENDPOINT: identity.url,
      IDENTITY_HEADER: identitySecret,
      AZURE_CLIENT_ID: clientId,
      AZURE_STORAGE_ACCOUNT_URL: azurite.blobEndpoint,
      AZURE_SERVICE_BUS_NAMESPACE: peer.namespace,
      DATABASE_URL: `postgres://${role}@127.0.0.1:${cluster.port}/${role}`,
      DATABASE_AUTH: 'azure',
      SCHEDULER_DATA_DIR: path.join(tmp, 'unused'),
      SCHEDULER_LOCK_TTL_SECONDS: '20',
    });
    assert.equal(result.code, 0, result.stderr);

    // Every token came from the user-assigned identity, through the platform's protocol.
    const resources = new Set(identity.requests.map((r) => r.resource));
    assert.deepEqual(
      [...resources].sort(),
      [resourceOf(POSTGRES_TOKEN_SCOPE), resourceOf(SERVICE_BUS_SCOPE), resourceOf(STORAGE_SCOPE)].sort(),
    );
    for (const request of identity.requests) {
      assert.equal(request.clientId, clientId);
      assert.equal(request.header, identitySecret);
      assert.equal(request.apiVersion, '2019-08-01');
    }

    // Service Bus: a JWT put-token for the queue, then the work items themselves.
    assert.ok(peer.cbsTokens.length > 0, 'no put-token reached the peer');
    for (const put of peer.cbsTokens) {
      assert.equal(put.type, 'jwt');
      assert.equal(put.audience, `sb://${peer.namespace}/work-items`);
      assert.equal(put.token, identity.tokenFor(resourceOf(SERVICE_BUS_SCOPE)));
    }
    assert.ok(peer.received.length > 0, 'no work item published');
    assert.ok(peer.received.every((m) => m.queue === 'work-items'));

    // PostgreSQL: migrated and the run recorded by the Entra user, its partitions those published.
    const admin = cluster.admin(role);
    await admin.connect();
    try {
      const { rows } = await admin.query<{ status: string; owner: string }>(
        `SELECT r.status, t.tableowner AS owner FROM run_metadata r, pg_tables t WHERE t.tablename = 'run_metadata'`,
      );
      assert.deepEqual(rows, [{ status: 'published', owner: role }]);
    } finally {
      await admin.end();
    }

    // Tokens are secrets: none in the output.
    for (const token of [...identity.requests.map((r) => identity.tokenFor(r.resource ?? '')), identitySecret]) {
      assert.ok(!result.stderr.includes(token) && !result.stdout.includes(token), 'a token or the identity header leaked into the output');
    }
  });

  it('production without a connection string or an account URL / namespace exits 2 naming both of each', async () => {
    const before = sim.stats().countQueries;
    const result = await runCli(['run'], {
      ...nivodaEnv(sim),
      NODE_ENV: 'production',
      DATABASE_URL: 'postgres://scheduler@127.0.0.1:5432/scheduler',
      SCHEDULER_DATA_DIR: path.join(tmp, 'refused'),
    });
    assert.equal(result.code, 2, result.stderr);
    const problems = (result.logs.find((l) => Array.isArray(l.problems))?.problems ?? []) as string[];
    assert.equal(problems.length, 2, problems.join('; '));
    assert.ok(
      problems.some((p) => p.includes('AZURE_STORAGE_ACCOUNT_URL') && p.includes('AZURE_STORAGE_CONNECTION_STRING')),
      problems.join('; '),
    );
    assert.ok(
      problems.some((p) => p.includes('AZURE_SERVICE_BUS_NAMESPACE') && p.includes('AZURE_SERVICE_BUS_CONNECTION_STRING')),
      problems.join('; '),
    );
    assert.equal(sim.stats().countQueries, before, 'nothing was asked of Nivoda');
  });
});

describe('managed identity: configuration', () => {
  const problemsOf = (env: Record<string, string>): string[] => {
    try {
      loadBaseConfig(env);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems;
    }
    return [];
  };

  it('DATABASE_AUTH=azure wants a user and no password in DATABASE_URL, and DATABASE_URL itself', () => {
    const withPassword = problemsOf({ DATABASE_URL: 'postgres://scheduler:secret-password@db.example/scheduler', DATABASE_AUTH: 'azure' });
    assert.equal(withPassword.length, 1, withPassword.join('; '));
    assert.match(withPassword[0]!, /^DATABASE_URL must not carry a password when DATABASE_AUTH=azure/);
    assert.ok(!withPassword[0]!.includes('secret-password'), 'the password is never echoed');
    assert.match(
      problemsOf({ DATABASE_URL: 'postgres://db.example/scheduler', DATABASE_AUTH: 'azure' }).join(';'),
      /must name the Entra ID user/,
    );
    assert.match(problemsOf({ DATABASE_AUTH: 'azure' }).join(';'), /^DATABASE_AUTH=azure needs DATABASE_URL/);
    assert.match(problemsOf({ DATABASE_AUTH: 'token' }).join(';'), /^DATABASE_AUTH must be password .* or azure/);
  });

  it('AZURE_CLIENT_ID must be a GUID; with it, every Azure backend carries the client id', () => {
    assert.match(problemsOf({ AZURE_CLIENT_ID: 'my-identity' }).join(';'), /^AZURE_CLIENT_ID must be the client id \(a GUID\)/);
    const id = randomUUID();
    const config = loadBaseConfig({
      AZURE_CLIENT_ID: id,
      AZURE_STORAGE_ACCOUNT_URL: 'https://account.blob.core.windows.net',
      AZURE_SERVICE_BUS_NAMESPACE: 'scheduler-ns',
      DATABASE_URL: 'postgres://scheduler-mi@db.example/scheduler',
      DATABASE_AUTH: 'azure',
    });
    assert.deepEqual(
      [config.watermark, config.queue, config.database].map((c) => ('azureClientId' in c ? c.azureClientId : undefined)),
      [id, id, id],
    );
    assert.equal(config.database.backend === 'postgres' && config.database.auth, 'azure');
    const plain = loadBaseConfig({ DATABASE_URL: 'postgres://scheduler:pw@db.example/scheduler' });
    assert.equal(plain.database.backend === 'postgres' && plain.database.auth, 'password');
  });
});
