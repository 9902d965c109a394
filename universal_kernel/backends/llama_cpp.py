"""GGUF models through llama-cpp-python: chat with the file's own template, completion, embeddings."""

from __future__ import annotations

import json
import secrets

import numpy as np

from ..errors import BackendUnavailable, GenerationFailed, InvalidRequest, LoadFailed, RuntimeFailure
from ..model_spec import ModelSpec
from . import llama_internals as internals
from .base import Backend, Emit, GenerationOutcome, GenerationParams, IsCancelled
from .llama_batch import DecodeBatch, SamplingSettings, Sequence, Slot
from .zero_shot import LabelScorer, classification_messages, log_softmax


def llama_library():
    """llama_cpp, imported the runtime's way: every import of it by the runtime (and a test's raw reference,
    or a script that starts `llama_cpp.server` beside it) goes through here (llama_amx.py says why)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(
            "llama-cpp-python is not installed (pip install llama-cpp-python)"
        ) from exc
    from .llama_amx import keep_weights_out_of_amx_buffers

    keep_weights_out_of_amx_buffers(llama_cpp)
    return llama_cpp


def default_context(spec: ModelSpec) -> int:
    """Cells of one sequence when a load names no n_ctx: the model's own context, at most 4096."""
    return min(int(spec.metadata.get(f"{spec.architecture}.context_length", 2048)), 4096)


def kv_cache_bytes(spec: ModelSpec, cells: int) -> int:
    """Bytes of llama.cpp's f16 KV cache of `cells` cells for this GGUF, from its metadata (0 if it lacks
    the figures). It grows with the context and the sequences, not with the file."""
    meta, arch = spec.metadata, spec.architecture
    try:
        layers = int(meta[f"{arch}.block_count"])
        heads = meta[f"{arch}.attention.head_count"]
        kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
        # some models give the heads layer by layer
        head_width = int(meta[f"{arch}.embedding_length"]) // int(max(heads) if isinstance(heads, list) else heads)
        key = int(meta.get(f"{arch}.attention.key_length", head_width))
        value = int(meta.get(f"{arch}.attention.value_length", head_width))
        kv_heads_all_layers = int(sum(kv_heads)) if isinstance(kv_heads, list) else int(kv_heads) * layers
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0
    return 2 * cells * kv_heads_all_layers * (key + value)  # f16: two bytes a number


#: llama.cpp's "pick a random seed" value (LLAMA_DEFAULT_SEED); a request's seed never maps onto it
_RANDOM_SEED = 0xFFFFFFFF


def sampler_seed(seed: int | None) -> int:
    """The uint32 seed llama.cpp's sampler gets: the request's own, or a fresh random one.

    llama-cpp-python left alone derives an unseeded request's seed from the previous request's
    (`random.Random(self._seed)`), so every unseeded request after `seed=42` would repeat the same
    text; a fresh random seed per unseeded request avoids that. Any integer maps into
    [0, 2**32 - 2] (small seeds unchanged), never onto LLAMA_DEFAULT_SEED, which means "random".
    """
    if seed is None:
        return secrets.randbelow(_RANDOM_SEED)
    return int(seed) % _RANDOM_SEED


def json_or_text_gbnf(schema: dict) -> str:
    """A GBNF grammar for either one JSON value of `schema` or text whose first character is neither
    `{` nor white space (how a tool call with tool_choice auto is left to the model)."""
    rule = "uk-json-or-text-object"
    gbnf = internals.json_schema_gbnf(json.dumps(schema))
    lines = [f"{rule} ::={line[len('root ::='):]}" if line.startswith("root ::=") else line
             for line in gbnf.splitlines()]
    return "\n".join([f"root ::= {rule} | uk-free-text", 'uk-free-text ::= [^{ \\t\\n\\r] [^\\x00]*', *lines])


