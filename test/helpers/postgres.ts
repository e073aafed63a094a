// A fresh, throwaway database per test file on the machine's PostgreSQL (127.0.0.1:5432,
// trust auth), so test files never see each other's rows and need no clean-up between tests.
// TEST_POSTGRES_ADMIN_URL points the helper at another server.
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export interface TestDatabase {
  /** Connection URL of the new database. */
  url: string;
  name: string;
  /** Drops the database, ending any connection still on it (e.g. of a killed child process). */
  drop(): Promise<void>;
}

const ADMIN_URLS = process.env.TEST_POSTGRES_ADMIN_URL
  ? [process.env.TEST_POSTGRES_ADMIN_URL]
  : ['postgres://postgres@127.0.0.1:5432/postgres', 'postgres://postgres@127.0.0.1:5432/test'];

async function withAdmin<T>(fn: (client: pg.Client, adminUrl: string) => Promise<T>): Promise<T> {
  let lastError: unknown;
  for (const adminUrl of ADMIN_URLS) {
    const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
    try {
      await client.connect();
    } catch (err) {
      lastError = err;
      await client.end().catch(() => undefined);
      continue;
    }
    try {
      return await fn(client, adminUrl);
    } finally {
      await client.end();
    }
  }
  throw new Error(`no test PostgreSQL server reachable at ${ADMIN_URLS.join(' or ')}`, { cause: lastError });
}

export async function createTestDatabase(): Promise<TestDatabase> {
  // Lower-case hex only: a valid unquoted identifier, so no quoting questions.
  const name = `sched_test_${randomBytes(6).toString('hex')}`;
  const url = await withAdmin(async (client, adminUrl) => {
    await client.query(`CREATE DATABASE ${name}`);
    const target = new URL(adminUrl);
    target.pathname = `/${name}`;
    return target.toString();
  });
  let dropped = false;
  return {
    url,
    name,
    async drop(): Promise<void> {
      if (dropped) return;
      dropped = true;
      await withAdmin((client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}
