"""`{{handler}}`: the component's exports, wired to `greet.py`.

Build: componentize-py --wit-path wit --world plugin componentize app -o {{file_stem}}.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context, types

import greet

HANDLER = "{{handler}}"
DESCRIPTION = "Greets someone by name, `times` times."


class Handler(exports.Handler):
    def describe(self) -> list[types.HandlerInfo]:
        return [
            types.HandlerInfo(
                name=HANDLER,
                description=DESCRIPTION,
                input_schema=json.dumps(greet.INPUT_SCHEMA),
            )
        ]

    def run(self, task: types.Task) -> types.Outcome:
        # Raise Err(TaskError_...) to return the error case. Any other
        # exception traps: the attempt fails and is retried, and the traceback
        # (printed to stderr) is in the task's log lines (`lockstep task ID`).
        if task.handler != HANDLER:
            raise Err(types.TaskError_Fatal(f"this component has no handler {task.handler!r}"))
        task_input = greet.Input(**json.loads(task.input))
        context.log(types.LogLevel.INFO, f"attempt {task.attempt}")
        try:
            output = greet.greet(task_input)
        except greet.Fatal as e:
            raise Err(types.TaskError_Fatal(str(e)))
        except greet.Retryable as e:
            raise Err(types.TaskError_Retryable(str(e)))
        return types.Outcome(output=json.dumps(output), spawn=[])
