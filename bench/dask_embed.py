"""`%embed` of a Dask Series on a LocalCluster(2 workers x 1 thread) against `%embed` of the same
texts on the local runtime with 2 threads.

Both sides use the same two cores and the same model (all-MiniLM-L6-v2); only the overhead of going
through Dask differs: the graph, scheduling, shipping each partition's vectors back to the kernel,
and deduplication only within a partition (the local side embeds each distinct text once in all).
Both sides' embedding caches are emptied before each run; models are loaded before timing.

From Dask's task stream it also prints the overhead per partition (wall time x workers minus the
time spent inside partitions, over the partitions) and, from it, the projected rows/s for N workers:
    rows/s(N) = N x p / (p / r + o)    p rows per partition, r rows/s of one worker inside a partition,
                                      o overhead per partition
which holds while the scheduler and the kernel's network (1.5 KB of float32 per row) keep up.

    python bench/dask_embed.py            # 20,000 texts, 10 % duplicates, 16 partitions, 3 runs per side
    python bench/dask_embed.py --smoke    # 64 texts, 1 run
"""

from __future__ import annotations

import time

import numpy as np

from _common import MINILM, Row, interleaved, magic_shell, median, mixed_texts, parser, print_cpu, print_table


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="texts (default 20,000)")
    p.add_argument("--partitions", type=int, default=None, help="Dask partitions (default 16)")
    args = p.parse_args(argv)
    print_cpu()
    rows = args.rows or (64 if args.smoke else 20_000)
    partitions = args.partitions or (2 if args.smoke else 16)
    repeats = args.repeats or (1 if args.smoke else 3)
    nthreads = args.threads or 2

    import dask.dataframe as dd
    import distributed
    import pandas as pd

    from universal_kernel import Runtime, RuntimeConfig, dask_cluster
    from universal_kernel.tasks.embed import EmbeddingCache

    texts = mixed_texts(rows)
    runtime = Runtime(RuntimeConfig(threads=nthreads, keep_alive=-1))
    shell = magic_shell(runtime)
    frame = pd.DataFrame({"text": texts})
    shell.user_ns["df"] = frame

    with distributed.LocalCluster(n_workers=nthreads, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        shell.user_ns["ddf"] = dd.from_pandas(frame, npartitions=partitions)
        stream: list[dict] = []
        results: dict[str, np.ndarray] = {}

        def clear_workers(dask_worker=None):
            dask_cluster.runtime_here(dask_worker).embedding_cache = EmbeddingCache()

        def local() -> float:
            runtime.embedding_cache = EmbeddingCache()
            started = time.perf_counter()
            results["local"] = shell.run_line_magic("embed", "df.text")
            return rows / (time.perf_counter() - started)

        def on_dask() -> float:
            client.run(clear_workers)
            started = time.perf_counter()
            with distributed.get_task_stream(client) as tasks:
                lazy = shell.run_line_magic("embed", "ddf.text")
                computed = lazy.compute()
            elapsed = time.perf_counter() - started
            results["dask"] = np.stack(computed.tolist())
            inside = [t for t in tasks.data if "embed_partition" in str(t["key"])]
            busy = sum(s["stop"] - s["start"] for t in inside for s in t["startstops"] if s["action"] == "compute")
            stream.append({"wall": elapsed, "busy": busy, "tasks": len(inside)})
            return rows / elapsed

        # warm-up on a few rows: both sides load the model (the workers each their own) before timing
        shell.run_line_magic("embed", "df.text.head(64)")
        shell.user_ns["warm"] = dd.from_pandas(frame.head(16 * nthreads), npartitions=2 * nthreads)
        shell.run_line_magic("embed", "warm.text").compute()
        measured = interleaved({"local": local, "dask": on_dask}, repeats, warmup=False)
        cosine = float((results["dask"] * results["local"]).sum(axis=1).min())

    # time inside partitions, summed over the workers: rows over it is what one worker embeds per second
    one_worker = rows / median([s["busy"] for s in stream])
    overhead = median([(s["wall"] * nthreads - s["busy"]) / max(s["tasks"], 1) for s in stream])
    p_rows = rows / partitions
    projected = {n: n * p_rows / (p_rows / one_worker + overhead) for n in (1, 2, 4, 8, 16, 32)}

    print_table(f"%embed on Dask vs local, {rows:,} texts, {partitions} partitions ({MINILM})", [
        Row("rows/s", "LocalCluster 2x1", measured["dask"], f"local runtime {nthreads} threads",
            measured["local"], unit="rows/s", rule="ratio>=", target=0.9),
    ], notes=[
        f"every row: cosine >= {cosine:.6f} between the two sides",
        f"inside partitions one worker embeds {one_worker:,.0f} rows/s; overhead per partition "
        f"{overhead * 1000:,.0f} ms (wall x workers - time in partitions, over {partitions} partitions)",
        "projected rows/s for N workers (1 thread each, this CPU, "
        f"{p_rows:,.0f} rows per partition): " + ", ".join(f"{n}: {v:,.0f}" for n, v in projected.items()),
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
