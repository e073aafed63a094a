// The PostgreSQL backend: a `pg` pool behind the Database interface.
//
// Pooler-safe by construction: every statement is either a single unnamed extended-protocol
// query or a transaction on one checked-out client, and nothing relies on session state
// (no SET, no session advisory locks, no LISTEN, no named prepared statements), so a
// transaction-mode pooler such as PgBouncer in front of the server changes nothing.
import pg from 'pg';
import { parseIntoClientConfig } from 'pg-connection-string';
import { azureCredential, POSTGRES_TOKEN_SCOPE, type TokenCredential } from '../identity.js';
import type { Logger } from '../log.js';
import type { Database, Queryable, Row } from './database.js';

/** OIDs of the types whose default `pg` parsing would differ from PGlite's. */
const INT8_OID = 20;

/**
 * Per-pool type parsers (not the process-wide `pg.types`, so that nothing else in the process
 * is affected). int8 becomes a JS number as PGlite returns it: the scheduler's bigint columns
 * are counts far below 2^53. numeric stays a string on both backends, which already agree.
 */
function typeParsers(): pg.CustomTypesConfig {
  const overrides = new pg.TypeOverrides();
  overrides.setTypeParser(INT8_OID, 'text', (value: string) => Number(value));
  return overrides;
}

export interface PostgresOptions {
  url: string;
  poolMax: number;
  logger?: Logger;
  /** `azure`: the password of every new connection is an Entra ID token (Azure Database for PostgreSQL). */
  auth?: 'password' | 'azure';
  /** With `auth: 'azure'`: the client id of a user-assigned managed identity. */
  azureClientId?: string;
  /** With `auth: 'azure'`: the credential to use instead of azureCredential() (tests pass their own). */
  credential?: TokenCredential;
}

/**
 * Where the pool connects, and as whom. With Entra ID the URL names the server and the user
 * and the password is a function that `pg` calls for every new connection: a token lasts about
 * an hour and the credential refreshes it, so a connection opened late in a run still gets a
 * valid one. The URL is parsed here rather than passed as `connectionString`, because `pg`
 * would let the URL's empty password override the function.
 */
function connectionConfig(options: PostgresOptions): pg.PoolConfig {
  if (options.auth !== 'azure') return { connectionString: options.url };
  const credential = options.credential ?? azureCredential({ azureClientId: options.azureClientId });
  return {
    ...parseIntoClientConfig(options.url),
    password: async () => {
      const token = await credential.getToken(POSTGRES_TOKEN_SCOPE);
      if (!token) throw new Error(`the Azure credential returned no token for ${POSTGRES_TOKEN_SCOPE}`);
      return token.token;
    },
  };
}

export async function openPostgres(options: PostgresOptions): Promise<Database> {
  const pool = new pg.Pool({
    ...connectionConfig(options),
    max: options.poolMax,
    types: typeParsers(),
    application_name: 'nivoda-scheduler',
    // A server that does not answer should fail the run, not hang it.
    connectionTimeoutMillis: 15_000,
    // No statement of the scheduler takes long; one that does is stuck (a lock, a half-open
    // connection the OS has not noticed). Timed on the client: a server-side statement_timeout
    // travels as a startup parameter, which a transaction-mode pooler refuses.
    query_timeout: 120_000,
    // A connection dropped without a FIN (a failover, a NAT) is found within a minute, not hours.
    keepAlive: true,
    keepAliveInitialDelayMillis: 30_000,
    idleTimeoutMillis: 10_000,
  });
  // Without a listener, an idle client dropped by the server (restart, pooler timeout) would
  // crash the process with an unhandled 'error' event; the next query simply gets a new client.
  pool.on('error', (err) => {
    options.logger?.warn({ err }, 'idle PostgreSQL connection failed');
  });

  // Fail fast on a wrong URL or an unreachable server, at open time rather than mid-run.
  try {
    await pool.query('SELECT 1');
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }

  const on = (client: pg.Pool | pg.PoolClient): Queryable => ({
    async query<R extends Row = Row>(sql: string, params: readonly unknown[] = []): Promise<R[]> {
      // `pg` wants a mutable array; copying keeps our readonly contract honest.
      const result = await client.query<R>(sql, [...params]);
      return result.rows;
    },
    async exec(sql: string): Promise<void> {
      // No parameters → simple query protocol, which accepts several statements.
      await client.query(sql);
    },
  });

  let closed = false;
  return {
    backend: 'postgres',
    ...on(pool),
    async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        const result = await fn(on(client));
        await client.query('COMMIT');
        return result;
      } catch (err) {
        try {
          await client.query('ROLLBACK');
        } catch (rollbackError) {
          // A connection that cannot roll back must not go back to the pool in an unknown state.
          broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
        }
        throw err;
      } finally {
        client.release(broken);
      }
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await pool.end();
    },
  };
}
