"""Embedding rows/s: the runtime's `embed` against `SentenceTransformer.encode(batch_size=32)`.

Same model folder (all-MiniLM-L6-v2), same inputs, same torch threads, one process, sides
interleaved. The runtime's cross-call embedding cache is emptied before each of its runs, so only
the within-call deduplication (identical texts embedded once) helps it. The ratio counts only when
every row agrees with sentence-transformers to cosine >= 0.9999.

    python bench/embed_throughput.py            # 20,000 texts, 3 runs per side
    python bench/embed_throughput.py --smoke    # 16 texts, 1 run
"""

from __future__ import annotations

import time

import numpy as np

from _common import MINILM, Row, interleaved, mixed_texts, parser, print_table, threads


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=None, help="number of texts (default 20,000)")
    p.add_argument("--duplicates", type=float, default=0.1, help="share of texts repeating an earlier one")
    args = p.parse_args(argv)
    n = args.texts or (16 if args.smoke else 20_000)
    repeats = args.repeats or (1 if args.smoke else 3)
    nthreads = threads(args)

    import torch
    from sentence_transformers import SentenceTransformer

    from universal_kernel import Runtime, RuntimeConfig
    from universal_kernel.references import BUILTIN_ALIASES

    torch.set_num_threads(nthreads)
    folder = BUILTIN_ALIASES[MINILM][0]()
    texts = mixed_texts(n, duplicates=args.duplicates)
    distinct = len(set(texts))

    rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads), reaper=False)
    rt.load(MINILM)
    st = SentenceTransformer(str(folder), device="cpu")
    torch.set_num_threads(nthreads)

    out: dict[str, np.ndarray] = {}

    def ours() -> float:
        rt.embedding_cache._rows.clear()  # a cold cache: no help from earlier runs
        start = time.perf_counter()
        vectors = rt.embed(texts, MINILM).vectors
        elapsed = time.perf_counter() - start
        out["ours"] = vectors
        return n / elapsed

    def peer() -> float:
        start = time.perf_counter()
        vectors = st.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        elapsed = time.perf_counter() - start
        out["peer"] = vectors
        return n / elapsed

    # Agreement first: a ratio means nothing if the vectors differ.
    ours(), peer()
    a, b = out["ours"], out["peer"].astype(np.float32)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    agree = bool(np.all(cos >= 0.9999))

    results = interleaved({"ours": ours, "peer": peer}, repeats, warmup=False)
    row = Row("embedding throughput", "runtime.embed", results["ours"], "ST.encode(bs=32)", results["peer"],
              "rows/s", "ratio>=", 1.5 if agree else float("inf"))
    print_table(
        f"Embedding: all-MiniLM-L6-v2, {n:,} mixed texts ({distinct:,} distinct), {nthreads} threads",
        [row],
        [f"cosine vs sentence-transformers: min {cos.min():.6f}, rows below 0.9999: {int(np.sum(cos < 0.9999))}"
         f" -> {'agree' if agree else 'DISAGREE: the ratio does not count'}",
         f"runs per side: {repeats} (interleaved, after one unmeasured run each for the cosine check)"],
    )
    rt.close()
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
