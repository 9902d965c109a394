"""Embedding inputs given as token ids (LangChain's OpenAIEmbeddings sends cl100k ids when tiktoken loads)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types

import openai
import pytest

from universal_kernel.server_ext import token_ids

from .conftest import MINILM


class FakeEncoding:
    """Stands in for tiktoken's cl100k_base (its file cannot be downloaded here): ids are code points."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.fixture
def fake_tiktoken(monkeypatch):
    module = types.ModuleType("tiktoken")
    module.get_encoding = lambda name: FakeEncoding() if name == "cl100k_base" else None
    monkeypatch.setitem(sys.modules, "tiktoken", module)
    monkeypatch.setattr(token_ids, "_loaded", {})
    yield
    token_ids._loaded.clear()


def test_token_ids_are_decoded_with_the_encoding(fake_tiktoken):
    assert token_ids.is_token_ids([104, 105]) and token_ids.is_token_ids([[104], [105, 106]])
    assert not token_ids.is_token_ids(["a"]) and not token_ids.is_token_ids([True]) and not token_ids.is_token_ids([])
    assert asyncio.run(token_ids.decode_token_ids([104, 105])) == ["hi"]
    assert asyncio.run(token_ids.decode_token_ids([[104, 105], [111]])) == ["hi", "o"]
    bad = asyncio.run(token_ids.decode_token_ids([[-1]]))
    assert bad.status == 400 and bad.body.error.param == "input.0"


def test_without_the_encoding_a_400_says_what_to_set(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    monkeypatch.setattr(token_ids, "_loaded", {})
    refused = asyncio.run(token_ids.decode_token_ids([1, 2]))
    assert refused.status == 400 and "check_embedding_ctx_length=False" in refused.body.error.message


def test_over_http_token_ids_are_a_clear_400_or_embedded(server):
    client = server.client()
    if importlib.util.find_spec("tiktoken") is None:
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=MINILM, input=[[9906, 1917]])
        assert "check_embedding_ctx_length=False" in info.value.body["message"]
        assert info.value.body["param"] == "input"
    text = client.embeddings.create(model=MINILM, input=["hello"])  # text is unaffected
    assert len(text.data) == 1
