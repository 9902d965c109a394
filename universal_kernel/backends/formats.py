"""Model formats as the backends recognise them: which files make a model, and what kind of model they say it is.

`references.py` reads these declarations without knowing any format: it asks each backend's format (in the
registry's order, `registry.model_formats()`) whether a path is one of its models. A model's kind is what
its files say it is (`ModelSpec.task`): the first task it serves; `universal_kernel.tasks` says which others.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..gguf_metadata import read_gguf_metadata


@dataclass(frozen=True)
class ModelFormat:
    """How one format's models are found on disk and described without loading them."""

    name: str
    #: what a model of this format is, in a sentence: "a spaCy pipeline"
    what: str
    #: whether a path is a model of this format (a file, or a folder with its marker files)
    matches: Callable[[Path], bool]
    #: (architecture, model kind, metadata) from the files; OSError or ValueError when they are unreadable
    describe: Callable[[Path], tuple[str, str, dict]]
    #: the files whose contents make the model (their sizes and times stamp it: a replaced file is a new model)
    weight_files: Callable[[Path], list[Path]]
    #: bytes of weights on disk
    size: Callable[[Path], int]


def _weights_in(path: Path) -> list[Path]:
    """A folder's weight files of the first kind it has (safetensors, else .bin, else .gguf)."""
    for pattern in ("*.safetensors", "*.bin", "*.gguf"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    return []


def _total(files) -> int:
    return sum(f.stat().st_size for f in files)


# GGUF files (llama_cpp; transformers dequantises the generation ones) ------------------------------------
_EMBEDDING_GGUF_ARCHS = {"bert", "nomic-bert", "jina-bert-v2", "t5encoder", "gte", "modern-bert"}


def _is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


@functools.lru_cache(maxsize=64)
def _gguf_metadata(path: Path, stamp: tuple) -> dict:
    return read_gguf_metadata(path)


def _describe_gguf(path: Path) -> tuple[str, str, dict]:
    stat = path.stat()
    meta = _gguf_metadata(path, (stat.st_size, stat.st_mtime_ns))
    arch = str(meta.get("general.architecture", "unknown"))
    kind = "embed" if arch in _EMBEDDING_GGUF_ARCHS or f"{arch}.pooling_type" in meta else "generate"
    return arch, kind, meta


GGUF = ModelFormat("gguf", "a .gguf file", _is_gguf, _describe_gguf, lambda path: [path],
                   lambda path: path.stat().st_size)


# Hugging Face folders (transformers; onnx for encoders) ---------------------------------------------------
def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _describe_hf_folder(path: Path) -> tuple[str, str, dict]:
    config = json.loads((path / "config.json").read_text())
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    generative = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    sentence_transformers = (path / "modules.json").exists() or (path / "sentence_bert_config.json").exists()
    if sentence_transformers:
        kind = "embed"
    elif generative:
        kind = "generate"
    elif any(a.endswith("ForSequenceClassification") for a in archs):
        labels = config.get("id2label") or {}
        # one logit is a cross-encoder (a relevance score through a sigmoid), more are classes
        kind = "rerank" if int(config.get("num_labels") or len(labels) or 2) == 1 else "classify"
    elif any(a.endswith("ForTokenClassification") for a in archs):
        kind = "ner"
    else:
        kind = "embed"
    return archs[0], kind, config


HF_FOLDER = ModelFormat("transformers", "a Hugging Face model folder", _is_hf_folder, _describe_hf_folder,
                        lambda path: [path / "config.json", *_weights_in(path)],
                        lambda path: _total(_weights_in(path)))


# spaCy pipelines -----------------------------------------------------------------------------------------
def _is_spacy_pipeline(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").exists() and (path / "config.cfg").exists()


def _describe_spacy(path: Path) -> tuple[str, str, dict]:
    meta = json.loads((path / "meta.json").read_text())
    pipes = list(meta.get("pipeline") or [])
    kind = "ner" if "ner" in pipes or "entity_ruler" in pipes else "classify"
    return f"spacy:{meta.get('lang', '?')}_{meta.get('name', 'pipeline')}", kind, meta


SPACY = ModelFormat("spacy", "a spaCy pipeline", _is_spacy_pipeline, _describe_spacy,
                    lambda path: [path / "meta.json", path / "config.cfg", *sorted(path.glob("*/model")),
                                  *_weights_in(path)],
                    lambda path: _total(f for f in path.rglob("*") if f.is_file()))


# RapidOCR's folder ---------------------------------------------------------------------------------------
def is_rapidocr_folder(path: Path) -> bool:
    """rapidocr's package folder: its config and the detection and recognition ONNX files it ships."""
    return path.is_dir() and (path / "config.yaml").exists() and any((path / "models").glob("*det*.onnx")) \
        and any((path / "models").glob("*rec*.onnx"))


def _describe_rapidocr(path: Path) -> tuple[str, str, dict]:
    models = sorted(f.name for f in (path / "models").glob("*.onnx"))
    return "rapidocr:" + "+".join(models), "ocr", {"models": models}


RAPIDOCR = ModelFormat("rapidocr", "a RapidOCR model", is_rapidocr_folder, _describe_rapidocr,
                       lambda path: [path / "config.yaml", *sorted((path / "models").glob("*.onnx")),
                                     *_weights_in(path)],
                       lambda path: _total((path / "models").glob("*.onnx")))
