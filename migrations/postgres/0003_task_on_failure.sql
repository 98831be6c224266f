-- A task's own `on_failure` (DESIGN.md: "per stage or task"). Until now the
-- stores used the stage's; existing tasks keep exactly that.
ALTER TABLE tasks ADD COLUMN on_failure TEXT NOT NULL DEFAULT 'fail_job'
    CHECK (on_failure IN ('fail_job', 'continue'));

UPDATE tasks t SET on_failure = s.on_failure
FROM stages s
WHERE s.job_id = t.job_id AND s.position = t.stage_position AND s.on_failure <> 'fail_job';