class LlamaCppBackend(LabelScorer, Backend):
    name = "llama_cpp"
    limit_holder = "the context"

    def __init__(self, spec: ModelSpec, *, threads: int, device: str = "auto", n_ctx: int | None = None,
                 parallel: int = 1):
        super().__init__(spec)
        llama_cpp = llama_library()
        gpu = device != "cpu" and internals.supports_gpu_offload(llama_cpp)
        self.device = "gpu" if gpu else "cpu"
        #: the context of one request (each of the `parallel` sequences has this many cells)
        self.n_ctx = n_ctx or default_context(spec)
        self._threads = threads
        generates = spec.task != "embed"
        self.parallel = max(1, int(parallel)) if generates else 1
        try:
            self.llm = llama_cpp.Llama(**self.library_settings(), embedding=not generates, verbose=False)
            if generates:
                internals.rebuild_context(self.llm, llama_cpp, self.parallel, self.n_ctx)
        except Exception as exc:  # llama.cpp reports a bad file as a bare ValueError
            llm = getattr(self, "llm", None)
            if llm is not None:
                llm.close()
            raise LoadFailed(f"llama.cpp could not load {spec.id!r}: {exc}") from None
        #: the generations running together (llama_batch.py); None for an embedding model
        self.batch = DecodeBatch(self.llm, llama_cpp, self.parallel, self.n_ctx) if generates else None
        self._formatter = self._chat_formatter()
        self._llama_cpp = llama_cpp  # the bindings this model was loaded with (tests read its KV cells through them)

    def library_settings(self) -> dict:
        """The `llama_cpp.Llama` arguments of one sequence of this model: raw llama-cpp-python built with them
        computes what a request computes here. Flash attention makes a sequence's numbers independent of the
        others in its batch (llama_batch.py); it is off for embedding models, as llama-cpp-python has it."""
        return {"model_path": str(self.spec.path), "n_ctx": self.n_ctx, "n_threads": self._threads,
                "n_threads_batch": self._threads, "n_gpu_layers": -1 if self.device == "gpu" else 0,
                "flash_attn": self.spec.task != "embed"}

    @property
    def token_limit(self) -> int:
        return self.n_ctx

    def _chat_formatter(self):
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        return internals.chat_formatter(
            template,
            eos_token=internals.token_text(self.llm, self.llm.token_eos()),
            bos_token=internals.token_text(self.llm, self.llm.token_bos()),
            stop_token_ids=[self.llm.token_eos()],
        )

    def chat_prompt(self, messages: list[dict]) -> tuple[str, list[str]]:
        """The prompt the model's own chat template makes of `messages`, and the template's stops."""
        if self._formatter is None:
            raise InvalidRequest(f"{self.spec.id!r} has no chat template; use a completion")
        result = self._formatter(messages=messages)
        stops = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return result.prompt, stops

    def classification_prompt(self, text: str, labels: list[str]) -> str:
        """The chat prompt `classify_labels` scores the labels after: the assistant turn is opened."""
        return self.chat_prompt(classification_messages(text, labels))[0]

    def prompt_tokens(self, text: str) -> list[int]:
        """A prompt's tokens as `generate` makes them (BOS as the model says, special tokens parsed)."""
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the input is not valid Unicode (a lone surrogate?)", param="input") from None
        return self.llm.tokenize(encoded, add_bos=True, special=True)

    def text_tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def text_of(self, tokens: list[int]) -> str:
        # A cut through a character leaves an incomplete UTF-8 sequence at the end: dropped.
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def _decode_with_logits(self, tokens: list[int], n_past: int, seq_id: int) -> None:
        """Decode `tokens` of sequence `seq_id` from position `n_past` in `n_batch` chunks, as `Llama.eval`
        does, every row an output.

        Every row is an output, as with llama-cpp-python's `logits_all`: llama.cpp computes the last
        layer only for output rows, and a single output row takes other kernels than many, which
        moved label probabilities by up to 1e-2. The KV cells are the same either way (they are
        written before the output rows are picked), so a later generation is not affected.
        """
        self.batch.decode_chunk(seq_id, tokens, n_past, logits_all=True)

    def _next_token_logprobs(self, index: int) -> np.ndarray:
        """Log-probabilities of the next token after the `index`-th token of the last decoded batch."""
        return log_softmax(self.batch.raw.logits(index))

    def score_continuations(self, shared: list[int], continuations: list[list[int]]) -> list[float]:
        """Each label's total log-probability after the prompt `shared` (zero_shot.py).

        The prompt is decoded once in a free slot, in the chunks in which a generation decodes a prompt (so
        that the slot's whole chunks stay reusable); each label is then decoded from the prompt's end and
        its KV cells removed again, so every label sees only the prompt. The worker runs this while no
        generation runs (scheduler.BatchingWorker).
        """
        chunk = self.llm.n_batch
        slot, kept = self.batch.claim(shared)
        decoded = shared[:kept]
        try:
            self._decode_with_logits(shared[kept:], kept, slot.seq_id)
            decoded = shared
            after_prompt = self._next_token_logprobs(-1)
            totals = []
            for tokens in continuations:
                # The whole label is decoded (its last row unused), as a teacher-forced pass over
                # prompt+label decodes it: the same batch shapes give the same numbers.
                total = float(after_prompt[tokens[0]])
                for start in range(0, len(tokens), chunk):
                    batch = tokens[start:start + chunk]
                    self._decode_with_logits(batch, len(shared) + start, slot.seq_id)
                    for i in range(min(len(batch), len(tokens) - 1 - start)):
                        total += float(self._next_token_logprobs(i)[tokens[start + i + 1]])
                self.batch.forget(slot, len(shared))
                totals.append(total)
            return totals
        except Exception as exc:
            raise GenerationFailed(f"llama.cpp failed while scoring labels: {exc}") from exc
        finally:
            self.batch.release(slot, decoded)  # the slot keeps the prompt's whole chunks, never a label

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0

    def _grammar(self, response_format: dict | None):
        if not response_format or response_format.get("type") == "text":
            return None
        try:
            if response_format["type"] == "json_schema":
                return internals.grammar_from_json_schema(json.dumps(response_format.get("schema") or {}))
            if response_format["type"] == "json_schema_or_text":
                return internals.grammar_from_gbnf(json_or_text_gbnf(response_format.get("schema") or {}))
            return internals.json_grammar()
        except Exception as exc:
            raise InvalidRequest(f"cannot build a grammar from response_format: {exc}",
                                 param="response_format") from None

    def begin(self, prompt, messages, params: GenerationParams, emit: Emit, cancelled: IsCancelled) -> Sequence:
        """Add a generation to the batch (llama_batch.py): the next `step`s decode it."""
        stops = list(params.stop)
        if messages is not None:
            prompt, template_stops = self.chat_prompt(messages)
            stops += [s for s in template_stops if s and s not in stops]
        try:
            encoded = prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the prompt is not valid Unicode (a lone surrogate?)",
                                 param="messages" if messages is not None else "prompt") from None
        # The prompt's tokens as create_completion makes them of a string (BOS as the model says).
        tokens = self.llm.tokenize(encoded, add_bos=True, special=True) if prompt else [self.llm.token_bos()]
        max_tokens = params.max_tokens if params.max_tokens is not None else self.n_ctx - len(tokens)
        if len(tokens) + max_tokens > self.n_ctx:
            max_tokens = self.n_ctx - len(tokens)
            if max_tokens < 1:
                raise InvalidRequest(
                    f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}", param="messages"
                )
        settings = SamplingSettings(
            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
            repeat_penalty=params.repeat_penalty, presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, seed=sampler_seed(params.seed),
            grammar=self._grammar(params.response_format))
        sequence = self.batch.begin(tokens, max_tokens, settings, stops, emit, cancelled)
        sequence.logprobs = params.logprobs
        return sequence

    def step(self) -> list[tuple[Sequence, GenerationOutcome | RuntimeFailure]]:
        """One step of the batch: the generations that finished, each with its outcome or its error."""
        try:
            finished = self.batch.step()
        except Exception as exc:  # the batch is lost: every generation in it fails, their slots are freed
            failed = list(self.batch.active)
            for sequence in failed:
                self.batch.end(sequence)
            error = GenerationFailed(f"llama.cpp failed while generating: {exc}")
            return [(sequence, error) for sequence in failed]
        results = []
        for sequence in finished:
            try:
                outcome = self._outcome(sequence)
            except RuntimeFailure as exc:
                outcome = exc
            finally:
                self.batch.end(sequence)
            results.append((sequence, outcome))
        return results

    def _outcome(self, sequence: Sequence) -> GenerationOutcome:
        text = "".join(sequence.text)
        # A text cut by max_tokens holds exactly max_tokens tokens; re-tokenising it can merge the last ones.
        completion_tokens = len(sequence.generated) if sequence.finish == "length" else self.count_tokens(text)
        logprobs = None
        if sequence.logprobs is not None and sequence.finish != "cancelled":
            logprobs = self._score_text(sequence.slot, sequence.prompt, text, sequence.logprobs)
        return GenerationOutcome(sequence.finish, len(sequence.prompt), completion_tokens, logprobs)

    def generate(self, prompt, messages, params: GenerationParams, emit: Emit,
                 cancelled: IsCancelled) -> GenerationOutcome:
        """One generation alone: the batch's own path, stepped to its end."""
        sequence = self.begin(prompt, messages, params, emit, cancelled)
        while True:
            for finished, outcome in self.step():
                if finished is sequence:
                    if isinstance(outcome, Exception):
                        raise outcome
                    return outcome

    def _score_text(self, slot: Slot, prompt_tokens: list[int], text: str, top: int) -> list[dict]:
        """Each token of a generated `text` with its log-probability after the prompt and the text before it,
        and the `top` most likely tokens there: the model's own distribution (llama.cpp's logits, before
        temperature and the other samplers), by one teacher-forced pass over the text.

        The text is tokenised again (a text almost always tokenises as it was generated); each token's
        string is what it adds to the text (a character split over tokens comes with the token that ends
        it), so the strings concatenate to the text; `bytes` are the token's own bytes. The slot is left
        holding the prompt without its last token (decoded again here, in another batch).
        """
        import codecs

        llm = self.llm
        if not text or not prompt_tokens:
            return []
        completion = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        n = len(prompt_tokens)
        completion = completion[: max(self.n_ctx - n, 0)]
        rows = [prompt_tokens[-1], *completion[:-1]]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[dict] = []

        def entry(token: int, logprob: float, text_of=None) -> dict:
            raw = llm.detokenize([token])
            return {"token": raw.decode("utf-8", errors="replace") if text_of is None else text_of,
                    "logprob": logprob, "bytes": list(raw)}

        try:
            self.batch.forget(slot, n - 1)
            for start in range(0, len(rows), llm.n_batch):
                batch = rows[start:start + llm.n_batch]
                self._decode_with_logits(batch, n - 1 + start, slot.seq_id)
                for i in range(len(batch)):
                    scores = self._next_token_logprobs(i)
                    token = completion[start + i]
                    item = entry(token, float(scores[token]), decoder.decode(llm.detokenize([token])))
                    best = np.argsort(-scores, kind="stable")[:top] if top else []
                    item["top_logprobs"] = [entry(int(t), float(scores[t])) for t in best]
                    out.append(item)
        except Exception as exc:
            raise GenerationFailed(f"llama.cpp failed while scoring the text: {exc}") from exc
        finally:
            self.batch.forget(slot, n - 1)
        if out:
            out[-1]["token"] += decoder.decode(b"", final=True)
        return out

    def embed(self, texts: list[str], normalize: bool = True):
        if self.spec.task != "embed":
            return super().embed(texts, normalize)
        result = self.llm.create_embedding(texts)
        vectors = np.asarray([row["embedding"] for row in result["data"]], dtype=np.float32)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, int(result["usage"]["prompt_tokens"])

    def close(self) -> None:
        batch = getattr(self, "batch", None)
        if batch is not None:
            batch.close()
            self.batch = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
        self._formatter = None
