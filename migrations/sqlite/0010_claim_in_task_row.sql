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
