-- Compose services as a deployment left them, for its page.
CREATE TABLE compose_services (
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    server        TEXT    NOT NULL,
    project       TEXT    NOT NULL,
    service       TEXT    NOT NULL,
    container     TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    PRIMARY KEY (deployment_id, server, container)
) WITHOUT ROWID;

-- What the containers Dropship runs write, per app, with bounded retention.
CREATE TABLE app_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT    NOT NULL,
    environment TEXT    NOT NULL,
    app         TEXT    NOT NULL,
    server      TEXT    NOT NULL,
    container   TEXT    NOT NULL,
    -- Docker's timestamp of the line, nanoseconds since the epoch.
    ts          INTEGER NOT NULL,
    stream      TEXT    NOT NULL,
    line        TEXT    NOT NULL,
    -- Bytes of this app's lines so far, this one included; retention drops the lines whose
    -- total is more than the limit below the newest.
    total_bytes INTEGER NOT NULL
);
CREATE INDEX app_logs_by_environment ON app_logs (repo, environment, id);
CREATE INDEX app_logs_by_app ON app_logs (repo, environment, app, total_bytes);

-- Where following each container's log resumes: the newest timestamp stored and how many lines
-- carried exactly that timestamp. Kept apart from app_logs, which retention trims.
CREATE TABLE log_cursors (
    container TEXT    PRIMARY KEY,
    ts        INTEGER NOT NULL,
    at_ts     INTEGER NOT NULL
) WITHOUT ROWID;

-- Servers whose managed containers are followed, also after a restart.
CREATE TABLE container_hosts (
    server TEXT PRIMARY KEY
) WITHOUT ROWID;
