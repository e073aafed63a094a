// The embedded backend: PGlite (PostgreSQL in wasm) persisted in a directory.
//
// PGlite is one session in this process. Two processes on the same directory would corrupt
// it, so callers take the data-directory file lock (lock.ts, acquireFileLock) before opening.
// Inside `transaction(fn)`, use only the `tx` handed to `fn`: a query on the Database itself
// waits for the transaction to end, and so would wait forever.
import { mkdir } from 'node:fs/promises';
import { PGlite, type Transaction } from '@electric-sql/pglite';
import type { Database, Queryable, Row } from './database.js';

const INT8_OID = 20;

export async function openPglite(dir: string): Promise<Database> {
  await mkdir(dir, { recursive: true });
  const pglite = await PGlite.create(dir, {
    // Explicit, so that int8 matches the pg backend's parser (postgres.ts) whatever PGlite's default becomes.
    parsers: { [INT8_OID]: (value: string) => Number(value) },
  });

  const on = (target: PGlite | Transaction): Queryable => ({
    async query<R extends Row = Row>(sql: string, params: readonly unknown[] = []): Promise<R[]> {
      const result = await target.query<R>(sql, [...params]);
      return result.rows;
    },
    async exec(sql: string): Promise<void> {
      await target.exec(sql);
    },
  });

  let closed = false;
  return {
    backend: 'pglite',
    ...on(pglite),
    transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      return pglite.transaction((tx) => fn(on(tx)));
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await pglite.close();
    },
  };
}
