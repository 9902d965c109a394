"""Shared helpers for the benchmarks: deterministic inputs, interleaved timing, the result table."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Benchmarks measure computing: the embedding cache on disk stays off unless a benchmark turns it on
os.environ.setdefault("UNIVERSAL_KERNEL_EMBEDDING_CACHE", "off")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMOLLM = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"

_WORDS = """
the of and to in is was for on that with as by at from his her an be are which this or it had not
but were have they one all their there been has more when who will would can if no out so said what
up its about than into them only some could time two may then do first any new people like other
over such years most also after made many before must through back where much your way well down
should because each just those how too little state good very make world still own see men work long
get here between both life being under never day same another know while last might great old year
off come since against go came right used take three city water house small large century church
river market school village region music family history system language energy network model data
research science theory design report market policy company service program product computer
engine garden kitchen summer winter morning evening mountain island forest valley ocean harbour
bridge station railway airport library museum theatre concert festival election council minister
government court police army battle war peace treaty empire kingdom republic province county
district university college student teacher doctor hospital patient disease medicine vaccine
protein cell gene species animal plant tree flower bird fish insect weather climate storm rain
snow wind temperature pressure surface structure material metal glass paper cotton wool silk
stone brick wooden iron steel copper silver golden bright dark quick slow quiet loud simple
complex modern ancient early late northern southern eastern western central local national
international public private social economic political cultural natural technical digital
""".split()

_TITLES = ["Notes on", "A guide to", "Report:", "Why", "How to", "The history of", "Review:", "On"]


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def mixed_texts(n: int, seed: int = 0, duplicates: float = 0.1) -> list[str]:
    """`n` texts, short titles to long paragraphs, about `duplicates` of them repeating earlier ones.

    Deterministic for a seed. Mix by count: 35 % titles (2-8 words), 30 % single sentences, 25 %
    paragraphs of 3-6 sentences, 10 % long paragraphs of 8-16 sentences (past the 256-token limit).
    """
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < duplicates:
            texts.append(rng.choice(texts))
            continue
        kind = rng.random()
        if kind < 0.35:
            text = f"{rng.choice(_TITLES)} {' '.join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8)))}"
        elif kind < 0.65:
            text = _sentence(rng, 8, 25)
        elif kind < 0.90:
            text = " ".join(_sentence(rng, 8, 20) for _ in range(rng.randint(3, 6)))
        else:
            text = " ".join(_sentence(rng, 10, 25) for _ in range(rng.randint(8, 16)))
        texts.append(text)
    return texts


def interleaved(sides: dict[str, Callable[[], float]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run each side's callable in turn, A, B, A, B, ...; each returns one measurement."""
    if warmup:
        for fn in sides.values():
            fn()
    results: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(repeats):
        names = list(sides) if i % 2 == 0 else list(reversed(sides))  # ABBA: no side always goes first
        for name in names:
            results[name].append(sides[name]())
            print(f"  run {i + 1}/{repeats} {name}: {results[name][-1]:.4g}", file=sys.stderr, flush=True)
    return results


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def rate(n: int, fn: Callable[[], object]) -> float:
    """Items per second of one call of `fn` over `n` items."""
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def magic_shell(runtime):
    """An IPython shell with the extension loaded, its magics on `runtime`."""
    from IPython.core.interactiveshell import InteractiveShell

    from universal_kernel.magics import get_magics

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "universal_kernel")
    get_magics(shell).set_local_runtime(runtime)
    return shell


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """min-max as a percentage of the median."""
    if not values:
        return "-"
    m = median(values)
    if not m:
        return "-"
    return f"{(min(values) - m) / m * 100:+.1f}%/{(max(values) - m) / m * 100:+.1f}%"


@dataclass
class Row:
    measure: str
    ours_label: str
    ours: list[float]
    peer_label: str
    peer: list[float]
    unit: str
    #: "ratio>=" (ours/peer at least target), "ratio<=" (ours/peer at most), "diff<=" (ours-peer at most),
    #: "value<" (ours below target)
    rule: str = ""
    target: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        p = median(self.peer)
        return median(self.ours) / p if p else float("nan")

    @property
    def diff(self) -> float:
        return median(self.ours) - median(self.peer)

    def verdict(self) -> str:
        if self.target is None or not self.rule:
            return ""
        if self.rule == "value<":
            ok = median(self.ours) < self.target
        elif self.rule == "ratio>=":
            ok = self.ratio >= self.target
        elif self.rule == "ratio<=":
            ok = self.ratio <= self.target
        else:
            ok = self.diff <= self.target
        return "PASS" if ok else "MISS"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        if self.rule == "diff<=":
            return f"diff <= {self.target:g} {self.unit}"
        if self.rule == "value<":
            return f"ours < {self.target:g} {self.unit}"
        return f"ratio {self.rule[-2:]} {self.target:g}"


def _fmt(x: float) -> str:
    if x != x:
        return "nan"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.3f}"
    return f"{x:.4f}"


def print_table(title: str, rows: list[Row], notes: list[str] = ()) -> None:
    header = ["measure", "ours (median)", "spread", "peer (median)", "spread", "n", "ratio", "diff", "target", ""]
    lines = []
    for r in rows:
        lines.append([
            r.measure,
            f"{r.ours_label}: {_fmt(median(r.ours))} {r.unit}",
            spread(r.ours),
            f"{r.peer_label}: {_fmt(median(r.peer))} {r.unit}",
            spread(r.peer),
            f"{len(r.ours)}/{len(r.peer)}",
            f"{r.ratio:.3f}",
            f"{_fmt(r.diff)}",
            r.target_text(),
            r.verdict(),
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for l in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(l, widths)) + " |")
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


#: the CPU features that decide which kernels llama.cpp and torch use (SPEC: benchmarks print them)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name, logical cores and whether it has each of `CPU_FLAGS` ("amx": any amx_* flag)."""
    model, flags = "unknown", set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    has = {flag: flag in flags for flag in CPU_FLAGS}
    has["amx"] = any(f.startswith("amx") for f in flags)
    return {"model": model, "cores": os.cpu_count() or 0, **has}


def cpu_line(info: dict | None = None) -> str:
    info = cpu_info() if info is None else info
    flags = ", ".join(f"{flag} {'yes' if info[flag] else 'no'}" for flag in CPU_FLAGS)
    return f"CPU: {info['model']} ({info['cores']} logical cores); {flags}"


def print_cpu() -> dict:
    """Print the CPU this run measures on; call at each benchmark's start."""
    info = cpu_info()
    print(cpu_line(info), flush=True)
    return info


def parser(description: str) -> argparse.ArgumentParser:
    """The common flags. Every script calls this first, before any side loads llama.cpp or torch:
    universal_kernel sets how their OpenMP threads wait (universal_kernel/openmp_policy.py), and the peers
    in the same process get the same setting."""
    import universal_kernel  # noqa: F401

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs, measures nothing")
    p.add_argument("--repeats", type=int, default=None, help="measured runs per side")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: all cores)")
    return p


def threads(args) -> int:
    from universal_kernel.devices import cpu_threads

    return cpu_threads(args.threads)


if __name__ == "__main__":  # `python3 bench/_common.py cpu`: what .ci/run prints before the tests
    if sys.argv[1:] == ["cpu"]:
        print_cpu()
    else:
        sys.exit("usage: python3 bench/_common.py cpu")
