-- Dashboard logins: the cookie holds a random id; only its SHA-256 is kept here.
CREATE TABLE sessions (
    id_sha256  TEXT    PRIMARY KEY,
    user       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Every action taken through the API or the dashboard: who, what, on what, when.
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL DEFAULT ''
);

-- Locked environments refuse deployments (but their locker's) until unlocked.
CREATE TABLE locks (
    repo        TEXT    NOT NULL,
    environment TEXT    NOT NULL,
    locked_by   TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    locked_at   INTEGER NOT NULL,
    PRIMARY KEY (repo, environment)
) WITHOUT ROWID;

-- Deployments that auto_deploy rules created: at most one per (repo, environment, sha).
CREATE TABLE auto_deploys (
    repo        TEXT    NOT NULL,
    environment TEXT    NOT NULL,
    sha         TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (repo, environment, sha)
) WITHOUT ROWID;

-- The outbox also carries GitHub check-run updates (kind 'check', the request body in `body`).
ALTER TABLE status_outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'status';
ALTER TABLE status_outbox ADD COLUMN body TEXT;
ALTER TABLE deployments ADD COLUMN check_run_id INTEGER;
