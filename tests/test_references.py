"""References: aliases, model folders, the hub cache, refusals; format and task detection."""

from __future__ import annotations

import json
import os

import pytest

from universal_kernel import ModelNotFound, ReferenceRefused, Runtime, RuntimeConfig
from universal_kernel.references import Resolver

from .conftest import MINILM, SMOLLM


def write_bert_folder(folder):
    """A tiny random BERT with sentence-transformers files: enough for detection, not for meaning."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    return folder


def test_builtin_aliases_resolve_to_the_packaged_files(smollm_path, minilm_path):
    resolver = Resolver([])
    smol = resolver.resolve(SMOLLM)
    assert (smol.path, smol.format, smol.task, smol.architecture) == (smollm_path, "gguf", "generate", "llama")
    assert smol.size_bytes == smollm_path.stat().st_size
    mini = resolver.resolve(MINILM)
    assert (mini.path, mini.format, mini.task, mini.architecture) == (minilm_path, "transformers", "embed",
                                                                      "BertModel")


def test_user_alias_points_at_a_reference_and_a_bad_one_is_not_added():
    resolver = Resolver([])
    spec = resolver.add_alias("mini", MINILM)
    assert spec.id == "mini" and resolver.resolve("mini").path == resolver.resolve(MINILM).path
    with pytest.raises(ModelNotFound):
        resolver.add_alias("typo", "no-such-model")
    assert "typo" not in resolver.aliases and "mini" in resolver.names()


def test_paths_inside_the_model_folders_are_detected(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "lm")
    write_bert_folder(tmp_path / "enc")
    resolver = Resolver([tmp_path])
    lm = resolver.resolve("lm")
    assert (lm.format, lm.task, lm.architecture) == ("transformers", "generate", "LlamaForCausalLM")
    enc = resolver.resolve(str(tmp_path / "enc"))  # absolute, but inside the folder
    assert (enc.format, enc.task) == ("transformers", "embed")


def test_hub_ids_come_from_the_local_cache_only(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--acme--tiny-enc" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    write_bert_folder(snapshot)
    (tmp_path / "hub" / "models--acme--tiny-enc" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-enc" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    resolver = Resolver([tmp_path / "models"])
    assert resolver.resolve("acme/tiny-enc").path == snapshot
    with pytest.raises(ModelNotFound, match="no model named 'acme/elsewhere'"):
        resolver.resolve("acme/elsewhere")  # not cached, downloads off: refused, nothing fetched


@pytest.mark.parametrize("make_ref", [
    lambda folder, outside: "../" + outside.name + "/model.gguf",
    lambda folder, outside: str(outside / "model.gguf"),
    lambda folder, outside: "link-out.gguf",
    lambda folder, outside: "dir-link/model.gguf",
])
def test_references_that_escape_the_model_folders_are_refused(tmp_path, smollm_path, make_ref):
    folder, outside = tmp_path / "models", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    os.symlink(smollm_path, outside / "model.gguf")
    os.symlink(outside / "model.gguf", folder / "link-out.gguf")
    os.symlink(outside, folder / "dir-link")
    runtime = Runtime(RuntimeConfig(model_folders=[folder]), reaper=False)
    with pytest.raises(ReferenceRefused, match="outside the model folders"):
        runtime.load(make_ref(folder, outside))
    assert runtime.cache.entries() == [] and runtime.cache.loads == 0


@pytest.mark.parametrize("ref", ["nothing-here", "missing.gguf", "", "acme/none"])
def test_references_that_name_nothing_are_refused(tmp_path, ref):
    runtime = Runtime(RuntimeConfig(model_folders=[tmp_path]), reaper=False)
    with pytest.raises(ModelNotFound):
        runtime.load(ref)
    assert runtime.cache.entries() == [] and runtime.cache.loads == 0


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    resolver = Resolver([tmp_path])
    for ref in ("notes.txt", "fake.gguf"):
        with pytest.raises(ModelNotFound):
            resolver.resolve(ref)


def test_the_key_of_a_model_changes_with_its_files(tmp_path, smollm_path):
    """Path, size and mtime: the cache key of a replaced file or folder is new, of an untouched one the same."""
    import shutil

    shutil.copyfile(smollm_path, tmp_path / "m.gguf")
    write_bert_folder(tmp_path / "enc")
    resolver = Resolver([tmp_path])
    for ref, touched in (("m.gguf", tmp_path / "m.gguf"), ("enc", tmp_path / "enc" / "model.safetensors")):
        first = resolver.resolve(ref)
        assert resolver.resolve(ref).key == first.key and str(first.path) in first.key
        stat = touched.stat()
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
        again = resolver.resolve(ref)
        assert again.key != first.key and again.path == first.path
        alias = resolver.add_alias(f"alias-{ref}", ref)
        assert alias.key == again.key  # an alias names the same loaded model
    (tmp_path / "m.gguf").unlink()
    with pytest.raises(ModelNotFound, match="m.gguf"):
        resolver.resolve("m.gguf")


def test_a_format_a_backend_declares_is_recognised_without_touching_references(tmp_path, monkeypatch):
    """references.py knows no format: each backend's declaration says what its models look like on disk and
    what kind they are. A new one is recognised, stamped and sized; a folder that no format claims is refused
    with the formats named."""
    from universal_kernel.backends import choose_backend, registry
    from universal_kernel.backends.formats import ModelFormat
    from universal_kernel.references import weight_files

    def describe(path):
        meta = json.loads((path / "toy.json").read_text())
        return f"toy:{meta['name']}", meta["kind"], meta

    toy = ModelFormat("toy", "a toy model folder", lambda path: (path / "toy.json").is_file(), describe,
                      lambda path: [path / "toy.json", path / "weights.bin"],
                      lambda path: (path / "weights.bin").stat().st_size)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "toy.json").write_text(json.dumps({"name": "mine", "kind": "embed"}))
    (folder / "weights.bin").write_bytes(b"\0" * 1000)
    resolver = Resolver([tmp_path])
    with pytest.raises(ModelNotFound, match="is none of: a .gguf file, a spaCy pipeline, a RapidOCR model, a "
                                            "Hugging Face model folder"):
        resolver.resolve("mine")
    kind = registry.BackendKind("toy", frozenset({("toy", "*")}), frozenset({"embed"}), "toy folders",
                                create=lambda *args: None, library=lambda device: None, recognises=toy)
    monkeypatch.setitem(registry.BACKENDS, "toy", kind)
    spec = resolver.resolve("mine")
    assert (spec.format, spec.task, spec.architecture, spec.size_bytes) == ("toy", "embed", "toy:mine", 1000)
    assert weight_files(spec.path) == [folder / "toy.json", folder / "weights.bin"] and len(spec.stamp) == 2
    assert choose_backend(spec) == "toy"
