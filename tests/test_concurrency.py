"""Concurrent generations on one GGUF model decode together (continuous batching), over real HTTP streams.

Every text is compared with the text the same request gets alone, on this machine: a batch must not
change what a request computes (llama_batch.py: one KV stream per slot, flash attention).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from universal_kernel.backends.base import GenerationParams

from .conftest import PARALLEL, SMOLLM, TOKEN, wait_for

QUESTIONS = ["What is the capital of France?", "Count from one to ten.", "Write a haiku about snow.",
             "Say hello in three languages.", "Name three rivers in Europe.", "What is two plus two?",
             "Describe a cat in one sentence.", "Give me a synonym for happy."]
# unlike lengths: the requests of one batch end at different steps, and new ones join as they end
MAX_TOKENS = [9, 23, 14, 30, 6, 19, 27, 11]


@pytest.fixture
def client(server):
    return server.client()


def _body(i: int, **extra) -> dict:
    return dict(model=SMOLLM, messages=[{"role": "user", "content": QUESTIONS[i]}], temperature=0,
                max_tokens=MAX_TOKENS[i], **extra)


def _streamed(client, body: dict) -> tuple[str, str]:
    stream = client.chat.completions.create(**body, stream=True)
    text, finish = [], None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def _idle(server) -> dict:
    return wait_for(lambda: (m := server.model_status(SMOLLM)) and m["queue_depth"] == 0 and m["active"] == 0 and m,
                    30, lambda: f"the model is not idle: {server.model_status(SMOLLM)}")


def _together(server, calls) -> tuple[list, int]:
    """Run the calls at once; returns their results and the most sequences the server ran at one time."""
    most = 0
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        deadline = time.monotonic() + 180
        while not all(f.done() for f in futures):
            most = max(most, server.model_status(SMOLLM)["sequences"])
            assert time.monotonic() < deadline, "concurrent streams did not finish: a hang"
            time.sleep(0.01)
        return [f.result(timeout=1) for f in futures], most


@pytest.fixture(scope="module")
def alone(server):
    """Each request's streamed text and finish reason when it runs by itself."""
    client = server.client()
    _idle(server)
    return [_streamed(client, _body(i)) for i in range(len(QUESTIONS))]


@pytest.mark.parametrize("count", [4, 8])
def test_concurrent_streams_each_give_the_text_they_give_alone(server, client, alone, count):
    _idle(server)
    assert server.model_status(SMOLLM)["parallel"] == PARALLEL
    results, most = _together(server, [lambda i=i: _streamed(client, _body(i)) for i in range(count)])
    assert results == alone[:count]
    assert most >= 2, "the streams never ran together"  # they decoded in one batch, not in turn
    assert most <= PARALLEL  # the rest waited in the queue and joined as others ended
    model = _idle(server)
    assert model["sequences"] == 0


