"""Hub references and file selection: what a user typed as a Hub id, and which of the repo's files it needs.

One parser for every door (`%runtime pull`, `-m` on the magics, `POST universal/api/pull`, `rt.pull`):
- `org/repo`: a transformers / sentence-transformers repo, or a GGUF repo (default quant Q4_K_M);
- `org/repo:QUANT`: the GGUF whose file name carries that quant tag, case-insensitive;
- `org/repo/path/file.gguf`: that file (a split GGUF: every part);
- `hf.co/...`, `huggingface.co/...`, `https://huggingface.co/...` (also `/blob/REV/file`, `/resolve/REV/file`);
- `@REV` after the repo (or at the end) for a revision.

Selection works on file names and sizes alone, so the same code picks files from the Hub's listing before a
download and from a cached snapshot after it. Nothing here touches the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidRequest, ReferenceRefused

DEFAULT_QUANT = "Q4_K_M"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "https://hf.co/", "http://hf.co/",
             "huggingface.co/", "hf.co/", "hf://")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
_QUANT_TAG = re.compile(r"(?<![A-Za-z0-9])(I?Q\d+(?:_[A-Za-z0-9]+)*|BF16|F16|FP16|F32)(?![A-Za-z0-9])", re.I)

#: the files a transformers or sentence-transformers model needs besides its weights
_CONFIG_FILES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
}
#: sentence-transformers modules live in numbered folders (1_Pooling, 2_Dense, 2_Normalize)
_ST_MODULE = re.compile(r"^\d+_[A-Za-z]+/[^/]+\.(json|safetensors|txt)$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    quant: str | None = None
    filename: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        text = self.repo_id + (f"/{self.filename}" if self.filename else "")
        text += f"@{self.revision}" if self.revision else ""
        return text + (f":{self.quant}" if self.quant else "")


@dataclass(frozen=True)
class Selection:
    """The files to fetch, and what the model is once they are here."""

    kind: str  # "gguf" or "transformers"
    files: tuple[str, ...]
    main: str | None  # the GGUF file to load (the first part of a split); None: the snapshot folder
    quant: str | None = None


def parse_hub_ref(text: str) -> HubRef | None:
    """A `HubRef`, or None when `text` does not have a Hub id's shape (a local path, an alias)."""
    if not isinstance(text, str):
        return None
    ref = text.strip()
    for prefix in _PREFIXES:
        if ref.lower().startswith(prefix):
            ref = ref[len(prefix):]
            break
    else:
        if "://" in ref:
            return None
    ref = ref.rstrip("/")
    quant = revision = None
    m = re.search(r":([A-Za-z0-9_.\-]+)$", ref)
    if m:
        quant, ref = m.group(1), ref[:m.start()]
    m = re.search(r"@([A-Za-z0-9_.\-/]+?)$", ref) if "@" in ref else None
    if m:
        revision, ref = m.group(1), ref[:m.start()]
    parts = ref.split("/")
    if len(parts) < 2 or not all(re.fullmatch(_NAME, p) for p in parts[:2]) or ".." in parts[:2]:
        return None
    repo_id, rest = "/".join(parts[:2]), parts[2:]
    if "@" in repo_id or (not rest and repo_id.lower().endswith(".gguf")):
        return None  # `folder/model.gguf` is a local file that is not there, not a repo
    if len(rest) >= 2 and rest[0] in ("blob", "resolve", "tree"):
        revision = revision or rest[1]
        rest = rest[2:]
    filename = "/".join(rest) or None
    if filename is not None:
        if not filename.lower().endswith(".gguf"):
            return None  # org/repo/folder is a local path; only a GGUF file is named inside a repo
        if not safe_name(filename):
            raise ReferenceRefused(f"{text!r}: a file name with '..' or an absolute path would leave the cache")
    return HubRef(repo_id, quant, filename, revision)


def safe_name(name: str) -> bool:
    """A repo file name that stays inside its snapshot folder."""
    return bool(name) and not name.startswith(("/", "\\")) and "\\" not in name and ":" not in name \
        and not any(part in ("", ".", "..") for part in name.split("/"))


def quant_of(name: str) -> str | None:
    base = _SPLIT.sub(".gguf", name.rsplit("/", 1)[-1])
    tags = _QUANT_TAG.findall(base[:-5] if base.lower().endswith(".gguf") else base)
    return tags[-1].upper() if tags else None


