"""The settings, declared once here (the shared ones) and in each task's module (its own, collected through
the registry), and `RuntimeConfig`: a runtime's settings, filled from keywords, else environment variables,
else the declared defaults.

The server extension's traits (`c.UniversalKernelApp.keep_alive`) and the magics' traits
(`c.UniversalKernelMagics.generation_model`) are generated from the same declarations (settings.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .settings import MAGICS, RUNTIME, SERVER, Setting, by_name, cache_folder

#: generations decoded together by default: a kernel's runtime, and the server's (its trait's default)
KERNEL_PARALLEL = 1
SERVER_PARALLEL = 4

_BOTH = frozenset({RUNTIME, SERVER})


GENERATION_MODEL = Setting("default_generation_model", "str", "smollm2-135m-instruct",
                           "The model of generation calls that name none.")
EMBEDDING_MODEL = Setting("default_embedding_model", "str", "all-minilm-l6-v2",
                          "The model of embedding calls (and of tasks over embeddings) that name none.")
#: the formats %%generate renders
FORMATS = ("markdown", "text", "code", "json")

SETTINGS: tuple[Setting, ...] = (
    # the runtime's, in a kernel and on the server alike
    Setting("model_folders", "paths", lambda: [Path.cwd(), cache_folder("models")()],
            "Folders that path references must stay inside (default: the working directory and "
            "~/.cache/universal-kernel/models).", env="UNIVERSAL_KERNEL_MODEL_FOLDERS"),
    Setting("data_folders", "paths", None,
            "Folders that data files named by path (images to read) must stay inside; None: any file this process "
            "can read, as in a kernel (its user's own process). The server sets its model folders: its disk is "
            "not its clients'.", optional=True),
    Setting("aliases", "mapping", dict, "Extra model names: alias -> reference.", where=_BOTH,
            trait="model_aliases"),
    Setting("keep_alive", "float", 300.0,
            "Seconds a model stays loaded after its last use; 0 unloads at once, negative keeps it forever. "
            "Preloaded models are pinned: this default does not unload them.",
            env="UNIVERSAL_KERNEL_KEEP_ALIVE", where=_BOTH),
    Setting("memory_budget", "int", None, "Bytes that loaded models may take together; None means no budget.",
            env="UNIVERSAL_KERNEL_MEMORY_BUDGET", where=_BOTH, optional=True),
    Setting("queue_length", "int", 16,
            "Requests that may wait per model, beyond those running, before a new one is refused as Busy (429).",
            where=_BOTH),
    Setting("parallel", "int", KERNEL_PARALLEL,
            "Generations a llama.cpp model decodes together (continuous batching), each in its own KV stream "
            "of the model's full context. A kernel runs one cell at a time: 1; the server, with many clients "
            f"at once, {SERVER_PARALLEL}.", env="UNIVERSAL_KERNEL_PARALLEL", where=_BOTH,
            server_default=SERVER_PARALLEL, minimum=1),
    Setting("device", "str", "auto", '"auto" picks CUDA, then MPS, then CPU; or "cpu", "cuda", "mps".',
            env="UNIVERSAL_KERNEL_DEVICE"),
    Setting("precision", "str", "auto",
            'Encoders\' precision: "auto" (bf16 on a CPU with AVX512_BF16/AMX, behind a probe), "fp32", "bf16".',
            env="UNIVERSAL_KERNEL_PRECISION"),
    Setting("precision_min_cosine", "float", 0.9999,
            "The cosine to fp32 that every probe row must keep for bf16 to be used."),
    Setting("threads", "int", None, "CPU threads for the backends; None: the machine's cores.", where=_BOTH,
            optional=True),
    Setting("allow_downloads", "bool", False,
            "Let Hub ids missing from the local HF cache be pulled: on first use, POST universal/api/pull and "
            "DELETE universal/api/models/REF (off: 403 downloads_disabled).", where=_BOTH),
    Setting("convert_cache", "path", cache_folder("converted"),
            "Where converted weights (GGUF dequantised for transformers, ONNX exports) are kept between loads.",
            env="UNIVERSAL_KERNEL_CONVERT_CACHE"),
    GENERATION_MODEL,
    EMBEDDING_MODEL,
    Setting("stream_poll_s", "float", 0.1,
            "Seconds a reader waits for the generating thread before checking that it is alive."),
    # the server's own
    Setting("preload", "names", list, "Models to load when the server starts (in the background). They stay "
                                      "loaded (pinned) until a keep_alive is given for them.", where={SERVER}),
    Setting("model_folders", "names", list, "Folders that path references (and files named by path) must stay "
            "inside. Default: the server's root_dir and ~/.cache/universal-kernel/models.", where={SERVER}),
    Setting("max_body_size", "int", 16 * 2**20, "Largest request body in bytes; larger ones get 413.",
            where={SERVER}),
    Setting("stop_timeout", "float", 5.0, "Seconds that stopping the server waits for running generations to "
            "send their error event, and then for the models to close.", where={SERVER}),
    # the magics'
    Setting("generation_model", "str", "", "Model of %%generate; empty means the runtime's default "
            f"({GENERATION_MODEL.default}).", where={MAGICS}),
    Setting("embedding_model", "str", "", "Model of %embed; empty means the runtime's default "
            f"({EMBEDDING_MODEL.default}).", where={MAGICS}),
    Setting("default_format", "str", "markdown", "Default --format of %%generate.", where={MAGICS},
            choices=FORMATS),
    Setting("use_server", "bool", False, "Send work to the Jupyter server's runtime by default.", where={MAGICS}),
    Setting("server_url", "str", "", "URL of the Jupyter server (with its base_url); empty: discover it.",
            where={MAGICS}),
    Setting("server_token", "str", "", "Token of the Jupyter server; empty: from its runtime file.",
            where={MAGICS}),
    Setting("progress_min_rows", "int", 512, "%embed shows a progress bar from this many unique rows.",
            where={MAGICS}),
    Setting("allow_downloads", "bool", True, "Pull a model named by its Hub id on first use (into the Hugging "
            "Face cache, with a progress bar); False: only models already there.", where={MAGICS}),
)


def settings(place: str = RUNTIME) -> dict[str, Setting]:
    """Every setting of `place` (RUNTIME, SERVER or MAGICS), the tasks' own included, by its name there."""
    from .tasks import task_settings

    return by_name((*SETTINGS, *task_settings()), place)


