-- A job's spec (its canonical JSON, kept for inspection) moves to a table of
-- its own, as on SQLite: at 100,000 tasks it is megabytes, and the `jobs` row
-- is read and updated on the hot path (each claim checks the job's state).
CREATE TABLE job_specs (
    job_id    BIGINT PRIMARY KEY REFERENCES jobs (id),
    tenant_id TEXT NOT NULL,
    spec_json TEXT NOT NULL
);
INSERT INTO job_specs (job_id, tenant_id, spec_json)
    SELECT id, tenant_id, spec_json FROM jobs;
ALTER TABLE jobs DROP COLUMN spec_json;
