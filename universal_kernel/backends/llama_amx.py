"""llama.cpp's AMX weight buffers stay off: with them, llama-cpp-python 0.3.36 crashes (SIGSEGV) in the
first `llama_decode` of a quantised model on an Intel Xeon with AMX (amx_int8, avx512_bf16), whatever the
threads, context or flash attention; with `use_extra_bufts` off it decodes.

`Llama` takes no argument for it: its `__init__` fills the model parameters from
`llama_model_default_params()`. So the runtime wraps that function once, when it first imports llama_cpp:
on a CPU that has AMX (as machine.py reads it, so tests set it both ways) every model loaded in the process
keeps its weights in plain CPU buffers, the runtime's models and a raw `llama_cpp.Llama` built beside them
alike (the tests' references, a notebook's own). Elsewhere the default parameters are untouched: the
repacked buffers that AVX2 and AVX-512 CPUs use stay on.
"""

from __future__ import annotations

from ..machine import cpu_has_amx
from .llama_internals import use_plain_cpu_buffers, wrap_model_default_params


def keep_weights_out_of_amx_buffers(llama_cpp) -> None:
    """Wrap `llama_model_default_params` of the `llama_cpp` package (once per process)."""
    wrap_model_default_params(llama_cpp, _plain_buffers_under_amx)


def _plain_buffers_under_amx(model_params) -> None:
    if cpu_has_amx():  # read at each load: tests set the CPU's flags both ways
        use_plain_cpu_buffers(model_params)


#: `python -c LLAMA_SERVER --config_file ...`: llama-cpp-python's own OpenAI server (a peer in tests and
#: benchmarks) with the same guard, which `python -m llama_cpp.server` would lack
LLAMA_SERVER = ("from universal_kernel.backends.llama_cpp import llama_library; llama_library(); "
                "import runpy; runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")
