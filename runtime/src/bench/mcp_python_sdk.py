"""What an agent built on the official MCP Python SDK (PyPI `mcp`) pays per
lockstep tool call: `lockstep bench mcp --python PY` runs this file with PY,
an interpreter that has `mcp` installed.

It starts lockstep's stdio server through the SDK's own `stdio_client`, lists
the tools (the SDK caches each tool's output schema), and then, per tool:

- times `ClientSession.call_tool` as the SDK runs it, and with the SDK's
  output-schema validation switched off, alternating the two;
- times the SDK's own validation method alone on the last result, as many
  times as asked: `_validate_tool_result` (mcp 1.x calls
  `jsonschema.validate`, which checks the schema against its meta-schema and
  builds a validator on every call) or `validate_tool_result` (mcp 2.x
  compiles once per schema and keeps the validator).

Usage: python mcp_python_sdk.py SPEC.json, where SPEC is
  {"command": ..., "args": [...], "stderr": PATH, "warm_up": N,
   "validations": N, "tools": [{"tool": ..., "calls": [{...}, ...]}, ...]}
The first `warm_up` calls of each tool are not counted; the rest alternate
validated / not validated. Prints one JSON line per tool.
"""

import asyncio
import json
import sys
import time
from importlib.metadata import version

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def percentile(samples, p):
    """Nearest rank, as lockstep's Rust benchmarks compute it."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = round(p / 100 * (len(ordered) - 1))
    return ordered[min(rank, len(ordered) - 1)]


def summary(samples):
    return {
        "samples": len(samples),
        "p50_us": round(percentile(samples, 50), 1),
        "p99_us": round(percentile(samples, 99), 1),
    }


def refusal(result):
    """The refusal text of an `isError` result, else None."""
    is_error = getattr(result, "is_error", None)
    if is_error is None:
        is_error = getattr(result, "isError", False)
    if not is_error:
        return None
    return " ".join(getattr(c, "text", "") for c in result.content)


async def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    server = StdioServerParameters(command=spec["command"], args=spec["args"])
    with open(spec["stderr"], "w") as errlog:
        async with stdio_client(server, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await session.list_tools()
                # The method call_tool validates through: an attribute of the
                # same name on the instance replaces it for this session.
                name = (
                    "validate_tool_result"
                    if hasattr(session, "validate_tool_result")
                    else "_validate_tool_result"
                )
                sdk_validate = getattr(session, name)

                async def unvalidated(tool, result):
                    return None

                for case in spec["tools"]:
                    tool = case["tool"]
                    timed = {True: [], False: []}
                    last = None
                    for i, arguments in enumerate(case["calls"]):
                        validate = i % 2 == 0
                        if validate:
                            if name in vars(session):
                                delattr(session, name)
                        else:
                            setattr(session, name, unvalidated)
                        started = time.perf_counter()
                        result = await session.call_tool(tool, arguments)
                        elapsed = (time.perf_counter() - started) * 1e6
                        refused = refusal(result)
                        if refused is not None:
                            raise SystemExit(f"{tool} {json.dumps(arguments)} was refused: {refused}")
                        if i >= spec["warm_up"]:
                            timed[validate].append(elapsed)
                        last = result
                    if name in vars(session):
                        delattr(session, name)
                    alone = []
                    for _ in range(spec["validations"]):
                        started = time.perf_counter()
                        await sdk_validate(tool, last)
                        alone.append((time.perf_counter() - started) * 1e6)
                    print(
                        json.dumps(
                            {
                                "tool": tool,
                                "sdk": f"mcp {version('mcp')}",
                                "jsonschema": version("jsonschema"),
                                "python": sys.version.split()[0],
                                "transport": "stdio",
                                "validate": summary(alone),
                                "call_validated": summary(timed[True]),
                                "call_unvalidated": summary(timed[False]),
                            }
                        ),
                        flush=True,
                    )


asyncio.run(main())