def test_stats_per_request_stay_right_in_a_batch(runtime):
    """TTFT, tokens/s and usage of each request of a batch are its own (the in-process runtime)."""
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS[:4]]
    params = [{"temperature": 0, "max_tokens": n} for n in MAX_TOKENS[:4]]
    single = [runtime.generate(SMOLLM, messages=m, params=p) for m, p in zip(messages, params)]
    streams = [runtime.stream(SMOLLM, messages=m, params=p) for m, p in zip(messages, params)]
    done = []
    threads = [threading.Thread(target=lambda s=s: done.append((s, list(s)))) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(done) == 4
    for stream, one in zip(streams, single):
        completion = stream.completion
        assert completion.text == one.text
        assert (completion.prompt_tokens, completion.completion_tokens) == (one.prompt_tokens, one.completion_tokens)
        stats = completion.stats
        assert stats.completion_tokens == one.completion_tokens and stats.finish_reason == one.finish_reason
        assert 0 < stats.ttft_s <= stats.total_s and stats.tokens_per_s > 0
    # none queued behind a whole request: every one had joined the batch before the first of them ended
    ended = [s.request.enqueued + s.completion.stats.total_s - s.completion.stats.load_s for s in streams]
    assert max(s.request.started for s in streams) < min(ended)


def test_a_grammar_constrained_request_and_a_free_one_share_a_batch(server, client, alone):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    constrained = dict(model=SMOLLM, messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
                       temperature=0, max_tokens=24,
                       response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    _idle(server)
    by_itself = client.chat.completions.create(**constrained).choices[0].message.content
    results, most = _together(server, [
        lambda: client.chat.completions.create(**constrained).choices[0].message.content,
        lambda: _streamed(client, _body(3)),
        lambda: _streamed(client, _body(6)),
    ])
    assert most >= 2
    assert results[0] == by_itself and isinstance(json.loads(results[0])["city"], str)
    assert results[1:] == [alone[3], alone[6]]


def test_seeded_sampling_repeats_in_a_batch(server, client):
    def sampled(i: int, seed: int):
        return lambda: _streamed(client, {**_body(i), "temperature": 0.9, "seed": seed, "max_tokens": 16})

    _idle(server)
    by_itself = [sampled(i, 100 + i)() for i in range(4)]
    first, _ = _together(server, [sampled(i, 100 + i) for i in range(4)])
    second, _ = _together(server, [sampled(i, 100 + i) for i in range(4)])
    assert first == second == by_itself
    assert len({text for text, _ in first}) == 4


def _open_stream(server, body: dict) -> socket.socket:
    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /universal/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def test_a_client_dropped_mid_batch_frees_its_slot(server, client, alone):
    _idle(server)
    long = {**_body(0), "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 400}
    sockets = [_open_stream(server, long) for _ in range(PARALLEL)]
    try:
        wait_for(lambda: server.model_status(SMOLLM)["sequences"] == PARALLEL, 30, "the batch did not fill")
        before = server.model_status(SMOLLM)["figures"]["cancelled"]
        sockets.pop().close()
        model = wait_for(lambda: (m := server.model_status(SMOLLM))["sequences"] == PARALLEL - 1 and m, 120,
                         lambda: f"a dropped client kept its slot: {server.model_status(SMOLLM)}")
        assert model["figures"]["cancelled"] == before + 1
        # the freed slot takes a new request while the others still run, and it gives its own text
        assert _streamed(client, _body(2)) == alone[2]
        assert server.model_status(SMOLLM)["sequences"] == PARALLEL - 1
    finally:
        for sock in sockets:
            sock.close()
    assert _idle(server)["sequences"] == 0


def test_a_cancelled_generation_frees_its_cells_at_once(runtime):
    """Only the prompt's cells stay in a slot's KV stream, for the next prompt that starts with them; the
    generated tokens' cells go when the request ends."""
    entry = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM)
    batch, lib = entry.backend.batch, entry.backend._llama_cpp
    memory = lib.llama_get_memory(entry.backend.llm._ctx.ctx)
    stream = runtime.stream(SMOLLM, prompt="Once upon a time", params={"temperature": 0, "max_tokens": 400})
    for _ in range(5):
        next(stream)
    busy = next(slot for slot in batch.slots if slot.busy)
    assert lib.llama_memory_seq_pos_max(memory, busy.seq_id) >= 5  # the prompt and the tokens so far
    stream.close()
    assert stream.request.finished.wait(120) and not busy.busy
    assert lib.llama_memory_seq_pos_max(memory, busy.seq_id) == len(busy.held) - 1
    prompt = entry.backend.llm.tokenize(b"Once upon a time", add_bos=True, special=True)
    assert busy.held == (prompt if batch.small_rows else prompt[:len(prompt) // batch.chunk * batch.chunk])


def test_running_generations_keep_their_slots_in_one_run(runtime):
    """llama.cpp decodes in one pass only rows of consecutive seq_ids (a KV stream per sequence), so a new
    request takes the free slot that keeps the busy ones together: here the hole a cancelled one left."""
    batch = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM).backend.batch

    def busy_ids() -> set[int]:
        return {slot.seq_id for slot in batch.slots if slot.busy}

    streams: dict[int, object] = {}  # seq_id -> the stream that runs in it

    def start(prompt: str) -> int:
        before = busy_ids()
        stream = runtime.stream(SMOLLM, prompt=prompt, params={"temperature": 0, "max_tokens": 400})
        next(stream)
        (seq_id,) = busy_ids() - before
        streams[seq_id] = stream
        return seq_id

    try:
        for prompt in ("Once upon a time", "The river", "In the morning"):
            start(prompt)
        ids = sorted(busy_ids())
        assert ids == list(range(ids[0], ids[0] + 3)), ids
        middle = streams.pop(ids[1])
        middle.close()
        assert middle.request.finished.wait(120) and sorted(busy_ids()) == [ids[0], ids[2]]
        assert start("A small dog") == ids[1]
    finally:
        for stream in streams.values():
            stream.close()


def test_prompts_that_join_at_one_step_share_a_call_where_their_shapes_allow(runtime):
    """Where the load check passed (`small_rows`), the prompts of requests that join at the same step go
    through one llama_decode while they fit in n_batch tokens; where it failed, only prompts of the same
    length share a call, and short prompts reuse no prefix (llama_shapes.py). That fallback is asserted on
    every machine, with the check's result set to 0 (always safe: it only takes the exact shapes). Either
    way each request gets the text it gets alone."""
    from collections import Counter
    from itertools import groupby

    backend = _llama_backend(runtime)
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS[:4]]
    params = [GenerationParams(temperature=0, max_tokens=n) for n in MAX_TOKENS[:4]]
    alone = [runtime.generate(SMOLLM, messages=m, params={"temperature": 0, "max_tokens": p.max_tokens}).text
             for m, p in zip(messages, params)]
    requests = [(None, m, p) for m, p in zip(messages, params)]
    if backend.batch.small_rows:
        sequences, calls = _joined_at_one_step(backend, requests)
        prompt_rows = calls[0]
        # each prompt's rows but the prefix its slot already held (the chat template's start)
        assert sorted(seq_id for _, _, seq_id, _ in prompt_rows) == sorted(
            seq_id for s in sequences for seq_id in [s.slot.seq_id] * s.joined_with)
        assert any(s.joined_with < len(s.prompt) for s in sequences)  # the slots hold the questions asked alone
        assert sum(wants_logits for *_, wants_logits in prompt_rows) == len(sequences)  # each prompt's last token
        assert ["".join(s.text) for s in sequences] == alone

    checked = backend.batch.small_rows
    backend.batch.small_rows = 0
    try:
        sequences, calls = _joined_at_one_step(backend, requests)
    finally:
        backend.batch.small_rows = checked
    assert all(s.joined_with == len(s.prompt) for s in sequences)  # no prefix reused: all under n_batch
    lengths = [s.joined_with for s in sequences]
    assert len(set(lengths)) > 1, lengths  # unlike lengths, which must not share a call
    # rows per sequence of each call; a prompt's call holds more than one row of it (a step's call one)
    per_call = [Counter(seq_id for _, _, seq_id, _ in rows) for rows in calls]
    prompt_calls = [dict(rows) for rows in per_call if max(rows.values()) > 1]
    # each prompt whole in one call, shared only with the joiners next to it of the same length
    runs = [list(run) for _, run in groupby(sequences, key=lambda s: s.joined_with)]
    assert prompt_calls == [{s.slot.seq_id: s.joined_with for s in run} for run in runs], (prompt_calls, lengths)
    assert ["".join(s.text) for s in sequences] == alone


def test_a_long_prompt_never_shares_a_call_with_a_shorter_one(runtime):
    """A prompt of `small_rows` tokens or more computes other numbers when llama.cpp cuts it into smaller
    micro-batches, as it does when a shorter prompt shares the call (llama_shapes.py): it goes alone, and
    both texts are what they are alone."""
    backend = _llama_backend(runtime)
    long_prompt = "Here is a list: " + ", ".join(f"item {i} is {i * 7 % 13}" for i in range(30)) + ". The first"
    assert backend.count_tokens(long_prompt) >= max(backend.batch.small_rows, 64)
    requests = [(long_prompt, None, GenerationParams(temperature=0, max_tokens=12)),
                (None, [{"role": "user", "content": QUESTIONS[0]}], GenerationParams(temperature=0, max_tokens=12))]
    alone = [runtime.generate(SMOLLM, prompt=p, messages=m, params={"temperature": 0, "max_tokens": 12}).text
             for p, m, _ in requests]
    sequences, calls = _joined_at_one_step(backend, requests)
    long_seq = sequences[0].slot.seq_id
    prompt_calls = [rows for rows in calls if sum(seq_id == long_seq for _, _, seq_id, _ in rows) > 1]
    assert len(prompt_calls) == 1 and {seq_id for _, _, seq_id, _ in prompt_calls[0]} == {long_seq}
    assert ["".join(s.text) for s in sequences] == alone


def _llama_backend(runtime):
    return next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM).backend


def _joined_at_one_step(backend, requests):
    """Begin the requests (prompt, messages, params) at once and step the batch to the end in this thread;
    returns the sequences (each with `joined_with`: the prompt rows left to decode when it joined) and the
    rows of every llama_decode call. Nothing is queued, so the model's worker waits on its queue."""
    calls = []
    decode = backend.batch.decode
    backend.batch.decode = lambda rows: (calls.append(list(rows)), decode(rows))[1]
    try:
        sequences = [backend.begin(p, m, params, lambda piece: None, lambda: False) for p, m, params in requests]
        for sequence in sequences:
            sequence.joined_with = len(sequence.pending)
        outcomes = {}
        while len(outcomes) < len(sequences):
            for sequence, outcome in backend.step():
                outcomes[id(sequence)] = outcome
    finally:
        del backend.batch.decode
    assert not any(isinstance(outcome, Exception) for outcome in outcomes.values())
    return sequences, calls
