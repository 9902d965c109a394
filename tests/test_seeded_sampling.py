"""A seeded request repeats its text: first call and later ones, warm or fresh, on both backends and
through every door (runtime, HTTP with the official client, %%generate).

llama-cpp-python reuses the prompt prefix its context already holds and decodes only the rest, in a
smaller batch; on AVX-512 CPUs that changes the logits a little and a seeded request gave one text on
its first call and another on later ones (SPEC §6). The CPU running a test may not show that flip, so
these tests check the property itself: the text of a seeded request equals the one a fresh
llama-cpp-python context gives on its very first call, whatever ran before it on the runtime's context.
"""

from __future__ import annotations

import threading

import pytest

from universal_kernel.backends.llama_batch import shared_prefix_length
from universal_kernel.backends.llama_cpp import sampler_seed
from universal_kernel.backends.llama_shapes import SMALL_ROWS

from .conftest import SMOLLM
from .magics_support import ip, run  # noqa: F401

SEA = [{"role": "user", "content": "Write a short poem about the sea."}]
WIND = [{"role": "user", "content": "Write a short poem about the sea and the wind."}]  # same template prefix
# Over SMALL_ROWS tokens, under n_batch: the shape check's threshold lies between SEA and LONG_SEA on every machine
LONG_SEA = [{"role": "user", "content": SEA[0]["content"] + " Mention the waves that break on the rocks, the gulls "
             "that cry above the harbour, the fishing boats that come home at dusk, and the lighthouse that keeps "
             "watch through the night."}]
SAMPLED = {"temperature": 1.0, "max_tokens": 24}
# A prompt longer than llama.cpp's batch (512 tokens), so that whole batches of it can be kept.
STORY = "Here is a list of things to remember: " + ", ".join(f"item {i} is {i * 7 % 13}" for i in range(90))
STORY_A = STORY + ". Now write one sentence about the first item:"
STORY_B = STORY + ". Then the list ended, and the writer said"


def _llama(runtime):
    return next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM and e.backend_name == "llama_cpp").backend


@pytest.fixture(scope="module")
def fresh_first_call(smollm_path, runtime):
    """The text a brand-new llama-cpp-python context gives on its first call: the reference."""
    from universal_kernel.backends.llama_cpp import llama_library

    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    settings = _llama(runtime).library_settings()  # flash attention as ours

    def first_call(prompt: str, seed: int, stop: list[str] | None = None, max_tokens: int = 24) -> str:
        llm = llama_cpp.Llama(**settings, verbose=False)
        try:
            out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=1.0, top_p=0.95, top_k=40,
                                        min_p=0.05, repeat_penalty=1.0, seed=seed, stop=stop or None)
            return out["choices"][0]["text"]
        finally:
            llm.close()

    return first_call


def _sampled(rt, seed, backend="auto", **given):
    return rt.generate(SMOLLM, params={**SAMPLED, "seed": seed}, backend=backend, **given).text


# llama_cpp through the runtime ---------------------------------------------------------------------------------
@pytest.mark.parametrize("messages", [SEA, LONG_SEA], ids=["short", "long"])
def test_a_seeded_chat_repeats_the_fresh_contexts_first_text(runtime, fresh_first_call, messages):
    backend = _llama(runtime)
    prompt, stops = backend.chat_prompt(messages)
    reference = fresh_first_call(prompt, 42, stops)
    assert reference  # the model wrote something to compare

    _sampled(runtime, 7, messages=WIND)  # the context now holds a prompt that shares the template's start
    tokens = backend.llm.tokenize(prompt.encode(), add_bos=True, special=True)
    wind = backend.llm.tokenize(backend.chat_prompt(WIND)[0].encode(), add_bos=True, special=True)
    shared = shared_prefix_length(tokens, wind)
    assert 0 < shared and len(tokens) < backend.batch.chunk
    assert (len(tokens) < SMALL_ROWS) == (messages is SEA)
    if backend.batch.small_rows > len(tokens):  # a short prompt: the template's start is not decoded again
        assert backend.batch.reusable(tokens) >= shared
    else:  # `small_rows` tokens or more: only whole n_batch chunks are kept, so the template's start is decoded again
        assert backend.batch.reusable(tokens) == 0
    first = _sampled(runtime, 42, messages=messages)
    again = _sampled(runtime, 42, messages=messages)  # the whole prompt is in the context: a full prefix hit
    runtime.generate(SMOLLM, messages=WIND, params={"temperature": 0, "max_tokens": 8})
    _sampled(runtime, 43, messages=messages)  # another seed on the same prompt in between
    later = _sampled(runtime, 42, messages=messages)
    assert first == again == later == reference


def test_a_seeded_completion_longer_than_a_batch_repeats(runtime, fresh_first_call):
    backend = _llama(runtime)
    tokens_a = backend.llm.tokenize(STORY_A.encode(), add_bos=True, special=True)
    tokens_b = backend.llm.tokenize(STORY_B.encode(), add_bos=True, special=True)
    batch = backend.llm.n_batch
    shared = next(i for i, (a, b) in enumerate(zip(tokens_a, tokens_b)) if a != b)
    assert len(tokens_a) > shared >= batch  # a whole batch of the prefix can be kept
    reference = fresh_first_call(STORY_A, 42)

    _sampled(runtime, 5, prompt=STORY_B)
    first = _sampled(runtime, 42, prompt=STORY_A)
    again = _sampled(runtime, 42, prompt=STORY_A)
    assert first == again == reference

    # What a long prompt reuses: whole batches of the shared prefix, decoded as a fresh context decodes them
    _sampled(runtime, 5, prompt=STORY_B)
    assert backend.batch.reusable(tokens_a) == shared // batch * batch
    assert backend.batch.reusable([t + 1 for t in tokens_a[:3]]) == 0


