-- A lock may end by itself (`PUT .../lock {"for": "2h"}`); NULL: until unlocked.
ALTER TABLE locks ADD COLUMN expires_at INTEGER;
