-- Invariant 44: a pending task is claimable (its stage open, its job
-- running, its dependencies met), and the workers' claims no longer check
-- the stage and the job. Before it, `retry` could leave a task pending in a
-- stage that had not opened (or with unfinished dependencies), where only
-- those checks kept it from running early: such a task waits blocked, as
-- `retry` now writes it, until its stage opens or its dependencies finish.
UPDATE tasks SET state = 'blocked'
WHERE state = 'pending'
  AND (deps_remaining > 0
       OR NOT EXISTS (SELECT 1 FROM stages s
                      WHERE s.job_id = tasks.job_id AND s.position = tasks.stage_position
                        AND s.state = 'open')
       OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = tasks.job_id AND j.state = 'running'));
