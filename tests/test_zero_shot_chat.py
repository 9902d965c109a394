"""Zero-shot labels on a chat model (`classify_labels`), on llama_cpp and transformers.

What the tiny model prefers depends on the CPU's kernels: these tests compare the backend with a
direct computation on the same machine (raw llama-cpp-python, plain torch), never with an answer.
"""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel.backends import GenerationParams, create_backend
from universal_kernel.backends.base import shared_prefix_length
from universal_kernel.backends.zero_shot import classification_messages, log_softmax
from universal_kernel.config import RuntimeConfig
from universal_kernel.errors import InvalidRequest
from universal_kernel.references import Resolver

from .conftest import FRANCE, SMOLLM

TEXTS = ["I loved every minute of this film.", "The match ended two to one after extra time.",
         "Stir the flour into the butter, then add the milk slowly."]
# Several tokens each, one the prefix of another: the label tokens after the first are scored too.
LABELS = ["movie review", "sports news", "cooking recipe", "sports"]
CHAT = [{"role": "user", "content": FRANCE}]
# One thread: llama.cpp's threads spin at their barriers, and on two cores shared with other work
# that took a run from 40 s to over 5 minutes. The references use the same count.
THREADS = 1
LONG_TEXT = " ".join(TEXTS * 16)  # its prompt is longer than one n_batch (512 tokens)


@pytest.fixture(scope="module")
def backend():
    llama_backend = create_backend(Resolver([]).resolve(SMOLLM), "llama_cpp", RuntimeConfig(threads=THREADS), {})
    yield llama_backend
    llama_backend.close()


@pytest.fixture(scope="module")
def raw_scorer(backend):
    """llama-cpp-python with the logits of every position: the reference for label log-probabilities."""
    from universal_kernel.backends.llama_cpp import llama_library

    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    llm = llama_cpp.Llama(**{**backend.library_settings(), "n_ctx": 1024}, logits_all=True, seed=0, verbose=False)
    yield llm
    llm.close()


def raw_label_probabilities(llm, prompt: str, labels: list[str]) -> np.ndarray:
    """Softmax over the labels of the summed log-softmax of each label's tokens after `prompt`.

    The prompt is evaluated once and each label after it (`Llama.eval` drops what follows
    `n_tokens`): the same numbers as one pass over prompt+label, at a fraction of the time.
    """
    prompt_tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    joined = [llm.tokenize((prompt + label).encode(), add_bos=True, special=True) for label in labels]
    start = min(shared_prefix_length(prompt_tokens, tokens) for tokens in joined)
    llm.reset()
    llm.eval(prompt_tokens[:start])
    totals = []
    for tokens in joined:
        llm.n_tokens = start
        llm.eval(tokens[start:])
        logprobs = log_softmax(llm.scores[start - 1: len(tokens) - 1])
        totals.append(sum(logprobs[i - start, tokens[i]] for i in range(start, len(tokens))))
    weights = np.exp(np.asarray(totals) - max(totals))
    return weights / weights.sum()


def greedy_chat(backend, messages) -> str:
    pieces: list[str] = []
    backend.generate(None, messages, GenerationParams(temperature=0.0, max_tokens=32), pieces.append,
                     lambda: False)
    return "".join(pieces)


def test_probabilities_sum_to_one_over_exactly_the_labels_best_first(backend):
    results, prompt_tokens = backend.classify_labels(TEXTS, LABELS)
    assert len(results) == len(TEXTS)
    for result in results:
        assert set(result) == set(LABELS)
        assert sum(result.values()) == pytest.approx(1.0, abs=1e-9)
        values = list(result.values())
        assert values == sorted(values, reverse=True)
    # The order of the texts is kept: each alone gives its own result.
    for text, result in zip(TEXTS, results):
        alone, _ = backend.classify_labels([text], LABELS)
        assert list(alone[0]) == list(result)
        assert np.allclose(list(alone[0].values()), list(result.values()), atol=1e-6)
    # The prompts' tokens as `generate` counts them (BOS as the model says); the labels' are not counted.
    expected_tokens = sum(len(backend.llm.tokenize(backend.classification_prompt(text, LABELS).encode(),
                                                   add_bos=True, special=True)) for text in TEXTS)
    assert prompt_tokens == expected_tokens
    assert backend.classify_labels(TEXTS[:1], ["anything"])[0] == [{"anything": 1.0}]
    assert backend.classify_labels([], LABELS) == ([], 0)


def test_probabilities_equal_raw_llama_cpp_teacher_forcing(backend, raw_scorer):
    texts = TEXTS + [LONG_TEXT]  # the long prompt is decoded in two chunks
    assert backend.count_tokens(backend.classification_prompt(LONG_TEXT, LABELS)) > backend.llm.n_batch
    results, _ = backend.classify_labels(texts, LABELS)
    for text, result in zip(texts, results):
        raw = raw_label_probabilities(raw_scorer, backend.classification_prompt(text, LABELS), LABELS)
        assert np.allclose([result[label] for label in LABELS], raw, atol=1e-3), (text[:40], result, raw)


