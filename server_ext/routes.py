"""Every route of the extension, relative to the server's base_url: generate, embed and the runtime's
own API (handlers.py), each task's routes (its serving module, named by the registry), pulling models
(hub.py), the compatibility door (upstream/door.py), then a 404 in the OpenAI shape for anything else.

The arrows go one way: this module imports the handler modules, and none of them imports it.
"""

from __future__ import annotations

import importlib

from universal_kernel.tasks import TASKS

from . import hub
from .handlers import (
    ChatCompletionsHandler, CompletionsHandler, EmbeddingsHandler, LoadHandler, ModelHandler, ModelsHandler,
    NotFoundHandler, ResponsesHandler, StatusHandler, UnloadHandler,
)
from .upstream import door

#: the module that serves generate and embed itself (handlers.py's routes); other tasks have their own
SERVING_MODULE = f"{__package__}.serving"


def task_routes() -> list[tuple[str, type]]:
    """The routes of every task with its own serving module (`server_ext/tasks/`), found through the
    registry: adding a task adds its routes without an edit here."""
    found: list[tuple[str, type]] = []
    modules = dict.fromkeys(parts.serving for parts in TASKS.values())  # once each, in the registry's order
    for module in modules:
        if module and module != SERVING_MODULE:
            found.extend(importlib.import_module(module).routes())
    return found


def routes() -> list[tuple[str, type]]:
    return [
        (r"universal/v1/models/?", ModelsHandler),
        (r"universal/v1/models/(.+)", ModelHandler),
        (r"universal/v1/chat/completions/?", ChatCompletionsHandler),
        (r"universal/v1/completions/?", CompletionsHandler),
        (r"universal/v1/responses/?", ResponsesHandler),
        (r"universal/v1/embeddings/?", EmbeddingsHandler),
        (r"universal/api/status/?", StatusHandler),
        (r"universal/api/load/?", LoadHandler),
        (r"universal/api/unload/?", UnloadHandler),
        *task_routes(),
        *hub.routes(),  # pulling models by their Hub id
        *door.routes(),  # the compatibility door
        (r"universal/(.*)", NotFoundHandler),  # last: after every task's routes
    ]
