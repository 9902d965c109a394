"""Memory: process RSS after unloading a model against RSS before loading it.

Each model runs in its own fresh subprocess. Before the first load the subprocess imports the
backend's libraries (llama_cpp; torch, transformers and the model's classes): Python never unloads
a module, so that part of the first load is not the model's to give back. Then, for each cycle:
`release_memory()`, RSS before; load, one request; unload (the runtime's own close + release path);
RSS after. The table shows the first cycle (cold) and the median over the later cycles.

    python bench/memory.py            # MiniLM, SmolLM2 on llama.cpp, SmolLM2 GGUF on transformers; 3 cycles
    python bench/memory.py --smoke    # MiniLM and SmolLM2 on llama.cpp, 1 cycle
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import MINILM, SMOLLM, Row, parser, print_cpu, print_table

MiB = 2**20

CASES = {
    "minilm-transformers": (MINILM, "auto"),
    "smollm2-llama_cpp": (SMOLLM, "auto"),
    "smollm2-gguf-transformers": (SMOLLM, "transformers"),
}


def child(case: str, cycles: int, convert_cache: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from universal_kernel import Runtime, RuntimeConfig
    from universal_kernel.devices import process_rss, release_memory

    model, backend = CASES[case]
    if backend == "transformers" or model == MINILM:
        import torch  # noqa: F401
        import transformers

        if model == MINILM:
            from transformers.models.bert import modeling_bert  # noqa: F401
        else:
            import gguf  # noqa: F401
            from transformers.models.llama import modeling_llama  # noqa: F401
        transformers.AutoTokenizer  # noqa: B018  (resolves the lazy module)
    else:
        import jinja2  # noqa: F401
        import llama_cpp  # noqa: F401
        from llama_cpp import llama_chat_format  # noqa: F401
    rt = Runtime(RuntimeConfig(keep_alive=-1, convert_cache=Path(convert_cache)), reaper=False)
    out = []
    for _ in range(cycles):
        release_memory()
        before = process_rss()
        rt.load(model, backend=backend)
        if model == MINILM:
            rt.embed([f"sentence number {i}" for i in range(64)], model)
        else:
            rt.generate(model, prompt="Which city is the capital of France?",
                        params={"temperature": 0, "max_tokens": 16}, backend=backend)
        loaded = process_rss()
        rt.unload(model)
        release_memory()
        out.append({"before": before, "loaded": loaded, "after": process_rss()})
    print("RESULT " + json.dumps(out))


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse_hidden())
    p.add_argument("--convert-cache", default=None)
    p.add_argument("--cases", default=None, help="comma-separated: " + ",".join(CASES))
    args = p.parse_args(argv)
    print_cpu()
    cycles = args.repeats or (1 if args.smoke else 3)
    if args.child:
        child(args.child, cycles, args.convert_cache)
        return 0
    cases = args.cases.split(",") if args.cases else (
        ["minilm-transformers", "smollm2-llama_cpp"] if args.smoke else list(CASES))
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as cache:
        for case in cases:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--repeats", str(cycles),
                   "--convert-cache", cache]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(proc.stdout, proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{case} failed")
            data = json.loads(line[7:])
            first = data[0]
            rows.append(Row(f"{case}, first cycle", "after unload", [first["after"] / MiB], "before load",
                            [first["before"] / MiB], "MiB", "ratio<=", 1.05))
            if len(data) > 1:
                rows.append(Row(f"{case}, later cycles", "after unload", [d["after"] / MiB for d in data[1:]],
                                "before load", [d["before"] / MiB for d in data[1:]], "MiB", "ratio<=", 1.05))
            notes.append(f"{case}: loaded " + ", ".join(f"{d['loaded'] / MiB:.0f}" for d in data) + " MiB")
    print_table("Memory: RSS after unload vs before load (fresh process per model)", rows,
                notes + [f"cycles per model: {cycles}"])
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
