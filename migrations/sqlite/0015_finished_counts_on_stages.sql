-- Issue 13: a completion writes one index entry fewer. A job's throughput
-- (get_job's `throughput_per_s` and ETA) was a count of its tasks finished
-- in the last 10 s through `tasks_job_finished`: an entry per finished task
-- on the hot path, and a read that counted every one of them (300,000 at
-- 30,000 tasks/s). Each stage row now counts its tasks finished in the
-- current 10-second bucket (starting at `rate_bucket_at`, in ms) and in the
-- bucket before, kept by the statement that already moves its counters once
-- per completion batch; the last 10 s are estimated from the two
-- (store/reads.rs, `finished_in_window`). Jobs running across the upgrade
-- start from zero: their rate is known again within a bucket.
ALTER TABLE stages ADD COLUMN rate_bucket_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stages ADD COLUMN finished_in_bucket INTEGER NOT NULL DEFAULT 0
    CHECK (finished_in_bucket >= 0);
ALTER TABLE stages ADD COLUMN finished_in_previous_bucket INTEGER NOT NULL DEFAULT 0
    CHECK (finished_in_previous_bucket >= 0);
DROP INDEX tasks_job_finished;
