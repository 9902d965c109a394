"""Embedding inputs given as token ids (OpenAI's cl100k_base encoding), as LangChain's `OpenAIEmbeddings`
sends them whenever `tiktoken` can load that encoding on the client.

They are decoded to text with `tiktoken` and embedded as text. Where `tiktoken` or its encoding cannot
be loaded on the server (it downloads the encoding file once, or reads `TIKTOKEN_CACHE_DIR`), the
request is a 400 that says how to make the client send text: `check_embedding_ctx_length=False`.
"""

from __future__ import annotations

import asyncio
import threading

from .errors import Failure, failure

ENCODING = "cl100k_base"
#: seconds the first request waits for the encoding to load (a download without network can hang)
LOAD_TIMEOUT_S = 15.0

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "encoding" or "error" once tried


def _load():
    with _lock:
        if not _loaded:
            try:
                import tiktoken

                _loaded["encoding"] = tiktoken.get_encoding(ENCODING)
            except Exception as exc:  # noqa: BLE001 - missing package, no network, a broken cache file
                _loaded["error"] = f"{type(exc).__name__}: {exc}"[:200]
        return _loaded.get("encoding"), _loaded.get("error")


def _refusal(why: str) -> Failure:
    return failure(400, f"input holds token ids; decoding them needs tiktoken and its {ENCODING} encoding, which "
                        f"this server cannot load ({why}). Send text instead: with LangChain's OpenAIEmbeddings set "
                        f"check_embedding_ctx_length=False", param="input", code="unsupported_parameter")


def is_token_ids(value) -> bool:
    """An embedding input of token ids: a list of ints, or a list of such lists."""
    def ids(row):
        return isinstance(row, list) and bool(row) and all(isinstance(t, int) and not isinstance(t, bool)
                                                          for t in row)
    return isinstance(value, list) and bool(value) and (ids(value) or all(ids(row) for row in value))


async def decode_token_ids(value: list) -> list[str] | Failure:
    """The texts that token-id inputs encode (one per row), or a 400."""
    rows = [value] if all(isinstance(t, int) for t in value) else value
    loop = asyncio.get_running_loop()
    try:
        encoding, error = await asyncio.wait_for(loop.run_in_executor(None, _load), LOAD_TIMEOUT_S)
    except asyncio.TimeoutError:
        return _refusal(f"loading the encoding took over {LOAD_TIMEOUT_S:.0f} s")
    if encoding is None:
        return _refusal(error or "unknown error")
    texts = []
    for i, row in enumerate(rows):
        try:
            texts.append(encoding.decode(row))
        except Exception:  # noqa: BLE001 - ids out of the vocabulary
            return failure(400, f"input.{i} holds token ids that are not in {ENCODING}", param=f"input.{i}",
                           code="invalid_value")
    return texts
