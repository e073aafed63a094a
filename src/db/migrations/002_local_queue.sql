-- The durable local work-items queue, used when no Service Bus is configured.
-- message_id is `<runId>:<partitionId>`, so publishing the same run/partition twice keeps
-- one row, as Service Bus duplicate detection keeps one message.
CREATE TABLE IF NOT EXISTS local_work_items (
  seq bigint GENERATED ALWAYS AS IDENTITY,
  message_id text PRIMARY KEY,
  subject text NOT NULL,
  content_type text NOT NULL DEFAULT 'application/json',
  body jsonb NOT NULL,
  application_properties jsonb NOT NULL DEFAULT '{}'::jsonb,
  enqueued_at timestamptz NOT NULL DEFAULT now()
);

-- `queue peek` lists oldest first; seq breaks ties between rows of one transaction.
CREATE INDEX IF NOT EXISTS local_work_items_order_idx ON local_work_items (enqueued_at, seq);