def test_greedy_text_is_the_same_on_the_first_and_later_calls(runtime, raw_llama):
    prompt, stops = _llama(runtime).chat_prompt(SEA)
    raw_llama.reset()  # a fresh context's first call
    reference = raw_llama.create_completion(prompt, max_tokens=16, temperature=0, stop=stops)["choices"][0]["text"]
    greedy = {"temperature": 0, "max_tokens": 16}
    runtime.generate(SMOLLM, messages=WIND, params=greedy)
    texts = [runtime.generate(SMOLLM, messages=SEA, params=greedy).text for _ in range(2)]
    assert texts == [reference, reference]


def test_an_unseeded_request_after_a_seeded_one_is_random(runtime):
    """llama-cpp-python derives an unseeded request's seed from the last one: after seed=42 it was always
    the same text. Each unseeded request gets a fresh random seed."""
    unseeded = []
    for _ in range(3):
        _sampled(runtime, 42, messages=SEA)
        unseeded.append(runtime.generate(SMOLLM, messages=SEA, params={"temperature": 1.5, "top_k": 0, "top_p": 1.0,
                                                                      "min_p": 0.0, "max_tokens": 24}).text)
    assert len(set(unseeded)) > 1


def test_any_integer_seed_maps_onto_a_repeatable_llama_seed():
    assert sampler_seed(42) == 42 and sampler_seed(0) == 0
    for seed in (-1, 2**32 - 1, 2**32, 10**40, -(10**40)):
        assert 0 <= sampler_seed(seed) < 0xFFFFFFFF  # never llama.cpp's "random seed" value
        assert sampler_seed(seed) == sampler_seed(seed)
    assert len({sampler_seed(None) for _ in range(4)}) > 1  # unseeded: a fresh random seed each time


# %%generate -------------------------------------------------------------------------------------------------------
def test_generate_magic_seed_repeats_and_equals_the_runtime(ip, runtime, fresh_first_call):
    prompt, stops = _llama(runtime).chat_prompt(SEA)
    reference = fresh_first_call(prompt, 42, stops)
    for name in ("a", "b"):
        _sampled(runtime, 9, messages=WIND)
        _, result = run(ip, f"%%generate --seed 42 --temperature 1 --max-tokens 24 --no-stream --out {name}\n"
                            f"{SEA[0]['content']}")
        assert result.success, result.error_in_exec
    assert ip.user_ns["a"] == ip.user_ns["b"] == reference


# HTTP, the official client ------------------------------------------------------------------------------------------
def test_seeded_requests_repeat_over_http(server):
    client = server.client()
    seeded = dict(model=SMOLLM, messages=SEA, temperature=1.0, seed=42, max_tokens=24)

    client.chat.completions.create(model=SMOLLM, messages=WIND, temperature=1.0, seed=3, max_tokens=8)
    first = client.chat.completions.create(**seeded).choices[0].message.content
    again = client.chat.completions.create(**seeded).choices[0].message.content
    client.completions.create(model=SMOLLM, prompt="Once upon a time", temperature=1.0, max_tokens=8)
    streamed = "".join(chunk.choices[0].delta.content or ""
                       for chunk in client.chat.completions.create(**seeded, stream=True) if chunk.choices)
    assert first and first == again == streamed

    texts = [client.completions.create(model=SMOLLM, prompt="The sea was", temperature=1.0, seed=11,
                                       max_tokens=16).choices[0].text for _ in range(2)]
    client.chat.completions.create(model=SMOLLM, messages=WIND, max_tokens=4)
    texts.append(client.completions.create(model=SMOLLM, prompt="The sea was", temperature=1.0, seed=11,
                                           max_tokens=16).choices[0].text)
    assert texts[0] == texts[1] == texts[2]


# transformers through the runtime -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_seeded_request_repeats_on_transformers(hf_runtime):
    seeded = dict(params={"temperature": 1.0, "max_tokens": 12, "seed": 42}, backend="transformers")
    hf_runtime.generate(SMOLLM, messages=WIND, params={"temperature": 1.0, "max_tokens": 4, "seed": 1},
                        backend="transformers")
    first = hf_runtime.generate(SMOLLM, messages=SEA, **seeded).text
    again = hf_runtime.generate(SMOLLM, messages=SEA, **seeded).text
    assert first and first == again

    # The request draws from its own generator: other draws on torch's global one, even while it
    # generates in its worker thread, change nothing.
    import torch

    stop = threading.Event()

    def draw():
        while not stop.is_set():
            torch.rand(8)

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        disturbed = hf_runtime.generate(SMOLLM, messages=SEA, **seeded).text
    finally:
        stop.set()
        thread.join()
    assert disturbed == first

    unseeded = [hf_runtime.generate(SMOLLM, messages=SEA, params={"temperature": 1.5, "top_k": 0, "top_p": 1.0,
                                                                  "min_p": 0.0, "max_tokens": 12},
                                    backend="transformers").text for _ in range(3)]
    assert len(set(unseeded)) > 1
