-- A task's own `on_failure` (DESIGN.md: "per stage or task"). Until now the
-- stores used the stage's; existing tasks keep exactly that.
ALTER TABLE tasks ADD COLUMN on_failure TEXT NOT NULL DEFAULT 'fail_job'
    CHECK (on_failure IN ('fail_job', 'continue'));

UPDATE tasks SET on_failure = (
    SELECT s.on_failure FROM stages s
    WHERE s.job_id = tasks.job_id AND s.position = tasks.stage_position
);
