-- Issue 13: a stage's count of unfinished tasks is split into shards, one
-- per connection that changed it, so that completions from many processes
-- do not queue on one row lock held through each commit's WAL flush. A
-- stage's remaining count is the sum of its shards; a single shard may be
-- negative (a connection that only completed tasks). Shard 0 holds the
-- count the stage was submitted with (and, here, the count it had before
-- this migration); PostgreSQL connections write the shard named by their
-- backend pid, which no other live connection shares, so no two open
-- transactions ever write the same shard row (ARCHITECTURE.md,
-- Invariant 9).
CREATE TABLE stage_counters (
    job_id    BIGINT NOT NULL,
    position  INTEGER NOT NULL,
    shard     INTEGER NOT NULL,
    remaining BIGINT NOT NULL,
    PRIMARY KEY (job_id, position, shard),
    FOREIGN KEY (job_id, position) REFERENCES stages (job_id, position)
) WITH (fillfactor = 50);

INSERT INTO stage_counters (job_id, position, shard, remaining)
SELECT job_id, position, 0, remaining FROM stages;

ALTER TABLE stages DROP COLUMN remaining;

-- The sweep that advances a stage whose advancement was lost with a crash
-- between a completion's commit and its re-read looks at open stages only.
CREATE INDEX stages_open ON stages (job_id, position) WHERE state = 'open';
