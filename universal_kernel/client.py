"""The Jupyter server's runtime, reached over HTTP: what `--server` and `%runtime use server` talk to.

`RemoteRuntime` implements `InferenceRuntime` (interface.py) on top of the server extension's OpenAI API
(`{base_url}universal/v1/...`) and its runtime API (`{base_url}universal/api/...`), authenticated with
the Jupyter token. Only the standard library is used: no `openai` or `requests` in the kernel path.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .backends import GenerationParams
from .errors import GenerationFailed, InvalidRequest, RuntimeFailure
from .interface import ClassifyResult, EmbeddingResult, NerResult, OcrResult, RerankResult
from .stats import RequestStats
from .streams import Completion, ReadToEnd
from .tasks import TaskCall
from .tasks import classify as classify_task
from .tasks import ner as ner_task
from .tasks import rerank as rerank_task
from .wire import error_from_wire, params_to_wire


class ServerUnavailable(RuntimeFailure):
    """No Jupyter server with the extension could be found or reached."""


class ConnectionLost(ServerUnavailable):
    """A stream's connection ended before the server said [DONE]: the server died or the network dropped.

    `tokens` is what arrived (pieces of text, one per token as the server streams them).
    """

    def __init__(self, message: str, *, tokens: int = 0):
        super().__init__(message)
        self.tokens = tokens


class RemoteError(RuntimeFailure):
    """The server answered with an error that maps to no typed runtime error."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 param: str | None = None):
        super().__init__(message, param=param)
        self.status = status
        self.code = code


