"""Pulling a model by its Hub id: only the files it needs, through `huggingface_hub`, verified.

`huggingface_hub.hf_hub_download` fetches each file, so the user's HF cache, `HF_HOME`, `HF_HUB_CACHE`,
`HF_TOKEN` and `HF_ENDPOINT` apply and a pulled model is shared with transformers and every other tool.
From the library come: a file lock per blob (two processes fetch a file once: the second waits, then finds it),
a process-unique temporary file renamed into place (no half file is ever at the cache path), and resuming a
dropped connection with a `Range` request. Added here: the choice of files (`hub_refs`), a disk-space check
from the Hub's sizes before anything starts, the sha256 of every LFS file against the Hub's (a mismatch deletes
the file), progress for the notebook and the HTTP door, and one-line errors.

Settings are read from the environment at each call (not from `huggingface_hub.constants`, fixed at its import):
a kernel or a test may point `HF_ENDPOINT` or `HF_HUB_OFFLINE` elsewhere after importing transformers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import (
    DiskFull, GatedModel, HubUnavailable, InvalidRequest, ModelNotFound, ModelTooLarge, PullFailed, ReferenceRefused,
    RepoNotFound,
)
from .hub_refs import HubRef, Selection, require_hub_ref, select_files, shards_from_index

#: room kept free on the cache's disk after a pull (the library's own check wants the file's size alone)
DISK_MARGIN_BYTES = 512 * 1024 * 1024

#: the errno of a write that found no room: no space, a file-size limit, a quota
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

__all__ = ["DiskFull", "GatedModel", "HubUnavailable", "ModelTooLarge", "Progress", "PullFailed", "PullResult",
           "RepoNotFound", "find_pulled", "pull", "pulled", "remove", "source_of"]


@dataclass
class Progress:
    """One progress report: the whole pull (`completed` of `total` bytes) and the file being fetched."""

    ref: str
    status: str  # "pulling manifest", "downloading FILE", "verifying FILE", "success"
    file: str | None = None
    file_index: int = 0  # 1-based
    file_count: int = 0
    digest: str | None = None  # "sha256:..." of an LFS file
    file_total: int = 0
    file_completed: int = 0
    total: int = 0
    completed: int = 0
    rate: float = 0.0  # bytes/s since the pull started downloading
    eta_s: float | None = None


@dataclass
class PullResult:
    ref: str
    repo_id: str
    revision: str  # the commit
    path: Path  # the GGUF file, or the snapshot folder
    kind: str
    quant: str | None
    files: list[str]
    size_bytes: int
    downloaded_bytes: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _repo_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


# -- what is already here

def find_pulled(ref: HubRef | str) -> PullResult | None:
    """The model `ref` names when its files are all in the local cache, without the network; else None."""
    if isinstance(ref, str):
        ref = require_hub_ref(ref)
    folder = _repo_folder(ref.repo_id)
    revision = ref.revision or "main"
    commit = revision
    if (folder / "refs" / revision).is_file():
        commit = (folder / "refs" / revision).read_text().strip()
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    try:
        config = json.loads((snapshot / "config.json").read_text()) if (snapshot / "config.json").is_file() else None
        selection = select_files(ref, names, config, complete=False)
        files = list(selection.files)
        if "model.safetensors.index.json" in files:
            files += shards_from_index(json.loads((snapshot / "model.safetensors.index.json").read_text()), names, ref)
    except (ReferenceRefused, ValueError, OSError):
        return None
    if selection.kind == "transformers" and not any(f.endswith((".safetensors", ".bin")) for f in files):
        return None
    if not all((snapshot / f).is_file() for f in files):
        return None
    size = sum((snapshot / f).stat().st_size for f in files)
    path = snapshot / selection.main if selection.main else snapshot
    return PullResult(str(ref), ref.repo_id, commit, path, selection.kind, selection.quant, files, size)


def pulled() -> list[PullResult]:
    """Every model whose files are whole in the local HF cache at its `main` ref: each GGUF quant as
    `org/repo:QUANT` (or `org/repo/file.gguf` where a quant tag is not unique), a model folder as `org/repo`."""
    from .hub_refs import _gguf_groups, quant_of

    found: list[PullResult] = []
    root = hub_cache_dir()
    for folder in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        repo_id = folder.name[len("models--"):].replace("--", "/", 1)
        main = folder / "refs" / "main"
        snapshot = folder / "snapshots" / main.read_text().strip() if main.is_file() else None
        if snapshot is None or not snapshot.is_dir():
            continue
        names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
        groups = _gguf_groups(names)
        quants = [quant_of(g[0]) for g in groups.values()]
        refs = [f"{repo_id}:{q}" if q and quants.count(q) == 1 else f"{repo_id}/{g[0]}"
                for q, g in zip(quants, groups.values())]
        if "config.json" in names:
            refs.append(repo_id)
        for ref in refs:
            try:
                result = find_pulled(ref)
            except (InvalidRequest, ReferenceRefused):
                continue
            if result is not None:
                found.append(result)
    return found


def source_of(path: Path) -> str:
    """Where a model's files came from: `hub:org/repo@commit` for a snapshot in the HF cache, else `file`."""
    try:
        parts = Path(path).relative_to(hub_cache_dir()).parts  # not resolved: snapshot files are symlinks
    except ValueError:
        return "file"
    if len(parts) >= 3 and parts[0].startswith("models--") and parts[1] == "snapshots":
        return f"hub:{parts[0][len('models--'):].replace('--', '/', 1)}@{parts[2]}"
    return "file"


