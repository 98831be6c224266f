// Listens for notifications/tools/list_changed with the official MCP
// TypeScript SDK client, as an agent's host does while lockstep reloads
// plugins under it.
//
// Usage: node list_changed.mjs '{"url": "http://127.0.0.1:PORT/mcp", "token": "lst_..."}'
//
// Prints one JSON line per event: {"event": "ready", "tools": [...]} once
// connected, then {"event": "list_changed", "tools": [...]} for every
// notification (the tool names listed again right after it). Runs until its
// standard input closes. The Rust test (tests/src/plugin_reload.rs) reads it.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const connection = JSON.parse(process.argv[2]);
const transport = new StreamableHTTPClientTransport(new URL(connection.url), {
  requestInit: { headers: { Authorization: `Bearer ${connection.token}` } },
});
const client = new Client({ name: 'lockstep-list-changed-test', version: '1.0.0' });

async function names() {
  const listed = await client.listTools();
  return listed.tools.map((t) => t.name).sort();
}

client.setNotificationHandler(ToolListChangedNotificationSchema, async () => {
  console.log(JSON.stringify({ event: 'list_changed', tools: await names() }));
});

await client.connect(transport);
console.log(
  JSON.stringify({
    event: 'ready',
    listChanged: client.getServerCapabilities()?.tools?.listChanged ?? false,
    tools: await names(),
  }),
);

process.stdin.resume();
process.stdin.on('end', async () => {
  await client.close();
  process.exit(0);
});