def test_generate_after_classify_equals_raw_llama_cpp(backend):
    from universal_kernel.backends.llama_cpp import llama_library

    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    # A chat whose prompt is the classification prompt: its first n_batch chunk is kept between calls.
    long_chat = classification_messages(LONG_TEXT, LABELS)
    raw = llama_cpp.Llama(**backend.library_settings(), verbose=False)
    try:
        expected = {}
        for name, messages in (("short", CHAT), ("long", long_chat)):
            raw.reset()  # a fresh evaluation each time
            answer = raw.create_chat_completion(messages=messages, temperature=0.0, max_tokens=32)
            expected[name] = answer["choices"][0]["message"]["content"]
    finally:
        raw.close()
    backend.classify_labels(TEXTS, LABELS)
    assert greedy_chat(backend, CHAT) == expected["short"]
    backend.classify_labels([LONG_TEXT], LABELS)  # leaves a whole n_batch chunk of this prompt
    assert greedy_chat(backend, long_chat) == expected["long"]
    backend.classify_labels([LONG_TEXT], LABELS)  # reuses the chunk the generation left
    assert greedy_chat(backend, long_chat) == expected["long"]
    assert greedy_chat(backend, CHAT) == expected["short"]


def test_too_long_a_text_is_refused_unless_truncated(backend):
    small = create_backend(backend.spec, "llama_cpp", RuntimeConfig(threads=THREADS), {"n_ctx": 128})
    try:
        long_text = " ".join(TEXTS * 20)
        with pytest.raises(InvalidRequest) as refused:
            small.classify_labels([TEXTS[0], long_text], LABELS)
        assert refused.value.param == "input"
        results, prompt_tokens = small.classify_labels([long_text], LABELS, truncate=True)
        assert set(results[0]) == set(LABELS) and sum(results[0].values()) == pytest.approx(1.0)
        assert prompt_tokens <= 128
        for labels, param in (([], "labels"), (["a", "a"], "labels"), (["a", ""], "labels")):
            with pytest.raises(InvalidRequest) as bad:
                small.classify_labels(TEXTS[:1], labels)
            assert bad.value.param == param
    finally:
        small.close()


# transformers: a tiny random-weight Llama with a byte-level tokenizer and a chat template ---------------
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_backend(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-chat"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    # "\n" + "s" merges: a label starting with "s" takes the prompt's last character into its first token.
    vocab["Ċs"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "s")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.5, eos_token_id=fast.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny = create_backend(Resolver([folder.parent]).resolve("tiny-chat"), "transformers",
                          RuntimeConfig(device="cpu", threads=THREADS), {})
    yield tiny
    tiny.close()


def torch_label_probabilities(tiny, prompt: str, labels: list[str]) -> np.ndarray:
    import torch

    prompt_ids = tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    totals = []
    for label in labels:
        ids = tiny.tokenizer(prompt + label, add_special_tokens=False)["input_ids"]
        start = shared_prefix_length(prompt_ids, ids)
        with torch.inference_mode():
            logits = tiny.model(torch.tensor([ids])).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        totals.append(float(sum(logprobs[i - 1, ids[i]] for i in range(start, len(ids)))))
    weights = np.exp(np.asarray(totals) - max(totals))
    return weights / weights.sum()


def test_transformers_labels_equal_a_direct_torch_computation(tiny_chat_backend):
    tiny = tiny_chat_backend
    results, prompt_tokens = tiny.classify_labels(TEXTS, LABELS)
    assert prompt_tokens == sum(tiny.count_tokens(tiny.classification_prompt(t, LABELS)) for t in TEXTS)
    for text, result in zip(TEXTS, results):
        assert set(result) == set(LABELS) and sum(result.values()) == pytest.approx(1.0, abs=1e-9)
        values = list(result.values())
        assert values == sorted(values, reverse=True)
        expected = torch_label_probabilities(tiny, tiny.classification_prompt(text, LABELS), LABELS)
        assert np.allclose([result[label] for label in LABELS], expected, atol=1e-5), (result, expected)
    assert tiny.classify_labels(TEXTS[:1], ["only"])[0] == [{"only": 1.0}]


def test_transformers_too_long_a_text_is_refused_unless_truncated(tiny_chat_backend):
    tiny = tiny_chat_backend
    long_text = "word " * 100  # byte-level: 500 tokens, past the 256 positions
    with pytest.raises(InvalidRequest) as refused:
        tiny.classify_labels([long_text], LABELS)
    assert refused.value.param == "input"
    results, prompt_tokens = tiny.classify_labels([long_text], LABELS, truncate=True)
    assert sum(results[0].values()) == pytest.approx(1.0)
    assert prompt_tokens + max(tiny.count_tokens(label) for label in LABELS) <= 256
