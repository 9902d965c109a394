"""A Dask cluster's plumbing for row-wise work: one runtime per worker process.

`RuntimePlugin` is a `distributed.WorkerPlugin`: registered with `Client.register_plugin`, it gives
each worker process one `Runtime` whose CPU threads are the worker's own (`nthreads`), so a model
loads once per worker, stays loaded between partitions under keep_alive, and two workers on one
machine do not oversubscribe its cores. What runs on the workers is the row executor's partition
function (universal_kernel/row_executor.py), which finds its runtime with `runtime_here`.

Workers import this module by name: a cluster's workers need universal-kernel and the model
packages installed, as the notebook's machine does. `check_workers` asks them before any work goes
out, so a worker without the model is a one-line error, not a failed partition later.
"""

from __future__ import annotations

import threading

from .config import RuntimeConfig
from .errors import RuntimeFailure

PLUGIN_NAME = "universal-kernel-runtime"

#: one runtime per worker even when two of its threads find none at once (a graph built without a client)
_here_lock = threading.Lock()


class ClusterUnavailable(RuntimeFailure):
    """No Dask scheduler at the address, or no workers to run on."""


def _config_fields(config: RuntimeConfig) -> dict:
    """What a worker's runtime takes from the notebook's: where models are and how long they stay."""
    return {"model_folders": [str(p) for p in config.model_folders], "aliases": dict(config.aliases),
            "keep_alive": config.keep_alive, "memory_budget": config.memory_budget,
            "default_generation_model": config.default_generation_model,
            "default_embedding_model": config.default_embedding_model}


try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # the module stays importable (for `runtime_here`) without distributed
    _WorkerPlugin = object


class RuntimePlugin(_WorkerPlugin):
    """One universal-kernel runtime per worker process, with the worker's thread count."""

    name = PLUGIN_NAME
    idempotent = True  # registering again (another kernel, another magic) keeps the runtimes loaded

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {})
        self.runtime = None

    def setup(self, worker=None):
        from pathlib import Path

        from .runtime import Runtime

        fields = dict(self.config)
        if "model_folders" in fields:
            fields["model_folders"] = [Path(p) for p in fields["model_folders"]]
        threads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", None)
        self.runtime = Runtime(RuntimeConfig(threads=int(threads or 1), **fields))

    def teardown(self, worker=None):
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None


def runtime_here(worker=None):
    """The runtime of the process running a partition: the worker's (its plugin's), or this process's.

    Outside a worker (a graph computed by dask's threaded scheduler in the kernel), the process-wide
    runtime of the magics serves it. `Client.run` functions get their worker as `dask_worker` (there
    `get_worker()` finds none) and pass it here.
    """
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            from .runtime import get_runtime

            return get_runtime()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or getattr(plugin, "runtime", None) is None:
        # a graph built without a client, computed later on one: the worker gets its runtime now
        with _here_lock:
            plugin = worker.plugins.get(PLUGIN_NAME)
            if plugin is None or getattr(plugin, "runtime", None) is None:
                plugin = RuntimePlugin()
                plugin.setup(worker)
                worker.plugins[PLUGIN_NAME] = plugin
    return plugin.runtime


# The client side ---------------------------------------------------------------------------------
def connect(address: str | None = None, timeout: float = 5.0):
    """A `distributed.Client` for `address`, or the current one; ClusterUnavailable when there is none."""
    import distributed

    if address is None:
        try:
            return distributed.default_client()
        except ValueError:
            raise ClusterUnavailable("no Dask client in this kernel: pass the scheduler's address "
                                     "(%runtime use dask tcp://host:8786) or create a distributed.Client") from None
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailable(f"cannot reach a Dask scheduler at {address}: {exc}") from None


def current_client(preferred=None):
    """The client Dask work goes to: the one `%runtime use dask` chose, else the current one, else None
    (the graph is then computed by whichever scheduler the user computes it with)."""
    if preferred is not None and preferred.status == "running":
        return preferred
    try:
        import distributed

        return distributed.default_client()
    except (ImportError, ValueError):
        return None


_NEEDS = ("the workers need universal-kernel and the model's package installed, as this machine has "
          "(README: When one machine is not enough)")


def install(client, config: RuntimeConfig) -> None:
    """Register the runtime plugin on the client's cluster (once: later registrations are no-ops)."""
    try:
        client.register_plugin(RuntimePlugin(_config_fields(config)), name=PLUGIN_NAME)
    except Exception as exc:  # noqa: BLE001 - a worker that cannot import us fails here, with its reason
        raise ClusterUnavailable(f"the Dask workers could not set up universal-kernel's runtime "
                                 f"({type(exc).__name__}: {exc}); {_NEEDS}") from None


def _check_here(task: str, model: str | None, dask_worker=None) -> str | None:
    """On a worker: None if `model` resolves and serves `task` here, else why not (one line)."""
    from .tasks import TASKS, require

    try:
        runtime = runtime_here(dask_worker)
        spec = runtime.resolve(model or TASKS[task].default_model(runtime.config))
        require(task, spec)
    except RuntimeFailure as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - reported to the user, with its type
        return f"{type(exc).__name__}: {exc}"
    return None


def check_workers(client, task: str, model: str | None) -> int:
    """Ask every worker whether it can serve `task` with `model`; the number of workers, or a one-line error."""
    workers = client.scheduler_info().get("workers") or {}
    if not workers:
        raise ClusterUnavailable(f"the Dask cluster at {client.scheduler.address} has no workers")
    try:
        answers = client.run(_check_here, task, model)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker without universal-kernel cannot unpickle the check
        raise ClusterUnavailable(f"the Dask workers could not run universal-kernel ({type(exc).__name__}: "
                                 f"{exc}); {_NEEDS}") from None
    failed = {address: why for address, why in answers.items() if why}
    if failed:
        address, why = next(iter(failed.items()))
        raise RuntimeFailure(f"{len(failed)} of {len(answers)} Dask workers cannot serve {task} with "
                             f"{model or 'the default model'} (first: {address}: {why}); {_NEEDS}")
    return len(answers)


def worker_status(client) -> dict:
    """Each worker's runtime status, by worker address (for `%runtime status` and tests)."""
    return client.run(_status_here)


def _status_here(dask_worker=None) -> dict:
    runtime = runtime_here(dask_worker)
    return {**runtime.status(), "threads": runtime.config.threads}
