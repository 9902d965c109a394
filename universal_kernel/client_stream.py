"""What `RemoteRuntime` (client.py) raises, and `RemoteStream`: one streamed (chat) completion over HTTP.

One code path reads every generation, streamed or not: a non-streaming call reads its stream to the end.
It reads OpenAI's server-sent events, so it works against any OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time

from .errors import RuntimeFailure
from .stats import RequestStats
from .streams import Completion, ReadToEnd
from .wire import error_from_wire


class ServerUnavailable(RuntimeFailure):
    """No server could be found or reached, or it refused the token."""


class ConnectionLost(ServerUnavailable):
    """A stream's connection ended before the server said [DONE]: the server died or the network dropped.

    `tokens` is what arrived (pieces of text, one per token as the server streams them).
    """

    def __init__(self, message: str, *, tokens: int = 0):
        super().__init__(message)
        self.tokens = tokens


class NoRuntimeApi(RuntimeFailure):
    """The far side is an OpenAI-compatible server without universal-kernel's runtime API (vLLM, Ollama,
    llama.cpp's server): what needs that API (load, unload, the task endpoints) cannot be done there."""


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
    # a 401/403 with a code of its own (gated_model, downloads_disabled) is no refused token
    if error.get("code") in ("invalid_api_key", "forbidden") or (status in (401, 403) and not error.get("code")):
        return ServerUnavailable(f"the server refused the token ({status or error.get('code')}): "
                                 f"{error.get('message', '')}")
    mapped = error_from_wire(error, status=status, headers=headers)
    if mapped is not None:
        return mapped
    message = str(error.get("message") or (f"HTTP {status}" if status else "the server sent an error"))
    return RemoteError(message, status=status, code=error.get("code"),
                       param=error.get("param") if isinstance(error.get("param"), str) else None)


class RemoteStream(ReadToEnd):
    """Iterate for text pieces of a streamed (chat) completion; closing it drops the connection (cancels).

    `path` is `v1/chat/completions` (pieces in `choices[].delta.content`) or `v1/completions`
    (pieces in `choices[].text`).
    """

    def __init__(self, client, body: dict, path: str = "v1/chat/completions"):
        self.model = body["model"]
        self.parts: list[str] = []
        self.completion: Completion | None = None
        # a client cannot see the server's queue: its wait is inside ttft_s, and queue_wait_s is unknown (None)
        self.stats = RequestStats(model=self.model, backend="server", kind="generate", created_at=time.time(),
                                  queue_wait_s=None)
        self._started = time.perf_counter()
        self._first: float | None = None
        self._finish = "stop"
        self._usage: dict = {}
        self._logprobs: list[dict] = []  # chat: choices[].logprobs.content, as the server sends them
        self._done = False
        self._chat = path.endswith("chat/completions")
        self._timeout = client.timeout
        self._record = client.record
        self._mark_lost = getattr(client, "mark_lost", lambda: None)  # the next magic checks the server again
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
                    if self._chat and isinstance(choice.get("logprobs"), dict):
                        self._logprobs += choice["logprobs"].get("content") or []
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
        self._mark_lost()
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
        self._record(stats)  # once: every way a stream ends comes here once

    def _end(self):
        self._done = True
        self._response.close()
        self.stats.prompt_tokens = int(self._usage.get("prompt_tokens", 0))
        # the server's count; a server that sends no usage: the pieces that arrived
        self._figures(int(self._usage.get("completion_tokens", 0)) or len(self.parts), self._finish)
        stats = self.stats
        self.completion = Completion(self.model, self.text, self._finish, stats.prompt_tokens,
                                     stats.completion_tokens, stats, self._logprobs or None)
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


class AsyncRemoteStream:
    """A `RemoteStream` for the event loop (`RemoteRuntime.astream`): each piece is read off the loop."""

    def __init__(self, stream: RemoteStream):
        self.stream = stream
        self.model = stream.model

    @property
    def stats(self) -> RequestStats:
        return self.stream.stats

    @property
    def text(self) -> str:
        return self.stream.text

    @property
    def completion(self) -> Completion | None:
        return self.stream.completion

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        piece = await asyncio.get_running_loop().run_in_executor(None, next, self.stream, None)
        if piece is None:
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stream.close)

    async def result(self) -> Completion:
        async for _ in self:
            pass
        return self.stream.completion