# -- the pull

def _errors():
    from huggingface_hub import errors as hf_errors

    return hf_errors


def _one_line(ref: HubRef, exc: Exception, name: str | None = None, size: int = 0) -> PullFailed:
    """The library's exception as the typed error of what failed, one line naming the ref and what to do.
    `name` and `size`: the file being written when it happened."""
    hf_errors = _errors()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.GatedRepoError) or (isinstance(exc, hf_errors.HfHubHTTPError)
                                                     and not isinstance(exc, hf_errors.RepositoryNotFoundError)
                                                     and status in (401, 403)):
        if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
            return GatedModel(f"{ref}: {ref.repo_id} is gated or private and the Hub refused the token in HF_TOKEN "
                              f"(HTTP {status}): accept the model's terms on its page with that account, or use "
                              f"a token with access")
        return GatedModel(f"{ref}: {ref.repo_id} is gated or private: a token with access is needed (set HF_TOKEN, "
                          f"or run `hf auth login`, after accepting the model's terms on its page)")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return RepoNotFound(f"{ref}: {ref.repo_id} has no revision {ref.revision or 'main'!r}")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return RepoNotFound(f"{ref}: no repo {ref.repo_id} on {hub_endpoint()} (or it is private: set HF_TOKEN)")
    if _unreachable(exc) or isinstance(exc, hf_errors.LocalEntryNotFoundError):
        why = f"{hub_endpoint()} answered HTTP {status}" if status else f"cannot reach {hub_endpoint()}"
        return _offline_error(ref, f"{why} (check HF_ENDPOINT and the network, or set HF_HUB_OFFLINE=1 to use "
                                   f"the cache alone)")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return RepoNotFound(f"{ref}: a file is missing from {ref.repo_id}: {_flat(exc)}")
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        free = _free_bytes(hub_cache_dir())
        what = f"{name} ({size:,} bytes)" if name else "a file"
        return DiskFull(f"{ref}: no room to write {what} into {hub_cache_dir()}: {exc.strerror}; "
                        f"{free:,} bytes free", needed_bytes=size or None, free_bytes=free)
    return PullFailed(f"{ref}: {_flat(exc)}")


