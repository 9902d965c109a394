"""The compatibility door: LlamaFarm's Universal Runtime API (`llama-farm/llamafarm`, `runtimes/universal/`)
under `{base_url}universal/runtime/`, over this server's runtime.

A client written for the upstream runtime changes only its base URL (`.../universal/runtime`) and sends
the Jupyter token as a bearer key. `wire.py` holds upstream's shapes; `door.py` maps them to the task
calls and back. Our own routes (`universal/v1/...`) keep their OpenAI/Cohere shapes.
"""

from __future__ import annotations


def routes() -> list[tuple[str, type]]:
    from .door import routes as door_routes  # its handlers import server_ext.handlers, which imports this

    return door_routes()
