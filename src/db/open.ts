// The one place that chooses the database backend, so no other module knows which one serves.
import type { Config } from '../config.js';
import type { TokenCredential } from '../identity.js';
import type { Logger } from '../log.js';
import type { Database } from './database.js';

/**
 * Opens the configured database: a `pg` pool for DATABASE_URL, PGlite under the data
 * directory otherwise. In embedded mode, take `acquireFileLock(embeddedLockFile(dir))`
 * (lock.ts) first: a second process must never open the same PGlite directory.
 * Each backend is imported lazily, so a server deployment never loads the 27 MB wasm build.
 */
export async function openDatabase(
  config: Config['database'],
  options: { logger?: Logger; credential?: TokenCredential } = {},
): Promise<Database> {
  if (config.backend === 'postgres') {
    const { openPostgres } = await import('./postgres.js');
    const { url, poolMax, auth, azureClientId } = config;
    return openPostgres({ url, poolMax, auth, azureClientId, logger: options.logger, credential: options.credential });
  }
  const { openPglite } = await import('./pglite.js');
  return openPglite(config.dir);
}
