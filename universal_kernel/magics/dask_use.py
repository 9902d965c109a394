"""`%runtime use dask [ADDRESS]`: the Dask cluster that row-wise magics send Dask collections to."""

from __future__ import annotations

from IPython.core.error import UsageError


def use_dask(magics, rest: list[str]):
    if len(rest) > 1:
        raise UsageError("usage: %runtime use dask [ADDRESS]  (ADDRESS: the scheduler, tcp://host:8786)")
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UsageError("Dask is not installed: pip install 'universal-kernel[dask]'")
    from ..dask_cluster import connect
    from ..errors import RuntimeFailure

    before = getattr(magics, "dask_client", None)
    try:
        # run again with the same address: the client in use stays (no second connection to the cluster)
        client = before if rest and _connected_to(before, rest[0]) else connect(rest[0] if rest else None)
    except RuntimeFailure as exc:  # nothing changed: say where Dask work still goes
        still = (f"the cluster at {before.scheduler.address}" if before is not None and before.status == "running"
                 else "the current distributed.Client, if any")
        raise UsageError(f"{exc.message}; Dask collections still go to {still}") from None
    magics.dask_client = client
    workers = client.scheduler_info().get("workers") or {}
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    print(f"Dask collections go to the cluster at {client.scheduler.address} "
          f"({len(workers)} worker{'' if len(workers) == 1 else 's'}, {threads} thread{'' if threads == 1 else 's'}); "
          f"other work stays on the {'server' if magics.use_server else 'in-process'} runtime")
    return None


def _connected_to(client, address: str) -> bool:
    """Whether `client` is running and talks to the scheduler at `address` (tcp:// assumed, as Dask does)."""
    if client is None or client.status != "running":
        return False
    from distributed.comm.addressing import normalize_address

    try:
        return normalize_address(address) == client.scheduler.address
    except ValueError:
        return False
