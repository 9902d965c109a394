"""Where the embedding time goes: torch operator profile of the runtime's backend and of sentence-transformers.

    python bench/profile_embed.py --texts 1000
    python bench/profile_embed.py --smoke
"""

from __future__ import annotations

import time

from _common import MINILM, Row, mixed_texts, parser, print_cpu, print_table, threads


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=None)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    print_cpu()
    n = args.texts or (32 if args.smoke else 1000)
    nthreads = threads(args)

    import torch
    from sentence_transformers import SentenceTransformer
    from torch.profiler import ProfilerActivity, profile

    from universal_kernel import Runtime, RuntimeConfig

    torch.set_num_threads(nthreads)
    texts = list(dict.fromkeys(mixed_texts(n)))  # distinct only: both sides do the same work
    rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads), reaper=False)
    rt.load(MINILM)
    backend = rt.cache.entries()[0].backend
    st = SentenceTransformer(str(backend.spec.path), device="cpu")
    backend.embed(texts[:8]), st.encode(texts[:8])
    walls = {}
    for name, fn in (("runtime backend.embed", lambda: backend.embed(texts)),
                     ("ST.encode(bs=32)", lambda: st.encode(texts, batch_size=32))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            fn()
            walls[name] = time.perf_counter() - start
        print(f"\n### {name}: {len(texts)} distinct texts, {walls[name]:.1f} s wall, {nthreads} threads\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
    names = list(walls)
    print_table("Embedding profile (distinct texts only, one run each)", [
        Row("rows/s on distinct texts", names[0], [len(texts) / walls[names[0]]], names[1],
            [len(texts) / walls[names[1]]], "rows/s")])
    rt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
