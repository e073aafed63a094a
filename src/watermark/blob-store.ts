// The watermark as one Azure blob. Every write is conditional on the blob's ETag (or on its
// absence), so an operator's `watermark set` and a consolidator advancing the watermark can
// never silently overwrite each other: the loser gets WatermarkConflictError. A single Put
// Blob replaces the content atomically, so readers never see a torn document either.
import {
  BlobServiceClient,
  type BlobRequestConditions,
  type BlockBlobClient,
  type ContainerClient,
  type StoragePipelineOptions,
  type StorageRetryOptions,
} from '@azure/storage-blob';
import type { Config } from '../config.js';
import type { Watermark } from '../domain.js';
import { azureCredential, type TokenCredential } from '../identity.js';
import { ConfigError, PermanentError, TransientError, WatermarkConflictError, WatermarkFormatError, toError } from '../errors.js';
import { registerSecret, scrub } from '../log.js';
import {
  checkConditions,
  parseWatermark,
  serializeWatermark,
  type StoredWatermark,
  type WatermarkStore,
  type WriteConditions,
} from '../watermark.js';

export type BlobWatermarkConfig = Extract<Config['watermark'], { backend: 'blob' }>;

export interface BlobWatermarkStoreOptions {
  /** Overrides the SDK retry policy (tests use `maxTries: 1` to fail fast against a dead endpoint). */
  retryOptions?: StorageRetryOptions;
  /** With an account URL: the credential to use instead of azureCredential() (tests pass their own). */
  credential?: TokenCredential;
  /** Extra certificate authorities to trust (tests: the self-signed certificate of an HTTPS Azurite). */
  tls?: { ca: string | Buffer };
}

/**
 * A scheduler runs unattended at night: retry a flaky network a few times, but never hang on
 * one request (the SDK's default per-try timeout is unbounded).
 */
const DEFAULT_RETRY: StorageRetryOptions = { maxTries: 4, tryTimeoutInMs: 30_000, retryDelayInMs: 1_000, maxRetryDelayInMs: 10_000 };

/** A watermark is ~150 bytes; anything far larger is not one, and is not worth downloading. */
const MAX_WATERMARK_BYTES = 64 * 1024;

export class BlobWatermarkStore implements WatermarkStore {
  readonly location: string;
  private readonly blob: BlockBlobClient;

  constructor(
    private readonly container: ContainerClient,
    blobName: string,
  ) {
    this.location = `blob ${container.containerName}/${blobName}`;
    this.blob = container.getBlockBlobClient(blobName);
  }

  /** Builds the client from a connection string, or from an account URL with DefaultAzureCredential (managed identity). */
  static fromConfig(config: BlobWatermarkConfig, options: BlobWatermarkStoreOptions = {}): BlobWatermarkStore {
    // tlsOptions is not in StoragePipelineOptions' type, but the SDK hands its options to
    // core-rest-pipeline's createClientPipeline, which applies it (its tlsPolicy) to every request.
    const clientOptions: StoragePipelineOptions & { tlsOptions?: { ca: string | Buffer } } = {
      retryOptions: { ...DEFAULT_RETRY, ...options.retryOptions },
      ...(options.tls ? { tlsOptions: { ca: options.tls.ca } } : {}),
    };
    let service: BlobServiceClient;
    if (config.connectionString) {
      registerConnectionStringSecrets(config.connectionString);
      try {
        service = BlobServiceClient.fromConnectionString(config.connectionString, clientOptions);
      } catch (err) {
        throw new ConfigError([
          `AZURE_STORAGE_CONNECTION_STRING is not a usable storage connection string: ${scrub(toError(err).message)}`,
        ]);
      }
    } else if (config.accountUrl) {
      const credential = options.credential ?? azureCredential({ azureClientId: config.azureClientId });
      service = new BlobServiceClient(config.accountUrl, credential, clientOptions);
    } else {
      throw new ConfigError(['the blob watermark store needs AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL']);
    }
    return new BlobWatermarkStore(service.getContainerClient(config.container), config.blob);
  }

  async read(): Promise<StoredWatermark | null> {
    let text: string;
    let etag: string;
    try {
      // download() rather than downloadToBuffer(): its ETag belongs to exactly the bytes returned.
      const response = await this.blob.download(0);
      if ((response.contentLength ?? 0) > MAX_WATERMARK_BYTES) {
        throw new WatermarkFormatError(this.location, `the blob is ${response.contentLength} bytes, far too large for a watermark`);
      }
      etag = requireEtag(response.etag, this.location);
      text = decodeUtf8(await readAll(response.readableStreamBody, this.location), this.location);
    } catch (err) {
      if (err instanceof PermanentError) throw err;
      // A missing container is a missing watermark too: read never creates anything.
      if (statusOf(err) === 404) return null;
      throw azureFailure('reading', this.location, err);
    }
    return { watermark: parseWatermark(text, this.location), etag };
  }

  async write(watermark: Watermark, conditions?: WriteConditions): Promise<StoredWatermark> {
    checkConditions(conditions);
    const body = serializeWatermark(watermark, this.location);
    // No precondition given: pin the version found now, so a writer that slips in between
    // this look and the upload makes the upload fail instead of being overwritten.
    const pinned: BlobRequestConditions =
      conditions?.ifMatch !== undefined || conditions?.ifNoneMatch !== undefined
        ? { ...conditions }
        : await this.currentVersion().then((etag) => (etag === null ? { ifNoneMatch: '*' } : { ifMatch: etag }));
    try {
      return await this.upload(body, pinned);
    } catch (err) {
      if (!(isContainerMissing(err) && pinned.ifMatch === undefined)) throw this.writeFailure(err, pinned);
    }
    // The container is created on the first write only, never on a read.
    try {
      await this.container.createIfNotExists();
      return await this.upload(body, pinned);
    } catch (err) {
      throw this.writeFailure(err, pinned);
    }
  }

