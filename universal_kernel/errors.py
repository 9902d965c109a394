"""Typed errors of the runtime.

The runtime raises these; the front doors (magics, HTTP) map them to what their users see.
No HTTP status lives here: server_ext owns that mapping.
"""


class RuntimeFailure(Exception):
    """Base of every error the runtime raises on purpose."""

    #: the request parameter the error is about, when there is one
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param


class InvalidRequest(RuntimeFailure):
    """The caller asked for something malformed or unsupported."""


class ModelNotFound(RuntimeFailure):
    """A reference that names no model."""

    param = "model"


class ReferenceRefused(RuntimeFailure):
    """A reference that escapes the configured model folders."""

    param = "model"


class WrongTask(RuntimeFailure):
    """A generation model asked to embed, or the reverse."""

    param = "model"


class BackendUnavailable(RuntimeFailure):
    """The backend a model needs is not installed or cannot serve it."""


class LoadFailed(RuntimeFailure):
    """Loading the weights failed; nothing was kept."""


class MemoryBudgetExceeded(RuntimeFailure):
    """Even after evicting idle models, the load would not fit the memory budget."""


class Busy(RuntimeFailure):
    """The model's queue is full; retry later."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(RuntimeFailure):
    """The request was cancelled before it finished."""


class GenerationFailed(RuntimeFailure):
    """The backend failed while generating."""


class WorkerLost(GenerationFailed):
    """The model's worker thread died (its requests end with this), or loading the model again after that
    failed: the model is unloaded, and a later request loads it again."""


class PullFailed(RuntimeFailure):
    """A pull by Hub id that could not complete; the subclasses say why (the library's message in one line)."""

    param = "model"


class RepoNotFound(ModelNotFound, PullFailed):
    """The Hub has no such repo, revision or file (sent as `ModelNotFound`: a 404)."""


class GatedModel(PullFailed):
    """The Hub refused access: a gated or private repo, and no token, or a token without access."""


class HubUnavailable(PullFailed):
    """The Hub could not be reached (offline, HF_ENDPOINT down, a 5xx) and the model is not cached."""


class DiskFull(PullFailed):
    """The cache's disk lacks room for the model's files (checked before, or hit while writing)."""

    def __init__(self, message: str, *, param: str | None = None, needed_bytes: int | None = None,
                 free_bytes: int | None = None):
        super().__init__(message, param=param)
        self.needed_bytes, self.free_bytes = needed_bytes, free_bytes


class ModelTooLarge(PullFailed):
    """The model's weights exceed the memory budget (`max_bytes`): refused before any byte moves."""
