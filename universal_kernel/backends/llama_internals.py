"""Every use of llama-cpp-python below its public `Llama` methods: the only module that touches them.

The runtime decodes several sequences in one context (llama_batch.py), checks kernels bit for bit
(llama_shapes.py), scores labels from raw logits and keeps llama.cpp's AMX buffers off (llama_amx.py). None of
that has a public API in llama-cpp-python: it takes `Llama`'s private context and model, the ctypes bindings
of llama.cpp's C functions and structs, and `_internals`' wrappers. Their shapes change between releases, so
pyproject pins the range that is tested (`TESTED` up to 0.4), and `USES` lists each symbol, field and
signature relied on: tests/test_llama_internals.py checks every one against the installed library and names
the one that changed, instead of a segfault or a wrong number in the middle of a decode.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: the llama-cpp-python release these internals are tested on: pyproject's lower bound
TESTED = "0.3.36"


# Loading -----------------------------------------------------------------------------------------------
def supports_gpu_offload(lib) -> bool:
    return bool(lib.llama_supports_gpu_offload())


def wrap_model_default_params(lib, adjust: Callable[[Any], None]) -> None:
    """Make every `Llama` built in this process (`Llama.__init__` reads `llama_model_default_params()`) start
    from the library's defaults changed by `adjust(params)`; once per process. The wrapper keeps the
    library's own function as `.original`."""
    low_level = lib.llama_cpp
    original = low_level.llama_model_default_params
    if getattr(original, "universal_kernel_wrapped", False):
        return

    def llama_model_default_params():
        params = original()
        adjust(params)
        return params

    llama_model_default_params.universal_kernel_wrapped = True
    llama_model_default_params.original = original
    low_level.llama_model_default_params = llama_model_default_params
    lib.llama_model_default_params = llama_model_default_params


def use_plain_cpu_buffers(model_params) -> None:
    """No repacked ("extra") weight buffers, such as AMX's, for a model loaded with these parameters."""
    if hasattr(model_params, "use_extra_bufts"):
        model_params.use_extra_bufts = False


def rebuild_context(llm, lib, parallel: int, n_ctx_seq: int) -> None:
    """Replace `llm`'s context by one with a KV stream of `n_ctx_seq` cells for each of `parallel` sequences.

    `Llama` builds a one-sequence context and takes no `n_seq_max`; the new context has its very
    parameters otherwise (threads, batch sizes, flash attention, offload)."""
    from llama_cpp import _internals

    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx = n_ctx_seq * parallel
    params.n_seq_max = parallel
    params.kv_unified = False
    llm._ctx.close()  # its KV cache goes before the new one is allocated
    llm._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    llm.context_params = params
    cells = lib.llama_n_ctx_seq(llm._ctx.ctx)
    if cells < n_ctx_seq:
        raise ValueError(f"llama.cpp gave each sequence {cells} cells, not {n_ctx_seq}")


def token_text(llm, token: int) -> str:
    """A token's text as the vocabulary holds it (special tokens included), for a chat template."""
    return llm._model.token_get_text(token) if token != -1 else ""


def chat_formatter(template: str, *, eos_token: str, bos_token: str, stop_token_ids: list[int]):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token,
                               stop_token_ids=stop_token_ids)


# Grammars ----------------------------------------------------------------------------------------------
def json_schema_gbnf(schema_json: str) -> str:
    from llama_cpp import llama_grammar

    return llama_grammar.json_schema_to_gbnf(schema_json)


def grammar_from_json_schema(schema_json: str):
    from llama_cpp import llama_grammar

    return llama_grammar.LlamaGrammar.from_json_schema(schema_json, verbose=False)


def grammar_from_gbnf(gbnf: str):
    from llama_cpp import llama_grammar

    return llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)


def json_grammar():
    from llama_cpp import llama_grammar

    return grammar_from_gbnf(llama_grammar.JSON_GBNF)


