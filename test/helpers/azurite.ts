// A throwaway Azurite blob service for tests: in memory, on a port the OS picks, no telemetry.
// One per test file (start in before(), stop in after()), so files never share state.
// Optionally over HTTPS with OAuth (bearer tokens), the way managed identity reaches a real account.
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/** Azurite's fixed development account; the key is public, published in Azure's own documentation. */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface Azurite {
  /** `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=…;BlobEndpoint=http://127.0.0.1:<port>/devstoreaccount1;` */
  connectionString: string;
  /** `http://127.0.0.1:<port>/devstoreaccount1` (https with the `https` option) */
  blobEndpoint: string;
  port: number;
  /** Stops the service and waits for the process to exit. Safe to call more than once. */
  stop(): Promise<void>;
}

export interface StartAzuriteOptions {
  /** How long to wait for "listens on"; the service usually needs well under a second. */
  startTimeoutMs?: number;
  /** Serve HTTPS with this certificate (see createTestCertificate); endpoints then start with https. */
  https?: Pick<TestCertificate, 'certFile' | 'keyFile'>;
  /**
   * `basic`: accept bearer tokens, checking their issuer, audience (https://storage.azure.com or
   * the account's blob URL) and lifetime but not their signature. Needs `https`.
   */
  oauth?: 'basic';
}

/** A self-signed certificate for 127.0.0.1 and localhost, in PEM, with the files Azurite reads. */
export interface TestCertificate {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
  /** Deletes the files. */
  remove(): Promise<void>;
}

/** Made with openssl at test time (no certificate is committed); valid for one day. */
export async function createTestCertificate(): Promise<TestCertificate> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'test-cert-'));
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  try {
    await promisify(execFile)('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ]);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw new Error('could not make a test certificate with openssl (is it installed?)', { cause: err });
  }
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  return { cert, key, certFile, keyFile, remove: () => rm(dir, { recursive: true, force: true }) };
}

const BIN = fileURLToPath(new URL('../../node_modules/.bin/azurite-blob', import.meta.url));

export async function startAzurite(options: StartAzuriteOptions = {}): Promise<Azurite> {
  if (!existsSync(BIN)) throw new Error(`azurite is not installed (${BIN} is missing): run npm ci`);
  const args = [
    '--blobHost',
    '127.0.0.1',
    '--blobPort',
    '0',
    '--inMemoryPersistence',
    '--disableTelemetry',
    '--skipApiVersionCheck',
    '--silent',
  ];
  if (options.oauth && !options.https) throw new Error('azurite: oauth needs https');
  if (options.https) args.push('--cert', options.https.certFile, '--key', options.https.keyFile);
  if (options.oauth) args.push('--oauth', options.oauth);
  const scheme = options.https ? 'https' : 'http';
  // Piped, not inherited: an orphaned child must not hold the test runner's stdout open.
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });

  // If the test process dies without calling stop(), the child would outlive it.
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });

  let output = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`azurite did not report its port within ${options.startTimeoutMs ?? 20_000} ms; output:\n${output}`)),
      options.startTimeoutMs ?? 20_000,
    );
    const onData = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
      const match = /listens on https?:\/\/127\.0\.0\.1:(\d+)/.exec(output);
      if (match?.[1]) {
        cleanup();
        resolve(Number(match[1]));
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void =>
      fail(new Error(`azurite exited before listening (code ${code}, signal ${signal}); output:\n${output}`));
    const onError = (err: Error): void => fail(err);
    function cleanup(): void {
      clearTimeout(timer);
      child.stdout.off('data', onData);
      child.stderr.off('data', onData);
      child.off('exit', onExit);
      child.off('error', onError);
    }
    function fail(err: Error): void {
      cleanup();
      child.kill('SIGKILL');
      process.off('exit', killOnExit);
      reject(err);
    }
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', onExit);
    child.once('error', onError);
  });
  // Keep draining: a full pipe would block the child on its next write.
  child.stdout.resume();
  child.stderr.resume();

  const blobEndpoint = `${scheme}://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  let stopping: Promise<void> | undefined;
  return {
    port,
    blobEndpoint,
    connectionString: `DefaultEndpointsProtocol=${scheme};AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${blobEndpoint};`,
    stop() {
      stopping ??= (async () => {
        process.off('exit', killOnExit);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      })();
      return stopping;
    },
  };
}
