-- lockstep schema for SQLite (the embedded default).
--
-- The same tables and meaning as migrations/postgres. Every table carries
-- tenant_id and every lookup a request makes is an index lookup. All
-- timestamps are milliseconds since the Unix epoch. Counters are guarded by
-- CHECK constraints so a double decrement fails loudly instead of
-- corrupting a job.

CREATE TABLE tenants (
    tenant_id  TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (tenant_id),
    name            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    spec_json       TEXT NOT NULL,
    state           TEXT NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
) STRICT;
-- Idempotent submit is enforced here, never by a lookup.
CREATE UNIQUE INDEX jobs_tenant_idempotency_key ON jobs (tenant_id, idempotency_key);
-- list_jobs: newest first per tenant, optionally by state.
CREATE INDEX jobs_tenant_newest ON jobs (tenant_id, id DESC);
CREATE INDEX jobs_tenant_state_newest ON jobs (tenant_id, state, id DESC);

CREATE TABLE stages (
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    position   INTEGER NOT NULL CHECK (position >= 0),
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('waiting', 'open', 'done')),
    on_failure TEXT NOT NULL CHECK (on_failure IN ('fail_job', 'continue')),
    -- Tasks ever placed in the stage (submitted + spawned).
    total      INTEGER NOT NULL DEFAULT 0 CHECK (total >= 0),
    -- Tasks of the stage not yet terminal; the transaction that takes it to
    -- zero, and only that one, closes the stage and opens the next.
    remaining  INTEGER NOT NULL DEFAULT 0 CHECK (remaining >= 0 AND remaining <= total),
    opened_at  INTEGER,
    closed_at  INTEGER,
    PRIMARY KEY (job_id, position),
    UNIQUE (job_id, name)
) STRICT, WITHOUT ROWID;

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    job_id           INTEGER NOT NULL,
    stage_position   INTEGER NOT NULL,
    handler          TEXT NOT NULL,
    executor         TEXT NOT NULL CHECK (executor IN ('wasm', 'agent')),
    key              TEXT,
    state            TEXT NOT NULL
        CHECK (state IN ('blocked', 'pending', 'running', 'succeeded', 'dead', 'cancelled')),
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
    FOREIGN KEY (job_id, stage_position) REFERENCES stages (job_id, position)
) STRICT;
-- Keys are unique within a job; depends_on refers to them.
CREATE UNIQUE INDEX tasks_job_key ON tasks (job_id, key) WHERE key IS NOT NULL;
-- claim_batch: pending tasks in id order per executor.
CREATE INDEX tasks_claimable ON tasks (executor, id) WHERE state = 'pending';
-- rescue_expired_leases.
CREATE INDEX tasks_running_leases ON tasks (lease_expires_at) WHERE state = 'running';
-- Per-stage work: counts by state, opening a stage, stage_results paging by id.
CREATE INDEX tasks_job_stage_state ON tasks (job_id, stage_position, state, id);
-- A child's parent and a parent's children are index lookups.
CREATE INDEX tasks_parent ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
-- recent_completions.
CREATE INDEX tasks_job_finished ON tasks (job_id, finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE task_deps (
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    depends_on INTEGER NOT NULL REFERENCES tasks (id),
    tenant_id  TEXT NOT NULL,
    PRIMARY KEY (task_id, depends_on)
) STRICT, WITHOUT ROWID;
-- A completing task finds its dependents through this index.
CREATE INDEX task_deps_depends_on ON task_deps (depends_on);

-- Append-only history of every job.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    job_id         INTEGER NOT NULL,
    task_id        INTEGER,
    kind           TEXT NOT NULL,
    stage_position INTEGER,
    detail         TEXT,
    at             INTEGER NOT NULL
) STRICT;
CREATE INDEX events_job ON events (job_id, id);

CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the events table is append-only: UPDATE is not allowed');
END;
