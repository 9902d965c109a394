"""Causal language models through transformers: Hugging Face folders, and GGUF files via `gguf_file=`.

A GGUF file is dequantised on its first load (slow); the converted weights are saved under the
convert cache so later loads read safetensors instead.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..devices import Device, torch_dtype
from ..errors import BackendUnavailable, GenerationFailed, InvalidRequest, LoadFailed
from ..model_spec import ModelSpec
from .base import Backend, Emit, GenerationOutcome, GenerationParams, IsCancelled, StopMatcher
from .transformers_logprobs import score_text
from .zero_shot import LabelScorer, classification_messages

log = logging.getLogger(__name__)


def import_transformers():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendUnavailable("the transformers backend needs torch and transformers installed") from exc
    return torch, transformers


@contextmanager
def quiet_progress(transformers):
    """No "Loading weights" bar in the user's cell for a load that takes a second; restored afterwards."""
    logging_utils = transformers.utils.logging
    was_enabled = logging_utils.is_progress_bar_enabled()
    logging_utils.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging_utils.enable_progress_bar()


def converted_folder(cache: Path, gguf: Path) -> Path:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache / f"{gguf.stem}-{digest}"


def save_converted(model, tokenizer, folder: Path) -> None:
    """Save dequantised weights as a plain folder; written beside, then renamed, so a crash leaves none."""
    import copy

    from safetensors.torch import save_model

    # save_pretrained refuses models that carry a GGUF quantization config; the tensors are plain now.
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk keeps no half-written folder
        raise


def keep_converted(model, tokenizer, folder: Path) -> bool:
    """Save converted weights for later loads; on a read-only or full disk, one warning line and no cache."""
    try:
        save_converted(model, tokenizer, folder)
        return True
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        warnings.warn(f"universal-kernel: converted weights not kept in {folder.parent} ({reason}); "
                      f"the model runs without the cache", RuntimeWarning, stacklevel=2)
        return False