def _flat(exc: BaseException) -> str:
    """An exception's message on one line (the library's run over several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _free_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _offline_error(ref: HubRef, why: str) -> HubUnavailable:
    return HubUnavailable(f"{ref} is not in the Hugging Face cache ({hub_cache_dir()}) and {why}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # its C loop: ~20 % faster than Python's


class _Meter:
    """Turns the library's per-file progress bar updates into `Progress` reports for the callback."""

    def __init__(self, ref: str, total: int, file_count: int, callback: Callable[[Progress], None] | None):
        self.ref, self.total, self.file_count, self.callback = ref, total, file_count, callback
        self.done_before = 0  # bytes of the files finished
        self.current = Progress(ref, "pulling manifest", total=total, file_count=file_count)
        self.started = time.monotonic()
        self.fetched = 0  # bytes that came over the network in this pull
        self._last = 0.0

    def start_file(self, index: int, name: str, size: int, sha256: str | None) -> None:
        self.current = Progress(self.ref, f"downloading {name}", name, index, self.file_count,
                                f"sha256:{sha256}" if sha256 else None, size, 0, self.total, self.done_before)
        self.emit(force=True)

    def advance(self, n: int) -> None:
        p = self.current
        if p.file is None:
            return  # config.json / the index read to choose the files: counted with their file below
        p.file_completed = max(0, p.file_completed + n)
        p.completed = self.done_before + min(p.file_completed, p.file_total or p.file_completed)
        self.fetched += n
        self.emit()

    def end_file(self, status: str | None = None) -> None:
        self.done_before += self.current.file_total
        self.current.file_completed = self.current.file_total
        self.current.completed = self.done_before
        if status:
            self.current.status = status
        self.emit(force=True)

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last < 0.1):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        p = self.current
        p.rate = self.fetched / elapsed
        # no ETA from the first bytes (the metadata's round trips dominate them)
        p.eta_s = (self.total - p.completed) / p.rate if p.rate > 0 and self.fetched >= 2**20 else None
        self.callback(p)

    def tqdm_class(self):
        """A tqdm subclass for `hf_hub_download(tqdm_class=...)`: silent, every update goes to this meter."""
        from huggingface_hub.utils import tqdm as hf_tqdm

        meter = self

        class _Bar(hf_tqdm):
            def __init__(self, *args, **kwargs):
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n=1):
                meter.advance(int(n or 0))

        return _Bar


def pull(text: str, progress: Callable[[Progress], None] | None = None, allow_pickle: bool = False,
         disk_margin: int = DISK_MARGIN_BYTES, max_bytes: int | None = None) -> PullResult:
    """Fetch what the Hub id `text` needs into the HF cache (or find it there) and say where it is.
    `max_bytes` (the runtime's memory budget): weights larger than it are refused before any byte moves."""
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    ref = require_hub_ref(text)
    started = time.monotonic()
    if offline():
        found = find_pulled(ref)
        if found is not None:
            return found
        raise _offline_error(ref, "HF_HUB_OFFLINE is set (unset it, or set HF_ENDPOINT to a Hub this machine "
                                  "reaches, to download)")
    cache = hub_cache_dir()
    endpoint = hub_endpoint()
    meter = _Meter(str(ref), 0, 0, progress)
    meter.emit(force=True)
    try:
        info = HfApi(endpoint=endpoint).model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    except Exception as exc:  # the library's errors, each made one line
        if isinstance(exc, (KeyboardInterrupt, InvalidRequest)):
            raise
        found = find_pulled(ref)
        if found is not None and _unreachable(exc):
            return found  # the Hub cannot be reached but the model is here
        raise _one_line(ref, exc) from None
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = sorted(siblings)

    def fetch(name: str) -> Path:
        try:
            return Path(hf_hub_download(ref.repo_id, name, revision=commit, cache_dir=cache, endpoint=endpoint,
                                        tqdm_class=meter.tqdm_class()))
        except Exception as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            sibling = siblings[name]
            raise _one_line(ref, exc, name, (sibling.lfs.size if sibling.lfs else sibling.size) or 0) from None

    config = None
    if "config.json" in names and ref.quant is None and ref.filename is None:
        config = json.loads(fetch("config.json").read_text())
    selection: Selection = select_files(ref, names, config, allow_pickle=allow_pickle)
    files = list(selection.files)
    if "model.safetensors.index.json" in files:
        index = json.loads(fetch("model.safetensors.index.json").read_text())
        files += shards_from_index(index, names, ref)

    def size_of(name: str) -> int:
        s = siblings[name]
        return (s.lfs.size if s.lfs else s.size) or 0

    cached = {n for n in files if isinstance(try_to_load_from_cache(ref.repo_id, n, cache_dir=cache, revision=commit),
                                             str)}
    weights = sum(size_of(n) for n in files if n.endswith((".gguf", ".safetensors", ".bin")))
    if max_bytes is not None and weights > max_bytes:
        raise ModelTooLarge(f"{ref}: its weights take {_gib(weights)} GiB, more than the memory budget of "
                            f"{_gib(max_bytes)} GiB; pick a smaller quant or raise the budget ({weights:,} bytes "
                            f"needed, {max_bytes:,} allowed)")
    needed = sum(size_of(n) for n in files if n not in cached)
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if needed and free < needed + disk_margin:
        raise DiskFull(f"{ref}: needs {_gib(needed)} GiB plus {_gib(disk_margin)} GiB spare, and {cache} has "
                       f"{_gib(free)} GiB free ({needed + disk_margin:,} bytes needed, {free:,} free)",
                       needed_bytes=needed + disk_margin, free_bytes=free)
    meter.total, meter.file_count = sum(size_of(n) for n in files), len(files)
    for index, name in enumerate(files, 1):
        sibling = siblings[name]
        sha256 = sibling.lfs.sha256 if sibling.lfs else None
        meter.start_file(index, name, size_of(name), sha256)
        if name not in cached:
            _say_if_another_pulls(meter, cache, ref.repo_id, sha256 or sibling.blob_id, name)
        path = fetch(name)
        if sha256 and name not in cached:
            meter.current.status = f"verifying {name}"
            meter.emit(force=True)
            actual = _sha256(path)
            if actual != sha256:
                _delete_cached(path)
                raise PullFailed(f"{ref}: {name} has sha256 {actual}, the Hub says {sha256}; the file was deleted")
        meter.end_file()
    snapshot = cache / ("models--" + ref.repo_id.replace("/", "--")) / "snapshots" / commit
    if ref.revision is None or ref.revision != commit:
        # hf_hub_download was given the commit: record the branch it came from, so `find_pulled` finds it offline
        ref_file = snapshot.parent.parent / "refs" / (ref.revision or "main")
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    meter.current = Progress(str(ref), "success", total=meter.total, completed=meter.total,
                             file_count=len(files), file_index=len(files))
    meter.emit(force=True)
    path = snapshot / selection.main if selection.main else snapshot
    return PullResult(str(ref), ref.repo_id, commit, path, selection.kind, selection.quant, files, meter.total,
                      meter.fetched, time.monotonic() - started)


