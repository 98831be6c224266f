-- CI pipelines (issue 14): command tasks (`executor = 'command'`, a
-- wasi:cli/command step run by `lockstep ci`), the `skipped` state (a step
-- whose `if` is false), and `on_failure = 'release_then_fail'` (a failed
-- step releases its dependents, whose `if` decides, and fails the job when
-- the stage closes). Existing rows keep their meaning: only the allowed
-- values widen.
ALTER TABLE tasks
    DROP CONSTRAINT tasks_executor_check,
    ADD CONSTRAINT tasks_executor_check CHECK (executor IN ('wasm', 'agent', 'command')),
    DROP CONSTRAINT tasks_state_check,
    ADD CONSTRAINT tasks_state_check
        CHECK (state IN ('blocked', 'pending', 'running', 'succeeded', 'dead', 'cancelled', 'skipped')),
    DROP CONSTRAINT tasks_on_failure_check,
    ADD CONSTRAINT tasks_on_failure_check
        CHECK (on_failure IN ('fail_job', 'continue', 'release_then_fail'));

ALTER TABLE stages
    DROP CONSTRAINT stages_on_failure_check,
    ADD CONSTRAINT stages_on_failure_check
        CHECK (on_failure IN ('fail_job', 'continue', 'release_then_fail'));
