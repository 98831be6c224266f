-- A job's canonical spec is stored in parts of at most 1 MiB, numbered in
-- the spec's order (their concatenation is the spec), as on SQLite: bound as
-- one value, the 52 MB spec of a 1,000,000-task job was held whole in the
-- client's send buffer beside the spec itself.
CREATE TABLE job_spec_parts (
    job_id    BIGINT NOT NULL REFERENCES jobs (id),
    part      INT NOT NULL CHECK (part >= 0),
    tenant_id TEXT NOT NULL,
    text      TEXT NOT NULL,
    PRIMARY KEY (job_id, part)
);
INSERT INTO job_spec_parts (job_id, part, tenant_id, text)
    SELECT job_id, 0, tenant_id, spec_json FROM job_specs;
DROP TABLE job_specs;
