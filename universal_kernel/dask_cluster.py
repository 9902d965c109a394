"""Row-wise work on a Dask cluster: one runtime per worker process, work per partition.

`RuntimePlugin` is a `distributed.WorkerPlugin`: registered with `Client.register_plugin`, it gives
each worker process one `Runtime` whose CPU threads are the worker's own (`nthreads`), so a model
loads once per worker, stays loaded between partitions under keep_alive, and two workers on one
machine do not oversubscribe its cores. The `*_partition` functions run on the workers (they are what
`map_partitions` ships); each takes a pandas partition and returns the partition of the result,
with the same index, exactly as the local magics shape their results.

Workers import this module by name: a cluster's workers need universal-kernel and the model
packages installed, as the notebook's machine does. `check_workers` asks them before any work goes
out, so a worker without the model is a one-line error, not a failed partition later.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .config import RuntimeConfig
from .errors import InvalidRequest, RuntimeFailure

PLUGIN_NAME = "universal-kernel-runtime"

#: rows per runtime call inside a partition: large enough to batch well
CHUNK_ROWS = 256

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
except ImportError:  # the module stays importable (for its partition functions) without distributed
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


# On the workers: one function per task, pandas partition in, pandas partition out --------------------
def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    import pandas as pd

    return value is pd.NA or value is pd.NaT


def _texts(part, name: str, *, blank_is_missing: bool) -> tuple[list, list[int]]:
    """(items, positions with text) of a partition; anything but text or missing is an error."""
    items = part.tolist()
    present = []
    for i, item in enumerate(items):
        if _missing(item) or (blank_is_missing and isinstance(item, str) and not item.strip()):
            continue
        if not isinstance(item, str):
            raise InvalidRequest(f"{name} takes strings; the row at {part.index[i]!r} is a {type(item).__name__}")
        present.append(i)
    return items, present


def _chunks(texts: list):
    for start in range(0, len(texts), CHUNK_ROWS):
        yield texts[start:start + CHUNK_ROWS]


def embed_partition(part, model: str | None = None, normalize: bool = True):
    """A Series of float32 vectors (NaN rows for missing values), as `%embed` gives rows locally."""
    import pandas as pd

    runtime = runtime_here()
    items, present = _texts(part, "%embed", blank_is_missing=False)
    distinct = list(dict.fromkeys(items[i] for i in present))
    vectors: dict[str, np.ndarray] = {}
    for chunk in _chunks(distinct):
        result = runtime.embed(chunk, model, normalize=normalize)
        vectors.update(zip(chunk, result.vectors))
    dim = (next(iter(vectors.values())).shape[0] if vectors
           else runtime.embed(["dimension"], model).vectors.shape[1])
    nan_row = np.full(dim, np.nan, dtype=np.float32)
    with_text = set(present)
    rows = [vectors[item] if i in with_text else nan_row for i, item in enumerate(items)]
    return pd.Series(rows, index=part.index, name=part.name, dtype=object)


def classify_partition(part, model: str | None = None, labels: list[str] | None = None, truncate: bool = False):
    """A DataFrame `label, score` (NaN for missing or empty rows), as `%classify` gives locally."""
    import pandas as pd

    runtime = runtime_here()
    items, present = _texts(part, "%classify", blank_is_missing=True)
    distinct = list(dict.fromkeys(items[i] for i in present))
    found = {}
    for chunk in _chunks(distinct):
        found.update(zip(chunk, runtime.classify(chunk, model, labels, truncate=truncate).rows))
    with_text = set(present)
    nan = float("nan")
    return pd.DataFrame({
        "label": pd.Series([found[item].label if i in with_text else nan for i, item in enumerate(items)],
                           index=part.index, dtype=object),
        "score": pd.Series([found[item].score if i in with_text else nan for i, item in enumerate(items)],
                           index=part.index, dtype="float64"),
    })


NER_COLUMNS = ["row", "text", "label", "start", "end", "score"]


def _entities(part, model, truncate) -> list[list]:
    runtime = runtime_here()
    items, present = _texts(part, "%ner", blank_is_missing=True)
    distinct = list(dict.fromkeys(items[i] for i in present))
    found = {}
    for chunk in _chunks(distinct):
        found.update(zip(chunk, runtime.ner(chunk, model, truncate=truncate).rows))
    with_text = set(present)
    return [found[item] if i in with_text else [] for i, item in enumerate(items)]


def ner_partition(part, model: str | None = None, truncate: bool = False):
    """The long DataFrame `row, text, label, start, end, score` of the partition's entities."""
    import pandas as pd

    records = [(row, e.text, e.label, e.start, e.end, e.score)
               for row, entities in zip(part.index, _entities(part, model, truncate)) for e in entities]
    table = pd.DataFrame.from_records(records, columns=NER_COLUMNS)
    return table.astype({"start": "int64", "end": "int64", "score": "float64"})


def ner_column_partition(part, model: str | None = None, truncate: bool = False):
    """Each row's entities as a list of dicts (what `%ner --column` stores)."""
    import pandas as pd

    values = [[{"text": e.text, "label": e.label, "start": e.start, "end": e.end, "score": e.score}
               for e in entities] for entities in _entities(part, model, truncate)]
    return pd.Series(values, index=part.index, name=part.name, dtype=object)


PAGE_BREAK = "\f"
BOX_COLUMNS = ["row", "page", "x1", "y1", "x2", "y2", "text", "confidence"]


def _pages(part, model, boxes) -> list[list]:
    runtime = runtime_here()
    items = part.tolist()
    present = [i for i, item in enumerate(items) if not _missing(item)]
    pages_by_row: list[list] = [[] for _ in items]
    for start in range(0, len(present), 4):  # an image takes about a second: small calls
        chunk = present[start:start + 4]
        for page in runtime.ocr([items[i] for i in chunk], model, boxes=boxes).pages:
            pages_by_row[chunk[page.index]].append(page)
    return pages_by_row


def ocr_partition(part, model: str | None = None):
    """Each row's text (a PDF's pages joined by a form feed; empty for missing rows)."""
    import pandas as pd

    texts = [PAGE_BREAK.join(page.text for page in pages) for pages in _pages(part, model, False)]
    return pd.Series(texts, index=part.index, name=part.name, dtype=object)


def ocr_boxes_partition(part, model: str | None = None):
    """The long DataFrame `row, page, x1, y1, x2, y2, text, confidence` of the lines read."""
    import pandas as pd

    records = [(row, page.page, box.x1, box.y1, box.x2, box.y2, box.text, box.confidence)
               for row, pages in zip(part.index, _pages(part, model, True)) for page in pages
               for box in page.boxes or []]
    table = pd.DataFrame.from_records(records, columns=BOX_COLUMNS)
    return table.astype({"page": "int64", "x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64",
                         "confidence": "float64"})


def anomaly_partition(part, fitted: dict, texts: bool):
    """Scores (0..1) and flags of a partition under a fitted detector shipped with the graph."""
    import pandas as pd

    from .tasks import anomaly

    runtime = runtime_here()
    if texts:
        items, present = _texts(part, "%anomaly", blank_is_missing=True)
        data = [items[i] for i in present]
    else:
        present, data = list(range(len(part))), part
    scores = np.full(len(part), np.nan)
    flags = np.zeros(len(part), dtype=bool)
    if present:
        result = anomaly.score_fitted(runtime, fitted, data)
        scores[present] = result.scores
        flags[present] = result.is_anomaly
    return pd.DataFrame({"anomaly_score": scores, "is_anomaly": flags}, index=part.index)

