-- Issue 13: a claim is recorded in the task row, not as an event row.
--
-- A claim of a wasm task used to append a `task_claimed` event: one row and
-- two index entries (events_job, events_task) per task on the hot path, for a
-- fact the task row already holds while the attempt runs (state, attempt,
-- worker). The row now also says when the attempt was claimed, and the event
-- that ends the attempt (task_succeeded, task_retried, task_dead,
-- task_skipped) carries its attempt, worker and claim time, so the log still
-- tells every attempt's story (invariant 21). Agent and command claims,
-- human-scale, still log `task_claimed` as well.
--
-- Existing rows: `claimed_at` is NULL for tasks claimed before this
-- migration, and old events have NULL attempt, worker and claimed_at; their
-- `task_claimed` rows remain and read as before.
ALTER TABLE tasks ADD COLUMN claimed_at INTEGER;
ALTER TABLE events ADD COLUMN attempt INTEGER;
ALTER TABLE events ADD COLUMN worker TEXT;
ALTER TABLE events ADD COLUMN claimed_at INTEGER;

-- Per-stage work reads tasks by (job, stage, state): counts, opening a
-- stage (blocked), its dead tasks, its results (succeeded). None reads
-- running tasks through this index, and every statement that uses it says
-- `state <> 'running'`: without running rows a claim deletes its entry and a
-- completion inserts one, instead of moving it twice (two b-tree changes per
-- task fewer on the writer). Running tasks, few (bounded by the workers'
-- slots), are counted through `tasks_running_leases`.
DROP INDEX tasks_job_stage_state;
CREATE INDEX tasks_job_stage_state ON tasks (job_id, stage_position, state, id)
    WHERE state <> 'running';
