"""Which `llama_decode` shapes give a sequence the numbers a fresh context gives it.

A request's text must not depend on what ran before it or beside it (llama_batch.py). A KV cell's numbers
depend on how many rows of its own sequence its micro-batch held: on an Intel AVX-512 CPU (llama-cpp-python
0.3.x, flash attention, a KV stream per sequence) every count from 1 to 63 gives the same bits, and 64 or
more another kernel's; the other sequences' rows in the same call change nothing. llama.cpp splits a
call with several sequences into micro-batches of equal rows per sequence (`split_equal`), so a 100-token
prompt that shares a call with a 30-token one is computed as 30 + 70 rows instead of 100, and its logits
differed. Raw llama-cpp-python's own prefix reuse changed a seeded text on AMD Zen 4 the same way (SPEC §6).

So two things are allowed only where they keep every cell's kernel:
- prompts share one call when each part has fewer rows than `small_rows` (every micro-batch then has fewer
  too, as each prompt alone), or when all parts have the same rows and fit in one micro-batch;
- a prompt reuses any prefix a slot holds when both it and the slot's last prompt are shorter than
  `small_rows` (all their cells from small micro-batches); longer prompts reuse only whole `n_batch` chunks
  from position 0, which are decoded alike whatever came before.

`small_rows` is checked at load, bit for bit, on the machine's own kernels; where the check fails it is 0 and
only the exact shapes remain.
"""

from __future__ import annotations

#: the row count below which one kernel serves every micro-batch (measured on Intel AVX-512; checked at load)
SMALL_ROWS = 64

_PROBE = (b"The river keeps its course through the valley, and the old mill still turns beside the bridge "
          b"where the children wait for the evening train, while the baker counts the loaves and the clock "
          b"above the square strikes the hour that nobody hears. ")

_checked: dict[tuple, int] = {}  # (model file, threads, n_ubatch, flash attention, device) -> small_rows


def small_rows(batch) -> int:
    """`SMALL_ROWS` if a sequence's last row gives the same logits from micro-batches of 1, 2 and
    `SMALL_ROWS - 1` rows on this machine, else 0. Uses slot 0 of `batch`'s fresh context; one check per
    model file and settings in a process (about `SMALL_ROWS` tokens of prefill)."""
    key = batch.raw.settings_key()
    if key not in _checked:
        _checked[key] = SMALL_ROWS if _same_logits(batch, SMALL_ROWS - 1) else 0
    return _checked[key]


def _same_logits(batch, n: int) -> bool:
    import numpy as np

    raw = batch.raw
    tokens = batch.llm.tokenize(_PROBE * (1 + n // 16), add_bos=True, special=False)[:n]
    try:
        raw.forget(0, 0)
        batch.decode([(t, i, 0, i == n - 1) for i, t in enumerate(tokens)])
        whole = raw.logits(-1).copy()
        same = True
        for tail in (1, 2):  # odd and even counts: some kernels take rows in pairs
            raw.forget(0, n - tail)
            batch.decode([(t, n - tail + i, 0, i == tail - 1) for i, t in enumerate(tokens[n - tail:])])
            same = same and np.array_equal(whole, raw.logits(-1))
        return same
    finally:
        raw.forget(0, 0)


def may_share(sizes: list[int], small: int, n_ubatch: int) -> bool:
    """Whether prompt parts of these row counts (one per sequence) may be decoded in one call: more than one
    only within one micro-batch (`n_ubatch`, at most `n_batch`, which also bounds the call)."""
    if sum(sizes) > n_ubatch and len(sizes) > 1:
        return False
    return all(size < small for size in sizes) or len(set(sizes)) == 1
