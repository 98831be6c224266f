-- The MCP front door: bearer tokens, and the lookups of the agent workflow.

-- Tokens for MCP over HTTP. Only the SHA-256 of a token is stored; a
-- request's tenant is found through the unique hash index.
CREATE TABLE api_tokens (
    id         BIGSERIAL PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (tenant_id),
    token_hash TEXT NOT NULL,
    label      TEXT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    CONSTRAINT api_tokens_hash UNIQUE (token_hash)
);

-- get_task's recent events of one task.
CREATE INDEX events_task ON events (task_id, id) WHERE task_id IS NOT NULL;

-- health_check's queue depth per tenant; finished tasks leave the index.
CREATE INDEX tasks_tenant_active ON tasks (tenant_id, state)
    WHERE state IN ('blocked', 'pending', 'running');

-- A plan's tasks in id order.
CREATE INDEX tasks_job_id ON tasks (job_id, id);
