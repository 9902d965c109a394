"""universal-kernel: one local inference runtime for Jupyter.

`%load_ext universal_kernel` registers the magics. The heavy libraries (torch, transformers,
llama_cpp) load only when a backend first needs them.
"""

from . import openmp_policy

openmp_policy.apply()  # before anything loads libgomp: see openmp_policy.py

from .backends import GenerationParams  # noqa: E402
from .config import RuntimeConfig
from .errors import (
    BackendUnavailable, Busy, Cancelled, GenerationFailed, InvalidRequest, LoadFailed, MemoryBudgetExceeded,
    ModelNotFound, ReferenceRefused, RuntimeFailure, WrongTask,
)
from .interface import InferenceRuntime
from .references import ModelSpec
from .runtime import Runtime, get_runtime
from .tasks.classify import Classification, ClassifyResult  # the tasks' results, where they live
from .tasks.embed import EmbeddingResult
from .tasks.ner import Entity, NerResult
from .tasks.rerank import RerankHit, RerankResult

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "Busy", "Cancelled", "Classification", "ClassifyResult", "EmbeddingResult", "Entity",
    "GenerationFailed", "GenerationParams", "InferenceRuntime", "InvalidRequest", "LoadFailed", "NerResult",
    "RerankHit", "RerankResult", "MemoryBudgetExceeded", "ModelNotFound", "ModelSpec", "ReferenceRefused", "Runtime",
    "RuntimeConfig", "RuntimeFailure", "WrongTask", "get_runtime", "load_ipython_extension",
]


def load_ipython_extension(ipython):
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    pass


# `--ServerApp.jpserver_extensions=universal_kernel=True` (the package's own name) enables the server
# extension `universal_kernel.server_ext`, exactly once even when both names are enabled. Nothing of
# jupyter_server is imported here: `%load_ext universal_kernel` stays fast.
_SERVER_EXTENSION = "universal_kernel.server_ext"


def _jupyter_server_extension_points():
    # a name of its own: the server extension's app point is called "universal_kernel"
    return [{"module": "universal_kernel", "name": "universal_kernel (enables universal_kernel.server_ext)"}]


def _link_jupyter_server_extension(serverapp):
    manager = serverapp.extension_manager
    extension = manager.extensions.get(_SERVER_EXTENSION)
    if extension is None:
        if not manager.add_extension(_SERVER_EXTENSION, enabled=True):
            raise ImportError(f"universal_kernel: the server extension {_SERVER_EXTENSION} could not be added; "
                              "see the warning above")
    elif not extension.enabled:
        extension.enabled = True
    manager.link_extension(_SERVER_EXTENSION)  # once: jupyter_server skips an extension already linked


def _load_jupyter_server_extension(serverapp):
    """Nothing to do: jupyter_server loads (and starts, and stops) universal_kernel.server_ext itself."""
