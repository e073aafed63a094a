// The scheduler's one view of its database, served by `pg` against PostgreSQL or by
// PGlite (embedded) so that the rest of the code cannot tell them apart.

export type Row = Record<string, unknown>;

export interface Queryable {
  /** Runs one parameterised statement ($1, $2 …) and returns its rows. int8/bigint columns come back as JS numbers on both backends. */
  query<R extends Row = Row>(sql: string, params?: readonly unknown[]): Promise<R[]>;
  /**
   * Runs a script of one or more statements without parameters (a migration file). Separate from
   * `query` because PGlite's `query` goes through a prepared statement, which takes only one statement.
   */
  exec(sql: string): Promise<void>;
}

export interface Database extends Queryable {
  readonly backend: 'postgres' | 'pglite';
  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** Both drivers return timestamptz as Date; a string is accepted too so a driver change cannot alter the output. */
export function iso(value: unknown): string {
  if (value instanceof Date) return value.toISOString();
  if (typeof value === 'string') return new Date(value).toISOString();
  throw new TypeError(`expected a timestamp, got ${typeof value}`);
}

export function isoOrNull(value: unknown): string | null {
  return value === null || value === undefined ? null : iso(value);
}