# One context at the C level ------------------------------------------------------------------------------
class RawContext:
    """A loaded `Llama`'s context, model and vocabulary, as llama.cpp's C functions take them."""

    def __init__(self, llm, lib):
        self.llm = llm
        self.lib = lib
        self.vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()

    @property
    def ctx(self):
        return self.llm._ctx.ctx  # read each time: `rebuild_context` replaces it

    @property
    def n_ubatch(self) -> int:
        return self.llm.context_params.n_ubatch

    def settings_key(self) -> tuple:
        """What a decode's kernels depend on: model file, threads, micro-batch, flash attention, offload."""
        params = self.llm.context_params
        flash_attention = getattr(params, "flash_attn_type", getattr(params, "flash_attn", None))
        return (self.llm.model_path, params.n_threads, params.n_ubatch, flash_attention,
                self.llm.model_params.n_gpu_layers)

    def forget(self, seq_id: int, start: int) -> None:
        """Remove the cells of sequence `seq_id` from position `start` on."""
        self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), seq_id, start, -1)

    def logits(self, index: int) -> np.ndarray:
        """The logits of the `index`-th output row of the last decode (-1: the last); a view, valid until
        the next decode."""
        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def new_batch(self, size: int) -> "TokenBatch":
        return TokenBatch(self, size)

    def sampler(self, settings, last_n_tokens: int):
        """The sampler chain llama-cpp-python's `Llama._init_sampler` builds for these settings
        (llama_batch.SamplingSettings)."""
        from llama_cpp import _internals

        chain = _internals.LlamaSampler()
        chain.add_penalties(n_vocab=self.n_vocab, penalty_last_n=last_n_tokens,
                            penalty_repeat=settings.repeat_penalty, penalty_freq=settings.frequency_penalty,
                            penalty_present=settings.presence_penalty)
        if settings.grammar is not None:
            chain.add_grammar(self.llm._model, settings.grammar)
        if settings.temperature == 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(settings.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(settings.top_p, 1)
            chain.add_min_p(settings.min_p, 1)
            chain.add_temp(settings.temperature)
            chain.add_dist(settings.seed)
        return chain

    def sample(self, chain, row: int) -> int:
        """The chain's token for output row `row` of the last decode (the chain accepts it)."""
        return self.lib.llama_sampler_sample(chain.sampler, self.ctx, row)

    def ends_generation(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """A token's bytes as llama-cpp-python's detokenize gives them (special tokens as nothing)."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self.lib.llama_token_to_piece(self.vocab, token, buffer, size, 0, False)
            if n <= size:
                return buffer.raw[:max(n, 0)]
            size = n


class TokenBatch:
    """A `llama_batch` of up to `size` rows, each of one sequence."""

    def __init__(self, raw: RawContext, size: int):
        self.raw = raw
        self._batch = raw.lib.llama_batch_init(size, 0, 1)

    def decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of rows (token, position, seq_id, wants logits)."""
        batch = self._batch
        batch.n_tokens = len(rows)
        for i, (token, pos, seq_id, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.seq_id[i][0] = seq_id
            batch.n_seq_id[i] = 1
            batch.logits[i] = logits
        code = self.raw.lib.llama_decode(self.raw.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def close(self) -> None:
        if self._batch is not None:
            self.raw.lib.llama_batch_free(self._batch)
            self._batch = None


# What this module relies on ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Use:
    """One symbol, field or signature this module relies on, and how to check it on the installed library."""

    call: str  # as the code above uses it
    #: (llama_cpp, a loaded Llama or None) -> what differs, or None when it is as relied on
    check: Callable[[Any, Any], str | None]
    needs_model: bool = False


def _resolve(lib, path: str):
    """`a.b.c` under the llama_cpp package: a submodule or an attribute."""
    target = lib
    for part in path.split("."):
        if not hasattr(target, part):
            try:
                target = importlib.import_module(f"{target.__name__}.{part}")
                continue
            except (ImportError, AttributeError):
                raise LookupError(f"llama_cpp.{path} is missing ({part!r} not found)") from None
        target = getattr(target, part)
    return target


def _c_function(name: str, n_args: int) -> Use:
    def check(lib, llm):
        try:
            function = _resolve(lib, name)
        except LookupError as exc:
            return str(exc)
        function = getattr(function, "original", function)  # the library's own under `wrap_model_default_params`
        argtypes = getattr(function, "argtypes", None)
        if argtypes is None or len(argtypes) != n_args:
            return f"llama_cpp.{name} takes {len(argtypes) if argtypes is not None else '?'} arguments, not {n_args}"
        return None

    return Use(f"llama_cpp.{name}({n_args} arguments)", check)


def _struct(name: str, fields: tuple[str, ...]) -> Use:
    def check(lib, llm):
        try:
            struct = _resolve(lib, name)
        except LookupError as exc:
            return str(exc)
        have = {field[0] for field in getattr(struct, "_fields_", ())}
        missing = [f for f in fields if f not in have]
        return f"llama_cpp.{name} lacks the fields {', '.join(missing)}" if missing else None

    return Use(f"llama_cpp.{name}.{{{', '.join(fields)}}}", check)


def _python(path: str, parameters: tuple[str, ...] = ()) -> Use:
    """A Python callable whose parameters include these names (a class: its __init__)."""
    def check(lib, llm):
        try:
            target = _resolve(lib, path)
        except LookupError as exc:
            return str(exc)
        if not parameters:
            return None
        try:
            have = set(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            return f"llama_cpp.{path} has no readable signature"
        missing = [p for p in parameters if p not in have]
        return f"llama_cpp.{path} lacks the parameters {', '.join(missing)}" if missing else None

    return Use(f"llama_cpp.{path}({', '.join(parameters)})", check)


def _on_model(path: str, kind: type | tuple[type, ...] | None = None) -> Use:
    """An attribute of a loaded `Llama` (`llm._ctx.ctx`)."""
    def check(lib, llm):
        target = llm
        for part in path.split("."):
            if not hasattr(target, part):
                return f"Llama.{path} is missing ({part!r} not found)"
            target = getattr(target, part)
        if kind is not None and not isinstance(target, kind):
            return f"Llama.{path} is a {type(target).__name__}"
        return None

    return Use(f"Llama.{path}", check, needs_model=True)


USES: tuple[Use, ...] = (
    _c_function("llama_supports_gpu_offload", 0),
    _c_function("llama_model_default_params", 0),
    _python("llama_cpp.llama_model_default_params"),
    _c_function("llama_n_ctx_seq", 1),
    _c_function("llama_get_memory", 1),
    _c_function("llama_memory_seq_rm", 4),
    _c_function("llama_get_logits_ith", 2),
    _c_function("llama_batch_init", 3),
    _c_function("llama_batch_free", 1),
    _c_function("llama_decode", 2),
    _c_function("llama_sampler_sample", 3),
    _c_function("llama_vocab_is_eog", 2),
    _c_function("llama_token_to_piece", 6),
    _struct("llama_context_params", ("n_ctx", "n_seq_max", "kv_unified", "n_ubatch", "n_threads")),
    Use("llama_cpp.llama_context_params.{flash_attn_type or flash_attn}",
        lambda lib, llm: None if {"flash_attn_type", "flash_attn"} & {f[0] for f in lib.llama_context_params._fields_}
        else "llama_cpp.llama_context_params has neither flash_attn_type nor flash_attn"),
    _struct("llama_model_params", ("use_extra_bufts", "n_gpu_layers")),
    _struct("llama_batch", ("n_tokens", "token", "pos", "seq_id", "n_seq_id", "logits")),
    _python("_internals.LlamaContext", ("model", "params", "verbose")),
    _python("_internals.LlamaSampler"),
    _python("_internals.LlamaSampler.add_penalties",
            ("n_vocab", "penalty_last_n", "penalty_repeat", "penalty_freq", "penalty_present")),
    _python("_internals.LlamaSampler.add_grammar", ("model", "grammar")),
    _python("_internals.LlamaSampler.add_greedy"),
    _python("_internals.LlamaSampler.add_top_k", ("k",)),
    _python("_internals.LlamaSampler.add_typical", ("p", "min_keep")),
    _python("_internals.LlamaSampler.add_top_p", ("p", "min_keep")),
    _python("_internals.LlamaSampler.add_min_p", ("p", "min_keep")),
    _python("_internals.LlamaSampler.add_temp", ("temp",)),
    _python("_internals.LlamaSampler.add_dist", ("seed",)),
    _python("_internals.LlamaSampler.close"),
    _python("_internals.LlamaModel.token_get_text", ("token",)),
    _python("llama_grammar.json_schema_to_gbnf", ("schema",)),
    _python("llama_grammar.LlamaGrammar.from_json_schema", ("json_schema", "verbose")),
    _python("llama_grammar.LlamaGrammar.from_string", ("grammar", "verbose")),
    _python("llama_grammar.JSON_GBNF"),
    _python("llama_chat_format.Jinja2ChatFormatter", ("template", "eos_token", "bos_token", "stop_token_ids")),
    _on_model("_ctx.ctx"),
    _on_model("_ctx.close"),
    _on_model("_model.vocab"),
    _on_model("context_params"),
    _on_model("model_params"),
    _on_model("model_path", str),
    _on_model("n_batch", int),
)


def changed_uses(lib, llm=None) -> list[str]:
    """What differs from what this module relies on, one line per use (those on a loaded `Llama` only when
    one is given); empty when the installed llama-cpp-python has every one."""
    found = []
    for use in USES:
        if use.needs_model and llm is None:
            continue
        try:
            problem = use.check(lib, llm)
        except Exception as exc:  # noqa: BLE001 - a check must name its use whatever broke
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            found.append(f"{use.call}: {problem}")
    return found
