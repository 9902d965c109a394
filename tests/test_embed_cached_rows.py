"""Rows in the disk cache need no model: a fresh process whose rows are all cached imports no torch and loads
nothing; one new row loads the model and reads the rest from disk; another weights file or another CPU
decides again (tasks/embed_decisions.py). Each case is a new process, as a kernel after a restart is (or a new
`jupyter server`, for /v1/embeddings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import MINILM, start_server, stop_process

TEXTS = ["The cat sat on the mat.", "Quarterly revenue rose 4.2% to EUR 93.1 million.", "ok",
         "Ein kurzer deutscher Satz über das Wetter.", "The cat sat on the mat."]

#: one fresh process: `rt.embed` (or `%embed` in an IPython shell, the kernel's door), then what it loaded
PROCESS = r"""
import json, sys
import numpy as np
folder, models, model, texts_file, out, door = sys.argv[1:7]
texts = json.load(open(texts_file))
from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.runtime import get_runtime
if door == "magic":
    import os
    from IPython.core.interactiveshell import InteractiveShell
    os.environ["UNIVERSAL_KERNEL_EMBEDDING_CACHE"] = folder
    os.environ["UNIVERSAL_KERNEL_MODEL_FOLDERS"] = models
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "universal_kernel")
    shell.user_ns["texts"] = texts
    vectors = shell.run_line_magic("embed", f"texts --model {model}")
    rt = get_runtime()
    computed = cached = None
else:
    rt = Runtime(RuntimeConfig(model_folders=[models], embedding_cache_folder=folder, keep_alive=-1), reaper=False)
    key = rt.resolve(model).key
    fingerprint_known = rt.embedding_store.cache.get(("fingerprint", key)) is not None
    result = rt.embed(texts, model)
    vectors, computed, cached = result.vectors, result.stats.rows_computed, result.stats.rows_cached
np.save(out, np.asarray(vectors, dtype=np.float32))
status = rt.status()["models"]
print(json.dumps({"torch": "torch" in sys.modules, "loads": rt.cache.loads, "models": [m["id"] for m in status],
                  "precision": status[0]["precision"] if status else None, "computed": computed, "cached": cached,
                  "fingerprint_known": None if door == "magic" else fingerprint_known}))
rt.close()
"""


def embed_in_a_fresh_process(tmp_path, folder, texts, *, model=MINILM, models=None, door="runtime", env=None):
    """(what the process reports, its vectors)."""
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    out = tmp_path / f"vectors-{len(list(tmp_path.glob('vectors-*')))}.npy"
    full_env = {k: v for k, v in os.environ.items() if k != "UNIVERSAL_KERNEL_CPU_FLAGS"}
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-c", PROCESS, str(folder), str(models or tmp_path), model,
                           str(texts_file), str(out), door], env=full_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)


@pytest.fixture(scope="module")
def computed(tmp_path_factory, minilm_path):
    """A disk cache holding TEXTS, written by a process that computed them: (folder, its report, its vectors)."""
    folder = tmp_path_factory.mktemp("embedding-cache")
    report, vectors = embed_in_a_fresh_process(tmp_path_factory.mktemp("first"), folder, TEXTS)
    assert report["torch"] and report["loads"] == 1 and report["computed"] == len(set(TEXTS))
    return folder, report, vectors


@pytest.mark.parametrize("door", ["runtime", "magic"])
def test_rows_all_on_disk_import_no_torch_and_load_no_model(computed, tmp_path, door):
    folder, _, first = computed
    report, vectors = embed_in_a_fresh_process(tmp_path, folder, TEXTS, door=door)
    assert report["torch"] is False
    assert report["loads"] == 0 and report["models"] == []
    if door == "runtime":
        assert report["computed"] == 0 and report["cached"] == len(TEXTS)
    assert vectors.tobytes() == first.tobytes()  # byte for byte what the model computed


def test_the_server_answers_cached_rows_without_a_model(computed, tmp_path):
    """/v1/embeddings through the official client: the rows come from the disk, nothing loads."""
    folder, _, first = computed
    server = start_server(tmp_path, env={"UNIVERSAL_KERNEL_EMBEDDING_CACHE": str(folder)})
    try:
        response = server.client().embeddings.create(model=MINILM, input=TEXTS)
        vectors = np.array([row.embedding for row in response.data], dtype=np.float32)
        assert vectors.tobytes() == first.tobytes()
        assert server.status()["models"] == []
    finally:
        stop_process(server.process)


def test_one_new_row_loads_the_model_and_reads_the_rest_from_disk(computed, tmp_path):
    folder, _, first = computed
    report, vectors = embed_in_a_fresh_process(tmp_path, folder, TEXTS + ["A row no process has embedded yet."])
    assert report["torch"] and report["loads"] == 1 and report["models"] == [MINILM]
    assert report["computed"] == 1 and report["cached"] == len(TEXTS)
    assert vectors[:len(TEXTS)].tobytes() == first.tobytes()


def test_another_cpu_decides_again(computed, tmp_path):
    """The seam turns the CPU's bf16 off (or on, on a CPU without): no recorded decision fits that machine."""
    from universal_kernel.machine import cpu_has_bf16, hardware_cpu_flags

    folder, first_report, first = computed
    other = "-avx512_bf16 -amx_bf16" if cpu_has_bf16(hardware_cpu_flags()) else "+avx512_bf16"
    env = {"UNIVERSAL_KERNEL_CPU_FLAGS": other}
    report, vectors = embed_in_a_fresh_process(tmp_path, folder, TEXTS, env=env)
    assert report["torch"] and report["loads"] == 1  # loaded to decide again
    if report["precision"] != first_report["precision"]:  # bf16 on one machine, fp32 on the other
        assert report["computed"] == len(set(TEXTS)) and report["cached"] == len(TEXTS) - len(set(TEXTS))
    # that machine's decision is kept too: its next process needs no model either
    again, vectors_again = embed_in_a_fresh_process(tmp_path, folder, TEXTS, env=env)
    assert again["torch"] is False and again["loads"] == 0
    assert vectors_again.tobytes() == vectors.tobytes()


def test_a_changed_weights_file_decides_again(minilm_path, tmp_path):
    from safetensors.numpy import load_file, save_file

    models, folder = tmp_path / "models", tmp_path / "cache"
    copy = models / "minilm-copy"
    shutil.copytree(minilm_path, copy)
    weights = copy / "model.safetensors"
    report, first = embed_in_a_fresh_process(tmp_path, folder, TEXTS, model=str(copy), models=models)
    assert report["loads"] == 1 and report["computed"] == len(set(TEXTS))

    # Touched (another mtime, the same bytes): the fingerprint kept for the old stamp does not apply, so the
    # file is hashed again; same bytes make the same rows, still without a model
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    report, vectors = embed_in_a_fresh_process(tmp_path, folder, TEXTS, model=str(copy), models=models)
    assert report["fingerprint_known"] is False
    assert report["torch"] is False and report["loads"] == 0 and report["computed"] == 0
    assert vectors.tobytes() == first.tobytes()

    # Other bytes (the same tensors, saved with other metadata): another model for the cache; it loads
    save_file(load_file(weights), weights, metadata={"format": "pt", "changed": "by test_embed_cached_rows"})
    report, _ = embed_in_a_fresh_process(tmp_path, folder, TEXTS, model=str(copy), models=models)
    assert report["fingerprint_known"] is False
    assert report["torch"] and report["loads"] == 1 and report["computed"] == len(set(TEXTS))
