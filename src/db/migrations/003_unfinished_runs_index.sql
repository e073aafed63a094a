-- The full-run guard (unfinishedRuns) now also looks at failed and abandoned runs, so the
-- partial index of 001, limited to published runs, no longer serves it.
DROP INDEX IF EXISTS run_metadata_unfinished_idx;
CREATE INDEX run_metadata_not_completed_idx ON run_metadata (started_at)
  WHERE completed_at IS NULL AND expected_workers > 0;
