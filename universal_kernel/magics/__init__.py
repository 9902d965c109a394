"""IPython magics: `%%generate`, `%embed` and `%runtime`, plus one line magic per task of the registry
(`%rerank`, `%classify`, `%ner`, ...) (`%load_ext universal_kernel`)."""

from __future__ import annotations

#: tasks whose magics are methods of `UniversalKernelMagics` (core.py), not registered from TASKS
CORE_TASKS = frozenset({"generate", "embed"})


def register(ipython):
    """Register the magics on `ipython`; returns the magics instance (one per shell)."""
    from .core import UniversalKernelMagics

    existing = get_magics(ipython)
    if existing is not None:
        return existing
    magics = UniversalKernelMagics(shell=ipython)
    ipython.register_magics(magics)
    register_task_magics(ipython, magics)
    return magics


def register_task_magics(ipython, magics) -> None:
    """One line magic per task in `TASKS` that names a magic module: adding a task needs no edit here."""
    from ..tasks import TASKS

    for name, parts in TASKS.items():
        if name in CORE_TASKS or not parts.magic:
            continue
        ipython.register_magic_function(TaskMagic(magics, name, parts.magic), "line", name)


class TaskMagic:
    """The line magic of one task. Its module (which imports pandas and the runtime's task code) is
    imported on first use, so `%load_ext` stays fast; `%rerank?` imports it to show the help."""

    # `{x}` and `$x` stay as written: the line is Python (queries in quotes, expressions)
    _ipython_no_var_expand = True

    def __init__(self, magics, task: str, module: str):
        self.magics = magics
        self.task = task
        self.module = module
        self.__name__ = task

    def _module(self):
        import importlib

        return importlib.import_module(self.module)

    def __call__(self, line: str):
        return self._module().magic(self.magics, line)

    @property
    def __doc__(self):  # read by `%rerank?`, `%magic` and IPython's inspector
        return self._module().magic.__doc__

    def __repr__(self) -> str:
        return f"<%{self.task} magic ({self.module})>"


def get_magics(ipython):
    """The registered `UniversalKernelMagics` of a shell, or None."""
    return ipython.magics_manager.registry.get("UniversalKernelMagics")


__all__ = ["get_magics", "register"]
