-- A job's canonical spec is stored in parts of at most 1 MiB, numbered in
-- the spec's order (their concatenation is the spec): bound and written as
-- one value, the 52 MB spec of a 1,000,000-task job was copied twice by
-- SQLite at once (the bound value and the record built from it), 104 MB of
-- that submit's 428 MiB peak.
CREATE TABLE job_spec_parts (
    job_id    INTEGER NOT NULL REFERENCES jobs (id),
    part      INTEGER NOT NULL CHECK (part >= 0),
    tenant_id TEXT NOT NULL,
    text      TEXT NOT NULL,
    PRIMARY KEY (job_id, part)
) STRICT;
INSERT INTO job_spec_parts (job_id, part, tenant_id, text)
    SELECT job_id, 0, tenant_id, spec_json FROM job_specs;
DROP TABLE job_specs;
