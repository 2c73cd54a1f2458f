-- Preview environments that have run, by the ref they deploy: a closed pull request tears down
-- the previews of its head branch.
CREATE TABLE previews (
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    git_ref     TEXT NOT NULL,
    PRIMARY KEY (repo, environment)
) WITHOUT ROWID;
CREATE INDEX previews_by_ref ON previews (repo, git_ref);
