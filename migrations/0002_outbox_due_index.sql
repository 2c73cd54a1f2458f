-- The outbox asks for due statuses in time order; this keeps that a short index range scan.
CREATE INDEX status_outbox_due ON status_outbox (next_attempt_at, deployment_id, id) WHERE delivered_at IS NULL AND failed_at IS NULL;
