"""The compatibility door: LlamaFarm's Universal Runtime API (`llama-farm/llamafarm`, `runtimes/universal/`)
under `{base_url}universal/runtime/`, over this server's runtime.

A client written for the upstream runtime changes only its base URL (`.../universal/runtime`) and sends
the Jupyter token as a bearer key. `wire.py` holds the shapes every door route shares and `base.py` its
handlers and refusals; `door.py` serves health, models, chat and embeddings and mounts each task's door
routes (`server_ext/tasks/<task>_upstream.py`, named by the registry). Our own routes
(`universal/v1/...`) keep their OpenAI/Cohere shapes.
"""
