// The watermark as a local file, for runs without Azure storage. A write goes to a temporary
// file in the same directory, is fsynced and then renamed over the watermark: rename is atomic
// within one file system, so a reader (or a crash) sees the old document or the new one, never
// a truncated one.
//
// Conditional writes are best effort and hold within one host only: calls in this process are
// serialised, and the version is compared immediately before the rename, but another process
// writing in the gap between that comparison and the rename would not be detected. The blob
// store is the one with a real compare-and-swap; this backend serves one scheduler on one host.
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Watermark } from '../domain.js';
import { WatermarkConflictError, WatermarkFormatError } from '../errors.js';
import {
  checkConditions,
  parseWatermark,
  serializeWatermark,
  type StoredWatermark,
  type WatermarkStore,
  type WriteConditions,
} from '../watermark.js';

/** The content hash, so that an identical rewrite keeps the etag and any real change alters it. */
function etagOf(bytes: Buffer): string {
  return `"sha256-${createHash('sha256').update(bytes).digest('hex')}"`;
}

const tails = new Map<string, Promise<void>>();

/** Runs `task` after every earlier task on the same file in this process has finished. */
async function serialised<T>(key: string, task: () => Promise<T>): Promise<T> {
  const previous = tails.get(key) ?? Promise.resolve();
  let release!: () => void;
  const done = new Promise<void>((resolve) => (release = resolve));
  const tail = previous.then(() => done);
  tails.set(key, tail);
  await previous;
  try {
    return await task();
  } finally {
    release();
    if (tails.get(key) === tail) tails.delete(key);
  }
}

export class FileWatermarkStore implements WatermarkStore {
  readonly location: string;
  private readonly directory: string;

  constructor(readonly filePath: string) {
    this.filePath = path.resolve(filePath);
    this.location = this.filePath;
    this.directory = path.dirname(this.filePath);
  }

  async read(): Promise<StoredWatermark | null> {
    const bytes = await this.readBytes();
    if (bytes === null) return null;
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new WatermarkFormatError(this.location, 'the content is not UTF-8 text');
    }
    return { watermark: parseWatermark(text, this.location), etag: etagOf(bytes) };
  }

  async write(watermark: Watermark, conditions?: WriteConditions): Promise<StoredWatermark> {
    checkConditions(conditions);
    const text = serializeWatermark(watermark, this.location);
    const bytes = Buffer.from(text, 'utf8');
    return serialised(this.filePath, async () => {
      await mkdir(this.directory, { recursive: true });
      // Dot-prefixed and unique per writer, so concurrent writers never share a temporary file.
      const temporary = path.join(this.directory, `.${path.basename(this.filePath)}.${process.pid}.${randomUUID()}.tmp`);
      try {
        const handle = await open(temporary, 'wx', 0o644);
        try {
          await handle.writeFile(bytes);
          // Data on disk before the rename makes it visible: otherwise a power cut could leave an empty watermark.
          await handle.sync();
        } finally {
          await handle.close();
        }
        await this.checkPrecondition(conditions);
        await rename(temporary, this.filePath);
      } catch (err) {
        await rm(temporary, { force: true });
        throw err;
      }
      await this.syncDirectory();
      return { watermark: parseWatermark(text, this.location), etag: etagOf(bytes) };
    });
  }

  async clear(conditions?: Pick<WriteConditions, 'ifMatch'>): Promise<boolean> {
    checkConditions(conditions);
    return serialised(this.filePath, async () => {
      await this.checkPrecondition(conditions);
      try {
        await unlink(this.filePath);
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
      await this.syncDirectory();
      return true;
    });
  }

  private async checkPrecondition(conditions: WriteConditions | undefined): Promise<void> {
    if (conditions?.ifMatch === undefined && conditions?.ifNoneMatch === undefined) return;
    const bytes = await this.readBytes();
    const current = bytes === null ? null : etagOf(bytes);
    if (conditions.ifNoneMatch === '*' && current !== null) {
      throw new WatermarkConflictError(this.location, 'it was expected to be absent but one now exists');
    }
    if (conditions.ifMatch !== undefined && current === null) {
      throw new WatermarkConflictError(this.location, `it was expected at version ${conditions.ifMatch} but no longer exists`);
    }
    if (conditions.ifMatch !== undefined && current !== conditions.ifMatch) {
      throw new WatermarkConflictError(this.location, `it is no longer at version ${conditions.ifMatch}`);
    }
  }

  private async readBytes(): Promise<Buffer | null> {
    try {
      return await readFile(this.filePath);
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /** Makes the rename or unlink itself durable; not every platform can open a directory, which is then accepted. */
  private async syncDirectory(): Promise<void> {
    let handle;
    try {
      handle = await open(this.directory, 'r');
      await handle.sync();
    } catch {
      // Best effort: the data itself was already synced before the rename.
    } finally {
      await handle?.close();
    }
  }
}

function isNotFound(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === 'ENOENT';
}
