-- The proxy's routes: each app's hosts, path prefix and current upstreams, restored on start.
CREATE TABLE routes (
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    app         TEXT NOT NULL,
    -- JSON array of lowercase host names.
    hosts       TEXT NOT NULL,
    path_prefix TEXT NOT NULL,
    -- JSON array of {"address": "host:port", "container": "id"}.
    upstreams   TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (repo, environment, app)
) WITHOUT ROWID;
