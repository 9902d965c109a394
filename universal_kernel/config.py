"""Runtime configuration: one dataclass, filled from arguments and environment variables.

The server extension fills it from its traitlets; the magics from `%runtime` and the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [p for p in raw.split(os.pathsep) if p]


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


#: generations decoded together by default: a kernel's runtime, and the server's (its trait's default)
KERNEL_PARALLEL = 1
SERVER_PARALLEL = 4


def env_parallel(default: int) -> int:
    """UNIVERSAL_KERNEL_PARALLEL when set, else `default`."""
    return int(_env_float("UNIVERSAL_KERNEL_PARALLEL", default))


def default_model_folders() -> list[Path]:
    folders = _env_list("UNIVERSAL_KERNEL_MODEL_FOLDERS")
    if folders:
        return [Path(f) for f in folders]
    return [Path.cwd(), Path.home() / ".cache" / "universal-kernel" / "models"]


def _embedding_cache_folder() -> Path | None:
    raw = os.environ.get("UNIVERSAL_KERNEL_EMBEDDING_CACHE")
    if raw is not None and raw.strip().lower() in ("", "off", "0", "false", "no"):
        return None
    return Path(raw) if raw else Path.home() / ".cache" / "universal-kernel" / "embeddings"


@dataclass
class RuntimeConfig:
    #: folders that path references must stay inside
    model_folders: list[Path] = field(default_factory=default_model_folders)
    #: folders that data files named by path (OCR images) must stay inside; None: any file this process can
    #: read, as in a kernel (its user's own process). The server sets its model folders: its disk is not its clients'
    data_folders: list[Path] | None = None
    #: user aliases: name -> reference
    aliases: dict[str, str] = field(default_factory=dict)
    #: seconds a model stays loaded after its last use; 0 unloads at once, negative never
    keep_alive: float = field(default_factory=lambda: _env_float("UNIVERSAL_KERNEL_KEEP_ALIVE", 300.0))
    #: bytes that loaded models may take together; None means no budget
    memory_budget: int | None = field(
        default_factory=lambda: (
            int(v) if (v := _env_float("UNIVERSAL_KERNEL_MEMORY_BUDGET", None)) is not None else None
        )
    )
    #: requests that may wait per model before a new one is refused as Busy (beyond those running)
    queue_length: int = 16
    #: generations a llama.cpp model decodes together, each in its own KV stream of the model's context.
    #: A kernel runs one cell at a time: one stream, so its KV cache is one context's, not four's. The server
    #: (many clients at once) keeps SERVER_PARALLEL. UNIVERSAL_KERNEL_PARALLEL overrides both.
    parallel: int = field(default_factory=lambda: env_parallel(KERNEL_PARALLEL))
    #: "auto" picks CUDA, then MPS, then CPU; UNIVERSAL_KERNEL_DEVICE overrides
    device: str = field(default_factory=lambda: os.environ.get("UNIVERSAL_KERNEL_DEVICE", "auto"))
    #: encoders' precision: "auto" (bf16 on a CPU with AVX512_BF16/AMX, behind a probe), "fp32", "bf16"
    precision: str = field(default_factory=lambda: os.environ.get("UNIVERSAL_KERNEL_PRECISION", "auto"))
    #: the cosine to fp32 that every probe row must keep for bf16 to be used
    precision_min_cosine: float = 0.9999
    #: CPU threads for backends; None means the machine's cores
    threads: int | None = None
    #: let hub ids that are not in the local cache be downloaded
    allow_downloads: bool = False
    #: where converted weights (GGUF dequantised for transformers) are kept between loads
    convert_cache: Path = field(
        default_factory=lambda: Path(
            os.environ.get("UNIVERSAL_KERNEL_CONVERT_CACHE", Path.home() / ".cache" / "universal-kernel" / "converted")
        )
    )
    #: where fitted anomaly detectors are kept: one folder for the kernels and the server alike
    anomaly_folder: Path = field(
        default_factory=lambda: Path(
            os.environ.get("UNIVERSAL_KERNEL_ANOMALY_FOLDER", Path.home() / ".cache" / "universal-kernel" / "anomaly")
        )
    )
    #: where embeddings are kept between runs (shared by kernels and the server); None turns it off
    embedding_cache_folder: Path | None = field(default_factory=_embedding_cache_folder)
    #: the most bytes it may take; the least recently used rows go first
    embedding_cache_bytes: int = field(
        default_factory=lambda: int(_env_float("UNIVERSAL_KERNEL_EMBEDDING_CACHE_BYTES", 2 * 1024**3)))
    #: OCR limits, checked before an image is decoded: pixels per image (or rendered page), pages per PDF
    ocr_max_pixels: int = 40_000_000
    ocr_max_pages: int = 50
    default_generation_model: str = "smollm2-135m-instruct"
    default_embedding_model: str = "all-minilm-l6-v2"
    #: seconds a reader waits for the generating thread before checking that it is alive
    stream_poll_s: float = 0.1
