"""A runtime reached over HTTP: what `--server` and `%runtime use server` talk to.

`RemoteRuntime` implements `InferenceRuntime` (interface.py) on one of two kinds of server:

- a Jupyter server with this extension: its OpenAI API (`{base_url}universal/v1/...`) and its runtime
  API (`{base_url}universal/api/...`), authenticated with the Jupyter token;
- any other OpenAI-compatible server (vLLM, Ollama, llama.cpp's server), given by its OpenAI base URL
  (`http://host:port/v1`, as the `openai` client's base_url): generation, chat, embeddings and the model
  list work there; what needs the runtime API raises `NoRuntimeApi`.

`RemoteRuntime.connect` probes which kind is there. Only the standard library is used: no `openai` or
`requests` in the kernel path.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

import numpy as np

from .backends import GenerationParams
from .client_stream import (
    AsyncRemoteStream, ConnectionLost, NoRuntimeApi, RemoteError, RemoteStream, ServerUnavailable, _remote_failure,
)
from .config import EMBEDDING_MODEL, GENERATION_MODEL
from .errors import GenerationFailed, InvalidRequest, ModelNotFound, RuntimeFailure
from .interface import Capabilities, FileAccess, ModelStatus, RuntimeStatus, UnloadResult
from .stats import RequestStats
from .streams import Completion
from .task_methods import TaskMethods
from .tasks import TaskCall
from .tasks.embed import EmbeddingResult
from .wire import params_to_wire

#: the client's errors are imported from here
__all__ = ["ConnectionLost", "NoRuntimeApi", "RemoteError", "RemoteRuntime", "RemoteStream", "ServerUnavailable",
           "find_server", "running_servers"]

#: The runtime's own defaults (their declarations, config.py), which a Jupyter server with the extension
#: serves by these names.
BUILTIN_GENERATION_MODEL = GENERATION_MODEL.default
BUILTIN_EMBEDDING_MODEL = EMBEDDING_MODEL.default
#: The OpenAI endpoints every OpenAI-compatible server has; the task endpoints (v1/rerank...) are ours.
STANDARD_PATHS = frozenset({"v1/chat/completions", "v1/completions", "v1/embeddings", "v1/models"})
#: How many of the client's own request figures are kept (the monitor of a server without runtime API)
CLIENT_REQUESTS = 100


def _alive(pid) -> bool:
    try:
        import psutil

        return psutil.pid_exists(int(pid))
    except Exception:
        return True


def running_servers() -> list[dict]:
    """jupyter_server's runtime files (`jpserver-*.json`) of servers still running, newest first."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        folder = Path(jupyter_runtime_dir())
    except Exception:
        return []
    found = []
    for path in sorted(folder.glob("jpserver-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "url" in info and _alive(info.get("pid", 0)):
            found.append(info)
    return found


def find_server(url: str | None = None, token: str | None = None) -> tuple[str, str]:
    """(base URL ending in '/', token): configured, else the server that launched this kernel, else the newest."""
    url = url or os.environ.get("UNIVERSAL_KERNEL_SERVER_URL")
    if url:
        token = token if token is not None else (
            os.environ.get("UNIVERSAL_KERNEL_SERVER_TOKEN") or os.environ.get("JUPYTER_TOKEN") or "")
        return url.rstrip("/") + "/", token
    servers = running_servers()
    if not servers:
        raise ServerUnavailable("no running Jupyter server found: start `jupyter server` or pass "
                                "%runtime use server URL --token TOKEN")
    parent = os.environ.get("JPY_PARENT_PID")
    chosen = next((s for s in servers if parent and str(s.get("pid")) == parent), None)
    if chosen is None:
        cwd = os.getcwd()
        chosen = next((s for s in servers if s.get("root_dir") and cwd.startswith(str(s["root_dir"]))), servers[0])
    base = chosen["url"].rstrip("/") + "/"
    base_url = (chosen.get("base_url") or "/").strip("/")
    if base_url and not base.rstrip("/").endswith(base_url):
        base = base + base_url + "/"
    return base, token if token is not None else chosen.get("token", "")


class RemoteRuntime(TaskMethods):
    """A server's runtime (`InferenceRuntime`). `base` is the URL as the user gave it, ending in '/'.

    `runtime_api=True` (a Jupyter server with the extension): `base` is Jupyter's URL with its base_url.
    `runtime_api=False` (any other OpenAI-compatible server): `base` is its OpenAI base URL
    (`http://host:port/v1/`), only standard OpenAI fields are sent, and the default models are the
    configured ones if given, else the first id of its `/models` (`connect` reads it; Ollama and vLLM
    need a real name): for embeddings, the first id with "embed" in it, else the first.

    The tasks' methods (`rt.rerank(...)`) come from the task registry (task_methods.py) and send their
    calls through `run`.
    """

    where = "server"

    def __init__(self, base: str, token: str = "", *, timeout: float = 600.0, runtime_api: bool = True,
                 default_generation_model: str | None = None, default_embedding_model: str | None = None):
        self.base = base.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        self.openai_base = self.base + "universal/v1/" if runtime_api else self.base
        self.api_base = self.base + "universal/api/" if runtime_api else None
        if runtime_api:
            default_generation_model = default_generation_model or BUILTIN_GENERATION_MODEL
            default_embedding_model = default_embedding_model or BUILTIN_EMBEDDING_MODEL
        self.default_generation_model = default_generation_model
        self.default_embedding_model = default_embedding_model
        # the figures this client measured itself, newest last: on a server without runtime API they
        # are all the monitor and `%runtime status` can show
        self.requests: deque[RequestStats] = deque(maxlen=CLIENT_REQUESTS)
        self._server = "the Jupyter server" if runtime_api else "the server"
        # when the server stopped answering (unix time), until it answers again: the magics then say once
        # where their work goes (`reconnect_note`); nothing ever switches to the local runtime on its own
        self.lost_at: float | None = None
        self.discovered = False  # found through Jupyter's runtime files: a restart there brings a new token

    @property
    def has_runtime_api(self) -> bool:
        return self.api_base is not None

    @property
    def capabilities(self) -> Capabilities:
        """The server keeps its own embedding cache and precision; its configuration sets load options and aliases."""
        return Capabilities(embed_cache=False, embed_precision=False, load_options=False, aliases=False,
                            pull=self.has_runtime_api)

    def file_access(self, task: str) -> FileAccess:
        """Files are read here (a relative path: the kernel's folder, then its model folders) and sent as
        bytes; the server applies its own limits: it reads no path."""
        self.require_runtime_api(f"%{task}")  # before any file is read
        from .config import default_model_folders
        from .references import Resolver

        return FileAccess(Resolver(default_model_folders()).check_path)

    @classmethod
    def discover(cls, url: str | None = None, token: str | None = None, **kwargs) -> "RemoteRuntime":
        """A runtime for the configured or discovered Jupyter server, unprobed (see `connect`)."""
        base, token = find_server(url, token)
        return cls(base, token, **kwargs)

    @classmethod
    def connect(cls, url: str | None = None, token: str | None = None, **kwargs) -> "RemoteRuntime":
        """A probed runtime: which kind of server is at `url` (discovered when None), failing now if none.

        Two probes: our runtime API (`{url}universal/api/status`) and an OpenAI API (`{url}models`), the
        latter first when the URL ends in /v1. A 404 or a page that is not JSON moves on to the other;
        an unreachable server or a refused token fails at once.
        """
        discovered = not (url or os.environ.get("UNIVERSAL_KERNEL_SERVER_URL")) and token is None
        base, token = find_server(url, token)
        if base.endswith("/universal/v1/"):  # our extension's OpenAI base, as an `openai` client takes it
            base = base[:-len("universal/v1/")]
        ours, foreign = cls(base, token, **kwargs), cls(base, token, runtime_api=False, **kwargs)
        failures = []
        for candidate in ([foreign, ours] if base.endswith("/v1/") else [ours, foreign]):
            try:
                candidate._probe()
                candidate.discovered = discovered
                return candidate
            except ServerUnavailable:
                raise
            except (RuntimeFailure, ValueError) as exc:  # a 404, or a page that is not JSON
                where = f"{base}universal/api/status" if candidate.has_runtime_api else f"{base}models"
                failures.append(f"{where}: {getattr(exc, 'message', None) or type(exc).__name__}")
        raise ServerUnavailable(f"{base} is neither a Jupyter server with universal-kernel nor an OpenAI-compatible "
                                f"server ({'; '.join(failures)}); an OpenAI base URL ends in /v1")

    def _probe(self) -> None:
        """Raise unless this kind of server answers at `base`; on an OpenAI server, pick the default models."""
        if self.has_runtime_api:
            if not isinstance(self._json("GET", "api/status"), dict):
                raise ValueError("not a status object")
            return
        ids = self.model_ids()
        self.default_generation_model = self.default_generation_model or (ids[0] if ids else None)
        self.default_embedding_model = self.default_embedding_model or next(
            (i for i in ids if "embed" in i.lower()), ids[0] if ids else None)

    def __repr__(self) -> str:
        kind = "" if self.has_runtime_api else ", OpenAI-compatible without runtime API"
        return f"RemoteRuntime({self.base!r}{kind})"

    def no_runtime_api(self, what: str) -> NoRuntimeApi:
        """The one-line error for what needs our runtime API, on a server without it."""
        return NoRuntimeApi(f"{what} needs universal-kernel's runtime API, and the server at {self.base} is an "
                            f"OpenAI-compatible server without it (there: %%generate, %embed, %runtime models)")

    def record(self, stats: RequestStats) -> None:
        self.requests.append(stats)

    # HTTP -----------------------------------------------------------------------------------
    def require_runtime_api(self, what: str) -> None:
        if self.api_base is None:
            raise self.no_runtime_api(what)

    def _url(self, path: str) -> str:
        """`v1/...` is the OpenAI API, `api/...` the runtime API (paths as the extension names them)."""
        if path.startswith("v1/") and (self.has_runtime_api or path in STANDARD_PATHS):
            return self.openai_base + path[3:]
        self.require_runtime_api(f"/{path}")  # our extension's own endpoints (v1/rerank, api/load, ...)
        return self.api_base + path[4:]

    def _open(self, method: str, path: str, body: dict | None = None):
        url = self._url(path)
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json, text/event-stream"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except http.client.RemoteDisconnected:
            self.mark_lost()
            raise ServerUnavailable(f"{self._server} at {self.base} closed the connection before it "
                                    f"answered (it may have stopped)") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            self.mark_lost()
            raise ServerUnavailable(f"cannot reach {self._server} at {self.base}: {reason}") from None

    def _error(self, exc: urllib.error.HTTPError) -> RuntimeFailure:
        try:
            payload = json.loads(exc.read().decode("utf-8"))
            # OpenAI's {"error": {...}}; FastAPI servers (llama.cpp's, vLLM's) may send {"detail": ...}
            error = payload["error"] if "error" in payload else {"message": str(payload["detail"])}
            if not isinstance(error, dict):
                error = {"message": str(error)}
        except Exception:
            error = {"message": f"HTTP {exc.code} {exc.reason}"}
        failure = _remote_failure(error, status=exc.code, headers=exc.headers)
        if isinstance(failure, ServerUnavailable):  # say where: the user may have several servers
            failure = ServerUnavailable(failure.message.replace("the server", f"{self._server} at {self.base}", 1))
            if self.discovered:  # a refused token of a discovered server: it may have restarted with a new one
                self.mark_lost()
        return failure

    # A server that stops and comes back -------------------------------------------------------
    def mark_lost(self) -> None:
        """The server stopped answering (a request could not reach it, or a stream was cut)."""
        if self.lost_at is None:
            self.lost_at = time.time()

    def reconnect_note(self) -> str | None:
        """After the server stopped answering, probe it again at the same URL (a discovered server's token is
        read again from its runtime file: a restart brings a new one). Returns the one line that says where
        the work goes now that it answers, once; None when nothing was lost. While it is still away, raises
        ServerUnavailable saying so: the work is never sent elsewhere on its own."""
        if self.lost_at is None:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(self.lost_at))
        try:
            if self.discovered:
                base, token = find_server()
                if base == self.base:
                    self.token = token
            self._probe()
        except ServerUnavailable as exc:
            raise ServerUnavailable(f"{exc.message} (not answering since {since}); magics still send their work "
                                    f"there: `%runtime use local` runs it in this kernel") from None
        self.lost_at = None
        return f"{self._server} at {self.base} answers again (it stopped answering at {since}); magics send their " \
               f"work there"

    def _json(self, method: str, path: str, body: dict | None = None):
        with self._open(method, path, body) as response:
            return json.loads(response.read().decode("utf-8") or "null")

    def _model(self, model: str | None, task: str) -> str:
        model = model or (self.default_generation_model if task == "generate" else self.default_embedding_model)
        if not model:  # a server without runtime API, built without `connect`, that lists no model
            ids = self.model_ids()
            if not ids:
                raise ModelNotFound(f"the server at {self.base} lists no models: name one with -m")
            model = ids[0]
        return model

    # Runtime API ----------------------------------------------------------------------------
    def stream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
               params: GenerationParams | dict | None = None, backend: str = "auto",
               keep_alive: float | None = None) -> RemoteStream:
        """As `Runtime.stream`: a prompt is a raw completion (`/v1/completions`), messages a chat turn.

        `backend` and `keep_alive` are our extension's fields: a server without runtime API gets none."""
        if (prompt is None) == (messages is None):
            raise InvalidRequest("give either a prompt or messages")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string", param="prompt")
        params = params if isinstance(params, GenerationParams) else GenerationParams(**(params or {}))
        # max_tokens is always sent: no limit stays no limit (/v1/completions would apply OpenAI's 16)
        body = {"model": self._model(model, "generate"), "stream": True,
                "stream_options": {"include_usage": True}, **params_to_wire(params)}
        if body.get("response_format", {}).get("type") == "json_schema" and "schema" in body["response_format"]:
            # OpenAI's shape, which every server reads (ours reads both)
            schema = body["response_format"]["schema"]
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        if self.has_runtime_api:
            if backend != "auto":
                body["backend"] = backend
            if keep_alive is not None:
                body["keep_alive"] = keep_alive
        if prompt is not None:
            if params.logprobs is not None:
                body["logprobs"] = params.logprobs  # the legacy completions form: an int
            return RemoteStream(self, {**body, "prompt": prompt}, "v1/completions")
        if params.logprobs is not None:
            body.update(logprobs=True, top_logprobs=params.logprobs)
        return RemoteStream(self, {**body, "messages": messages}, "v1/chat/completions")

    async def astream(self, model: str | None = None, **kwargs) -> AsyncRemoteStream:  # `stream` off the loop
        return AsyncRemoteStream(await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.stream(model, **kwargs)))

    def generate(self, model: str | None = None, **kwargs) -> Completion:
        with self.stream(model, **kwargs) as stream:
            return stream.result()

    def embed(self, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
              backend: str = "auto", keep_alive: float | None = None, cache: bool = True,
              precision: str = "auto") -> EmbeddingResult:
        """`/v1/embeddings`, on any OpenAI-compatible server (not through `run`: a server without runtime API
        has no task paths); there, vectors come as it computes them and are normalised here. `cache` and
        `precision` are the server's own (`capabilities`): only their defaults are taken."""
        if not cache:
            raise InvalidRequest("the server keeps its own embedding cache: cache=False applies to the "
                                 "in-process runtime", param="cache")
        if precision not in (None, "auto"):
            raise InvalidRequest("the server chooses its own precision: precision applies to the in-process "
                                 "runtime", param="precision")
        texts = [texts] if isinstance(texts, str) else list(texts)
        model = self._model(model, "embed")
        stats = RequestStats(model=model, backend="server", kind="embed", created_at=time.time(), queue_wait_s=None)
        started = time.perf_counter()
        body = {"model": model, "input": texts, "encoding_format": "float"}
        if self.has_runtime_api:
            body["normalize"] = normalize
            if backend != "auto":
                body["backend"] = backend
            if keep_alive is not None:
                body["keep_alive"] = keep_alive
        payload = self._json("POST", "v1/embeddings", body)
        rows = sorted(payload.get("data") or [], key=lambda r: r.get("index", 0))
        if len(rows) != len(texts):
            raise GenerationFailed(f"the server returned {len(rows)} embeddings for {len(texts)} inputs")
        if rows and rows[0]["embedding"] and isinstance(rows[0]["embedding"][0], list):
            raise GenerationFailed(f"the server at {self.base} returned one vector per token for {model}: serve "
                                   f"it with pooling (llama.cpp: --pooling mean)")
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32).reshape(len(texts), -1)
        if normalize and not self.has_runtime_api:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1.0)
        stats.total_s = time.perf_counter() - started
        stats.prompt_tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
        stats.rows_computed = len(texts)
        stats.finish_reason = "stop"
        self.record(stats)
        return EmbeddingResult(payload.get("model", model), vectors, stats.prompt_tokens, stats)

    async def aembed(self, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
                     backend: str = "auto", keep_alive: float | None = None) -> EmbeddingResult:
        """`embed` off the event loop (the client's HTTP is blocking)."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.embed(
            texts, model, normalize=normalize, backend=backend, keep_alive=keep_alive))

    # Every other task: one path for all, the task's module maps its call and result to the wire ------
    def run(self, call: TaskCall):
        """Send a call: POST to the task's `PATH`, or the method and path its `route(call)` says (a body
        with POST only); the task's `to_wire` and `from_wire` map the call and the result."""
        self.require_runtime_api(f"%{call.task}")
        part = call.part  # no model: the server's default for the task
        method, path = part.route(call) if hasattr(part, "route") else ("POST", part.PATH)
        body = None
        if method == "POST":
            body = {key: value for key, value in part.to_wire(call).items() if value is not None}
            if call.backend != "auto":
                body["backend"] = call.backend
            if call.keep_alive is not None:
                body["keep_alive"] = call.keep_alive
        stats = RequestStats(model=call.model or "", backend="server", kind=call.task, created_at=time.time(),
                             queue_wait_s=None)
        started = time.perf_counter()
        payload = self._json(method, path, body)
        stats.total_s = time.perf_counter() - started
        result = part.from_wire(payload or {}, call, stats)
        stats.model = getattr(result, "model", stats.model)
        stats.prompt_tokens = getattr(result, "prompt_tokens", 0)  # a task without tokens counts none
        return result

    async def arun(self, call: TaskCall):  # `run` off the event loop
        return await asyncio.get_running_loop().run_in_executor(None, self.run, call)

    def status(self) -> RuntimeStatus:
        """The server's status; on a server without runtime API, the usual shape with no models and, as
        `recent`, the requests this client measured, and a `note` that says so."""
        if self.has_runtime_api:
            return self._json("GET", "api/status")
        return {"where": "server", "url": self.base, "runtime_api": False, "memory": {}, "models": [], "loads": 0,
                "recent": [stats.as_dict() for stats in list(self.requests)],
                "note": f"{self.base} is an OpenAI-compatible server without universal-kernel's runtime API: "
                        f"no models or memory to show; the requests below were measured by this client"}

    def models(self) -> list[dict]:
        return list((self._json("GET", "v1/models") or {}).get("data") or [])

    def model_ids(self) -> list[str]:
        return [str(m["id"]) for m in self.models() if isinstance(m, dict) and m.get("id")]

    def load(self, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
             task: str | None = None, **options) -> ModelStatus:
        """Load a model on the server. Its runtime API takes model, backend and keep_alive; load options
        (such as n_ctx) and `task` cannot be sent, so they are refused rather than dropped."""
        self.require_runtime_api("%runtime load")
        refused = sorted(options) + (["task"] if task is not None else [])
        if refused:
            raise InvalidRequest(
                f"the server's runtime API (/universal/api/load) takes model, backend and keep_alive; "
                f"it cannot take {', '.join(refused)}: load with those options in the local runtime "
                f"or configure the server", param=refused[0])
        body = {"model": model or self.default_generation_model, "backend": backend}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self._json("POST", "api/load", body)

    def unload(self, model: str | None = None, *, backend: str | None = None) -> UnloadResult:
        self.require_runtime_api("%runtime unload")
        body = {"model": model} if model else {}
        if backend is not None:
            body["backend"] = backend
        return self._json("POST", "api/unload", body)

    def pull(self, ref: str, *, progress=None, allow_pickle: bool = False):
        """Pull on the server (`POST universal/api/pull`, its NDJSON progress fed to `progress` as
        `hub_pull.Progress` reports); a `PullResult` of the server's paths."""
        from .hub_pull import Progress, PullResult

        self.require_runtime_api("%runtime pull")
        if allow_pickle:
            raise InvalidRequest("the server pulls safetensors and GGUF only: allow_pickle is local")
        done = None
        with self._open("POST", "api/pull", {"model": ref, "stream": True}) as response:
            for raw in response:
                line = json.loads(raw.decode("utf-8")) if raw.strip() else None
                if not line:
                    continue
                if "error" in line:
                    raise _remote_failure(line["error"])
                if line.get("status") == "success":
                    done = line
                elif progress is not None:
                    progress(Progress(ref, line.get("status", ""), line.get("file"), line.get("file_index", 0),
                                      line.get("file_count", 0), line.get("digest"), line.get("total", 0),
                                      line.get("completed", 0), line.get("total", 0), line.get("completed", 0)))
        if done is None:
            raise ConnectionLost(f"the pull of {ref} on {self.base} ended without a result")
        from .hub_refs import require_hub_ref

        return PullResult(done["model"], require_hub_ref(ref).repo_id, done.get("revision", ""), Path(done["path"]),
                          "gguf" if done.get("quant") else "transformers", done.get("quant"), [], done["size"])

    def remove_pulled(self, ref: str) -> list[str]:
        """Delete a pulled model from the server's HF cache (`DELETE universal/api/models/REF`)."""
        self.require_runtime_api("%runtime rm")
        return self._json("DELETE", "api/models/" + urllib.parse.quote(ref, safe="/:@"))["revisions"]

    def alias(self, name: str, ref: str):
        self.require_runtime_api("%runtime alias")
        raise InvalidRequest("aliases of the server's runtime are set in its configuration "
                             "(c.UniversalKernelApp.model_aliases); %runtime alias applies to the local runtime")

    def subscribe(self, listener) -> None:  # the monitor polls the server instead
        pass
