-- Jobs a Dropship that stopped without ending them (a crash, kill -9) may have left running on
-- a server: killed by their mark at the next contact with that server, then forgotten.
CREATE TABLE orphan_jobs (
    server    TEXT    NOT NULL,
    job_group TEXT    NOT NULL,
    since     INTEGER NOT NULL,
    PRIMARY KEY (server, job_group)
);
