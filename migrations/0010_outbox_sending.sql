-- When a post of this item began without its outcome being recorded yet: after a crash, the
-- outbox first asks GitHub whether that post got through, so a status is not posted twice.
ALTER TABLE status_outbox ADD COLUMN sending_since INTEGER;
