-- The scheduler's tables (CONTRACT §5). Applied by src/db/migrate.ts inside one transaction.

-- One row per run. The consolidator sets completed_at; everything else is the scheduler's.
CREATE TABLE run_metadata (
  run_id            uuid PRIMARY KEY,
  run_type          text NOT NULL CHECK (run_type IN ('full', 'incremental')),
  -- scheduling: written, work items not (all) published yet; published: every work item sent;
  -- failed: the scheduler gave up (see error); abandoned: left in scheduling by a crashed scheduler.
  status            text NOT NULL DEFAULT 'scheduling'
                      CHECK (status IN ('scheduling', 'published', 'failed', 'abandoned')),
  expected_workers  integer NOT NULL CHECK (expected_workers >= 0),
  watermark_before  timestamptz NULL,
  -- The run's `updated` window: no lower bound on a full run.
  updated_from      timestamptz NULL,
  updated_to        timestamptz NOT NULL,
  price_field       text NOT NULL CHECK (price_field IN ('dollar_value', 'dollar_per_carat')),
  total_records     bigint NOT NULL DEFAULT 0 CHECK (total_records >= 0),
  count_queries     integer NOT NULL DEFAULT 0 CHECK (count_queries >= 0),
  scan_duration_ms  integer NOT NULL DEFAULT 0 CHECK (scan_duration_ms >= 0),
  started_at        timestamptz NOT NULL DEFAULT now(),
  published_at      timestamptz NULL,
  completed_at      timestamptz NULL,
  error             text NULL,
  -- An incremental run without a lower bound would silently be a full fetch.
  CONSTRAINT run_metadata_incremental_has_from CHECK (run_type = 'full' OR updated_from IS NOT NULL),
  CONSTRAINT run_metadata_window_order CHECK (updated_from IS NULL OR updated_from <= updated_to),
  CONSTRAINT run_metadata_published_has_time CHECK (status <> 'published' OR published_at IS NOT NULL)
);

-- `status` and the last runs, newest first.
CREATE INDEX run_metadata_started_at_idx ON run_metadata (started_at DESC);
-- The full-run guard: published runs whose workers may still be busy.
CREATE INDEX run_metadata_unfinished_idx ON run_metadata (started_at)
  WHERE status = 'published' AND completed_at IS NULL;
-- Start-up clean-up of runs a crashed scheduler left behind.
CREATE INDEX run_metadata_scheduling_idx ON run_metadata (run_id) WHERE status = 'scheduling';

-- The work items of a run: price range priceMin <= price < priceMax (whole dollars, CONTRACT §2).
CREATE TABLE run_partitions (
  run_id            uuid NOT NULL REFERENCES run_metadata (run_id) ON DELETE CASCADE,
  partition_id      text NOT NULL,
  -- integer holds the axis end 2147483647 exactly (the largest GraphQL Int).
  price_min         integer NOT NULL CHECK (price_min >= 0),
  price_max         integer NOT NULL,
  expected_records  integer NOT NULL CHECK (expected_records >= 0),
  published_at      timestamptz NULL,
  PRIMARY KEY (run_id, partition_id),
  CONSTRAINT run_partitions_range CHECK (price_max > price_min)
);

-- Raw stones as the workers write them; a full run empties it before its work items go out.
-- No foreign key to run_metadata: the table belongs to the workers and the consolidator,
-- and run records must stay deletable independently of it.
CREATE TABLE raw_diamonds_nivoda (
  id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  supplier_stone_id  text NOT NULL,
  offer_id           text NOT NULL,
  payload            jsonb NOT NULL,
  run_id             uuid NOT NULL,
  -- The stone's `updated` time at the supplier, when the payload carries one.
  source_updated_at  timestamptz NULL,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT raw_diamonds_nivoda_supplier_stone_id_key UNIQUE (supplier_stone_id)
);

-- The consolidator reads a run's rows.
CREATE INDEX raw_diamonds_nivoda_run_id_idx ON raw_diamonds_nivoda (run_id);

-- The single-instance lease (src/lock.ts). One row per lock name while it is held;
-- `token` identifies the holding process, `holder` is what other instances are told.
CREATE TABLE scheduler_lock (
  name         text PRIMARY KEY,
  holder       text NOT NULL,
  token        uuid NOT NULL,
  acquired_at  timestamptz NOT NULL,
  renewed_at   timestamptz NOT NULL,
  expires_at   timestamptz NOT NULL
);
