"""Thin tornado handlers of generate, embed and the runtime's own API: authenticate, parse, call the
serving layer, write what it returns (the base, `BaseHandler`, is base_handler.py; every route is
mounted by routes.py).
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from . import protocol as p
from .base_handler import AUTH_RESOURCE, JOBS_SETTING, SERVING_SETTING, BaseHandler
from .errors import Failure
from .responses import ResponsesRequest
from .serving import parse

__all__ = ["AUTH_RESOURCE", "JOBS_SETTING", "SERVING_SETTING", "BaseHandler"]


class ModelsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.send(await self.serving.models())


class ModelHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, model_id: str):
        self.send(await self.serving.model(model_id))


class ChatCompletionsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.ChatCompletionRequest, self.request.body)
        if isinstance(req, Failure):
            return self.send_failure(req)
        await self.send_generation(await self.serving.chat(req), req.stream)


class CompletionsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.CompletionRequest, self.request.body)
        if isinstance(req, Failure):
            return self.send_failure(req)
        await self.send_generation(await self.serving.completion(req), req.stream)


class ResponsesHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        req = parse(ResponsesRequest, self.request.body)
        if isinstance(req, Failure):
            return self.send_failure(req)
        await self.send_generation(await self.serving.responses(req), req.stream)


class EmbeddingsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.EmbeddingRequest, self.request.body)
        self.send(req if isinstance(req, Failure) else await self.serving.embeddings(req))


class StatusHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.send(await self.serving.status())


class LoadHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.LoadRequest, self.request.body or b"{}")
        self.send(req if isinstance(req, Failure) else await self.serving.load(req))


class UnloadHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.UnloadRequest, self.request.body)
        self.send(req if isinstance(req, Failure) else await self.serving.unload(req))


class NotFoundHandler(BaseHandler):
    """Anything else under universal/: a 404 in the OpenAI shape."""

    @web.authenticated
    @authorized
    async def get(self, path: str = ""):
        raise web.HTTPError(404)

    post = put = delete = patch = get
