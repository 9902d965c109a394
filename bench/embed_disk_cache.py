"""The embedding cache on disk: `%embed` after a kernel restart against computing the rows, and the cost
of writing it on a cold run.

- Restart: 1,500 mixed texts are embedded once into a fresh disk cache; then a new runtime (a new
  kernel: nothing in memory, the model loaded before timing on both sides) embeds them again from
  disk, against a runtime that computes them (disk cache off). Vectors must be identical.
- Fresh kernel: the same rows in a new process, timed from the start of its cell (importing
  universal_kernel included): all on disk (no torch imported, no model loaded: the settings that
  key the rows were recorded by the load that wrote them) against computing them (import, load, embed).
- Cold run: `Runtime.embed` of 3,000 new texts with the disk cache on (an emptied cache each run, so every
  row is computed and written) against the cache off.

    python bench/embed_disk_cache.py            # 1,500 and 3,000 texts, 3 runs per side
    python bench/embed_disk_cache.py --smoke    # 16 texts, 1 run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import MINILM, Row, interleaved, mixed_texts, parser, print_cpu, print_table, threads


#: a fresh kernel's cell: from its start (the import of universal_kernel included) to the vectors
CELL = r"""
import time
started = time.perf_counter()
import json, sys
from universal_kernel import Runtime, RuntimeConfig
folder, texts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
rt = Runtime(RuntimeConfig(embedding_cache_folder=None if folder == "off" else folder, threads=threads))
result = rt.embed(json.load(open(texts_file)), "all-minilm-l6-v2")
elapsed = time.perf_counter() - started
print(json.dumps({"s": elapsed, "computed": result.stats.rows_computed, "torch": "torch" in sys.modules,
                  "loads": rt.cache.loads}))
"""


def fresh_kernel(folder: Path | str, texts_file: Path, nthreads: int) -> dict:
    """One new process embedding the texts in `texts_file`, its cell timed from its start."""
    env = dict(os.environ, UNIVERSAL_KERNEL_EMBEDDING_CACHE="off")  # the cell says which folder
    done = subprocess.run([sys.executable, "-c", CELL, str(folder), str(texts_file), str(nthreads)], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    print_cpu()
    restart_rows = 16 if args.smoke else 1_500
    cold_rows = 16 if args.smoke else 3_000
    repeats = args.repeats or (1 if args.smoke else 3)

    from universal_kernel import Runtime, RuntimeConfig
    from universal_kernel.tasks.embed import EmbeddingCache

    folder = Path(tempfile.mkdtemp(prefix="uk-bench-embeddings-"))
    nthreads = threads(args)

    def runtime(cache: Path | None) -> Runtime:
        rt = Runtime(RuntimeConfig(embedding_cache_folder=cache, keep_alive=-1, threads=nthreads))
        rt.load(MINILM)
        return rt

    # After a restart: the rows are on disk; a new runtime reads them, another computes them
    texts = mixed_texts(restart_rows, seed=7)
    first = runtime(folder / "restart")
    stored = first.embed(texts, MINILM).vectors
    first.close()
    reader, computer = runtime(folder / "restart"), runtime(None)
    vectors = {}

    def from_disk() -> float:
        reader.embedding_cache = EmbeddingCache()  # a new kernel: nothing in memory
        started = time.perf_counter()
        result = reader.embed(texts, MINILM)
        elapsed = time.perf_counter() - started
        assert result.stats.rows_computed == 0
        vectors["disk"] = result.vectors
        return elapsed

    def computing() -> float:
        computer.embedding_cache = EmbeddingCache()
        started = time.perf_counter()
        vectors["computed"] = computer.embed(texts, MINILM).vectors
        return time.perf_counter() - started

    restart = interleaved({"disk": from_disk, "computed": computing}, repeats, warmup=False)
    identical = bool(np.array_equal(vectors["disk"], stored))
    reader.close()

    # A fresh kernel: a new process, nothing imported beyond Python, its cell timed from its start
    texts_file = folder / "restart-texts.json"
    texts_file.write_text(json.dumps(texts))
    fresh_runs: dict[str, list] = {"disk": [], "computed": []}

    def fresh(side: str) -> float:
        report = fresh_kernel(folder / "restart" if side == "disk" else "off", texts_file, nthreads)
        fresh_runs[side].append(report)
        return report["s"]

    fresh_times = interleaved({"disk": lambda: fresh("disk"), "computed": lambda: fresh("computed")}, repeats,
                              warmup=False)
    no_model = all(not r["torch"] and r["loads"] == 0 and r["computed"] == 0 for r in fresh_runs["disk"])

    # A cold run: every row computed, with the cache written (on) or not (off)
    cold = mixed_texts(cold_rows, seed=11)
    with_store = runtime(folder / "cold")

    def cold_on() -> float:
        with_store.embedding_cache = EmbeddingCache()
        with_store.embedding_store.clear()
        started = time.perf_counter()
        with_store.embed(cold, MINILM)
        return cold_rows / (time.perf_counter() - started)

    def cold_off() -> float:
        computer.embedding_cache = EmbeddingCache()
        started = time.perf_counter()
        computer.embed(cold, MINILM)
        return cold_rows / (time.perf_counter() - started)

    cold_runs = interleaved({"on": cold_on, "off": cold_off}, repeats, warmup=not args.smoke)
    with_store.close()
    computer.close()

    print_table(f"embedding cache on disk ({MINILM}, {nthreads} threads)", [
        Row(f"Runtime.embed of {restart_rows:,} texts after a restart", "from disk", restart["disk"],
            "computed", restart["computed"], unit="s", rule="ratio<=", target=1 / 20,
            note="ratio is time: <= 0.05 means >= 20x faster"),
        Row(f"fresh kernel: a cell embedding {restart_rows:,} texts", "from disk", fresh_times["disk"],
            "computed", fresh_times["computed"], unit="s", rule="ratio<=", target=1 / 20,
            note="a new process each; timed from the cell's start, import of universal_kernel included"),
        Row(f"cold run of {cold_rows:,} new texts", "disk cache on", cold_runs["on"], "off", cold_runs["off"],
            unit="rows/s", rule="ratio>=", target=0.97),
    ], notes=[f"vectors read from disk identical to those stored: {identical}",
              f"fresh kernel from disk: no torch imported, no model loaded, no row computed: {no_model}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
