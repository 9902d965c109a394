"""Two llama.cpp models in one process: decoding speed of one after the other has run, with universal_kernel's
OpenMP wait policy (universal_kernel/openmp_policy.py) and with libgomp's defaults.

Each case runs in a fresh process (libgomp reads its settings once, when it loads): two runtimes each load
SmolLM2 Q4_1 (two worker threads, as two models of one runtime have), model A streams 128 greedy tokens
(tokens/s as the caller sees them), then model B generates once, then A streams again. With libgomp's
defaults, once the second thread has its own OpenMP team libgomp manages more threads than CPUs and every
one of llama.cpp's barriers sleeps on a futex.

    python bench/openmp_threads.py
    python bench/openmp_threads.py --smoke
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _common import ROOT, Row, parser, print_cpu, print_table, threads

CHILD = r"""
import json, statistics, sys, time, warnings
if sys.argv[1] == "defaults":
    import llama_cpp  # libgomp loads now, with its own defaults (universal_kernel comes too late)
    warnings.simplefilter("ignore", RuntimeWarning)
from universal_kernel import Runtime, RuntimeConfig
nthreads, max_tokens, repeats = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
a, b = (Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads, parallel=1), reaper=False) for _ in range(2))
a.load("smollm2-135m-instruct"); b.load("smollm2-135m-instruct")
params = {"temperature": 0, "max_tokens": max_tokens}
def rate():
    start = time.perf_counter()
    done = a.generate("smollm2-135m-instruct", prompt="Once upon a time", params=params)
    return done.completion_tokens / (time.perf_counter() - start)
rate()
alone = [rate() for _ in range(repeats)]
b.generate("smollm2-135m-instruct", prompt="Hello", params={"temperature": 0, "max_tokens": 4})
after = [rate() for _ in range(repeats)]
a.close(); b.close()
print(json.dumps({"alone": alone, "after": after}))
"""


def case(kind: str, nthreads: int, max_tokens: int, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(nthreads), str(max_tokens), str(repeats)],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    print_cpu()
    nthreads = threads(args)
    max_tokens = 8 if args.smoke else 128
    repeats = args.repeats or (1 if args.smoke else 5)
    ours = case("ours", nthreads, max_tokens, repeats)
    defaults = case("defaults", nthreads, max_tokens, repeats)
    rows = [
        Row("model A after model B ran, universal_kernel's policy vs libgomp's defaults", "policy", ours["after"],
            "defaults", defaults["after"], "tok/s"),
        Row("model A after model B ran vs alone, universal_kernel's policy", "after", ours["after"], "alone",
            ours["alone"], "tok/s", "ratio>=", 0.95),
        Row("model A after model B ran vs alone, libgomp's defaults", "after", defaults["after"], "alone",
            defaults["alone"], "tok/s"),
    ]
    print_table("Two llama.cpp models in one process: OpenMP wait policy", rows, [
        f"SmolLM2-135M-Instruct Q4_1 twice (two runtimes, two worker threads), greedy, max_tokens={max_tokens}, "
        f"{nthreads} threads each; {repeats} runs per measure, each case in a fresh process"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
