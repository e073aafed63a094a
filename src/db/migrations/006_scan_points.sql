-- Every point a run's scan probed, as [price, stones below it] pairs against its total_records:
-- the next run of the same kind starts from them (src/heatmap.ts WarmStart.points), so its
-- guesses between last night's boundaries know where last night's spikes were. Null for runs
-- recorded before this column, and for runs without a scan; such a history still warms a scan,
-- from its boundaries alone.
ALTER TABLE run_metadata ADD COLUMN scan_points jsonb NULL;
