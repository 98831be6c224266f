-- lockstep schema for PostgreSQL.
--
-- Every table carries tenant_id and every lookup a request makes is an index
-- lookup. All timestamps are milliseconds since the Unix epoch (BIGINT).
-- Counters (stages.remaining, tasks.deps_remaining) are guarded by CHECK
-- constraints so a double decrement fails loudly instead of corrupting a job.

CREATE TABLE tenants (
    tenant_id  TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (tenant_id),
    name            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    spec_json       TEXT NOT NULL,
    state           TEXT NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    error           TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    -- Idempotent submit is enforced here, never by a lookup.
    CONSTRAINT jobs_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key)
);
-- list_jobs: newest first per tenant, optionally by state.
CREATE INDEX jobs_tenant_newest ON jobs (tenant_id, id DESC);
CREATE INDEX jobs_tenant_state_newest ON jobs (tenant_id, state, id DESC);

CREATE TABLE stages (
    job_id     BIGINT NOT NULL REFERENCES jobs (id),
    position   INTEGER NOT NULL CHECK (position >= 0),
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('waiting', 'open', 'done')),
    on_failure TEXT NOT NULL CHECK (on_failure IN ('fail_job', 'continue')),
    -- Tasks ever placed in the stage (submitted + spawned).
    total      BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    -- Tasks of the stage not yet terminal; the transaction that takes it to
    -- zero, and only that one, closes the stage and opens the next.
    remaining  BIGINT NOT NULL DEFAULT 0 CHECK (remaining >= 0 AND remaining <= total),
    opened_at  BIGINT,
    closed_at  BIGINT,
    PRIMARY KEY (job_id, position),
    CONSTRAINT stages_job_name UNIQUE (job_id, name)
);

CREATE TABLE tasks (
    id               BIGSERIAL PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    job_id           BIGINT NOT NULL,
    stage_position   INTEGER NOT NULL,
    handler          TEXT NOT NULL,
    executor         TEXT NOT NULL CHECK (executor IN ('wasm', 'agent')),
    key              TEXT,
    state            TEXT NOT NULL
        CHECK (state IN ('blocked', 'pending', 'running', 'succeeded', 'dead', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL,
    timeout_ms       BIGINT NOT NULL,
    lease_expires_at BIGINT,
    worker           TEXT,
    run_after        BIGINT NOT NULL,
    input_json       TEXT NOT NULL,
    output_json      TEXT,
    error            TEXT,
    parent_task_id   BIGINT,
    -- Dependencies (task_deps) that have not finished yet; ready at zero.
    deps_remaining   INTEGER NOT NULL DEFAULT 0 CHECK (deps_remaining >= 0),
    agent_json       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    FOREIGN KEY (job_id, stage_position) REFERENCES stages (job_id, position)
);
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
    task_id    BIGINT NOT NULL REFERENCES tasks (id),
    depends_on BIGINT NOT NULL REFERENCES tasks (id),
    tenant_id  TEXT NOT NULL,
    PRIMARY KEY (task_id, depends_on)
);
-- A completing task finds its dependents through this index.
CREATE INDEX task_deps_depends_on ON task_deps (depends_on);

-- Append-only history of every job. No foreign key to jobs on purpose: every
-- completion appends here, and a key-share lock on a hot job row per event
-- would serialize unrelated completions on multixact bookkeeping.
CREATE TABLE events (
    id             BIGSERIAL PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    job_id         BIGINT NOT NULL,
    task_id        BIGINT,
    kind           TEXT NOT NULL,
    stage_position INTEGER,
    detail         TEXT,
    at             BIGINT NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);

CREATE FUNCTION lockstep_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION lockstep_events_append_only();
