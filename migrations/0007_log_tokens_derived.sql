-- A deployment page's token is no longer stored: it is an HMAC of the deployment id under
-- Dropship's key file (`server.key_file`), outside the database, so a copy of the database
-- opens no page. Tokens stored until now stop working and are wiped.
--
-- The column stays, renamed, for the writer's multi-row INSERT: it matches the rows RETURNING
-- gives back to the requests that made them (each row's place in its batch; not a secret).
ALTER TABLE deployments RENAME COLUMN token TO insert_key;
UPDATE deployments SET insert_key = '';
