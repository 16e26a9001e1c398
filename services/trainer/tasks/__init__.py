"""The tasks a trainer can run, by name: `mnist1d`, and `clrs/ALGORITHM[:sizes]` where
dm-clrs is installed (the `clrs` extra)."""

import importlib.util

from services.trainer.tasks.base import Task
from services.trainer.tasks.mnist1d import Mnist1d

_TASKS: dict[str, type[Task]] = {"mnist1d": Mnist1d}
CLRS_PREFIX = "clrs/"
_loaded: dict[str, Task] = {}


def clrs_available() -> bool:
    return importlib.util.find_spec("clrs") is not None


def names() -> list[str]:
    known = sorted(_TASKS)
    if clrs_available():
        from services.trainer.tasks.clrs import algorithms

        known += [CLRS_PREFIX + a for a in algorithms()]
    return known


def get(name: str) -> Task:
    """The task called `name`: KeyError naming the known tasks if there is none,
    ValueError for a wrong CLRS algorithm or option, ModuleNotFoundError without dm-clrs."""
    if name not in _loaded:
        if name.startswith(CLRS_PREFIX):
            from services.trainer.tasks.clrs import Clrs

            _loaded[name] = Clrs(name)
        elif name in _TASKS:
            _loaded[name] = _TASKS[name]()
        else:
            raise KeyError(
                f"unknown task {name!r}; known tasks: mnist1d, clrs/ALGORITHM (e.g. clrs/bfs)"
            )
    return _loaded[name]
