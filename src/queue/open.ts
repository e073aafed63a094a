// The one place that chooses the queue backend from the configuration. Each backend is
// imported only when chosen, so local mode never loads the Azure SDKs.
import type { QueueConfig } from '../config.js';
import type { Database } from '../db/database.js';
import { ConfigError } from '../errors.js';
import type { TokenCredential } from '../identity.js';
import type { Logger } from '../log.js';
import type { RetryPolicy } from '../retry.js';
import type { WorkItemQueue } from './queue.js';
import type { ServiceBusSdkRetryOptions } from './servicebus.js';

export interface QueueDeps {
  db: Database;
  logger: Logger;
  /** The retry around a whole publish. */
  retry?: Partial<RetryPolicy>;
  /** The SDK's own per-operation retries and timeout; small, because the outer retry does the real work. */
  serviceBus?: ServiceBusSdkRetryOptions;
  /** With a namespace: the credential to use instead of azureCredential(). */
  credential?: TokenCredential;
}

export async function openQueue(config: QueueConfig, deps: QueueDeps): Promise<WorkItemQueue> {
  if (config.backend === 'local') {
    const { LocalQueue } = await import('./local.js');
    return new LocalQueue(deps.db, deps.logger);
  }
  const { connectionString, namespace, queueName, azureClientId } = config;
  const target = connectionString ? { connectionString, queueName } : namespace ? { namespace, queueName, azureClientId } : undefined;
  if (!target) throw new ConfigError(['AZURE_SERVICE_BUS_CONNECTION_STRING or AZURE_SERVICE_BUS_NAMESPACE is required for Service Bus']);
  const { ServiceBusQueue } = await import('./servicebus.js');
  return new ServiceBusQueue(target, deps);
}
