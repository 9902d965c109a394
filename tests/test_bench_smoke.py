"""The benchmarks still run: each script's --smoke mode on tiny sizes. No timings are asserted."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_readme_lists_every_script():
    readme = (BENCH / "README.md").read_text()
    for script in sorted(BENCH.glob("[!_]*.py")):
        assert f"bench/{script.name}" in readme, f"{script.name} is missing from bench/README.md"


def test_mixed_texts_are_deterministic_and_mixed():
    common = bench_module("_common")
    a, b = common.mixed_texts(500), common.mixed_texts(500)
    assert a == b
    lengths = sorted(len(t.split()) for t in a)
    assert lengths[0] <= 6 and lengths[-1] >= 100  # short titles to long paragraphs
    assert 0 < len(a) - len(set(a)) < 150  # some duplicates


@pytest.mark.parametrize("script", ["embed_throughput", "generation", "memory", "transformers_gguf_load",
                                    "api_status_latency"])
def test_smoke(script, capsys):
    if not (BENCH / f"{script}.py").exists():
        pytest.skip(f"bench/{script}.py is not written")
    code = bench_module(script).main(["--smoke"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| measure" in out  # the table was printed
