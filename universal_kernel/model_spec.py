"""`ModelSpec`: what a model reference names (references.py resolves one), before anything loads.

Its own module so that the backends, which load one, and references.py, which reads the backends'
declared formats to build one, do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    """What a reference names: enough to pick a backend and load, nothing loaded yet."""

    id: str  # the name clients use (alias or reference as given)
    path: Path  # the .gguf file, or the model folder
    format: str  # a backend's `ModelFormat.name` (backends/formats.py)
    #: what the files say the model is (its kind): the first task it serves; `universal_kernel.tasks` says
    #: which others
    task: str
    architecture: str
    size_bytes: int  # weights on disk
    metadata: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    #: size and modification time of the weight files when resolved: a replaced file is a new model
    stamp: tuple = ()

    @property
    def key(self) -> str:
        """Path, size and mtime: the cache never serves an entry loaded from an older file at this path."""
        if not self.stamp:
            return str(self.path)
        return f"{self.path}|" + ",".join(f"{size}:{mtime}" for size, mtime in self.stamp)

    def renamed(self, name: str) -> "ModelSpec":
        return ModelSpec(name, self.path, self.format, self.task, self.architecture, self.size_bytes,
                         self.metadata, self.stamp)