def _say_if_another_pulls(meter: _Meter, cache: Path, repo_id: str, etag: str | None, name: str) -> None:
    """A progress line when another process (or thread) holds the library's lock on this file: the pull then
    waits for it, and finds the file there, fetched once."""
    if not etag:
        return
    from filelock import FileLock, Timeout

    lock_path = cache / ".locks" / ("models--" + repo_id.replace("/", "--")) / f"{etag}.lock"
    if not lock_path.exists():
        return
    probe = FileLock(str(lock_path), timeout=0, is_singleton=False, preserve_lock_file=True)
    try:
        probe.acquire()
    except Timeout:
        meter.current.status = f"waiting for another download of {name}"
        meter.emit(force=True)
        meter.current.status = f"downloading {name}"
    except OSError:
        return
    else:
        probe.release()


def _unreachable(exc: BaseException) -> bool:
    """The Hub could not be asked: no network, offline mode, or the Hub (or a proxy before it) answered a 5xx."""
    import httpx2

    hf_errors = _errors()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(exc, (hf_errors.OfflineModeIsEnabled, httpx2.TransportError)) or \
        (isinstance(exc, hf_errors.HfHubHTTPError) and status is not None and status >= 500)


def _delete_cached(pointer: Path) -> None:
    """A snapshot file and the blob it points at: a file that failed its digest is never loaded."""
    blob = pointer.resolve()
    pointer.unlink(missing_ok=True)
    if blob != pointer:
        blob.unlink(missing_ok=True)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def remove(text: str) -> list[str]:
    """Delete a pulled model's revision(s) from the HF cache through the library's cache API."""
    from huggingface_hub import scan_cache_dir

    ref = require_hub_ref(text)
    info = scan_cache_dir(hub_cache_dir())
    revisions = [rev.commit_hash for repo in info.repos if repo.repo_id == ref.repo_id and repo.repo_type == "model"
                 for rev in repo.revisions
                 if ref.revision is None or ref.revision == rev.commit_hash or ref.revision in rev.refs]
    if not revisions:
        raise ModelNotFound(f"{ref}: not in the Hugging Face cache ({hub_cache_dir()})")
    info.delete_revisions(*revisions).execute()
    return revisions
