"""The compatibility door's own routes (health, models, chat, embeddings) and its mount: every task's door
routes (`server_ext/tasks/<task>_upstream.py`, named by the registry's `upstream` field) under the door's
root, `{base_url}universal/runtime/`.

Errors keep this server's OpenAI body and add upstream's FastAPI key, `detail` (the same message), so
a client written for either reads them (base.py).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from datetime import datetime, timezone
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from universal_kernel.tasks import TASKS

from .. import protocol as p
from ..errors import Failure, failure_from
from ..handlers import ChatCompletionsHandler, EmbeddingsHandler, ModelsHandler
from ..serving import parse
from .base import UpstreamErrors, UpstreamHandler
from .wire import HealthResponse

#: the door's root, relative to the server's base_url
ROOT = "universal/runtime"
#: a GGUF quantization suffix on an embeddings model name (`org/repo:Q4_K_M`)
_QUANT_SUFFIX = re.compile(r":(?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def _device() -> dict[str, Any]:
    from universal_kernel.devices import cpu_threads, loaded_torch

    torch = loaded_torch()  # only if a model already imported it: a health check loads nothing
    cuda = bool(torch is not None and torch.cuda.is_available())
    info: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "cpu_threads": cpu_threads()}
    if cuda:
        info["gpu_name"] = torch.cuda.get_device_name(0)
    return info


class HealthHandler(UpstreamHandler):
    @web.authenticated
    @authorized
    async def get(self):
        try:
            status = await asyncio.get_running_loop().run_in_executor(None, self.serving.runtime.status)
        except Exception as exc:  # noqa: BLE001
            return self.send_failure(failure_from(exc))
        self.send(HealthResponse(device=_device(), loaded_models=[m["id"] for m in status["models"]],
                                 timestamp=datetime.now(timezone.utc).isoformat(), pid=os.getpid()))


class EmbeddingsDoor(UpstreamErrors, EmbeddingsHandler):
    """Upstream accepts `org/repo:Q4_K_M`: the quantization suffix is dropped, the model is the file the
    reference resolves to (its own quantization)."""

    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.EmbeddingRequest, self.request.body)
        if isinstance(req, Failure):
            return self.send_failure(req)
        if req.model:
            req.model = _QUANT_SUFFIX.sub("", req.model)
        self.send(await self.serving.embeddings(req))


class ChatDoor(UpstreamErrors, ChatCompletionsHandler):
    pass


class ModelsDoor(UpstreamErrors, ModelsHandler):
    pass


def task_routes() -> list[tuple[str, type]]:
    """Every task's door routes, relative to the door's root, in the registry's order."""
    found: list[tuple[str, type]] = []
    for parts in TASKS.values():
        if parts.upstream:
            found.extend(importlib.import_module(parts.upstream).door_routes())
    return found


def routes() -> list[tuple[str, type]]:
    """The door's routes, relative to the server's base_url."""
    own = [(r"health/?", HealthHandler), (r"v1/models/?", ModelsDoor), (r"v1/chat/completions/?", ChatDoor),
           (r"v1/embeddings/?", EmbeddingsDoor)]
    return [(f"{ROOT}/{pattern}", handler) for pattern, handler in own + task_routes()]
