// The agent workflow driven by the official MCP TypeScript SDK client, as
// Claude Code, Claude Desktop, Cursor and the MCP Inspector drive a server.
//
// Usage: node agent_workflow.mjs '<connection JSON>'
//   {"transport": "stdio", "command": "...", "args": [...]}
//   {"transport": "http", "url": "http://127.0.0.1:PORT/mcp", "token": "lst_..."}
//
// Every tool result passes the SDK's own validation against the tool's
// output schema (listTools caches a validator per tool; callTool throws on a
// mismatch). Prints one JSON object: the tools listed, one record per step
// (a result, or what was thrown) and the progress notifications received.
// The Rust test (tests/src/mcp_official_clients.rs) asserts on it.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const connection = JSON.parse(process.argv[2]);
const transport =
  connection.transport === 'stdio'
    ? new StdioClientTransport({ command: connection.command, args: connection.args, stderr: 'ignore' })
    : new StreamableHTTPClientTransport(new URL(connection.url), {
        requestInit: { headers: { Authorization: `Bearer ${connection.token}` } },
      });
const client = new Client({ name: 'lockstep-ts-sdk-test', version: '1.0.0' });
await client.connect(transport);

const listed = await client.listTools();
const tools = listed.tools.map((t) => ({
  name: t.name,
  hasOutputSchema: t.outputSchema !== undefined,
  outputSchemaBytes: JSON.stringify(t.outputSchema ?? null).length,
}));

const steps = {};
const progress = [];

/** Call a tool; record the result or what the SDK threw. */
async function step(name, tool, args, options) {
  try {
    const r = await client.callTool({ name: tool, arguments: args }, undefined, options);
    steps[name] = {
      isError: r.isError ?? false,
      structured: r.structuredContent ?? null,
      meta: r._meta ?? null,
      text: (r.content ?? []).map((c) => c.text),
    };
    return r.structuredContent ?? null;
  } catch (e) {
    steps[name] = { threw: true, code: e.code ?? null, message: String(e.message), data: e.data ?? null };
    return null;
  }
}

await step('health', 'health_check', {});
await step('handlers', 'list_handlers', {});

const plan = await step('plan', 'plan_task', {
  goal: 'Ship email login',
  subtasks: [
    { key: 'design', title: 'Design the schema', instructions: 'Add a users table.' },
    {
      key: 'build',
      title: 'Write the API',
      instructions: 'Login endpoint.',
      specialist: 'backend',
      depends_on: ['design'],
    },
  ],
});
const job = plan.job_id;
const design = await step('claim_design', 'claim_task', { job_id: job });
await step('nothing_ready', 'claim_task', { job_id: job });
await step('update_design', 'update_task', {
  task_id: design.task.task_id,
  attempt: design.task.attempt,
  note: 'drafted users(id, email)',
});
await step('complete_design', 'complete_task', {
  task_id: design.task.task_id,
  attempt: design.task.attempt,
  summary: 'users(id, email unique)',
  details: 'CREATE TABLE users (...)',
  artifacts: [{ path: 'db/schema.sql', kind: 'file' }],
  next_action: 'write the endpoint',
});
const build = await step('claim_build', 'claim_task', { job_id: job, specialist: 'backend' });
await step('complete_build', 'complete_task', {
  task_id: build.task.task_id,
  attempt: build.task.attempt,
  summary: 'POST /login',
});
await step('get_job', 'get_job', { job_id: job });
await step('wait_plan', 'wait_job', { job_id: job, timeout_seconds: 5 });
await step('get_task', 'get_task', { task_id: design.task.task_id });

const submitted = await step('submit', 'submit_job', {
  job: { name: 'noops', stages: [{ name: 's', tasks: [{ handler: 'example:noop', input: {} }] }] },
  idempotency_key: 'noops-1',
});
await step('wait_submitted', 'wait_job', { job_id: submitted.job_id, timeout_seconds: 120 }, {
  onprogress: (p) => progress.push(p),
  timeout: 150000,
});
await step('list_jobs', 'list_jobs', { limit: 5 });

// Each refusal kind, read as a tool result.
await step('not_found', 'get_job', { job_id: 999999 });
await step('lease_lost', 'complete_task', {
  task_id: design.task.task_id,
  attempt: design.task.attempt,
  summary: 'twice',
});
await step('illegal_state', 'retry_task', { task_id: design.task.task_id });
// The submitted job's one WASM task comes after the plan's two.
await step('not_agent_task', 'complete_task', { task_id: 3, attempt: 1, summary: 'mine' });
// The server runs no pipelines: it was started without --pipelines-root.
await step('not_enabled', 'run_pipeline', { path: 'lockstep-ci.toml' });
// Wrong arguments and unknown tools are protocol errors.
await step('invalid_params', 'get_job', { job_id: 'seven' });
await step('unknown_tool', 'no_such_tool', {});

// Giving up, reviving and cancelling.
const solo = await step('plan_solo', 'plan_task', {
  goal: 'A step that fails',
  subtasks: [{ title: 'Flaky step', instructions: 'Try it.' }],
});
const flaky = await step('claim_solo', 'claim_task', { job_id: solo.job_id });
await step('fail_solo', 'fail_task', {
  task_id: flaky.task.task_id,
  attempt: flaky.task.attempt,
  reason: 'the disk is full',
  retryable: false,
});
await step('retry_solo', 'retry_task', { task_id: flaky.task.task_id });
await step('cancel_solo', 'cancel_job', { job_id: solo.job_id });

if (connection.transport === 'http') {
  await transport.terminateSession();
}
await client.close();
console.log(JSON.stringify({ tools, steps, progress }));