def default_model_folders() -> list[Path]:
    """A kernel's model folders: UNIVERSAL_KERNEL_MODEL_FOLDERS, else the declared default."""
    return settings()["model_folders"].value()


class RuntimeConfig:
    """A runtime's settings: `RuntimeConfig(keep_alive=-1, ocr_max_pages=10)`; each is also an attribute.

    A keyword not given takes its environment variable when set, else its declared default (`settings()`
    lists them with their help)."""

    def __init__(self, **values: Any):
        declared = settings(RUNTIME)
        unknown = [name for name in values if name not in declared]
        if unknown:
            raise TypeError(f"RuntimeConfig() got an unexpected keyword argument {unknown[0]!r}; "
                            f"the settings are {', '.join(declared)}")
        for name, setting in declared.items():
            setattr(self, name, values[name] if name in values else setting.value(RUNTIME))

    def __getattr__(self, name: str) -> Any:
        # only for names not set in __init__: a setting of a task registered after this config was made
        # (a plugin's TASKS line) takes its environment variable or default, as a new config would
        setting = settings(RUNTIME).get(name) if not name.startswith("_") else None
        if setting is None:
            raise AttributeError(f"RuntimeConfig has no setting {name!r}")
        return setting.value(RUNTIME)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in settings(RUNTIME)}

    def __eq__(self, other) -> bool:
        return isinstance(other, RuntimeConfig) and self.as_dict() == other.as_dict()

    __hash__ = None  # mutable, as the dataclass it replaced

    def __repr__(self) -> str:
        return f"RuntimeConfig({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"


__all__ = ["FORMATS", "KERNEL_PARALLEL", "MAGICS", "RUNTIME", "SERVER", "SERVER_PARALLEL", "RuntimeConfig",
           "Setting", "cache_folder", "default_model_folders", "settings"]
