-- Every time is milliseconds since the Unix epoch (UTC).

CREATE TABLE deployments (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    -- GitHub's deployment id; NULL for `dropship run`. Unique: a redelivery finds the row.
    github_id         INTEGER UNIQUE,
    repo              TEXT    NOT NULL,
    environment       TEXT    NOT NULL,
    task              TEXT    NOT NULL,
    git_ref           TEXT    NOT NULL,
    sha               TEXT    NOT NULL,
    payload           TEXT    NOT NULL,
    description       TEXT,
    creator           TEXT,
    installation_id   INTEGER,
    transient         INTEGER NOT NULL DEFAULT 0,
    production        INTEGER NOT NULL DEFAULT 0,
    -- The capability token in log_url.
    token             TEXT    NOT NULL,
    -- queued, running, success, failure, error
    state             TEXT    NOT NULL,
    state_description TEXT,
    environment_url   TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER
);
CREATE INDEX deployments_by_state ON deployments (state, repo, environment, id);
CREATE INDEX deployments_by_repo ON deployments (repo, environment, id);

CREATE TABLE step_runs (
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    step_index    INTEGER NOT NULL,
    step          TEXT    NOT NULL,
    server        TEXT    NOT NULL,
    -- pending, running, success, failure, timed_out, skipped, error
    state         TEXT    NOT NULL,
    exit_code     INTEGER,
    message       TEXT,
    started_at    INTEGER,
    finished_at   INTEGER,
    PRIMARY KEY (deployment_id, step_index, server)
) WITHOUT ROWID;

CREATE TABLE log_lines (
    deployment_id INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    server        TEXT,
    step          TEXT,
    -- stdout, stderr, or dropship (its own progress messages)
    stream        TEXT    NOT NULL,
    line          TEXT    NOT NULL,
    PRIMARY KEY (deployment_id, seq)
) WITHOUT ROWID;

-- Deployment statuses waiting to be posted to GitHub, in id order per deployment.
CREATE TABLE status_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id   INTEGER NOT NULL REFERENCES deployments (id),
    state           TEXT    NOT NULL,
    description     TEXT    NOT NULL,
    log_url         TEXT,
    environment_url TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    failed_at       INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX status_outbox_pending ON status_outbox (deployment_id, id) WHERE delivered_at IS NULL AND failed_at IS NULL;

-- Every verified webhook delivery and what became of it.
CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT,
    event         TEXT    NOT NULL,
    action        TEXT,
    -- accepted, duplicate, ignored, refused
    result        TEXT    NOT NULL,
    deployment_id INTEGER,
    received_at   INTEGER NOT NULL
);
