"""The row-wise magics on a Dask DataFrame or Series: lazy results computed on the cluster.

When EXPR is a Dask collection, `%embed`, `%classify`, `%ner`, `%ocr` and `%anomaly --model NAME`
build a lazy result with `map_partitions` (the functions in `universal_kernel.dask_cluster` run on
the workers, one runtime per worker process) instead of computing anything here. The cluster is the
one `%runtime use dask` chose, else the current `distributed.Client`; the workers are asked first
whether they have the model, so a missing model is a one-line error now rather than at `.compute()`.
With no client at all the graph still builds, and runs on whichever scheduler computes it.
"""

from __future__ import annotations

from IPython.core.error import UsageError

from .rows import column_target


def is_dask(value) -> bool:
    """A Dask DataFrame or Series (checked without importing dask)."""
    return type(value).__module__.split(".")[0] == "dask" and hasattr(value, "map_partitions")


class DaskRows:
    """The Dask side of the row magics for one magics object (its `%runtime use dask` client)."""

    def __init__(self, magics=None):
        self.magics = magics

    # Where the work goes -------------------------------------------------------------------------
    def _prepare(self, task: str | None, model: str | None, args) -> str:
        """Install the workers' runtimes and check the model on them (a task of None needs no model: numeric
        anomaly scoring); a phrase saying where the work runs."""
        if getattr(args, "server", False):
            raise UsageError("--server does not apply to a Dask collection: it is computed on its Dask cluster")
        from .. import dask_cluster

        client = dask_cluster.current_client(getattr(self.magics, "dask_client", None))
        if client is None:
            return "lazy; computed by the scheduler you compute it with"
        dask_cluster.install(client, self._config())
        if task is None:
            return f"lazy on the Dask cluster at {client.scheduler.address}"
        workers = dask_cluster.check_workers(client, task, model)
        return f"lazy on the Dask cluster at {client.scheduler.address} ({workers} worker{'s' if workers != 1 else ''})"

    @staticmethod
    def _series(value, name: str):
        import dask.dataframe as dd

        if isinstance(value, dd.DataFrame):
            raise UsageError(f"{name} takes a column, not a DataFrame: use ddf.text or ddf['text']")
        return value

    @staticmethod
    def _frame(shell, expr: str):
        """The Dask DataFrame that `--column` writes into: EXPR must be one of its columns."""
        import dask.dataframe as dd

        return column_target(shell, expr, dd.DataFrame, example="ddf")

    def _config(self):
        return self.magics.local_runtime().config if self.magics is not None else _process_config()

    def _model_name(self, task: str, model: str | None) -> str:
        """The model the workers will use: `model`, else the task's default (the workers' runtimes are
        installed with this runtime's config), named as the eager magics name it."""
        if model:
            return model
        from ..tasks import task_parts

        return task_parts(task).default_model(self._config())

    @staticmethod
    def _report(model: str, value, where: str) -> None:
        parts = value.npartitions
        print(f"{model} \u00b7 {parts} partition{'s' if parts != 1 else ''} \u00b7 {where}: "
              f"call .compute() (or .persist()) for the rows")

    @staticmethod
    def _deliver(shell, result, args, stored: bool):
        if args.out:
            shell.user_ns[args.out] = result
        return None if (args.out or stored) else result

    # The magics ----------------------------------------------------------------------------------
    def embed(self, shell, expr: str, value, args, model: str | None):
        import pandas as pd

        from ..dask_cluster import embed_partition

        series = self._series(value, "%embed")
        frame = self._frame(shell, expr) if args.column else None
        where = self._prepare("embed", model, args)
        result = series.map_partitions(embed_partition, model=model, normalize=not args.no_normalize,
                                       meta=pd.Series([], dtype=object, name=series.name))
        self._report(self._model_name("embed", model), series, where)
        if frame is not None:
            frame[args.column] = result
        return self._deliver(shell, result, args, frame is not None)

    def classify(self, shell, expr: str, value, args, labels):
        import pandas as pd

        from ..dask_cluster import classify_partition

        series = self._series(value, "%classify")
        frame = self._frame(shell, expr) if args.column else None
        where = self._prepare("classify", args.model, args)
        meta = pd.DataFrame({"label": pd.Series([], dtype=object), "score": pd.Series([], dtype="float64")})
        result = series.map_partitions(classify_partition, model=args.model, labels=labels,
                                       truncate=args.truncate, meta=meta)
        self._report(self._model_name("classify", args.model), series, where)
        if frame is not None:
            frame[args.column] = result["label"]
            frame[f"{args.column}_score"] = result["score"]
        return self._deliver(shell, result, args, frame is not None)

    def ner(self, shell, expr: str, value, args):
        import pandas as pd

        from ..dask_cluster import NER_COLUMNS, ner_column_partition, ner_partition

        series = self._series(value, "%ner")
        frame = self._frame(shell, expr) if args.column else None
        where = self._prepare("ner", args.model, args)
        self._report(self._model_name("ner", args.model), series, where)
        if frame is not None:
            frame[args.column] = series.map_partitions(ner_column_partition, model=args.model,
                                                       truncate=args.truncate,
                                                       meta=pd.Series([], dtype=object, name=args.column))
            return self._deliver(shell, frame[args.column], args, True)
        meta = pd.DataFrame({"row": pd.Series([], dtype=series._meta.index.dtype),
                             "text": pd.Series([], dtype=object), "label": pd.Series([], dtype=object),
                             "start": pd.Series([], dtype="int64"), "end": pd.Series([], dtype="int64"),
                             "score": pd.Series([], dtype="float64")})[NER_COLUMNS]
        result = series.map_partitions(ner_partition, model=args.model, truncate=args.truncate, meta=meta,
                                       clear_divisions=True)
        return self._deliver(shell, result, args, False)

    def ocr(self, shell, expr: str, value, args):
        import pandas as pd

        from ..dask_cluster import BOX_COLUMNS, ocr_boxes_partition, ocr_partition

        series = self._series(value, "%ocr")
        frame = self._frame(shell, expr) if args.column else None
        if args.boxes and frame is not None:
            raise UsageError("%ocr on a Dask collection: --boxes gives a long DataFrame of lines; "
                             "--column stores texts (leave out --boxes)")
        where = self._prepare("ocr", args.model, args)
        self._report(self._model_name("ocr", args.model), series, where)
        if args.boxes:
            meta = pd.DataFrame({"row": pd.Series([], dtype=series._meta.index.dtype),
                                 "page": pd.Series([], dtype="int64"),
                                 **{c: pd.Series([], dtype="float64") for c in ("x1", "y1", "x2", "y2")},
                                 "text": pd.Series([], dtype=object),
                                 "confidence": pd.Series([], dtype="float64")})[BOX_COLUMNS]
            result = series.map_partitions(ocr_boxes_partition, model=args.model, meta=meta, clear_divisions=True)
        else:
            result = series.map_partitions(ocr_partition, model=args.model,
                                           meta=pd.Series([], dtype=object, name=series.name))
        if frame is not None:
            frame[args.column] = result
        return self._deliver(shell, result, args, frame is not None)

    def anomaly(self, shell, expr: str, value, args, runtime):
        import dask.dataframe as dd
        import pandas as pd

        from ..dask_cluster import anomaly_partition
        from ..tasks import anomaly

        if not args.model:
            raise UsageError("%anomaly on a Dask collection scores with a kept detector: fit one on a sample "
                             "that fits in memory (%anomaly --fit NAME sample), then %anomaly ddf --model NAME")
        if isinstance(value, dd.DataFrame):
            texts = False
            frame = value if args.column else None
            # a cell run again: the columns its first run wrote are its output, not data
            own = [c for c in (args.column, f"{args.column}_is_anomaly") if args.column and c in value.columns]
            value = value.drop(columns=own) if own else value
            other = [str(c) for c, dtype in value.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
            if other:
                raise UsageError(f"%anomaly takes numeric columns; {', '.join(other)} are not: select them "
                                 f"(ddf.select_dtypes('number')) or pass one text column (ddf.text)")
        else:
            texts = not pd.api.types.is_numeric_dtype(value.dtype)
            frame = self._frame(shell, expr) if args.column else None
        # the detector is read (its signature checked) here and travels with the graph to the workers
        local = self.magics.local_runtime() if self.magics is not None else runtime
        fitted = anomaly.load_fitted(local, args.model)
        detector_model = fitted["detector"].get("text_model")
        where = self._prepare("embed", detector_model, args) if texts else self._prepare(None, None, args)
        meta = pd.DataFrame({"anomaly_score": pd.Series([], dtype="float64"),
                             "is_anomaly": pd.Series([], dtype=bool)})
        scored = value.map_partitions(anomaly_partition, fitted=fitted, texts=texts, meta=meta)
        self._report(args.model, value, where)
        if frame is not None:
            frame[args.column] = scored["anomaly_score"]
            frame[f"{args.column}_is_anomaly"] = scored["is_anomaly"]
        return self._deliver(shell, scored["anomaly_score"], args, frame is not None)


def _process_config():
    from ..runtime import get_runtime

    return get_runtime().config


def for_shell(shell) -> DaskRows:
    """The Dask side for the magics registered in `shell` (their `%runtime use dask` client)."""
    registry = getattr(getattr(shell, "magics_manager", None), "registry", {}) or {}
    return DaskRows(registry.get("UniversalKernelMagics"))
