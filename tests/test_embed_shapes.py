"""Embedding batches are padded to a few fixed shapes (issue 31: kernels kept per shape grew a server's RSS)."""

import numpy as np

from universal_kernel.backends.transformers_embed import (batch_shape, padded_batch, padded_rows, padded_width,
                                                          token_budget_batches)


def shapes_of(lengths: np.ndarray, max_length: int, max_batch: int = 256, token_budget: int = 1024) -> set:
    order = np.argsort(-lengths, kind="stable")
    return {batch_shape(batch, lengths, max_length, max_batch, token_budget)
            for batch in token_budget_batches(order, lengths, max_batch, token_budget, max_length)}


def test_widths_and_rows_are_few_and_tight():
    widths = {padded_width(w, 256) for w in range(1, 257)}
    assert widths == set(range(8, 129, 8)) | set(range(144, 257, 16))
    assert all(w <= padded_width(w, 512) <= w + (7 if w <= 128 else 15) for w in range(1, 513))
    assert padded_width(500, 510) == 510  # never past the model's length
    assert [padded_rows(n, 42) for n in (1, 2, 3, 5, 8, 9, 33, 41, 42)] == [1, 2, 4, 8, 8, 16, 40, 42, 42]


def test_every_mix_of_lengths_stays_within_a_bounded_set_of_shapes():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):  # requests of 1-64 texts of any length up to 256 tokens
        seen |= shapes_of(rng.integers(1, 257, size=int(rng.integers(1, 65))), 256)
    everything = {(padded_rows(n, max(1, min(256, 1024 // w))), w)
                  for w in {padded_width(x, 256) for x in range(1, 257)} for n in range(1, 1024 // w + 1)}
    assert seen <= everything
    assert len(everything) < 200
    for rows, width in seen:
        assert rows * width <= 1024 or rows == 1


def test_padded_rows_repeat_a_real_row_and_keep_its_mask():
    encoded = [[5] * 10, [6] * 3, [7] * 2]
    lengths = np.array([10, 3, 2])
    batch = np.array([0, 1, 2])
    ids, mask = padded_batch(encoded, batch, lengths, pad_id=0, shape=batch_shape(batch, lengths, 256, 256, 1024))
    assert ids.shape == mask.shape == (4, 16)
    assert mask.sum(axis=1).tolist() == [10, 3, 2, 2]
    assert (ids[3] == ids[2]).all() and ids[0, 10:].tolist() == [0] * 6
