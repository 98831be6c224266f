-- A stage's own `max_attempts` and `timeout` (NULL when the job file leaves
-- them out). Tasks present at submit carry resolved values already; these
-- are for tasks spawned into the stage later, which otherwise take their
-- parent's.
ALTER TABLE stages ADD COLUMN max_attempts INTEGER CHECK (max_attempts >= 1);
ALTER TABLE stages ADD COLUMN timeout_ms BIGINT CHECK (timeout_ms >= 1);
