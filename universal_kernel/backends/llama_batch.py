"""Batched decoding for one llama.cpp model: generations that run at the same time step together.

The model's context holds one KV-cache stream per slot (`n_seq_max` = slots, `kv_unified` off). A
generation owns a slot while it runs. Every step decodes the next token of every running generation in
one `llama_decode` call, and each is then sampled by its own sampler chain (its seed, temperature,
penalties, grammar). A generation that arrives while others run joins at the next step: its prompt is
decoded one `n_batch` chunk per step between the others' steps, together with the chunks of other joiners
that fit in the same `n_batch` tokens (continuous batching). A new prompt reuses the cells of the longest
prefix a free slot holds of its last prompt, as far as that keeps every number (llama_shapes.py).

Why a stream per slot, and flash attention: a sequence then sits in cells 0..n of its own stream, in
order, and flash attention skips masked cells, so its numbers do not depend on what else runs; greedy
text alone equals greedy text in a batch, as long as each sequence's rows per micro-batch stay on the
same kernel (llama_shapes.py). With one unified cache shared by the sequences, the softmax
summed each row over cells of other sequences in other groupings, and 5 of 8 greedy texts of SmolLM2
changed within 48 tokens (Zen 1).

Every call below llama-cpp-python's public `Llama` methods goes through llama_internals.py.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Callable

from .base import StopMatcher, shared_prefix_length
from .llama_internals import RawContext
from .llama_shapes import may_share, small_rows


@dataclass(eq=False)
class Slot:
    """A KV stream and what it holds."""

    seq_id: int
    #: tokens whose cells the stream keeps, from position 0, for the next prompt that starts with them: the
    #: prompt decoded last, never generated tokens
    held: list[int] = field(default_factory=list)
    #: whether those cells all come from micro-batches of fewer than `DecodeBatch.small_rows` rows, so that
    #: any prefix of them is what a fresh context computes for a short prompt (llama_shapes.py)
    held_small: bool = False
    busy: bool = False
    last_used: float = 0.0


@dataclass(eq=False)
class SamplingSettings:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    grammar: object | None = None  # a llama_grammar.LlamaGrammar


@dataclass(eq=False)
class Sequence:
    """One generation in the batch."""

    slot: Slot
    prompt: list[int]
    max_tokens: int
    sampler: object  # a sampler chain (llama_internals.RawContext.sampler)
    stops: StopMatcher
    emit: Callable[[str], None]
    cancelled: Callable[[], bool]
    pending: list[int]  # prompt tokens not decoded yet
    pos: int  # the position the next decoded token takes
    generated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish: str | None = None
    logprobs: int | None = None  # asked for by the request: scored once it finishes
    decoder: object = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore"))


class DecodeBatch:
    """The slots of one llama.cpp context and the generations running in them."""

    def __init__(self, llm, llama_cpp, parallel: int, n_ctx_seq: int, last_n_tokens: int = 64):
        self.llm = llm
        self.raw = RawContext(llm, llama_cpp)
        self.n_ctx_seq = n_ctx_seq
        self.slots = [Slot(i) for i in range(parallel)]
        self.active: list[Sequence] = []
        self.last_n_tokens = last_n_tokens  # the penalties' window, as llama-cpp-python's
        self.chunk = llm.n_batch
        self._batch = self.raw.new_batch(max(self.chunk, parallel))
        self._pieces: dict[int, bytes] = {}
        self.n_ubatch = min(self.raw.n_ubatch, self.chunk)  # llama.cpp caps it at n_batch too
        #: below this many rows of one sequence, every micro-batch computes the same numbers (llama_shapes.py)
        self.small_rows = small_rows(self)

    @property
    def parallel(self) -> int:
        return len(self.slots)

    def free_slots(self) -> int:
        return sum(not s.busy for s in self.slots)

    # Slots ----------------------------------------------------------------------------------
    def claim(self, tokens: list[int], slot: Slot | None = None) -> tuple[Slot, int]:
        """A free slot for a prompt of `tokens`, and how many leading tokens its stream keeps: the rest of
        its cells are removed. The slot is the one that keeps most of the prompt; among equals, the one
        that leaves the busy slots in the fewest runs of consecutive seq_ids (see `step`), then the least
        recently used."""
        if slot is None:
            free = [s for s in self.slots if not s.busy]
            if not free:
                raise RuntimeError("no free slot")  # the worker admits no more than the slots
            slot = max(free, key=lambda s: (self._reusable(s, tokens), -self._runs_with(s), -s.last_used))
        keep = self._reusable(slot, tokens)
        self.forget(slot, keep)
        slot.held = list(tokens[:keep])
        slot.held_small = len(tokens) < self.small_rows
        slot.busy = True
        return slot, keep

    def _runs_with(self, slot: Slot) -> int:
        """Runs of consecutive busy seq_ids if `slot` were busy too."""
        busy = [s.busy or s is slot for s in self.slots]
        return sum(b and (i == 0 or not busy[i - 1]) for i, b in enumerate(busy))

    def reusable(self, tokens: list[int]) -> int:
        """The most leading tokens of a prompt that a free slot would keep."""
        return max((self._reusable(s, tokens) for s in self.slots if not s.busy), default=0)

    def _reusable(self, slot: Slot, tokens: list[int]) -> int:
        # At least the last prompt token is decoded again: its logits are what the first sample needs.
        limit = min(len(slot.held), len(tokens) - 1)
        shared = shared_prefix_length(slot.held[:limit], tokens[:limit]) if limit > 0 else 0
        if slot.held_small and len(tokens) < self.small_rows:
            return shared  # every cell on either side from the one small-batch kernel
        return shared // self.chunk * self.chunk  # whole chunks from 0, decoded alike whatever came before

    def forget(self, slot: Slot, keep: int) -> None:
        """Remove the stream's cells from position `keep` on."""
        self.raw.forget(slot.seq_id, keep)
        del slot.held[keep:]

    def release(self, slot: Slot, decoded_prompt: list[int] | None) -> None:
        """The slot is free again; it keeps the cells of `decoded_prompt` (the tokens its stream holds from
        position 0, decoded in chunks that end at multiples of `n_batch`), and every other cell it held is
        freed now."""
        keep = len(decoded_prompt or [])
        if not slot.held_small:
            keep = keep // self.chunk * self.chunk
        slot.held = list((decoded_prompt or [])[:keep])
        self.raw.forget(slot.seq_id, keep)
        slot.busy = False
        slot.last_used = time.monotonic()

    # Decoding -------------------------------------------------------------------------------
    def decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of rows (token, position, seq_id, wants logits)."""
        self._batch.decode(rows)

    def decode_chunk(self, seq_id: int, tokens: list[int], start: int, logits_all: bool = False) -> None:
        """Decode `tokens` at positions from `start` in `seq_id`, alone, in `n_batch` chunks as `Llama.eval`
        cuts them (so a prompt's cells are what a fresh context computes)."""
        for first in range(0, len(tokens), self.chunk):
            part = tokens[first:first + self.chunk]
            self.decode([(t, start + first + i, seq_id, logits_all or i == len(part) - 1)
                         for i, t in enumerate(part)])

    def sampler(self, settings: SamplingSettings):
        """The sampler chain llama-cpp-python's `Llama._init_sampler` builds for these settings."""
        return self.raw.sampler(settings, self.last_n_tokens)

    def begin(self, tokens: list[int], max_tokens: int, settings: SamplingSettings, stops: list[str],
              emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Sequence:
        """Add a generation; its prompt is decoded by the next steps."""
        chain = self.sampler(settings)
        slot, keep = self.claim(tokens)
        sequence = Sequence(slot=slot, prompt=tokens, max_tokens=max_tokens, sampler=chain,
                            stops=StopMatcher(stops), emit=emit, cancelled=cancelled,
                            pending=list(tokens[keep:]), pos=keep)
        self.active.append(sequence)
        return sequence

    def step(self) -> list[Sequence]:
        """Decode the next prompt chunk of joining generations (as many as fit in `n_batch` tokens, oldest
        first) and one token of every running one; returns the generations that finished (their slots
        still held: see `end`)."""
        finished = [s for s in self.active if s.cancelled()]
        for sequence in finished:
            sequence.finish = "cancelled"
        joining = self._prefill()
        for sequence, row in joining:
            sequence.slot.held = sequence.prompt[:sequence.pos]  # the cells decoded so far
            if not sequence.pending:
                self._sample(sequence, row)
                if sequence.finish is not None:
                    finished.append(sequence)
        prefilled = {id(s) for s, _ in joining}
        # In seq_id order: with a KV stream per sequence, llama.cpp puts into one ubatch (one pass over
        # the weights) only rows whose seq_ids follow one another (llama_batch_allocr::split_equal,
        # sequential); rows out of order cost a pass each run, 8 rows 1.25x the time of sorted ones.
        running = sorted((s for s in self.active if s.finish is None and not s.pending and id(s) not in prefilled),
                         key=lambda s: s.slot.seq_id)
        if running:
            self.decode([(s.generated[-1], s.pos, s.slot.seq_id, True) for s in running])
            for row, sequence in enumerate(running):
                sequence.pos += 1
                self._sample(sequence, row)
                if sequence.finish is not None:
                    finished.append(sequence)
        for sequence in finished:
            self.active.remove(sequence)
        return finished

    def _prefill(self) -> list[tuple[Sequence, int]]:
        """Decode, in one `llama_decode`, the next chunk of the joining generations' prompts: the oldest
        joiner's always, then each next joiner's while the parts still fit in `n_batch` tokens and may share
        a call without changing a number (llama_shapes.py: all short, or all the same length). Returns each
        joiner decoded with the batch row of its last token (whose logits its first sample needs).

        A chunk ends at a multiple of `n_batch` from position 0, where `Llama.eval` cuts a fresh prompt.
        Joiners at once, not one a step: eight streams that start together spent about 1 s of 6-7 s on
        eight prefills one after the other (Zen 1). Rows go in seq_id order for the same reason as the
        running rows' (see `step`)."""
        parts = []
        for sequence in self.active:
            if not sequence.pending or sequence.finish is not None:
                continue
            size = min(len(sequence.pending), self.chunk - sequence.pos % self.chunk)
            if parts and not may_share([len(part) for _, part in parts] + [size], self.small_rows, self.n_ubatch):
                break  # joiners keep their order: a later one never overtakes one that waits
            parts.append((sequence, sequence.pending[:size]))
        if not parts:
            return []
        parts.sort(key=lambda part: part[0].slot.seq_id)
        rows, joined = [], []
        for sequence, part in parts:
            rows += [(t, sequence.pos + i, sequence.slot.seq_id, i == len(part) - 1) for i, t in enumerate(part)]
            joined.append((sequence, len(rows) - 1))
            del sequence.pending[:len(part)]
            sequence.pos += len(part)
        self.decode(rows)
        return joined

    def _sample(self, sequence: Sequence, row: int) -> None:
        token = self.raw.sample(sequence.sampler, row)
        if self.raw.ends_generation(token):
            sequence.finish = "stop"
            self._flush(sequence)
            return
        sequence.generated.append(token)
        piece = sequence.decoder.decode(self._piece(token))
        text = sequence.stops.feed(piece)
        if text:
            sequence.text.append(text)
            sequence.emit(text)
        if sequence.stops.stopped:
            sequence.finish = "stop"
        elif len(sequence.generated) >= sequence.max_tokens:
            sequence.finish = "length"
            self._flush(sequence)

    def _piece(self, token: int) -> bytes:
        """A token's bytes as llama-cpp-python's detokenize gives them (special tokens as nothing)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.raw.piece(token)
        return piece

    @staticmethod
    def _flush(sequence: Sequence) -> None:
        text = sequence.stops.flush() if not sequence.stops.stopped else ""
        text += sequence.decoder.decode(b"", final=True)
        if text:
            sequence.text.append(text)
            sequence.emit(text)

    def end(self, sequence: Sequence) -> None:
        """Free a finished generation's slot and sampler; the slot keeps the prompt's cells."""
        if sequence in self.active:
            self.active.remove(sequence)
        decoded = sequence.prompt if not sequence.pending else sequence.prompt[:sequence.pos]
        self.release(sequence.slot, decoded)
        sequence.sampler.close()

    def close(self) -> None:
        self._batch.close()
