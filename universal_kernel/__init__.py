"""universal-kernel: one local inference runtime for Jupyter.

`%load_ext universal_kernel` registers the magics. The heavy libraries (torch, transformers,
llama_cpp) load only when a backend first needs them.
"""

from .backends import GenerationParams
from .config import RuntimeConfig
from .errors import (
    BackendUnavailable, Busy, Cancelled, GenerationFailed, InvalidRequest, LoadFailed, MemoryBudgetExceeded,
    ModelNotFound, ReferenceRefused, RuntimeFailure, WrongTask,
)
from .references import ModelSpec
from .runtime import Runtime, get_runtime

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "Busy", "Cancelled", "GenerationFailed", "GenerationParams", "InvalidRequest",
    "LoadFailed", "MemoryBudgetExceeded", "ModelNotFound", "ModelSpec", "ReferenceRefused", "Runtime",
    "RuntimeConfig", "RuntimeFailure", "WrongTask", "get_runtime", "load_ipython_extension",
]


def load_ipython_extension(ipython):
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    pass


def _jupyter_server_extension_points():
    return [{"module": "universal_kernel.server_ext"}]
