"""The SmolLM2 GGUF in the transformers backend: second load (converted-weights cache) vs first (dequantising).

Each repetition uses a fresh, empty convert cache: the first load dequantises the GGUF and saves
the converted weights, the second reads them back. Libraries are imported before any timing.
Both loads must then answer a greedy prompt with the same text.

    python bench/transformers_gguf_load.py            # 2 repetitions
    python bench/transformers_gguf_load.py --smoke    # resolves and checks the path only (a first load takes ~35 s)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import SMOLLM, Row, parser, print_cpu, print_table, threads

PROMPT = "Which city is the capital of France?"


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    print_cpu()
    repeats = args.repeats or 2
    nthreads = threads(args)

    from universal_kernel import Runtime, RuntimeConfig

    if args.smoke:
        spec = Runtime(RuntimeConfig(keep_alive=-1), reaper=False).resolve(SMOLLM)
        assert spec.format == "gguf" and spec.task == "generate", spec
        print_table("Transformers GGUF load (smoke: no load)", [], [f"would load {spec.path}"])
        return 0

    import gguf  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    firsts, seconds, same = [], [], []
    sources = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads, convert_cache=Path(cache)), reaper=False)
            texts = []
            for bucket in (firsts, seconds):
                start = time.perf_counter()
                rt.load(SMOLLM, backend="transformers")
                bucket.append(time.perf_counter() - start)
                sources.append(rt.cache.entries()[0].backend.loaded_from)
                texts.append(rt.generate(SMOLLM, messages=[{"role": "user", "content": PROMPT}], backend="transformers",
                                         params={"temperature": 0, "max_tokens": 24}).text)
                rt.unload(SMOLLM)
            same.append(texts[0] == texts[1])
            rt.close()
    rows = [Row("transformers GGUF load", "second load", seconds, "first load", firsts, "s", "ratio<=", 0.2)]
    print_table("Transformers backend: SmolLM2 GGUF second load vs first", rows, [
        f"loaded from: {sources}; same greedy answer after both loads: {same}",
        f"repetitions: {repeats}, each with a fresh convert cache; {nthreads} threads",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
