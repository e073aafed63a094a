-- Every invocation that gets past the lock leaves a row (CONTRACT §1): the row is written
-- as soon as the lock is held, status 'scanning', before the run type and window are known;
-- they are filled in as the run learns them. 'completed' is the consolidator's (CONTRACT §9).
ALTER TABLE run_metadata DROP CONSTRAINT run_metadata_status_check;
ALTER TABLE run_metadata ADD CONSTRAINT run_metadata_status_check
  CHECK (status IN ('scanning', 'scheduling', 'published', 'completed', 'failed', 'abandoned'));
ALTER TABLE run_metadata ALTER COLUMN status SET DEFAULT 'scanning';
ALTER TABLE run_metadata ALTER COLUMN run_type DROP NOT NULL;
ALTER TABLE run_metadata ALTER COLUMN updated_to DROP NOT NULL;
ALTER TABLE run_metadata ALTER COLUMN price_field DROP NOT NULL;
ALTER TABLE run_metadata ALTER COLUMN expected_workers SET DEFAULT 0;

-- recorded_at: when the run and its partitions were recorded (and, on a full run, the raw
-- table emptied). From then on every work item counts as possibly on the queue: a run
-- recorded but not published is finished by the next invocation, never re-scanned.
ALTER TABLE run_metadata ADD COLUMN recorded_at timestamptz NULL;
-- The base filter (NIVODA_QUERY) the scan used, verbatim: work items carry it, a later run
-- compares it before reusing this run's boundaries.
ALTER TABLE run_metadata ADD COLUMN base_query jsonb NULL;
-- Who ran it (host:pid:runId), and how many invocations published its work items.
ALTER TABLE run_metadata ADD COLUMN holder text NULL;
ALTER TABLE run_metadata ADD COLUMN publish_attempts integer NOT NULL DEFAULT 0;

-- Runs written before this migration were recorded by definition. What they became under the
-- rules they were written with: one a consolidator completed is 'completed'; one that failed or
-- was left 'scheduling' was, under those rules, superseded by a forced full run (the advice of
-- the time) or marked abandoned by the next run, so it is 'abandoned' here rather than
-- republished with its old window by the first invocation after the upgrade.
UPDATE run_metadata SET recorded_at = started_at WHERE recorded_at IS NULL;
UPDATE run_metadata SET status = 'completed' WHERE completed_at IS NOT NULL AND status = 'published';
UPDATE run_metadata SET status = 'abandoned',
    error = COALESCE(error || '; ', '') || 'abandoned when migration 004 was applied: written under the earlier publishing rules'
  WHERE status IN ('failed', 'scheduling') AND completed_at IS NULL;

ALTER TABLE run_metadata ADD CONSTRAINT run_metadata_recorded_is_complete
  CHECK (recorded_at IS NULL OR (run_type IS NOT NULL AND updated_to IS NOT NULL AND price_field IS NOT NULL));
ALTER TABLE run_metadata ADD CONSTRAINT run_metadata_published_was_recorded
  CHECK (status NOT IN ('scheduling', 'published', 'completed') OR recorded_at IS NOT NULL);

-- The runs a new invocation must finish first: recorded, not published.
CREATE INDEX run_metadata_unpublished_idx ON run_metadata (started_at)
  WHERE recorded_at IS NOT NULL AND status IN ('scheduling', 'failed');
