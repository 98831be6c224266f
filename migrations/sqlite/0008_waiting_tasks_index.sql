-- Issue 13: fewer index entries move per task. `tasks_tenant_active` held
-- every blocked, pending and running task by (tenant, state), so a claim
-- (pending → running) deleted and inserted an entry and a completion deleted
-- one: three b-tree changes per task on the hot path, for the queue-depth
-- counts alone. It now holds the waiting tasks (blocked, pending) only: a
-- claim deletes one entry and a completion none. Running tasks, few (bounded
-- by the workers' slots), are counted through `tasks_running_leases`.
DROP INDEX tasks_tenant_active;
CREATE INDEX tasks_tenant_waiting ON tasks (tenant_id, state)
    WHERE state IN ('blocked', 'pending');
