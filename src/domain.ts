// The scheduler's vocabulary: small types shared by the scan, the partitioner, the
// stores and the queue, so that a price range or a window has one meaning everywhere.

/** The largest GraphQL Int: the exclusive end of the last partition, so nothing above the scan ceiling is lost. */
export const PRICE_AXIS_END = 2147483647;

export const PRICE_FIELDS = ['dollar_value', 'dollar_per_carat'] as const;
export type PriceField = (typeof PRICE_FIELDS)[number];

export type RunType = 'full' | 'incremental';

/** The `updated` window of a run: `from` is absent on a full run. ISO-8601 strings, as the API takes them. */
export interface UpdatedWindow {
  from?: string;
  to: string;
}

/** Inclusive whole-dollar bounds as the Nivoda API filters take them; either end may be open. */
export interface PriceBounds {
  from?: number;
  to?: number;
}

/** One partition: owns `priceMin <= price < priceMax` (whole dollars, prices themselves have cents). */
export interface Partition {
  partitionId: string;
  priceMin: number;
  priceMax: number;
  expectedRecords: number;
}

/** CONTRACT §3: the body of one work-item message. */
export interface WorkItemMessage {
  runId: string;
  partitionId: string;
  priceMin: number;
  priceMax: number;
  expectedRecords: number;
  isIncremental: boolean;
  watermarkBefore?: string;
  priceField: PriceField;
  updatedFrom?: string;
  updatedTo: string;
  partitionCount: number;
  /** The base filter (NIVODA_QUERY) the scan used, verbatim; a worker merges it into every query of its partition. */
  query: BaseFilter;
}

/** NIVODA_QUERY as validated by the configuration: DiamondQuery fields other than the price field and `updated`. */
export type BaseFilter = Readonly<Record<string, unknown>>;

/** CONTRACT §4: the watermark document. */
export interface Watermark {
  lastUpdatedAt: string;
  lastRunId?: string;
  lastRunCompletedAt?: string;
}
