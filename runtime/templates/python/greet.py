"""The work of `{{handler}}`, apart from the host so `python -m unittest` can test it."""

from dataclasses import dataclass

#: JSON Schema of the input; the host checks every task input against it
#: before the task is stored, so `run` only sees inputs that fit.
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Who to greet."},
        "times": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 1,
            "description": "How many times (1 to 100, default 1).",
        },
    },
    "required": ["name"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Input:
    """The task input."""

    name: str
    times: int = 1


class Fatal(Exception):
    """A failure that retrying cannot fix: the task is dead at once."""


class Retryable(Exception):
    """A transient failure: the host retries the task with backoff."""


def greet(task_input: Input) -> dict:
    """Greets `name`, `times` times."""
    if not task_input.name.strip():
        raise Fatal("name is empty; give someone to greet")
    times = min(max(task_input.times, 1), 100)
    return {"greeting": " ".join([f"hello, {task_input.name}"] * times)}