def _gguf_groups(names: list[str]) -> dict[str, list[str]]:
    """GGUF files, split parts grouped under their first part; mmproj (vision projector) files left out."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        base = name.rsplit("/", 1)[-1].lower()
        if not base.endswith(".gguf") or base.startswith("mmproj"):
            continue
        key = _SPLIT.sub("", name)
        groups.setdefault(key, []).append(name)
    return groups


def _quant_list(groups: dict[str, list[str]]) -> str:
    quants = sorted({quant_of(g[0]) or g[0].rsplit("/", 1)[-1] for g in groups.values()})
    return ", ".join(quants) or "none"


def select_files(ref: HubRef, names: list[str], config: dict | None = None, allow_pickle: bool = False,
                 complete: bool = True) -> Selection:
    """The files `ref` needs among the repo's `names`.

    `config` is the repo's config.json when it has one (read before the weights: a repo whose config names code
    in `auto_map` is refused here, and its index names the safetensors shards). Raises one-line errors.
    `complete` False: `names` are a cache's files, maybe of other quants only, so a repo's lone GGUF is no default.
    """
    unsafe = [n for n in names if not safe_name(n)]
    if unsafe:
        raise ReferenceRefused(f"{ref}: the Hub lists a file name that would leave the cache ({unsafe[0]!r}); "
                               f"refusing the repo")
    groups = _gguf_groups(names)
    if ref.filename is not None:
        key = _SPLIT.sub("", ref.filename)
        if key in groups and (ref.filename in groups[key]):
            return Selection("gguf", tuple(groups[key]), groups[key][0], quant_of(ref.filename))
        raise ReferenceRefused(f"{ref}: no file {ref.filename!r} in {ref.repo_id} (GGUF files: "
                               f"{', '.join(g[0] for g in groups.values()) or 'none'})")
    if ref.quant is not None or (groups and "config.json" not in names):
        if not groups:
            raise ReferenceRefused(f"{ref}: {ref.repo_id} has no GGUF files")
        wanted = ref.quant or DEFAULT_QUANT
        tag = re.compile(rf"(?<![A-Za-z0-9]){re.escape(wanted)}(?![A-Za-z0-9_])", re.I)
        matches = [g for key, g in groups.items() if tag.search(key.rsplit("/", 1)[-1])]
        if ref.quant is None and not matches and len(groups) == 1 and complete:
            matches = list(groups.values())
        if len(matches) == 1:
            return Selection("gguf", tuple(matches[0]), matches[0][0], quant_of(matches[0][0]))
        what = "no default quant Q4_K_M" if ref.quant is None and not matches else \
            f"no GGUF with quant {wanted}" if not matches else f"quant {wanted} is ambiguous"
        raise ReferenceRefused(f"{ref}: {what} in {ref.repo_id}; quants: {_quant_list(groups)} "
                               f"(pick one as {ref.repo_id}:QUANT)")
    if "config.json" not in names:
        raise ReferenceRefused(f"{ref}: {ref.repo_id} has neither a config.json nor GGUF files")
    if config is not None and config.get("auto_map"):
        raise ReferenceRefused(f"{ref}: {ref.repo_id} needs trust_remote_code (its config names code in auto_map); "
                               f"the runtime never runs code from a model repo")
    files = [n for n in names if n in _CONFIG_FILES or _ST_MODULE.match(n)]
    root_safetensors = [n for n in names if "/" not in n and n.endswith(".safetensors")]
    if "model.safetensors.index.json" in names:
        files.append("model.safetensors.index.json")  # its shards are added by the caller once it is read
    elif root_safetensors:
        files += root_safetensors
    elif any(n.endswith(".bin") and "/" not in n for n in names):
        if not allow_pickle:
            raise ReferenceRefused(f"{ref}: {ref.repo_id} has only pickled .bin weights (they can run code when "
                                   f"loaded); pass allow_pickle=True to accept them")
        files += [n for n in names if "/" not in n and n.endswith(".bin")]
    else:
        raise ReferenceRefused(f"{ref}: {ref.repo_id} has no safetensors weights")
    # sentence-transformers module weights (2_Dense/model.safetensors) come with their folder's config
    return Selection("transformers", tuple(dict.fromkeys(files)), None)


def shards_from_index(index: dict, names: list[str], ref: HubRef) -> list[str]:
    """The safetensors shards a `model.safetensors.index.json` names, each checked against the listing."""
    shards = sorted(set((index.get("weight_map") or {}).values()))
    for shard in shards:
        if not safe_name(shard) or shard not in names:
            raise ReferenceRefused(f"{ref}: the index names a shard the repo does not have ({shard!r})")
    return shards


def require_hub_ref(text: str) -> HubRef:
    ref = parse_hub_ref(text)
    if ref is None:
        raise InvalidRequest(f"{text!r} is not a Hub id (org/repo, org/repo:QUANT, org/repo/file.gguf, @REV)",
                             param="model")
    return ref
