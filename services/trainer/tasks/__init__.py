"""The tasks a trainer can run, by name."""

from services.trainer.tasks.base import Task
from services.trainer.tasks.mnist1d import Mnist1d

_TASKS: dict[str, type[Task]] = {"mnist1d": Mnist1d}
_loaded: dict[str, Task] = {}


def names() -> list[str]:
    return sorted(_TASKS)


def get(name: str) -> Task:
    """The task called `name`; KeyError with the known names if there is none."""
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    if name not in _loaded:
        _loaded[name] = _TASKS[name]()
    return _loaded[name]
