-- Issue 13: every write of a task row inserts one index entry fewer.
--
-- PostgreSQL writes a new version of a task row at each transition (an
-- update of `state` is never HOT: `state` is in every partial index's
-- predicate), and that version gets an entry in every index whose predicate
-- it meets. A completion wrote three: `tasks_pkey`, `tasks_job_id` and
-- `tasks_job_stage_state`; a claim three (`tasks_job_id` instead of the
-- partial `tasks_job_stage_state`, plus `tasks_running_leases`); an insert
-- four. The two job indexes now are one: `tasks_job_stage_state` holds every
-- task, running ones too, so it answers what `tasks_job_id` did (a job's
-- tasks, running or not) by its `job_id` prefix. A completion writes two
-- entries, an insert three, a claim still three. EXPLAIN ANALYZE of the fenced
-- completion of 150 rows on a 100,000-task table: 2.0-2.7 ms before, 1.8-1.9
-- ms after. A job's tasks in id order (`list_tasks`) are read as the first
-- ids of each of its (stage, state) ranges, merged (store/agent.rs).
--
-- SQLite keeps both indexes: it changes an index entry only when the row's
-- indexed columns change, so `tasks_job_id` costs it nothing after the insert.
DROP INDEX tasks_job_stage_state;
CREATE INDEX tasks_job_stage_state ON tasks (job_id, stage_position, state, id);
DROP INDEX tasks_job_id;

-- Nothing reads an event by its id alone: a job's events are read through
-- `events_job` (job_id, id), a task's through `events_task` (task_id, id),
-- and ids come from the sequence. The primary key's index was a third index
-- entry per event row, one per completion: 150 events inserted in 0.67-0.72
-- ms without it, 0.81-1.33 ms with it.
ALTER TABLE events DROP CONSTRAINT events_pkey;
