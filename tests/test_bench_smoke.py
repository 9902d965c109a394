"""The benchmarks still run: each script's --smoke mode on tiny sizes. No timings are asserted."""

from __future__ import annotations

import importlib
import subprocess
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


def test_cpu_line_names_the_model_and_the_flags_that_matter(tmp_path):
    common = bench_module("_common")
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
                    "flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu\n")
    info = common.cpu_info(str(fake))
    assert info["model"] == "AMD EPYC 9R14 96-Core Processor"
    assert info["avx2"] and info["avx512f"] and info["avx512_bf16"] and not info["amx"]
    assert common.cpu_info(str(tmp_path / "missing"))["model"] == "unknown"
    line = common.cpu_line(info)
    assert line.startswith("CPU: AMD EPYC 9R14") and "avx512_bf16 yes" in line and "amx no" in line
    # on this machine: what /proc/cpuinfo says, as `.ci/run` prints it
    real = subprocess.run([sys.executable, str(BENCH / "_common.py"), "cpu"], capture_output=True, text=True,
                          check=True).stdout
    assert real.startswith("CPU: ") and all(f"{flag} " in real for flag in common.CPU_FLAGS)


@pytest.mark.parametrize("script", ["embed_throughput", "generation", "memory", "transformers_gguf_load",
                                    "api_status_latency", "soak", "tasks", "ocr_anomaly", "dask_embed", "embed_disk_cache",
                                    "concurrency", "pull", "documents"])
def test_smoke(script, capsys):
    if not (BENCH / f"{script}.py").exists():
        pytest.skip(f"bench/{script}.py is not written")
    code = bench_module(script).main(["--smoke"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| measure" in out  # the table was printed
    assert out.startswith("CPU: ") and "avx2 " in out.splitlines()[0]  # the CPU it measured on comes first
