"""A local server with the Hugging Face Hub's shapes, for the real `huggingface_hub` client.

The Hub cannot be reached from these machines. This server answers what `huggingface_hub` asks
(read from its source, version 2.x): the model info (`/api/models/{repo}[/revision/{rev}]`, with
sizes and LFS sha256 under `?blobs=true`), the tree (`/api/models/{repo}/tree/{rev}`), and
`/{repo}/resolve/{rev}/{file}` answering HEAD and GET with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`
and `X-Linked-Size`. LFS files answer with a 302 to another host name (`localhost` against
`127.0.0.1`), as the Hub's CDN, where `Range` is honoured. Errors carry `X-Error-Code` as the Hub's do.

Faults a test sets on the server: `drop_after[file] = n` cuts the connection once after n bytes,
`corrupt` serves files with one byte flipped, `gated` repos answer as the Hub's do (401 `GatedRepo` without a
token, 403 `GatedRepo` with a token that has no access), `unavailable = 503` answers every request with that
status (a Hub that is down), `delay_s` slows every chunk (for cancels); `gate` holds a file's body until the test sets it. `log` records what was served.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack")
TOKEN = "hf_local_test_token"
CHUNK = 256 * 1024


@dataclass
class HubFile:
    name: str
    source: Path | None = None  # served from this file, or from `data`
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.source.stat().st_size

    @property
    def lfs(self) -> bool:
        return self.name.endswith(LFS_SUFFIXES)

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read(end - start)


_DIGESTS: dict[tuple, tuple[str, str]] = {}
_DIGESTS_LOCK = threading.Lock()


def digests(f: HubFile) -> tuple[str, str]:
    """(git blob sha1, sha256) of a file's bytes: the Hub's ETag of a regular file, and of an LFS file."""
    key = (str(f.source), f.source.stat().st_mtime_ns) if f.source is not None else (f.data,)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    sha1 = hashlib.sha1(f"blob {f.size}\0".encode())
    sha256 = hashlib.sha256()
    pos = 0
    while pos < f.size:
        chunk = f.read(pos, min(pos + 8 * CHUNK, f.size))
        sha1.update(chunk)
        sha256.update(chunk)
        pos += len(chunk)
    result = (sha1.hexdigest(), sha256.hexdigest())
    with _DIGESTS_LOCK:
        _DIGESTS[key] = result
    return result


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    sha: str = ""
    gated: bool = False

    def __post_init__(self):
        if not self.sha:
            self.sha = hashlib.sha1(self.repo_id.encode()).hexdigest()


@dataclass
class HubState:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    #: an HTTP status every request is answered with (a Hub that is down, behind a proxy that says so)
    unavailable: int | None = None
    #: when set: a file's body waits for `gate` once it has begun (`body_started`): a test holds a download
    gate: threading.Event | None = None
    body_started: threading.Event = field(default_factory=threading.Event)
    log: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo_id: str, files: dict[str, Path | bytes], gated: bool = False) -> HubRepo:
        repo = HubRepo(repo_id, {name: HubFile(name, data=src) if isinstance(src, bytes) else HubFile(name, Path(src))
                                 for name, src in files.items()}, gated=gated)
        self.repos[repo_id] = repo
        return repo

    def served(self, file_name: str, method: str = "GET") -> list[dict]:
        with self.lock:
            return [e for e in self.log if e["file"] == file_name and e["method"] == method]

    def bytes_served(self, file_name: str) -> int:
        return sum(e["bytes"] for e in self.served(file_name))


class HubError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "LocalHub"

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool):
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        try:
            if self.server.state.unavailable:
                raise HubError(self.server.state.unavailable, "", "the Hub is unavailable")
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):], query)
            elif path.startswith("/cdn/"):
                self._cdn(path[len("/cdn/"):], head)
            elif "/resolve/" in path:
                self._resolve(path.lstrip("/"), head)
            else:
                raise HubError(404, "", "no such route")
        except HubError as exc:
            body = json.dumps({"error": exc.message}).encode()
            self.send_response(exc.status)
            if exc.code:
                self.send_header("X-Error-Code", exc.code)
            self.send_header("X-Error-Message", exc.message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- lookups

    def _repo(self, repo_id: str, revision: str) -> HubRepo:
        state = self.server.state
        repo = state.repos.get(repo_id)
        if repo is None:
            raise HubError(401, "RepoNotFound", "Repository not found")
        authorization = self.headers.get("Authorization")
        if repo.gated and authorization is None:
            raise HubError(401, "GatedRepo", "Access to this model is restricted: you must be authenticated")
        if repo.gated and authorization != f"Bearer {TOKEN}":
            raise HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                                             f"authorized list. Visit the model page to ask for access.")
        if revision not in ("main", repo.sha):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    def _json(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- /api/models/...

    def _api(self, rest: str, query: dict) -> None:
        parts = rest.split("/")
        repo_id, tail = "/".join(parts[:2]), parts[2:]
        if not tail:
            return self._info(repo_id, "main", query)
        if tail[0] == "revision" and len(tail) == 2:
            return self._info(repo_id, tail[1], query)
        if tail[0] == "tree" and len(tail) >= 2:
            return self._tree(repo_id, tail[1], "/".join(tail[2:]))
        raise HubError(404, "", "no such route")

    def _info(self, repo_id: str, revision: str, query: dict) -> None:
        repo = self._repo(repo_id, revision)
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for f in repo.files.values():
            entry = {"rfilename": f.name}
            if blobs:
                sha1, sha256 = digests(f)
                entry.update(size=f.size, blobId=sha1)
                if f.lfs:
                    entry["lfs"] = {"size": f.size, "sha256": sha256, "pointerSize": 134}
            siblings.append(entry)
        self._json({"_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha,
                    "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
                    "tags": [], "siblings": siblings})

    def _tree(self, repo_id: str, revision: str, folder: str) -> None:
        repo = self._repo(repo_id, revision)
        entries = []
        for f in repo.files.values():
            if folder and not f.name.startswith(folder.rstrip("/") + "/"):
                continue
            sha1, sha256 = digests(f)
            entry = {"type": "file", "oid": sha1, "size": f.size, "path": f.name}
            if f.lfs:
                entry["lfs"] = {"oid": sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        self._json(entries)

    # -- files

    def _resolve(self, path: str, head: bool) -> None:
        m = re.fullmatch(r"([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m:
            raise HubError(404, "", "no such route")
        repo = self._repo(m.group(1), m.group(2))
        f = repo.files.get(m.group(3))
        if f is None:
            raise HubError(404, "EntryNotFound", f"{m.group(3)} does not exist on {m.group(2)}")
        sha1, sha256 = digests(f)
        if f.lfs:
            # The Hub sends LFS files to its CDN: another host, where the client follows without the token.
            host, port = self.server.server_address[:2]
            target = f"http://localhost:{port}/cdn/{quote(repo.repo_id)}/{repo.sha}/{quote(f.name)}"
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{sha1}"')
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._record("HEAD" if head else "RESOLVE", f.name, 0, None)
            return
        self._send_file(repo, f, head, etag=sha1)

    def _cdn(self, rest: str, head: bool) -> None:
        m = re.fullmatch(r"([^/]+/[^/]+)/([0-9a-f]{40})/(.+)", rest)
        repo = self.server.state.repos.get(m.group(1)) if m else None
        f = repo.files.get(m.group(3)) if repo else None
        if f is None:
            raise HubError(404, "", "no such object")
        self._send_file(repo, f, head, etag=digests(f)[1])

    def _send_file(self, repo: HubRepo, f: HubFile, head: bool, etag: str) -> None:
        state = self.server.state
        size, start, end = f.size, 0, f.size
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= size:
                raise HubError(416, "", "range not satisfiable")
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", repo.sha)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if head:
            self._record("HEAD", f.name, 0, rng)
            return
        with state.lock:
            drop = state.drop_after.pop(f.name, None)
        corrupt = f.name in state.corrupt
        sent, pos = 0, start
        try:
            if state.gate is not None:
                state.body_started.set()
                state.gate.wait(600)
            while pos < end:
                chunk = f.read(pos, min(pos + CHUNK, end))
                if corrupt and pos == start:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                if drop is not None and sent + len(chunk) > drop:
                    self.wfile.write(chunk[:drop - sent])
                    sent = drop
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                pos += len(chunk)
                if state.delay_s:
                    threading.Event().wait(state.delay_s)
        finally:
            self._record("GET", f.name, sent, rng)

    def _record(self, method: str, name: str, sent: int, rng: str | None) -> None:
        with self.server.state.lock:
            self.server.state.log.append({"method": method, "file": name, "bytes": sent, "range": rng})


class LocalHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state or HubState()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "LocalHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def standard_repos(state: HubState) -> None:
    """The repos the tests pull: the real SmolLM2 GGUF under several quant names, the real MiniLM folder
    with decoys that must never be fetched, and small repos for the refusals."""
    from universal_kernel.references import BUILTIN_ALIASES

    gguf = BUILTIN_ALIASES["smollm2-135m-instruct"][0]()
    minilm = BUILTIN_ALIASES["all-minilm-l6-v2"][0]()
    state.add("test-org/SmolLM2-135M-Instruct-GGUF", {
        "README.md": b"# SmolLM2 GGUF\n",
        "SmolLM2-135M-Instruct-Q4_K_M.gguf": gguf,
        "SmolLM2-135M-Instruct-Q8_0.gguf": gguf,
        "SmolLM2-135M-Instruct-q4_k_s.gguf": gguf,
    })
    files: dict[str, Path | bytes] = {p.relative_to(minilm).as_posix(): p for p in sorted(minilm.rglob("*"))
                                      if p.is_file()}
    files.update({"onnx/model.onnx": b"decoy onnx: never fetched" * 100,
                  "pytorch_model.bin": b"decoy pickle: never fetched" * 100,
                  "openvino/openvino_model.bin": b"decoy openvino" * 100})
    state.add("sentence-transformers/all-MiniLM-L6-v2", files)
    state.add("test-org/no-default-GGUF", {"m-Q8_0.gguf": gguf, "m-Q5_K_M.gguf": gguf})
    state.add("test-org/gated-GGUF", {"m-Q4_K_M.gguf": gguf}, gated=True)
    state.add("test-org/remote-code", {"config.json": json.dumps({
        "architectures": ["EvilForCausalLM"], "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}).encode(),
        "modeling_evil.py": b"import os\n", "model.safetensors": b"x" * 64})
    state.add("test-org/pickle-only", {"config.json": json.dumps({"architectures": ["BertModel"]}).encode(),
                                       "pytorch_model.bin": b"pickle" * 64})
    state.add("test-org/unsafe-names", {"../../escape.gguf": b"GGUF" * 64, "m-Q4_K_M.gguf": b"GGUF" * 64})


def local_hub():
    """A test module's fixture body (`hub = pytest.fixture(scope="module")(local_hub)`): a started server with
    `standard_repos`, `HF_ENDPOINT` pointing at it, and huggingface_hub online (conftest sets the session
    offline; the library reads HF_HUB_OFFLINE once, at its import, hence its constant too)."""
    import pytest
    import huggingface_hub.constants as hf_constants

    server = LocalHub()
    standard_repos(server.state)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", server.endpoint)
        mp.setenv("HF_HUB_OFFLINE", "0")
        mp.setenv("TRANSFORMERS_OFFLINE", "0")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        mp.delenv("HF_TOKEN", raising=False)
        mp.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        yield server
    server.stop()
