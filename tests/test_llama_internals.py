"""llama-cpp-python below its public API (backends/llama_internals.py): every symbol, field and signature the
runtime relies on is as the installed library has it, and no other module reaches below `Llama` itself.
When the library changes shape, the failing test names the call."""

from __future__ import annotations

import ast
import ctypes
from pathlib import Path

import pytest

from universal_kernel.backends import llama_internals
from universal_kernel.backends.llama_cpp import llama_library

BACKENDS = Path(llama_internals.__file__).parent
PACKAGE = BACKENDS.parent


@pytest.fixture(scope="module")
def lib():
    return llama_library()


@pytest.fixture(scope="module")
def llm(lib, smollm_path):
    model = lib.Llama(model_path=str(smollm_path), n_ctx=128, n_threads=1, verbose=False)
    yield model
    model.close()


@pytest.mark.parametrize("use", llama_internals.USES, ids=lambda use: use.call)
def test_the_installed_library_has_what_the_runtime_relies_on(use, lib, request):
    model = request.getfixturevalue("llm") if use.needs_model else None
    assert use.check(lib, model) is None, f"llama-cpp-python changed: {use.call}: {use.check(lib, model)}"


def test_every_use_is_checked_at_once_and_the_list_is_empty(lib, llm):
    assert llama_internals.changed_uses(lib, llm) == []
    assert llama_internals.changed_uses(lib) == []  # without a model: the module-level uses only


def test_a_changed_library_is_named_call_by_call(lib):
    """What the checks say when the library moves: a function with other arguments, a missing field, a
    missing module attribute, a renamed parameter."""
    class Library:
        __name__ = "llama_cpp"
        llama_cpp = lib.llama_cpp

    changed = Library()
    seq_rm = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)(lambda *a: True)
    seq_rm.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]  # p1 gone
    changed.llama_memory_seq_rm = seq_rm

    class ContextParams(ctypes.Structure):
        _fields_ = [("n_ctx", ctypes.c_uint32), ("n_ubatch", ctypes.c_uint32)]

    changed.llama_context_params = ContextParams
    problems = "\n".join(llama_internals.changed_uses(changed))
    assert "llama_cpp.llama_memory_seq_rm(4 arguments): llama_cpp.llama_memory_seq_rm takes 3 arguments, not 4" \
        in problems
    assert "llama_context_params lacks the fields n_seq_max, kv_unified, n_threads" in problems
    assert "llama_cpp.llama_decode is missing" in problems

    def add_top_k(self, top_k):  # a parameter renamed
        pass

    signature = next(use for use in llama_internals.USES if use.call.startswith("llama_cpp._internals."
                                                                                 "LlamaSampler.add_top_k"))
    original = lib._internals.LlamaSampler.add_top_k
    try:
        lib._internals.LlamaSampler.add_top_k = add_top_k
        assert signature.check(lib, None) == "llama_cpp._internals.LlamaSampler.add_top_k lacks the parameters k"
    finally:
        lib._internals.LlamaSampler.add_top_k = original


def test_a_changed_model_object_is_named(lib):
    class Stripped:
        model_path = "x.gguf"

    problems = llama_internals.changed_uses(lib, Stripped())
    assert "Llama._ctx.ctx: Llama._ctx.ctx is missing ('_ctx' not found)" in problems
    assert any(p.startswith("Llama.n_batch:") for p in problems)


#: a `Llama`'s private attributes, and its C structures' (a loaded model is an `llm` wherever the runtime holds one)
_PRIVATE_ON_LLM = {"_ctx", "_model", "_stack", "context_params", "model_params"}
_PRIVATE_MODULES = {"_internals", "llama_cpp", "llama_grammar", "llama_chat_format", "llama_types"}


def _is_llm(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "llm") or (isinstance(node, ast.Attribute) and node.attr == "llm")


def _reaches_below(tree: ast.AST) -> list[str]:
    """Where code reaches below `Llama`'s public methods: a private attribute of a model, a C function or
    structure of the bindings (`lib.llama_decode`), a submodule of the package."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _PRIVATE_ON_LLM and _is_llm(node.value):
            found.append(f"line {node.lineno}: llm.{node.attr}")
        elif isinstance(node, ast.Attribute) and (node.attr.startswith("llama_") or node.attr in _PRIVATE_MODULES):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llama_cpp"):
            found.append(f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    return found


def test_no_other_module_reaches_below_the_public_llama():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "llama_internals.py" or "server_ext" in path.parts or "widgets" in path.parts:
            continue
        found = _reaches_below(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}, f"only backends/llama_internals.py may touch llama-cpp-python's internals: {offenders}"
    assert _reaches_below(ast.parse((BACKENDS / "llama_internals.py").read_text()))  # the check does see them


def test_pyproject_pins_the_tested_series(lib):
    """pyproject allows the tested release up to 0.4 (the next series may move any internal), and the installed
    one lies in that range."""
    import re

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    ranges = set(re.findall(r'"llama-cpp-python(?:\[server\])?([^"]+)"', text))
    assert ranges == {f">={llama_internals.TESTED},<0.4"}, ranges
    release = tuple(int(x) for x in lib.__version__.split(".")[:3])
    assert tuple(int(x) for x in llama_internals.TESTED.split(".")) <= release < (0, 4), lib.__version__
