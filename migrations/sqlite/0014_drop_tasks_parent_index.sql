-- Issue 13: fewer index entries per task. `tasks_parent` (every spawned
-- task by its parent) was read by no statement: the store never looks a
-- task up by its parent, it only returns the parent with the task. It cost
-- an entry per spawned task on insert and, on PostgreSQL, where no update of
-- a task row is HOT, another on every claim, completion and stage opening
-- of one (a fan-out of 10,000 children: 40,000 entries). The column stays.
DROP INDEX tasks_parent;
