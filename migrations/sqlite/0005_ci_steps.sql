-- CI pipelines (issue 14): command tasks (`executor = 'command'`, a
-- wasi:cli/command step run by `lockstep ci`), the `skipped` state (a step
-- whose `if` is false), and `on_failure = 'release_then_fail'` (a failed
-- step releases its dependents, whose `if` decides, and fails the job when
-- the stage closes). Only the allowed values widen; every row is kept as is.
--
-- SQLite cannot change a CHECK constraint in place, so `stages` and `tasks`
-- are rebuilt. Migrations run inside one transaction with foreign keys on,
-- where they cannot be switched off, and renaming a table rewrites the
-- references to it; so each old table is renamed aside, the new one built
-- and filled, and every table that referenced the old one (`tasks` →
-- `stages`, `task_deps` → `tasks`) is rebuilt after it, before the old
-- tables are dropped, children first.
ALTER TABLE stages RENAME TO stages_before_0005;
CREATE TABLE stages (
    job_id       INTEGER NOT NULL REFERENCES jobs (id),
    position     INTEGER NOT NULL CHECK (position >= 0),
    tenant_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('waiting', 'open', 'done')),
    on_failure   TEXT NOT NULL
        CHECK (on_failure IN ('fail_job', 'continue', 'release_then_fail')),
    -- Tasks ever placed in the stage (submitted + spawned).
    total        INTEGER NOT NULL DEFAULT 0 CHECK (total >= 0),
    -- Tasks of the stage not yet terminal; the transaction that takes it to
    -- zero, and only that one, closes the stage and opens the next.
    remaining    INTEGER NOT NULL DEFAULT 0 CHECK (remaining >= 0 AND remaining <= total),
    opened_at    INTEGER,
    closed_at    INTEGER,
    max_attempts INTEGER CHECK (max_attempts >= 1),
    timeout_ms   INTEGER CHECK (timeout_ms >= 1),
    PRIMARY KEY (job_id, position),
    UNIQUE (job_id, name)
) STRICT, WITHOUT ROWID;
INSERT INTO stages (job_id, position, tenant_id, name, state, on_failure, total,
                            remaining, opened_at, closed_at, max_attempts, timeout_ms)
SELECT job_id, position, tenant_id, name, state, on_failure, total,
       remaining, opened_at, closed_at, max_attempts, timeout_ms
FROM stages_before_0005;

ALTER TABLE tasks RENAME TO tasks_before_0005;

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    job_id           INTEGER NOT NULL,
    stage_position   INTEGER NOT NULL,
    handler          TEXT NOT NULL,
    executor         TEXT NOT NULL CHECK (executor IN ('wasm', 'agent', 'command')),
    key              TEXT,
    state            TEXT NOT NULL
        CHECK (state IN ('blocked', 'pending', 'running', 'succeeded', 'dead', 'cancelled',
                         'skipped')),
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    lease_expires_at INTEGER,
    worker           TEXT,
    run_after        INTEGER NOT NULL,
    input_json       TEXT NOT NULL,
    output_json      TEXT,
    error            TEXT,
    parent_task_id   INTEGER,
    -- Dependencies (task_deps) that have not finished yet; ready at zero.
    deps_remaining   INTEGER NOT NULL DEFAULT 0 CHECK (deps_remaining >= 0),
    agent_json       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    on_failure       TEXT NOT NULL DEFAULT 'fail_job'
        CHECK (on_failure IN ('fail_job', 'continue', 'release_then_fail')),
    FOREIGN KEY (job_id, stage_position) REFERENCES stages (job_id, position)
) STRICT;
INSERT INTO tasks (id, tenant_id, job_id, stage_position, handler, executor, key, state,
                           attempt, max_attempts, timeout_ms, lease_expires_at, worker, run_after,
                           input_json, output_json, error, parent_task_id, deps_remaining,
                           agent_json, created_at, updated_at, finished_at, on_failure)
SELECT id, tenant_id, job_id, stage_position, handler, executor, key, state,
       attempt, max_attempts, timeout_ms, lease_expires_at, worker, run_after,
       input_json, output_json, error, parent_task_id, deps_remaining,
       agent_json, created_at, updated_at, finished_at, on_failure
FROM tasks_before_0005;

ALTER TABLE task_deps RENAME TO task_deps_before_0005;
CREATE TABLE task_deps (
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    depends_on INTEGER NOT NULL REFERENCES tasks (id),
    tenant_id  TEXT NOT NULL,
    PRIMARY KEY (task_id, depends_on)
) STRICT, WITHOUT ROWID;
INSERT INTO task_deps (task_id, depends_on, tenant_id)
SELECT task_id, depends_on, tenant_id FROM task_deps_before_0005;

DROP TABLE task_deps_before_0005;
DROP TABLE tasks_before_0005;
DROP TABLE stages_before_0005;

-- The indexes of migrations 0001 and 0002, as they were.
CREATE INDEX task_deps_depends_on ON task_deps (depends_on);
CREATE UNIQUE INDEX tasks_job_key ON tasks (job_id, key) WHERE key IS NOT NULL;
CREATE INDEX tasks_claimable ON tasks (executor, id) WHERE state = 'pending';
CREATE INDEX tasks_running_leases ON tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX tasks_job_stage_state ON tasks (job_id, stage_position, state, id);
CREATE INDEX tasks_parent ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX tasks_job_finished ON tasks (job_id, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_tenant_active ON tasks (tenant_id, state)
    WHERE state IN ('blocked', 'pending', 'running');
CREATE INDEX tasks_job_id ON tasks (job_id, id);
