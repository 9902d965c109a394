"""Read the key/value metadata of a GGUF file without loading tensors or importing a backend."""

from __future__ import annotations

import struct
from pathlib import Path

_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, fh):
        self.fh = fh

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.fh.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        return self.fh.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            n = self.unpack("<Q")
            if not keep and item_type in _SCALARS:
                # Skip big arrays (token scores, types) without decoding them.
                self.fh.seek(n * struct.calcsize(_SCALARS[item_type]), 1)
                return None
            if not keep and item_type == _STRING:
                for _ in range(n):
                    self.fh.seek(self.unpack("<Q"), 1)
                return None
            return [self.value(item_type, keep) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_metadata(path: str | Path, *, skip_prefixes: tuple[str, ...] = ("tokenizer.ggml.",)) -> dict:
    """Return the metadata dict; keys under `skip_prefixes` (the vocabulary) are read past, not kept."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        reader = _Reader(fh)
        version = reader.unpack("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        reader.unpack("<Q")  # tensor count
        kv_count = reader.unpack("<Q")
        meta: dict = {"GGUF.version": version}
        for _ in range(kv_count):
            key = reader.string()
            vtype = reader.unpack("<I")
            keep = not key.startswith(skip_prefixes)
            value = reader.value(vtype, keep)
            if keep:
                meta[key] = value
        return meta
