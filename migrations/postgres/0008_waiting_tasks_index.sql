-- Issue 13: fewer index entries move per task. `tasks_tenant_active` held
-- every blocked, pending and running task by (tenant, state), so a claim
-- (pending → running) deleted and inserted an entry and a completion deleted
-- one: three index changes per task on the hot path (and no update of a
-- task's state could be HOT), for the queue-depth counts alone. It now holds
-- the waiting tasks (blocked, pending) only. Running tasks, few (bounded by
-- the workers' slots), are counted through `tasks_running_leases`.
DROP INDEX tasks_tenant_active;
CREATE INDEX tasks_tenant_waiting ON tasks (tenant_id, state)
    WHERE state IN ('blocked', 'pending');
