-- An agent's claim_task without a job takes the oldest ready agent task of
-- its own tenant. Through `tasks_claimable` (every pending task by executor
-- and id) it walked the pending agent tasks of every tenant with a lower id
-- first: one tenant's backlog slowed every other tenant's claims, and on
-- SQLite held the one writer while it did. This index holds pending agent
-- tasks only, by tenant and id; a wasm or command task is never in it, so
-- the workers' claims and completions write nothing more.
CREATE INDEX tasks_agent_claimable ON tasks (tenant_id, id)
    WHERE state = 'pending' AND executor = 'agent';
