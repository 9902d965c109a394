"""The Jupyter server extension: hosts one runtime and serves the OpenAI API on the server's own port.

Configure it like any Jupyter app, e.g. on the command line
`--UniversalKernelApp.preload='["smollm2-135m-instruct"]'` or in `jupyter_server_config.py`
with `c.UniversalKernelApp.keep_alive = 600`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from jupyter_server.extension.application import ExtensionApp

from universal_kernel.config import RUNTIME, SERVER, RuntimeConfig, settings
from universal_kernel.runtime import Runtime
from universal_kernel.settings import cache_folder, from_trait, traits_base

from . import handlers
from .generation import Jobs, shutting_down
from .routes import routes
from .serving import Serving

#: the server's settings (config.py and the tasks' own), each a trait of the app
_SETTINGS = settings(SERVER)


class UniversalKernelApp(traits_base(_SETTINGS, SERVER, "UniversalKernelApp"), ExtensionApp):
    """The OpenAI HTTP API (`{base_url}universal/v1`) and the runtime API (`{base_url}universal/api`).

    Its traits are generated from the settings' declarations (`universal_kernel.config.settings("server")`):
    `preload`, `model_folders`, `model_aliases`, `keep_alive`, `parallel`, `max_body_size`, ..."""

    name = "universal_kernel"
    load_other_extensions = True

    runtime: Runtime | None = None

    def runtime_config(self) -> RuntimeConfig:
        folders = [Path(f).expanduser() for f in self.model_folders]
        if not folders:
            root = Path(self.serverapp.root_dir) if self.serverapp is not None else Path.cwd()
            folders = [root, cache_folder("models")()]
        # the settings the runtime shares with the server: as the traits say
        shared = {setting.name: from_trait(setting, getattr(self, name)) for name, setting in _SETTINGS.items()
                  if RUNTIME in setting.where}
        return RuntimeConfig(**shared, model_folders=folders,
                             data_folders=folders)  # HTTP clients read no file outside these folders

    def initialize_settings(self) -> None:
        self.runtime = Runtime(self.runtime_config())
        # its requests and loaded models appear on Jupyter's own /metrics (prometheus_client's registry)
        from universal_kernel.metrics import watch

        watch(self.runtime)
        self.settings[handlers.SERVING_SETTING] = Serving(self.runtime, max_body_size=self.max_body_size)
        self.jobs = self.settings[handlers.JOBS_SETTING] = Jobs()

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

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
