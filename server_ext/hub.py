"""`POST universal/api/pull` and `DELETE universal/api/models/REF`: models by their Hub id on the server.

The pull streams NDJSON progress as Ollama's `/api/pull` does (`{"status": "downloading FILE", "digest":
"sha256:…", "total": N, "completed": M}` lines, then `{"status": "success"}`). Downloading is an admin's
choice: without `--UniversalKernelApp.allow_downloads=True` both routes answer 403 `downloads_disabled`.
A failure before the first line is an OpenAI error body; after it, the stream's last line carries one. Each
failure keeps its own status and code (`failure_from`): a gated repo is a 403 `gated_model`, an unknown one a
404, a Hub that cannot be reached a 503 `hub_unavailable`, no room a 507, over the memory budget a 413.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from .base_handler import BaseHandler
from .errors import Failure, failure, failure_from
from .protocol import _Request
from .serving import parse

_DONE = object()


class PullRequest(_Request):
    """Ollama's /api/pull body: the model by `model` (or Ollama's older `name`); it streams unless told not to."""

    model: str | None = None
    name: str | None = None
    stream: bool = True


def _disabled():
    return failure(403, "downloads are disabled on this server: an admin starts it with "
                        "--UniversalKernelApp.allow_downloads=True", "permission_error", code="downloads_disabled")


def _line(progress) -> dict:
    line = {"status": progress.status}
    if progress.file is not None:
        line.update(digest=progress.digest, total=progress.file_total, completed=progress.file_completed,
                    file=progress.file, file_index=progress.file_index, file_count=progress.file_count)
    return {k: v for k, v in line.items() if v is not None}


class PullHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        request = parse(PullRequest, self.request.body or b"{}")
        if isinstance(request, Failure):  # not JSON, too deep, hostile, or a field of the wrong type
            return self.send_failure(request)
        model, stream = request.model or request.name, request.stream
        if not isinstance(model, str) or not model.strip():
            return self.send_failure(failure(400, "'model' must be a Hub id such as org/repo:Q4_K_M", param="model",
                                             code="invalid_value"))
        runtime = self.serving.runtime
        if not runtime.config.allow_downloads:
            return self.send_failure(_disabled())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def report(progress):
            loop.call_soon_threadsafe(queue.put_nowait, _line(progress))

        async def run():
            try:
                return await loop.run_in_executor(None, lambda: runtime.pull(model, progress=report if stream
                                                                             else None))
            finally:
                queue.put_nowait(_DONE)

        task = asyncio.ensure_future(run())
        started = False
        if stream:
            while (item := await queue.get()) is not _DONE:
                if not started:
                    self.set_header("Content-Type", "application/x-ndjson")
                    started = True
                try:
                    self.write(json.dumps(item) + "\n")
                    await self.flush()
                except StreamClosedError:
                    break  # the client left; the pull goes on into the cache, where the next one finds it
        try:
            result = await task
        except Exception as exc:  # the runtime's typed errors, one line each
            fail = failure_from(exc)
            if not started:
                return self.send_failure(fail)
            return self.finish(json.dumps(fail.body.model_dump()) + "\n")
        done = {"status": "success", "model": result.ref, "path": str(result.path), "size": result.size_bytes,
                "revision": result.revision, "quant": result.quant}
        if started:
            return self.finish(json.dumps(done) + "\n")
        self.send_json(done)


class PulledModelHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def delete(self, ref: str):
        runtime = self.serving.runtime
        if not runtime.config.allow_downloads:
            return self.send_failure(_disabled())
        try:
            removed = await asyncio.get_running_loop().run_in_executor(None, runtime.remove_pulled, unquote(ref))
        except Exception as exc:
            return self.send_failure(failure_from(exc))
        self.send_json({"deleted": unquote(ref), "revisions": removed})


def routes() -> list[tuple[str, type]]:
    return [(r"universal/api/pull/?", PullHandler), (r"universal/api/models/(.+)", PulledModelHandler)]
