// The one place that chooses the watermark backend from the configuration: Azure Blob, or
// the local file under SCHEDULER_DATA_DIR. Each backend is imported only when chosen.
import type { WatermarkConfig } from '../config.js';
import type { WatermarkStore } from '../watermark.js';
import type { BlobWatermarkStoreOptions } from './blob-store.js';

export async function openWatermarkStore(config: WatermarkConfig, options: BlobWatermarkStoreOptions = {}): Promise<WatermarkStore> {
  if (config.backend === 'blob') {
    const { BlobWatermarkStore } = await import('./blob-store.js');
    return BlobWatermarkStore.fromConfig(config, options);
  }
  const { FileWatermarkStore } = await import('./file-store.js');
  return new FileWatermarkStore(config.path);
}
