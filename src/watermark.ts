// The watermark of CONTRACT §4: where the last successful run ended. A missing watermark
// means "full run", so a damaged one must never be mistaken for a missing one (a full run
// empties the raw table): every read goes through the one parser below, which either
// returns a valid document or throws WatermarkFormatError naming the store and the problem.
// The backends (watermark/blob-store.ts, watermark/file-store.ts) use the parser and the
// interface below; watermark/open.ts chooses one.
import { z } from 'zod';
import type { Watermark } from './domain.js';
import { PermanentError, WatermarkFormatError } from './errors.js';

export type { Watermark };

/** A watermark together with the version tag it was read or written with. */
export interface StoredWatermark {
  watermark: Watermark;
  /** Opaque version tag; pass it back as `ifMatch` to write only if nobody changed the watermark since. */
  etag: string;
}

/**
 * Preconditions for a write or clear. At most one may be given.
 * - `ifMatch`: the etag read earlier; the stored watermark must still be that version.
 * - `ifNoneMatch: '*'`: there must be no watermark (create only).
 */
export interface WriteConditions {
  ifMatch?: string;
  ifNoneMatch?: '*';
}

export interface WatermarkStore {
  /** Where the watermark lives, for messages (e.g. `blob watermarks/nivoda.json`); never contains secrets. */
  readonly location: string;
  /** The stored watermark, or null when there is none. Throws WatermarkFormatError when it is malformed. */
  read(): Promise<StoredWatermark | null>;
  /**
   * Replaces the watermark atomically: readers see the old document or the new one, never a mix.
   * A failed precondition throws WatermarkConflictError and writes nothing. Without conditions the
   * store still never overwrites blindly: it writes conditionally on the version it finds just
   * before writing, so a writer that slips in between makes this call fail instead of being lost.
   * A caller that showed the old value to someone (`watermark set`) should pass `unchangedSince(read)`.
   */
  write(watermark: Watermark, conditions?: WriteConditions): Promise<StoredWatermark>;
  /**
   * Deletes the watermark; true if there was one. Without conditions it deletes whatever is
   * stored (the next run is then a full run either way). `ifMatch` on a missing watermark conflicts.
   */
  clear(conditions?: Pick<WriteConditions, 'ifMatch'>): Promise<boolean>;
}

/** The precondition that the stored watermark is still what `current` (a read() result) saw. */
export function unchangedSince(current: StoredWatermark | null): WriteConditions {
  return current ? { ifMatch: current.etag } : { ifNoneMatch: '*' };
}

const ISO_DATE_TIME_HINT = 'an ISO-8601 date-time with a time zone, e.g. 2024-01-15T02:00:00.000Z';

/** Required dates reject a missing value with "is required"; every message reads after the field name. */
const isoDateTime = z
  .string({ error: (issue) => (issue.input === undefined ? 'is required' : `must be ${ISO_DATE_TIME_HINT}`) })
  // zod's check also rejects impossible calendar dates (2023-02-29) that Date.parse would roll over.
  .pipe(z.iso.datetime({ offset: true, error: (issue) => `must be ${ISO_DATE_TIME_HINT} (got ${show(issue.input)})` }));

const watermarkSchema = z.object(
  {
    lastUpdatedAt: isoDateTime,
    lastRunId: z.string({ error: 'must be a string' }).min(1, { error: 'must not be empty' }).optional(),
    lastRunCompletedAt: isoDateTime.optional(),
  },
  { error: (issue) => `must be a JSON object (got ${describeJson(issue.input)})` },
);

/**
 * Every way `value` is not a CONTRACT §4 watermark, as "field problem" sentences; empty when it is one.
 * Unknown extra fields are allowed (and dropped), so a consolidator may add fields without breaking runs.
 */
export function watermarkProblems(value: unknown): string[] {
  const result = watermarkSchema.safeParse(value);
  if (result.success) return [];
  return result.error.issues.map((issue) => (issue.path.length ? `${issue.path.join('.')} ${issue.message}` : issue.message));
}

/** Validates a parsed document; returns it with only the contract's fields, in the contract's order. */
function toWatermark(value: unknown, location: string): Watermark {
  const result = watermarkSchema.safeParse(value);
  if (!result.success) throw new WatermarkFormatError(location, watermarkProblems(value).join('; '));
  const { lastUpdatedAt, lastRunId, lastRunCompletedAt } = result.data;
  return {
    lastUpdatedAt,
    ...(lastRunId !== undefined && { lastRunId }),
    ...(lastRunCompletedAt !== undefined && { lastRunCompletedAt }),
  };
}

/** The one parser of stored watermark text. Throws WatermarkFormatError naming `location` and the problem. */
export function parseWatermark(text: string, location: string): Watermark {
  // A byte-order mark is what a watermark edited by hand on Windows or uploaded from a portal may carry.
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  if (body.trim() === '') throw new WatermarkFormatError(location, 'the document is empty');
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch (err) {
    throw new WatermarkFormatError(location, `not valid JSON (${(err as Error).message})`);
  }
  return toWatermark(json, location);
}

/**
 * The exact text a store writes: validated first, so a store never writes what it could not
 * read back. Throws PermanentError (a programming or usage error, not a stored-data problem).
 */
export function serializeWatermark(watermark: Watermark, location: string): string {
  const problems = watermarkProblems(watermark);
  if (problems.length > 0) {
    throw new PermanentError(`refusing to write an invalid watermark to ${location}: ${problems.join('; ')}`);
  }
  return `${JSON.stringify(toWatermark(watermark, location), null, 2)}\n`;
}

/** Rejects contradictory preconditions before any I/O, so a store never has to guess which one wins. */
export function checkConditions(conditions: WriteConditions | undefined): void {
  if (conditions?.ifMatch !== undefined && conditions.ifNoneMatch !== undefined) {
    throw new TypeError('give at most one of ifMatch and ifNoneMatch');
  }
  if (conditions?.ifMatch === '') throw new TypeError('ifMatch must be a non-empty etag');
}

function show(value: unknown): string {
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function describeJson(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}
