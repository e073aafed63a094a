-- The worker and the consolidator (CONTRACT §9): each partition's outcome and resume state,
-- which partition wrote a raw row, the second half of consolidation, the local queue's lease,
-- and the vendor budget shared by every worker process.

-- A partition's outcome. `claim_token` fences a worker whose lock was lost: every page it
-- commits is conditional on still holding the claim, so two workers on one partition never
-- interleave their progress. Resume state: the pass being paged, the next offset in it, and
-- the rest of the pass's state (the count it began with, what it has seen, its overlap stone).
ALTER TABLE run_partitions
  ADD COLUMN status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'working', 'done', 'failed')),
  ADD COLUMN started_at timestamptz NULL,
  ADD COLUMN finished_at timestamptz NULL,
  ADD COLUMN fetched_records integer NOT NULL DEFAULT 0,
  ADD COLUMN deliveries integer NOT NULL DEFAULT 0,
  ADD COLUMN error text NULL,
  ADD COLUMN claim_token uuid NULL,
  ADD COLUMN pass integer NOT NULL DEFAULT 1,
  ADD COLUMN next_offset integer NOT NULL DEFAULT 0,
  -- The rest of the pass's state (src/fetch-partition.ts PassProgress), null before the first page.
  ADD COLUMN pass_state jsonb NULL,
  ADD COLUMN search_calls integer NOT NULL DEFAULT 0,
  ADD COLUMN count_calls integer NOT NULL DEFAULT 0,
  ADD COLUMN verified_count integer NULL,
  ADD COLUMN discrepancy integer NULL,
  -- How many times `worker retry` re-queued it (the retry message ids count up).
  ADD COLUMN retries integer NOT NULL DEFAULT 0;

-- Consolidation asks "are all partitions of this run done?" on every finished partition.
CREATE INDEX run_partitions_status_idx ON run_partitions (run_id, status);

-- Which partition of run_id last wrote the row: a partition's kept set on resume.
ALTER TABLE raw_diamonds_nivoda ADD COLUMN partition_id text NULL;
DROP INDEX IF EXISTS raw_diamonds_nivoda_run_id_idx;
CREATE INDEX raw_diamonds_nivoda_run_partition_idx ON raw_diamonds_nivoda (run_id, partition_id);

-- Consolidation's second half: the watermark written for this run (or found already past it).
ALTER TABLE run_metadata ADD COLUMN watermark_written_at timestamptz NULL;

-- The local queue's peek-lock lease, with Service Bus semantics: a delivery count, a lock
-- that expires, settlement by lock token, a dead-letter state with its reason.
ALTER TABLE local_work_items
  ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'completed', 'dead-lettered')),
  ADD COLUMN delivery_count integer NOT NULL DEFAULT 0,
  ADD COLUMN locked_until timestamptz NULL,
  ADD COLUMN lock_token uuid NULL,
  ADD COLUMN dead_letter_reason text NULL,
  ADD COLUMN dead_letter_description text NULL,
  -- A dead letter the worker has turned into a failed partition (the dead-letter queue's "complete").
  ADD COLUMN dead_letter_handled_at timestamptz NULL,
  ADD COLUMN settled_at timestamptz NULL;

CREATE INDEX local_work_items_receivable_idx ON local_work_items (enqueued_at, seq) WHERE state = 'active';

-- The vendor budget (src/nivoda/budget.ts): one token bucket row per name, shared by every
-- worker process on this database.
CREATE TABLE vendor_budget (
  name        text PRIMARY KEY,
  tokens      double precision NOT NULL,
  refilled_at timestamptz NOT NULL
);
