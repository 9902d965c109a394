"""Embedding rows/s: the runtime's `embed` against `SentenceTransformer.encode(batch_size=32)`.

Same model folder (all-MiniLM-L6-v2), same inputs, same torch threads, one process, sides
interleaved. The runtime's cross-call embedding cache is emptied before each of its runs, so only
the within-call deduplication (identical texts embedded once) helps it. The ratio counts only when
every row agrees with sentence-transformers to cosine >= 0.9999.

    python bench/embed_throughput.py            # 20,000 texts, 3 runs per side
    python bench/embed_throughput.py --texts 3000 --repeats 1   # short

A third side, `backend="onnx"` (ONNX Runtime fp32, backends/onnx_encoder.py), runs against the same peer:
its goal is 2.0x on a CPU with bf16 (AVX512_BF16 or AMX), 1.5x elsewhere. Its export is made (or found)
before anything is timed, in the user's converted-weights cache.
    python bench/embed_throughput.py --smoke    # 16 texts, 1 run
"""

from __future__ import annotations

import time

import numpy as np

from _common import MINILM, Row, interleaved, median, mixed_texts, parser, print_cpu, print_table, threads


def encoder_flops(config, lengths: np.ndarray) -> float:
    """Multiply-adds x2 of a BERT-style encoder over sequences of these lengths, with no padding.

    Per token: the Q, K, V and output projections and the two feed-forward matrices; per sequence:
    the two attention products, which grow with the square of its length.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * h * h + 2 * h * i)
    per_square = 2 * 2 * h
    return float(layers * (per_token * lengths.sum() + per_square * (lengths.astype(np.float64) ** 2).sum()))


def gemm_rate(config, nthreads: int, seconds: float = 1.0) -> float:
    """FLOP/s that torch's fp32 matrix product reaches here on the encoder's feed-forward shape."""
    import torch

    torch.set_num_threads(nthreads)
    a, b = torch.randn(1024, config.hidden_size), torch.randn(config.hidden_size, config.intermediate_size)
    bias = torch.randn(config.intermediate_size)
    for _ in range(3):
        torch.addmm(bias, a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.addmm(bias, a, b)
        runs += 1
    return 2 * 1024 * config.hidden_size * config.intermediate_size * runs / (time.perf_counter() - start)


def padded_tokens_of_peer(texts: list[str], lengths: dict[str, int], batch_size: int = 32) -> int:
    """Tokens sentence-transformers computes: it sorts by character length and pads each batch of 32."""
    order = sorted(texts, key=len, reverse=True)
    return sum(max(lengths[t] for t in order[i:i + batch_size]) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=None, help="number of texts (default 20,000)")
    p.add_argument("--duplicates", type=float, default=0.1, help="share of texts repeating an earlier one")
    args = p.parse_args(argv)
    print_cpu()
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
    rt.load(MINILM, backend="onnx")  # exports once, before anything is timed
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

    def onnx() -> float:
        rt.embedding_cache._rows.clear()
        start = time.perf_counter()
        vectors = rt.embed(texts, MINILM, backend="onnx").vectors
        elapsed = time.perf_counter() - start
        out["onnx"] = vectors
        return n / elapsed

    def peer() -> float:
        start = time.perf_counter()
        vectors = st.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        elapsed = time.perf_counter() - start
        out["peer"] = vectors
        return n / elapsed

    # Agreement first: a ratio means nothing if the vectors differ.
    ours(), onnx(), peer()

    def cosines(a):
        b = out["peer"].astype(np.float32)
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    cos, onnx_cos = cosines(out["ours"]), cosines(out["onnx"])
    agree, onnx_agrees = bool(np.all(cos >= 0.9999)), bool(np.all(onnx_cos >= 0.9999))

    # What the hardware allows: every distinct text's FLOPs at the rate of a large matrix product,
    # no padding and no time outside matrix products. No implementation of the runtime can pass it.
    backend = next(e.backend for e in rt.cache.entries() if e.backend_name == "transformers")  # torch's
    onnx_status = next(m for m in rt.status()["models"] if m["backend"] == "onnx")
    lengths = {t: backend.count_tokens(t) for t in set(texts)}
    distinct_lengths = np.fromiter(lengths.values(), dtype=np.int64)
    rate = gemm_rate(backend.model.config, nthreads)
    ceiling_s = encoder_flops(backend.model.config, distinct_lengths) / rate
    peer_padded = padded_tokens_of_peer(texts, lengths)

    results = interleaved({"ours": ours, "onnx": onnx, "peer": peer}, repeats, warmup=False)
    row = Row("embedding throughput", "runtime.embed", results["ours"], "ST.encode(bs=32)", results["peer"],
              "rows/s", "ratio>=", 1.5 if agree else float("inf"))
    from universal_kernel.machine import cpu_has_bf16

    onnx_goal = 2.0 if cpu_has_bf16() else 1.5
    onnx_row = Row("embedding throughput, ONNX Runtime", "embed(backend=onnx)", results["onnx"], "ST.encode(bs=32)",
                   results["peer"], "rows/s", "ratio>=", onnx_goal if onnx_agrees else float("inf"))
    print_table(
        f"Embedding: all-MiniLM-L6-v2, {n:,} mixed texts ({distinct:,} distinct), {nthreads} threads",
        [row, onnx_row],
        [f"cosine vs sentence-transformers: min {cos.min():.6f}, rows below 0.9999: {int(np.sum(cos < 0.9999))}"
         f" -> {'agree' if agree else 'DISAGREE: the ratio does not count'}",
         f"onnx: {onnx_status['engine']}, {onnx_status['precision_reason']}; cosine vs sentence-transformers: "
         f"min {onnx_cos.min():.7f} -> {'agree' if onnx_agrees else 'DISAGREE: the ratio does not count'}",
         f"runs per side: {repeats} (interleaved, after one unmeasured run each for the cosine check)",
         f"tokens computed: ours {int(distinct_lengths.sum()):,} (distinct texts, no padding), "
         f"peer {peer_padded:,} (every text, padded in batches of 32)",
         f"ceiling: {n / ceiling_s:.1f} rows/s = every distinct text's FLOPs at the fp32 matrix-product rate "
         f"measured here ({rate / 1e9:.1f} GFLOP/s), with no time outside matrix products; "
         f"{n / ceiling_s / median(results['peer']):.3f}x the peer's median"],
    )
    rt.close()
    return 0 if agree and onnx_agrees else 1


if __name__ == "__main__":
    raise SystemExit(main())
