"""The per-task methods of every runtime (`rt.rerank(...)`, `rt.anomaly_fit(...)`), from the task registry.

A task's runtime part defines them as functions that take the runtime first, build the task's `TaskCall`
and call `runtime.run` (tasks/rerank.py's `rerank`); its registry line names them (`TaskParts.methods`).
`TaskMethods` offers each as a method of the runtime classes that inherit it, the local runtime and a
server's client alike: `inspect.signature`, `help` and tab completion show the task's own function, and
nothing of a task is imported until one of its methods is looked up. A runtime class may still define
one itself where its transport needs more than `run` (`RemoteRuntime.embed` also serves OpenAI servers
without our runtime API).
"""

from __future__ import annotations

from types import MethodType

from .tasks import TASKS, task_parts


class TaskMethod:
    """A method that is the function `name` of a task's runtime part, bound to the runtime it is read from."""

    def __init__(self, task: str, name: str):
        self.task, self.name = task, name
        self.__name__ = name
        self.__doc__ = f"The {task!r} task's {name}: see {task_parts(task).runtime}.{name}."

    def function(self):
        return getattr(task_parts(self.task).runtime_part(), self.name)

    def __get__(self, runtime, owner=None):
        function = self.function()
        return function if runtime is None else MethodType(function, runtime)


def _registered(name: str) -> str | None:
    """The task whose registry line names the method `name`, if any."""
    return next((task for task, parts in TASKS.items() if name in parts.methods), None)


class TaskMethods:
    """Mixin of the runtimes: one method per name in the registry's `methods`, each calling `self.run`."""

    def __getattr__(self, name: str):
        # a task registered after this module was imported (a plug-in, a test's toy task)
        task = _registered(name) if not name.startswith("_") else None
        if task is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return TaskMethod(task, name).__get__(self, type(self))

    def __dir__(self):
        return sorted(set(super().__dir__()) | {name for parts in TASKS.values() for name in parts.methods})


for _task, _parts in TASKS.items():
    for _name in _parts.methods:
        setattr(TaskMethods, _name, TaskMethod(_task, _name))
