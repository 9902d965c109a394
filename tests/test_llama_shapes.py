"""Which prompt parts may share a llama_decode call without changing a number (llama_shapes.py)."""

from __future__ import annotations

from universal_kernel.backends.llama_shapes import may_share


def test_short_parts_share_a_call_whatever_their_lengths():
    assert may_share([30, 37, 12], small=64, n_ubatch=512)
    assert may_share([63, 1], small=64, n_ubatch=512)


def test_a_long_part_shares_only_with_parts_of_its_length():
    assert not may_share([100, 20], small=64, n_ubatch=512)
    assert not may_share([64, 63], small=64, n_ubatch=512)
    assert may_share([100, 100], small=64, n_ubatch=512)
    assert may_share([300], small=64, n_ubatch=512)  # alone, always


def test_parts_that_llama_cpp_would_cut_again_do_not_share():
    assert not may_share([300, 300], small=64, n_ubatch=512)  # cut to 256 rows each
    assert not may_share([40, 40], small=64, n_ubatch=64)


def test_where_the_check_failed_only_like_lengths_share():
    assert not may_share([30, 37], small=0, n_ubatch=512)
    assert may_share([30, 30], small=0, n_ubatch=512)
