-- The version (etag) of the watermark document a run read when it started; null when there was
-- none, or for runs recorded before this column. The consolidator writes over an operator's
-- `watermark set` only when it is that very document the run started from: an equal value set
-- again after the run started is a rewind, and the times alone (two clocks) cannot tell them apart
-- within a millisecond.
ALTER TABLE run_metadata ADD COLUMN watermark_etag text NULL;
