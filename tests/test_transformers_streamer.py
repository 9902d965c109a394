"""The transformers backend's streamer decodes a short window of recent tokens at each step, never the
whole text so far, and still ends with exactly `tokenizer.decode(ids, skip_special_tokens=True)`.

It runs on the SmolLM2 tokenizer (byte-level BPE: one emoji or CJK character spans several tokens).
"""

from __future__ import annotations

import pytest

from universal_kernel.backends import StopMatcher
from universal_kernel.backends.transformers_lm import _EmitStreamer

from .conftest import SMOLLM

MIXED = ("Café ☕ — naïve façade, 東京タワー 🚀🚀 and a family 👩‍👩‍👧 at the Straße; "
         "Ελληνικά, русский, العربية, हिन्दी. ")


class CountingTokenizer:
    """The real tokenizer; records how many ids each decode call gets."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded: list[int] = []

    def decode(self, ids, **kwargs):
        self.decoded.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def _backend(hf_runtime):
    return next(e for e in hf_runtime.cache.entries() if e.backend_name == "transformers").backend


def _stream_ids(tokenizer, ids, stops=()):
    import torch

    pieces: list[str] = []
    streamer = _EmitStreamer(tokenizer, StopMatcher(list(stops)), pieces.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: ignored
    during = []
    for token in ids:
        streamer.put(torch.tensor([token]))
        during.append(len(pieces))
    streamer.finish()
    return pieces, during, streamer


@pytest.mark.slow
def test_streamed_pieces_join_to_the_decoded_text_with_multibyte_characters(hf_runtime):
    tokenizer = _backend(hf_runtime).tokenizer
    ids = tokenizer(MIXED * 8, add_special_tokens=False)["input_ids"]
    # some characters really are split over several tokens
    assert any("\ufffd" in tokenizer.decode([token]) for token in ids)
    counting = CountingTokenizer(tokenizer)
    pieces, during, streamer = _stream_ids(counting, ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert during[-1] > len(ids) // 3  # it streamed as it went, not all at the end
    assert "\ufffd" not in "".join(pieces)
    # Windows, not the text so far: every decode but the final one stays short.
    *steps, final = counting.decoded
    assert final == len(ids)
    assert max(steps) <= 16, max(steps)
    assert sum(steps) < 8 * len(ids)


@pytest.mark.slow
def test_stop_strings_and_eos_in_the_incremental_streamer(hf_runtime):
    tokenizer = _backend(hf_runtime).tokenizer
    ids = tokenizer(MIXED, add_special_tokens=False)["input_ids"]
    pieces, _, streamer = _stream_ids(tokenizer, ids, stops=["東京"])
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == whole[: whole.index("東京")] and streamer.matcher.stopped
    pieces, _, streamer = _stream_ids(tokenizer, ids + [tokenizer.eos_token_id])
    assert "".join(pieces) == whole and streamer.saw_eos and streamer.generated == len(ids) + 1


@pytest.mark.slow
def test_a_real_generation_streams_exactly_its_decoded_tokens(hf_runtime):
    import torch

    backend = _backend(hf_runtime)
    tokenizer, model = backend.tokenizer, backend.model
    messages = [{"role": "user", "content": "Écris une phrase en français sur le café et l'été."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
    pieces = list(hf_runtime.stream(SMOLLM, messages=messages, params={"temperature": 0, "max_tokens": 32},
                                    backend="transformers"))
    assert len(pieces) > 3
    assert "".join(pieces) == expected
