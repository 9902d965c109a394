"""Which precision an encoder runs in, and why: chosen per device, checked by a probe at load.

- CUDA and MPS: half-precision weights, as before (bf16 where CUDA supports it, else fp16).
- A CPU with AVX512_BF16 or AMX: matrix products in bf16 under `torch.autocast` (fp32 accumulation;
  layer norm and softmax stay fp32, as autocast keeps them), but only once a probe at load shows
  every row of a fixed probe set within cosine `min_cosine` (0.9999) of fp32. Otherwise fp32.
- Any other CPU: fp32 (bf16 there is emulated, slower than fp32).
- The CPU's flags come through machine.py, the one seam tests set (`UNIVERSAL_KERNEL_CPU_FLAGS`).
- `precision="fp32"` forces fp32; `precision="bf16"` asks for bf16 on any CPU, still behind the probe.

Classifier heads (classify, rerank's cross-encoders, NER) take the same choice; their probe
(`probed_close`) compares probabilities on the probe texts to fp32's instead of vectors.

The choice and its reason travel in the model's status (`%runtime status`, the monitor).
"""

from __future__ import annotations

from dataclasses import dataclass

from .machine import cpu_flags, cpu_has_bf16  # noqa: F401  (the seam tests set)

PRECISIONS = ("auto", "fp32", "bf16")

#: fixed probe texts, short to long, a few scripts: the rows bf16 must reproduce
PROBE_TEXTS = (
    "ok",
    "The cat sat on the mat.",
    "Quarterly revenue rose 4.2% to EUR 93.1 million, beating the consensus estimate of 90.4 million.",
    "Berlin, Paris and Madrid signed the treaty on Tuesday after three days of talks in Brussels.",
    "def add(a, b):\n    return a + b  # a small function, in code",
    "Ein kurzer deutscher Satz über das Wetter in München.",
    "東京は日本の首都です。",
    " ".join(["A longer paragraph repeats itself to fill the window, with numbers 1 2 3 and names."] * 12),
)


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16", "fp16"
    reason: str
    autocast: bool = False  # bf16 matrix products under torch.autocast on the CPU


def check(requested: str | None) -> str:
    from .errors import InvalidRequest

    requested = (requested or "auto").lower()
    if requested not in PRECISIONS:
        raise InvalidRequest(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}",
                             param="precision")
    return requested


def candidate(device, requested: str, flags=None) -> Precision:
    """What to try before the probe: the device's half precision, bf16 autocast, or fp32."""
    if requested == "fp32":
        return Precision("fp32", "fp32 asked for")
    if device.kind == "cuda":
        import torch

        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Precision(name, f"{name} weights on CUDA")
    if device.kind == "mps":
        return Precision("fp16", "fp16 weights on MPS")
    if requested == "bf16":
        return Precision("bf16", "bf16 asked for", autocast=True)
    if cpu_has_bf16(flags):
        return Precision("bf16", "the CPU has AVX512_BF16/AMX", autocast=True)
    return Precision("fp32", "the CPU has no AVX512_BF16 or AMX")


def probed(choice: Precision, embed_fp32, embed_bf16, min_cosine: float) -> Precision:
    """Keep a bf16 autocast choice only if every probe row is within `min_cosine` of fp32."""
    if not choice.autocast:
        return choice
    import numpy as np

    reference, trial = embed_fp32(list(PROBE_TEXTS)), embed_bf16(list(PROBE_TEXTS))
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    trial = trial / np.linalg.norm(trial, axis=1, keepdims=True)
    worst = float((reference * trial).sum(axis=1).min())
    if worst >= min_cosine:
        return Precision("bf16", f"{choice.reason}; probe: every row within cosine {worst:.6f} of fp32 "
                                 f"(>= {min_cosine:g})", autocast=True)
    return Precision("fp32", f"{choice.reason}, but the probe refused bf16: a row at cosine {worst:.6f} "
                             f"of fp32 (< {min_cosine:g})")


#: the probe pair's query for cross-encoders (PROBE_TEXTS are its documents)
PROBE_QUERY = "Where and when was the treaty signed?"


def probed_close(choice: Precision, run_fp32, run_bf16, max_error: float, what: str) -> Precision:
    """Keep a bf16 autocast choice only if no probe value (a probability, a score) is more than
    `max_error` from fp32's: the check for classifier heads, whose outputs are probabilities, not vectors."""
    if not choice.autocast:
        return choice
    import numpy as np

    reference = np.asarray(run_fp32(), dtype=np.float64)
    trial = np.asarray(run_bf16(), dtype=np.float64)
    worst = float(np.abs(reference - trial).max()) if reference.size else 0.0
    if worst <= max_error:
        return Precision("bf16", f"{choice.reason}; probe: every {what} within {worst:.2g} of fp32 "
                                 f"(<= {max_error:g})", autocast=True)
    return Precision("fp32", f"{choice.reason}, but the probe refused bf16: a {what} {worst:.2g} from fp32 "
                             f"(> {max_error:g})")