  async clear(conditions?: Pick<WriteConditions, 'ifMatch'>): Promise<boolean> {
    checkConditions(conditions);
    const ifMatch = conditions?.ifMatch;
    try {
      await this.blob.delete({ deleteSnapshots: 'include', conditions: ifMatch === undefined ? undefined : { ifMatch } });
      return true;
    } catch (err) {
      if (statusOf(err) === 404) {
        if (ifMatch === undefined) return false;
        throw new WatermarkConflictError(this.location, `it was expected at version ${ifMatch} but no longer exists`);
      }
      throw this.writeFailure(err, { ifMatch }, 'clearing');
    }
  }

  private async upload(body: string, conditions: BlobRequestConditions): Promise<StoredWatermark> {
    const response = await this.blob.upload(body, Buffer.byteLength(body), {
      blobHTTPHeaders: { blobContentType: 'application/json' },
      conditions,
    });
    return { watermark: parseWatermark(body, this.location), etag: requireEtag(response.etag, this.location) };
  }

  private async currentVersion(): Promise<string | null> {
    try {
      const properties = await this.blob.getProperties();
      return requireEtag(properties.etag, this.location);
    } catch (err) {
      if (err instanceof PermanentError) throw err;
      if (statusOf(err) === 404) return null;
      throw azureFailure('reading', this.location, err);
    }
  }

  private writeFailure(err: unknown, conditions: BlobRequestConditions, operation = 'writing'): Error {
    const status = statusOf(err);
    const code = codeOf(err);
    if (status === 412 && code === 'LeaseIdMissing') {
      return new WatermarkConflictError(this.location, 'another writer holds a lease on it');
    }
    if (status === 412) {
      return new WatermarkConflictError(this.location, `it is no longer at version ${conditions.ifMatch ?? '(none)'}`);
    }
    if (status === 409 && conditions.ifNoneMatch === '*') {
      return new WatermarkConflictError(this.location, 'it was expected to be absent but one now exists');
    }
    if (status === 404 && conditions.ifMatch !== undefined) {
      return new WatermarkConflictError(this.location, `it was expected at version ${conditions.ifMatch} but no longer exists`);
    }
    return azureFailure(operation, this.location, err);
  }
}

/** The Azure error code: `code` is undefined on HEAD-style failures, where only `details.errorCode` carries it. */
function codeOf(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const { code, details } = err as { code?: unknown; details?: unknown };
  if (typeof details === 'object' && details !== null) {
    const errorCode = (details as { errorCode?: unknown }).errorCode;
    if (typeof errorCode === 'string') return errorCode;
  }
  return typeof code === 'string' ? code : undefined;
}

function statusOf(err: unknown): number | undefined {
  const status = typeof err === 'object' && err !== null ? (err as { statusCode?: unknown }).statusCode : undefined;
  return typeof status === 'number' ? status : undefined;
}

function isContainerMissing(err: unknown): boolean {
  return statusOf(err) === 404 && codeOf(err) === 'ContainerNotFound';
}

/**
 * Turns an SDK error into a short message free of secrets. The original error is not kept as
 * `cause`: it carries the request (URL with a SAS, headers), which a logger would serialise.
 * Network failures, timeouts, throttling and 5xx are transient; the rest (403, 400,
 * credential errors) will fail the same way next time.
 */
function azureFailure(operation: string, location: string, thrown: unknown): Error {
  const err = toError(thrown);
  const status = statusOf(err);
  const code = codeOf(err);
  const firstLine = err.message.split('\n', 1)[0]?.trim() ?? '';
  const head = [status, code].filter((part) => part !== undefined).join(' ') || err.name;
  const message = scrub(`watermark ${location}: ${head} while ${operation}${firstLine ? ` (${firstLine})` : ''}`);
  const credentialProblem = /Credential|Authentication/.test(err.name);
  const transient = status === undefined ? !credentialProblem : status === 408 || status === 429 || status >= 500;
  return transient ? new TransientError(message) : new PermanentError(message);
}

function requireEtag(etag: string | undefined, location: string): string {
  if (!etag) throw new PermanentError(`watermark ${location}: the storage service returned no ETag`);
  return etag;
}

async function readAll(stream: NodeJS.ReadableStream | undefined, location: string): Promise<Buffer> {
  if (!stream) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += buffer.length;
    // contentLength may be absent (chunked transfer): enforce the limit while reading too.
    if (size > MAX_WATERMARK_BYTES)
      throw new WatermarkFormatError(location, `the blob exceeds ${MAX_WATERMARK_BYTES} bytes, far too large for a watermark`);
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

function decodeUtf8(bytes: Buffer, location: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new WatermarkFormatError(location, 'the content is not UTF-8 text');
  }
}

/** The key and SAS inside a connection string, so scrub() also removes them where they appear alone. */
function registerConnectionStringSecrets(connectionString: string): void {
  registerSecret(connectionString);
  for (const match of connectionString.matchAll(/(?:AccountKey|SharedAccessSignature)=([^;]+)/gi)) {
    registerSecret(match[1]);
  }
}