class TransformersLMBackend(LabelScorer, Backend):
    name = "transformers"

    def __init__(self, spec: ModelSpec, *, device: Device, threads: int, convert_cache: Path | None = None):
        super().__init__(spec)
        torch, transformers = import_transformers()
        torch.set_num_threads(threads)
        self.torch = torch
        self.device = str(device)
        self.loaded_from = "folder"
        dtype = torch_dtype(device)
        try:
            if spec.format == "gguf":
                self.model, self.tokenizer = self._load_gguf(transformers, spec.path, dtype, convert_cache)
            else:
                with quiet_progress(transformers):
                    self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.path)
                    self.model = transformers.AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype)
            self.model.to(device.torch_name).eval()
        except (BackendUnavailable, LoadFailed):
            raise
        except Exception as exc:
            raise LoadFailed(f"transformers could not load {spec.id!r}: {exc}") from None
        if self.tokenizer.chat_template is None and spec.metadata.get("tokenizer.chat_template"):
            self.tokenizer.chat_template = spec.metadata["tokenizer.chat_template"]

    def _load_gguf(self, transformers, path: Path, dtype, convert_cache: Path | None):
        converted = converted_folder(convert_cache, path) if convert_cache else None
        if converted is not None and (converted / "config.json").exists():
            try:
                with quiet_progress(transformers):
                    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
                    model = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
                self.loaded_from = "convert-cache"
                return model, tokenizer
            except Exception as exc:  # an unreadable or damaged cache: convert again from the GGUF
                warnings.warn(f"universal-kernel: converted weights in {converted} unusable "
                              f"({type(exc).__name__}); converting {path.name} again", RuntimeWarning)
        try:
            import gguf  # noqa: F401  (transformers needs it to read the file)
        except ImportError as exc:
            raise BackendUnavailable("loading a GGUF file in transformers needs the `gguf` package") from exc
        self.loaded_from = "gguf"
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        if converted is not None:
            keep_converted(model, tokenizer, converted)  # a full or read-only cache costs speed, never the load
        return model, tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def classification_prompt(self, text: str, labels: list[str]) -> str:
        """The chat prompt `classify_labels` scores the labels after: the assistant turn is opened."""
        if not self.tokenizer.chat_template:
            raise InvalidRequest(f"{self.spec.id!r} has no chat template; it cannot choose between labels")
        return self.tokenizer.apply_chat_template(classification_messages(text, labels),
                                                  add_generation_prompt=True, tokenize=False)

    def prompt_tokens(self, text: str) -> list[int]:
        """A chat prompt's tokens as `generate` makes them (the template wrote the special tokens)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the input is not valid Unicode (a lone surrogate?)", param="input") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_of(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens).rstrip("\ufffd")  # no half character

    @property
    def token_limit(self) -> int | None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return limit if isinstance(limit, int) and limit > 0 else None

    @property
    def _cache_argument(self) -> str:
        """The forward() argument that takes a KV cache: `cache` in newer transformers, `past_key_values` before."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @staticmethod
    def _cache_of(output):
        cache = getattr(output, "cache", None)
        return cache if cache is not None else getattr(output, "past_key_values", None)

    def score_continuations(self, shared: list[int], continuations: list[list[int]]) -> list[float]:
        """Each label's total log-probability after the prompt `shared` (zero_shot.py). The prompt is run once;
        each label continues from its KV cache, cropped back to the prompt after the label (a cache that
        cannot be cropped is rebuilt from the prompt instead)."""
        torch = self.torch
        device = self.model.device

        def run_prompt():
            output = self.model(torch.tensor([shared], device=device), use_cache=True)
            return self._cache_of(output), torch.log_softmax(output.logits[0, -1].float(), dim=-1)

        totals = []
        try:
            with torch.inference_mode():
                cache, after_prompt = run_prompt()
                for tokens in continuations:
                    total = float(after_prompt[tokens[0]])
                    if len(tokens) > 1:
                        if cache is None:
                            cache, _ = run_prompt()
                        output = self.model(torch.tensor([tokens[:-1]], device=device),
                                            **{self._cache_argument: cache}, use_cache=True)
                        logprobs = torch.log_softmax(output.logits[0].float(), dim=-1)
                        following = torch.tensor(tokens[1:], device=device)
                        total += float(logprobs.gather(1, following[:, None]).sum())
                        # A negative crop removes that many tokens, in transformers 4 and 5 alike.
                        if hasattr(cache, "crop") and getattr(cache, "is_croppable", True):
                            cache.crop(-(len(tokens) - 1))
                        else:
                            cache = None
                    totals.append(total)
        except Exception as exc:
            raise GenerationFailed(f"transformers failed while scoring labels: {exc}") from exc
        return totals

    def generate(self, prompt, messages, params: GenerationParams, emit: Emit,
                 cancelled: IsCancelled) -> GenerationOutcome:
        torch = self.torch
        if params.response_format and (params.response_format.get("type") == "json_schema_or_text"
                                       or params.response_format.get("for") == "tools"):
            raise InvalidRequest("tools are grammar-constrained only on the llama_cpp backend; on transformers "
                                 "use tool_choice 'none' or a GGUF model", param="tool_choice")
        if params.response_format and params.response_format.get("type") != "text":
            raise InvalidRequest("response_format is grammar-constrained only on the llama_cpp backend",
                                 param="response_format")
        if params.repeat_penalty is not None and params.repeat_penalty < 0:
            raise InvalidRequest("repeat_penalty must not be negative", param="repeat_penalty")
        if messages is not None:
            if not self.tokenizer.chat_template:
                raise InvalidRequest(f"{self.spec.id!r} has no chat template; use a completion")
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the prompt is not valid Unicode (a lone surrogate?)",
                                 param="messages" if messages is not None else "prompt") from None
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=messages is None)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        prompt_tokens = int(inputs["input_ids"].shape[1])
        max_new = params.max_tokens or 512
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            if prompt_tokens >= limit:
                raise InvalidRequest(f"the prompt has {prompt_tokens} tokens; the model holds {limit}",
                                     param="messages" if messages is not None else "prompt")
            max_new = min(max_new, limit - prompt_tokens)
        parts: list[str] = []
        if params.logprobs is not None:  # the text is kept to be scored; no overhead otherwise
            emit = _keeping(emit, parts)
        streamer = _EmitStreamer(self.tokenizer, StopMatcher(params.stop), emit)
        stopping = transformers_stopping(lambda: cancelled() or streamer.matcher.stopped)
        processors = []
        if params.presence_penalty or params.frequency_penalty:
            processors.append(penalty_processor(params.presence_penalty, params.frequency_penalty, prompt_tokens))
        kwargs = dict(
            max_new_tokens=max_new,
            # Sampling, when asked for, is done by `seeded_sampler` below with the request's own
            # generator; generate() itself always takes the one token left (greedy).
            do_sample=False,
            temperature=None, top_p=None, top_k=None,
            streamer=streamer,
            stopping_criteria=stopping,
            repetition_penalty=params.repeat_penalty or 1.0,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if params.temperature > 0:
            processors.append(seeded_sampler(torch, params, self.model.device))
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        try:
            with torch.inference_mode():
                self.model.generate(**inputs, **kwargs)
        except Exception as exc:
            raise GenerationFailed(f"transformers failed while generating: {exc}") from exc
        streamer.finish()
        if cancelled():
            finish = "cancelled"
        elif streamer.matcher.stopped or streamer.saw_eos:
            finish = "stop"
        else:
            finish = "length" if streamer.generated >= max_new else "stop"
        logprobs = None
        if params.logprobs is not None and finish != "cancelled":
            logprobs = score_text(self, inputs["input_ids"][0].tolist(), "".join(parts), params.logprobs)
        return GenerationOutcome(finish, prompt_tokens, streamer.generated - int(streamer.saw_eos), logprobs)

    def close(self) -> None:
        free_model(self)


def _keeping(emit, parts: list[str]):
    def keep(piece: str) -> None:
        parts.append(piece)
        emit(piece)
    return keep


def free_model(backend) -> None:
    """Drop a transformers backend's model and tokenizer. Tensors can outlive the module through caches
    and hooks, so the parameters are emptied too."""
    model = getattr(backend, "model", None)
    if model is not None:
        for p in model.parameters():
            p.data = backend.torch.empty(0)
        backend.model = None
    backend.tokenizer = None


class _EmitStreamer:
    """A transformers streamer that decodes incrementally and emits text, cut at stop strings.

    Each step decodes only a short window of recent tokens, as text-generation-inference does: the
    tokens already handed on whose text ends cleanly (`prefix`..`read`) as context, and the new ones
    after them. The new text is what the window adds to its context's text, once it does not end
    in an incomplete UTF-8 sequence. The context matters: a tokenizer may decode a token differently
    at the start of a text (SentencePiece drops a leading space) or next to its neighbour (clean-up
    of spaces before punctuation). `finish` decodes the whole text once and hands on what is left,
    so the streamed text always ends equal to `tokenizer.decode(ids, skip_special_tokens=True)`.
    """

    def __init__(self, tokenizer, matcher: StopMatcher, emit: Emit):
        self.tokenizer = tokenizer
        self.matcher = matcher
        self.emit = emit
        self.tokens: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # tokens whose text has been handed on
        self.sent = 0  # characters handed on so far, before stop strings
        self.first = True
        self.generated = 0
        self.saw_eos = False
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def put(self, value) -> None:
        if self.first:  # the prompt comes first
            self.first = False
            return
        ids = value.reshape(-1).tolist()
        for token in ids:
            self.generated += 1
            if token in self.eos_ids:
                self.saw_eos = True
                continue
            self.tokens.append(token)
        if self.read == len(self.tokens):
            return
        context = self._decode(self.tokens[self.prefix:self.read])
        text = self._decode(self.tokens[self.prefix:])
        if len(text) > len(context) and not text.endswith("\ufffd") and text.startswith(context):
            self._send(text[len(context):])
            self.prefix, self.read = self.read, len(self.tokens)

    def _send(self, piece: str) -> None:
        if not piece:
            return
        self.sent += len(piece)
        if self.matcher.stopped:
            return
        out = self.matcher.feed(piece)
        if out:
            self.emit(out)

    def end(self) -> None:
        pass

    def finish(self) -> None:
        if self.matcher.stopped:
            return
        # The windows' text is the start of the whole text; the rest is what they held back (an
        # incomplete character, a window that could not be read alone). Invalid UTF-8 from a model
        # is the one case where they can differ; the rest is then taken by length.
        self._send(self._decode(self.tokens)[self.sent:])
        rest = self.matcher.flush()
        if rest:
            self.emit(rest)


def seeded_sampler(torch, params: GenerationParams, device):
    """Sampling with the request's own `torch.Generator`, as a logits processor.

    generate()'s own sampling draws from torch's global generator, which every thread shares: a
    seed set with `torch.manual_seed` holds only while no other generation draws at the same time.
    This draws with a generator of the request's own (seeded from `params.seed`, or at random), so
    a seed repeats its text whatever else runs. It applies the warpers that generate() applies when
    sampling, in its order (temperature, top-k, top-p, min-p), draws one token, and leaves only that
    token possible for generate()'s greedy pick.
    """
    from transformers import LogitsProcessor, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper
    from transformers import TopPLogitsWarper

    if params.min_p is not None and not 0 <= params.min_p <= 1:
        raise InvalidRequest("min_p must be between 0 and 1", param="min_p")
    warpers = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k and params.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1:
        warpers.append(TopPLogitsWarper(top_p=params.top_p))
    if params.min_p:
        warpers.append(MinPLogitsWarper(min_p=params.min_p))
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(params.seed) % 2**64)

    class _Sample(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for warp in warpers:
                scores = warp(input_ids, scores)
            probs = torch.softmax(scores.float(), dim=-1)
            chosen = torch.multinomial(probs, num_samples=1, generator=generator)
            only = torch.full_like(scores, float("-inf"))
            return only.scatter_(1, chosen, 0.0)

    return _Sample()


def transformers_stopping(should_stop):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def penalty_processor(presence: float, frequency: float, prompt_len: int):
    """OpenAI's presence and frequency penalties over the generated tokens."""
    from transformers import LogitsProcessor

    class _Penalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            import torch

            generated = input_ids[:, prompt_len:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    return _Penalties()