def _remote_failure(error, *, status: int | None = None, headers=None) -> RuntimeFailure:
    """A typed runtime error for an OpenAI error body, mapped by its `code` (universal_kernel.wire)."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    if status in (401, 403) or error.get("code") in ("invalid_api_key", "forbidden"):
        return ServerUnavailable(f"the Jupyter server refused the token ({status or error.get('code')}): "
                                 f"{error.get('message', '')}")
    mapped = error_from_wire(error, status=status, headers=headers)
    if mapped is not None:
        return mapped
    message = str(error.get("message") or (f"HTTP {status}" if status else "the server sent an error"))
    return RemoteError(message, status=status, code=error.get("code"),
                       param=error.get("param") if isinstance(error.get("param"), str) else None)


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


class RemoteStream(ReadToEnd):
    """Iterate for text pieces of a streamed (chat) completion; closing it drops the connection (cancels).

    `path` is `v1/chat/completions` (pieces in `choices[].delta.content`) or `v1/completions`
    (pieces in `choices[].text`).
    """

    def __init__(self, client: "RemoteRuntime", body: dict, path: str = "v1/chat/completions"):
        self.model = body["model"]
        self.parts: list[str] = []
        self.completion: Completion | None = None
        self.stats = RequestStats(model=self.model, backend="server", kind="generate", created_at=time.time())
        self._started = time.perf_counter()
        self._first: float | None = None
        self._finish = "stop"
        self._usage: dict = {}
        self._done = False
        self._chat = path.endswith("chat/completions")
        self._timeout = client.timeout
        self._response = client._open("POST", path, body)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        try:
            while True:
                raw = self._readline()
                if not raw:  # the connection ended without [DONE]: the server died or the network dropped
                    raise self._lost("the server closed it without finishing")
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return self._end()
                try:
                    event = json.loads(data)
                except ValueError:
                    raise RemoteError(f"the server sent a malformed event: {data[:80]!r}") from None
                if "error" in event:
                    raise _remote_failure(event["error"])
                if event.get("usage"):
                    self._usage = event["usage"]
                for choice in event.get("choices") or []:
                    if choice.get("finish_reason"):
                        self._finish = choice["finish_reason"]
                    piece = (choice.get("delta") or {}).get("content") if self._chat else choice.get("text")
                    if piece:
                        if self._first is None:
                            self._first = time.perf_counter()
                        self.parts.append(piece)
                        return piece
        except StopIteration:
            raise
        except BaseException:
            self.close()
            raise

    def _readline(self) -> bytes:
        try:
            return self._response.readline()
        except TimeoutError:
            raise self._lost(f"nothing came for {self._timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise self._lost(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None

    def _lost(self, why: str) -> ConnectionLost:
        """The error for a stream cut short; its stats count what arrived (the server's usage never came)."""
        received = len(self.parts)
        self._figures(received, "error")
        return ConnectionLost(f"the connection to the server was lost after {received} "
                              f"token{'' if received == 1 else 's'} ({why})", tokens=received)

    def _figures(self, completion_tokens: int, finish_reason: str) -> None:
        end = time.perf_counter()
        stats = self.stats
        stats.total_s = end - self._started
        stats.completion_tokens = completion_tokens
        stats.finish_reason = finish_reason
        if self._first is not None:
            stats.ttft_s = self._first - self._started
            # the decoding rate: the tokens after the first over the time since the first arrived
            # (queue wait, loading and prompt processing are in ttft_s, not here)
            if completion_tokens > 1 and end > self._first:
                stats.tokens_per_s = (completion_tokens - 1) / (end - self._first)

    def _end(self):
        self._done = True
        self._response.close()
        self.stats.prompt_tokens = int(self._usage.get("prompt_tokens", 0))
        # the server's count; a server that sends no usage: the pieces that arrived
        self._figures(int(self._usage.get("completion_tokens", 0)) or len(self.parts), self._finish)
        stats = self.stats
        self.completion = Completion(self.model, self.text, self._finish, stats.prompt_tokens,
                                     stats.completion_tokens, stats)
        raise StopIteration

    def close(self) -> None:
        """Stop reading: the server sees the client gone and cancels the generation."""
        if not self._done:
            self._done = True
            if self.stats.finish_reason != "error":
                self._figures(len(self.parts), "cancelled")
            try:
                self._response.close()
            except Exception:
                pass



class RemoteRuntime:
    """The server's runtime (`InferenceRuntime`). `base` is the server's URL with its base_url, ending in '/'."""

    where = "server"

    def __init__(self, base: str, token: str = "", *, timeout: float = 600.0,
                 default_generation_model: str = "smollm2-135m-instruct",
                 default_embedding_model: str = "all-minilm-l6-v2"):
        self.base = base.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        self.default_generation_model = default_generation_model
        self.default_embedding_model = default_embedding_model

    @classmethod
    def discover(cls, url: str | None = None, token: str | None = None, **kwargs) -> "RemoteRuntime":
        base, token = find_server(url, token)
        return cls(base, token, **kwargs)

    def __repr__(self) -> str:
        return f"RemoteRuntime({self.base!r})"

    # HTTP -----------------------------------------------------------------------------------
    def _open(self, method: str, path: str, body: dict | None = None):
        url = self.base + "universal/" + path
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
            raise ServerUnavailable(f"the Jupyter server at {self.base} closed the connection before it "
                                    f"answered (it may have stopped)") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnavailable(f"cannot reach the Jupyter server at {self.base}: {reason}") from None

    @staticmethod
    def _error(exc: urllib.error.HTTPError) -> RuntimeFailure:
        try:
            payload = json.loads(exc.read().decode("utf-8"))
            error = payload["error"]
            if not isinstance(error, dict):
                error = {"message": str(error)}
        except Exception:
            error = {"message": f"HTTP {exc.code} {exc.reason}"}
        return _remote_failure(error, status=exc.code, headers=exc.headers)

    def _json(self, method: str, path: str, body: dict | None = None):
        with self._open(method, path, body) as response:
            return json.loads(response.read().decode("utf-8") or "null")

    # Runtime API ----------------------------------------------------------------------------
    def stream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
               params: GenerationParams | dict | None = None, backend: str = "auto",
               keep_alive: float | None = None) -> RemoteStream:
        """As `Runtime.stream`: a prompt is a raw completion (`/v1/completions`), messages a chat turn."""
        if (prompt is None) == (messages is None):
            raise InvalidRequest("give either a prompt or messages")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string", param="prompt")
        params = params if isinstance(params, GenerationParams) else GenerationParams(**(params or {}))
        # max_tokens is always sent: no limit stays no limit (/v1/completions would apply OpenAI's 16)
        body = {"model": model or self.default_generation_model, "stream": True,
                "stream_options": {"include_usage": True}, **params_to_wire(params)}
        if backend != "auto":
            body["backend"] = backend
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if prompt is not None:
            return RemoteStream(self, {**body, "prompt": prompt}, "v1/completions")
        return RemoteStream(self, {**body, "messages": messages}, "v1/chat/completions")

    def generate(self, model: str | None = None, **kwargs) -> Completion:
        with self.stream(model, **kwargs) as stream:
            return stream.result()

    def embed(self, texts, model: str | None = None, *, normalize: bool = True, backend: str = "auto",
              keep_alive: float | None = None) -> EmbeddingResult:
        texts = [texts] if isinstance(texts, str) else list(texts)
        model = model or self.default_embedding_model
        stats = RequestStats(model=model, backend="server", kind="embed", created_at=time.time())
        started = time.perf_counter()
        body = {"model": model, "input": texts, "encoding_format": "float", "normalize": normalize}
        if backend != "auto":
            body["backend"] = backend
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        payload = self._json("POST", "v1/embeddings", body)
        rows = sorted(payload.get("data") or [], key=lambda r: r.get("index", 0))
        if len(rows) != len(texts):
            raise GenerationFailed(f"the server returned {len(rows)} embeddings for {len(texts)} inputs")
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32).reshape(len(texts), -1)
        stats.total_s = time.perf_counter() - started
        stats.prompt_tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
        stats.rows_computed = len(texts)
        return EmbeddingResult(payload.get("model", model), vectors, stats.prompt_tokens, stats)

    # The other tasks: one path for all, the task's module maps its call and result to the wire ------
    def run(self, call: TaskCall):
        part = call.part  # no model: the server's default for the task
        body = {key: value for key, value in part.to_wire(call).items() if value is not None}
        if call.backend != "auto":
            body["backend"] = call.backend
        if call.keep_alive is not None:
            body["keep_alive"] = call.keep_alive
        stats = RequestStats(model=call.model or "", backend="server", kind=call.task, created_at=time.time())
        started = time.perf_counter()
        payload = self._json("POST", part.PATH, body)
        stats.total_s = time.perf_counter() - started
        result = part.from_wire(payload or {}, call, stats)
        stats.model = result.model
        stats.prompt_tokens = getattr(result, "prompt_tokens", 0)  # OCR counts no tokens
        return result

    def rerank(self, query: str, documents: list[str], model: str | None = None, top_n: int | None = None, *,
               backend: str = "auto", keep_alive: float | None = None, truncate: bool = False) -> RerankResult:
        return self.run(rerank_task.call(query, documents, model, top_n, backend=backend, keep_alive=keep_alive,
                                         truncate=truncate))

    def classify(self, texts, model: str | None = None, labels: list[str] | None = None, *,
                 backend: str = "auto", keep_alive: float | None = None, truncate: bool = False) -> ClassifyResult:
        return self.run(classify_task.call(texts, model, labels, backend=backend, keep_alive=keep_alive,
                                           truncate=truncate))

    def ner(self, texts, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
            truncate: bool = False) -> NerResult:
        return self.run(ner_task.call(texts, model, backend=backend, keep_alive=keep_alive, truncate=truncate))

    def ocr(self, images, model: str | None = None, *, boxes: bool = False, backend: str = "auto",
            keep_alive: float | None = None) -> OcrResult:
        from .tasks import ocr as ocr_task  # Pillow and pypdfium2 load with the first image

        """Images are read here (paths in this kernel's folders) and sent as base64; the server's limits apply."""
        from .config import default_model_folders
        from .references import Resolver

        folders = Resolver(default_model_folders())  # the kernel's own folders, as in the local runtime
        return self.run(ocr_task.call(images, model, boxes=boxes, backend=backend, keep_alive=keep_alive,
                                      path_check=folders.check_path))

    def status(self) -> dict:
        return self._json("GET", "api/status")

    def models(self) -> list[dict]:
        return list((self._json("GET", "v1/models") or {}).get("data") or [])

    def load(self, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
             task: str | None = None, **options) -> dict:
        """Load a model on the server. Its runtime API takes model, backend and keep_alive; load options
        (such as n_ctx) and `task` cannot be sent, so they are refused rather than dropped."""
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

    def unload(self, model: str | None = None, *, backend: str | None = None):
        body = {"model": model} if model else {}
        if backend is not None:
            body["backend"] = backend
        return self._json("POST", "api/unload", body)

    def alias(self, name: str, ref: str):
        raise InvalidRequest("aliases of the server's runtime are set in its configuration "
                             "(c.UniversalKernelApp.model_aliases); %runtime alias applies to the local runtime")

    def subscribe(self, listener) -> None:  # the monitor polls the server instead
        pass

    # Anomaly detection: the server's detectors (its anomaly folder, shared with the local kernels) --------
    def anomaly_fit(self, name: str, data, *, backend: str = "isolation_forest", contamination: float = 0.1,
                    model: str | None = None):
        from .tasks import anomaly as anomaly_task

        body = {"model": name, "data": anomaly_task.data_to_wire(data), "backend": backend,
                "contamination": contamination}
        if model is not None:
            body["embedding_model"] = model
        return anomaly_task.detector_from_wire(self._json("POST", anomaly_task.PATHS["fit"], body))

    def anomaly_score(self, name: str, data):
        from .interface import AnomalyScores
        from .tasks import anomaly as anomaly_task

        body = self._json("POST", anomaly_task.PATHS["score"], {"model": name, "data": anomaly_task.data_to_wire(data)})
        rows = sorted(body["data"], key=lambda row: row["index"])
        return AnomalyScores(name=body["model"], scores=np.array([row["score"] for row in rows], dtype=np.float64),
                             is_anomaly=np.array([row["is_anomaly"] for row in rows], dtype=bool),
                             threshold=body["threshold"])

    def anomaly_models(self) -> list:
        from .tasks import anomaly as anomaly_task

        body = self._json("GET", anomaly_task.PATHS["models"])
        return [anomaly_task.detector_from_wire(entry) for entry in body["data"]]

    def anomaly_delete(self, name: str) -> bool:
        from urllib.parse import quote

        from .errors import ModelNotFound
        from .tasks import anomaly as anomaly_task
        from .tasks.anomaly_store import check_name

        check_name(name)  # refused here, as in the local runtime, before a path is built from it
        try:
            self._json("DELETE", f"{anomaly_task.PATHS['models']}/{quote(name, safe='')}")
        except ModelNotFound:
            return False
        return True
