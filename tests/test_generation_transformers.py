"""The transformers causal-LM backend: the SmolLM2 GGUF through `gguf_file=`, and a Hugging Face folder."""

from __future__ import annotations

import pytest

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.backends import StopMatcher

from .conftest import FRANCE, SMOLLM
from .test_generation_llama import stop_word

CHAT = [{"role": "user", "content": FRANCE}]
GREEDY = {"temperature": 0, "max_tokens": 24}

# `hf_runtime` and `convert_cache` are the session's (tests/conftest.py): the GGUF is dequantised once.
# What the tiny model answers depends on the machine; these tests compare the runtime with raw
# transformers on the same weights, never with an answer written here.


def raw_transformers(backend, messages, max_new_tokens: int) -> tuple[str, int, int, bool]:
    """Greedy text, prompt tokens, completion tokens and whether EOS ended it, from transformers itself."""
    import torch

    tokenizer, model = backend.tokenizer, backend.model
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)
    prompt_tokens = inputs["input_ids"].shape[1]
    new = ids[0, prompt_tokens:].tolist()
    eos = tokenizer.eos_token_id
    ended = bool(new) and new[-1] in (eos if isinstance(eos, list) else [eos])
    return tokenizer.decode(new, skip_special_tokens=True), prompt_tokens, len(new) - ended, ended


@pytest.mark.slow
def test_the_smollm2_gguf_through_transformers_equals_raw_transformers(hf_runtime):
    out = hf_runtime.generate(SMOLLM, messages=CHAT, params=GREEDY, backend="transformers")
    entry = hf_runtime.cache.entries()[0]
    text, prompt_tokens, completion_tokens, ended = raw_transformers(entry.backend, CHAT, 24)
    assert out.text and out.text == text
    assert out.prompt_tokens == prompt_tokens and out.completion_tokens == completion_tokens > 0
    assert out.finish_reason == ("stop" if ended else "length")
    status = hf_runtime.status()["models"][0]
    assert status["backend"] == "transformers" and status["device"] == "cpu"


@pytest.mark.slow
def test_streaming_stops_and_lengths_on_transformers(hf_runtime):
    whole = hf_runtime.generate(SMOLLM, messages=CHAT, params=GREEDY, backend="transformers").text
    stream = hf_runtime.stream(SMOLLM, messages=CHAT, params=GREEDY, backend="transformers")
    assert "".join(stream) == whole
    word = stop_word(whole)  # from this machine's own greedy text
    cut = hf_runtime.generate(SMOLLM, messages=CHAT, params={**GREEDY, "stop": [word]}, backend="transformers")
    assert cut.text == whole[: whole.index(word)] and cut.finish_reason == "stop"
    short = hf_runtime.generate(SMOLLM, prompt="One, two, three,", params={"temperature": 0, "max_tokens": 3},
                                backend="transformers")
    assert short.finish_reason == "length" and short.completion_tokens == 3


@pytest.mark.slow
def test_closing_a_transformers_stream_stops_it(hf_runtime):
    entry = hf_runtime.cache.entries()[0]
    stream = hf_runtime.stream(SMOLLM, prompt="Once upon a time", params={"temperature": 0, "max_tokens": 200},
                               backend="transformers")
    next(stream)
    stream.close()
    assert stream.request.finished.wait(120)  # close() waits a few seconds at most; a busy machine may need more
    assert entry.worker.running is None and stream.stats.finish_reason == "cancelled"
    assert stream.stats.completion_tokens < 200


@pytest.mark.slow
def test_the_second_load_reads_the_converted_weights(hf_runtime, convert_cache, tmp_path):
    assert hf_runtime.cache.entries()[0].backend.loaded_from in ("gguf", "convert-cache")
    assert any(convert_cache.iterdir())
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path], convert_cache=convert_cache), reaper=False)
    try:
        rt.load(SMOLLM, backend="transformers")
        entry = rt.cache.entries()[0]
        assert entry.backend.loaded_from == "convert-cache"
        out = rt.generate(SMOLLM, messages=CHAT, params=GREEDY, backend="transformers")
        # the converted weights give the text the first load's weights give
        assert out.text and out.text == hf_runtime.generate(SMOLLM, messages=CHAT, params=GREEDY,
                                                            backend="transformers").text
    finally:
        rt.close()


def test_a_hugging_face_folder_generates_with_presence_and_frequency_penalties(tmp_path):
    """A tiny random model: shapes and parameters, not meaning."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=258, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "tiny")
    _copy_smollm_tokenizer(tmp_path / "tiny")
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path]), reaper=False)
    try:
        out = rt.generate("tiny", prompt="abc", params={"temperature": 0.7, "seed": 3, "max_tokens": 5,
                                                        "presence_penalty": 1.0, "frequency_penalty": 0.5})
        again = rt.generate("tiny", prompt="abc", params={"temperature": 0.7, "seed": 3, "max_tokens": 5,
                                                          "presence_penalty": 1.0, "frequency_penalty": 0.5})
        assert out.text == again.text and out.completion_tokens <= 5
        assert rt.status()["models"][0]["backend"] == "transformers"
    finally:
        rt.close()


def _copy_smollm_tokenizer(folder):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({chr(i): i for i in range(256)} | {"<unk>": 256, "</s>": 257}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(folder)


@pytest.mark.parametrize("pieces,stops,expected", [
    (["Hel", "lo wor", "ld"], ["wor"], "Hello "),
    (["abc", "def"], [], "abcdef"),
    (["a<", "|e", "nd|>tail"], ["<|end|>"], "a"),
    (["a<", "b"], ["<|end|>"], "a<b"),
])
def test_stop_matcher_holds_back_only_possible_stop_prefixes(pieces, stops, expected):
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces if not matcher.stopped)
    if not matcher.stopped:
        out += matcher.flush()
    assert out == expected
