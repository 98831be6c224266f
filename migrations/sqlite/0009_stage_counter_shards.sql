-- Issue 13: a stage's count of unfinished tasks moves to `stage_counters`,
-- the shape PostgreSQL needs to let completions of many processes count
-- without queueing on one row (there, one shard per connection). SQLite runs
-- one writer at a time and uses shard 0 alone. A stage's remaining count is
-- the sum of its shards; shard 0 carries the count it had before this
-- migration (ARCHITECTURE.md, Invariant 9).
CREATE TABLE stage_counters (
    job_id    INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    shard     INTEGER NOT NULL,
    remaining INTEGER NOT NULL,
    PRIMARY KEY (job_id, position, shard),
    FOREIGN KEY (job_id, position) REFERENCES stages (job_id, position)
) STRICT, WITHOUT ROWID;

INSERT INTO stage_counters (job_id, position, shard, remaining)
SELECT job_id, position, 0, remaining FROM stages;

ALTER TABLE stages DROP COLUMN remaining;

-- The sweep that advances a stage left open at zero looks at open stages only.
CREATE INDEX stages_open ON stages (job_id, position) WHERE state = 'open';
