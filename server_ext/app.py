"""The Jupyter server extension: hosts one runtime and serves the OpenAI API on the server's own port.

Configure it like any Jupyter app, e.g. on the command line
`--UniversalKernelApp.preload='["smollm2-135m-instruct"]'` or in `jupyter_server_config.py`
with `c.UniversalKernelApp.keep_alive = 600`.
"""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default, validate

from universal_kernel.config import SERVER_PARALLEL, RuntimeConfig, env_parallel
from universal_kernel.runtime import Runtime

from . import handlers
from .generation import Jobs, shutting_down
from .serving import Serving


class UniversalKernelApp(ExtensionApp):
    """The OpenAI HTTP API (`{base_url}universal/v1`) and the runtime API (`{base_url}universal/api`)."""

    name = "universal_kernel"
    load_other_extensions = True

    preload = List(Unicode(), help="Models to load when the server starts (in the background). They stay "
                                   "loaded (pinned) until a keep_alive is given for them.").tag(config=True)
    model_folders = List(
        Unicode(),
        help="Folders that path references must stay inside. Default: the server's root_dir and "
             "~/.cache/universal-kernel/models.",
    ).tag(config=True)
    # `aliases` is taken by traitlets' Application (command-line aliases)
    model_aliases = Dict(value_trait=Unicode(), help="Extra model names: alias -> reference.").tag(config=True)
    keep_alive = Float(help="Seconds a model stays loaded after its last use (default 300, or "
                            "UNIVERSAL_KERNEL_KEEP_ALIVE); 0 unloads at once, negative keeps it forever. "
                            "Preloaded models are pinned: this default does not unload them.").tag(config=True)
    memory_budget = Integer(None, allow_none=True,
                            help="Bytes that loaded models may take together; None means no budget.").tag(config=True)
    queue_length = Integer(16, help="Requests that may wait per model, beyond those running, before a new one "
                                    "gets 429.").tag(config=True)
    parallel = Integer(help="Generations a llama.cpp model decodes together (continuous batching); each has "
                            "its own KV stream of the model's full context.").tag(config=True)
    max_body_size = Integer(16 * 2**20, help="Largest request body in bytes; larger ones get 413.").tag(config=True)
    threads = Integer(None, allow_none=True, help="CPU threads for the backends; None: the machine's cores.").tag(
        config=True)
    allow_downloads = Bool(False, help="Let Hub ids missing from the local HF cache be pulled: on first use, "
                                       "POST universal/api/pull and DELETE universal/api/models/REF (off: 403 "
                                       "downloads_disabled).").tag(config=True)

    @validate("preload", "model_folders")
    def _expand_list_literals(self, proposal):
        """Accept `--UniversalKernelApp.preload='["a", "b"]'` as well as the option given once per item."""
        items = []
        for item in proposal["value"]:
            text = item.strip()
            if text.startswith("[") and text.endswith("]"):
                try:
                    items.extend(str(one) for one in ast.literal_eval(text))
                    continue
                except (ValueError, SyntaxError):
                    pass
            items.append(item)
        return items

    @default("keep_alive")
    def _default_keep_alive(self):
        return RuntimeConfig().keep_alive  # honours UNIVERSAL_KERNEL_KEEP_ALIVE

    @default("parallel")
    def _default_parallel(self):
        # many clients at once: 4 streams (a kernel's runtime has 1); honours UNIVERSAL_KERNEL_PARALLEL
        return env_parallel(SERVER_PARALLEL)

    @validate("parallel")
    def _at_least_one(self, proposal):
        if proposal["value"] < 1:
            from traitlets import TraitError

            raise TraitError("parallel must be at least 1")
        return proposal["value"]

    @default("memory_budget")
    def _default_memory_budget(self):
        return RuntimeConfig().memory_budget  # honours UNIVERSAL_KERNEL_MEMORY_BUDGET

    runtime: Runtime | None = None

    def runtime_config(self) -> RuntimeConfig:
        folders = [Path(f).expanduser() for f in self.model_folders]
        if not folders:
            root = Path(self.serverapp.root_dir) if self.serverapp is not None else Path.cwd()
            folders = [root, Path.home() / ".cache" / "universal-kernel" / "models"]
        return RuntimeConfig(model_folders=folders, aliases=dict(self.model_aliases), keep_alive=self.keep_alive,
                             memory_budget=self.memory_budget, queue_length=self.queue_length, parallel=self.parallel,
                             allow_downloads=self.allow_downloads, threads=self.threads,
                             data_folders=folders)  # HTTP clients read no file outside these folders

    def initialize_settings(self) -> None:
        self.runtime = Runtime(self.runtime_config())
        # its requests and loaded models appear on Jupyter's own /metrics (prometheus_client's registry)
        from universal_kernel.metrics import watch

        watch(self.runtime)
        self.settings[handlers.SERVING_SETTING] = Serving(self.runtime, max_body_size=self.max_body_size)
        self.jobs = self.settings[handlers.JOBS_SETTING] = Jobs()

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers.routes())

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        if self.preload:
            self._preloading = asyncio.ensure_future(self._preload())

    async def _preload(self) -> None:
        loop = asyncio.get_running_loop()
        for model in self.preload:
            try:
                # pinned: the default keep_alive does not unload what the server was asked to preload
                entry = await loop.run_in_executor(None, lambda m=model: self.runtime.load(m, pin=True))
                self.log.info("universal_kernel: loaded %s (%s) in %.1f s", entry["id"], entry["backend"],
                              entry["load_s"])
            except Exception as exc:  # noqa: BLE001 - a bad preload must not stop the server
                self.log.error("universal_kernel: could not preload %r: %s", model, exc)

    #: seconds a stopping server gives its streams to send their last event, and its models to close
    stop_timeout = Float(5.0, help="Seconds that stopping the server waits for running generations to send "
                                   "their error event, and then for the models to close.").tag(config=True)

    async def stop_extension(self) -> None:
        """The server is stopping (SIGTERM, a second Ctrl-C, `jupyter server stop`): every running
        generation ends with an error event (a 503 before its first token), then the models close."""
        jobs: Jobs | None = getattr(self, "jobs", None)
        if jobs is not None:
            count = jobs.abort_all(shutting_down())
            if count:
                self.log.info("universal_kernel: stopping %d running generation(s)", count)
                if not await jobs.wait_idle(self.stop_timeout):
                    self.log.warning("universal_kernel: %d generation(s) did not end in %.0f s",
                                     len(jobs.active), self.stop_timeout)
        runtime, self.runtime = self.runtime, None
        if runtime is None:
            return
        # a daemon thread: a model that will not close must not keep the process from exiting
        closer = threading.Thread(target=runtime.close, name="universal-kernel:close", daemon=True)
        closer.start()
        deadline = time.monotonic() + self.stop_timeout
        while closer.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if closer.is_alive():
            self.log.warning("universal_kernel: the models did not close in %.0f s", self.stop_timeout)
        else:
            self.log.info("universal_kernel: models closed")
