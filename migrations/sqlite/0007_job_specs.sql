-- A job's spec (its canonical JSON, kept for inspection) moves to a table of
-- its own: at 100,000 tasks it is megabytes, and in the `jobs` row every read
-- of a column stored after it (the job's state, which each claim checks)
-- walked its overflow pages.
CREATE TABLE job_specs (
    job_id    INTEGER PRIMARY KEY REFERENCES jobs (id),
    tenant_id TEXT NOT NULL,
    spec_json TEXT NOT NULL
) STRICT;
INSERT INTO job_specs (job_id, tenant_id, spec_json)
    SELECT id, tenant_id, spec_json FROM jobs;
ALTER TABLE jobs DROP COLUMN spec_json;
