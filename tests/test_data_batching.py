"""Token-count batching: the budget is never exceeded, every pair once, reproducible, ranks disjoint."""
from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difformer.data.batching import token_batches
from difformer.errors import DifformerError


def lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(3, 60, n)
    return src, np.clip(src + rng.integers(-5, 6, n), 2, None)


def cost(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    return len(batch) * int(max(src[batch].max(), tgt[batch].max()))


def test_no_batch_exceeds_max_tokens_and_every_pair_appears_once():
    src, tgt = lengths(5000)
    batches = token_batches(src, tgt, 1000, seed=1, epoch=0)
    assert max(cost(b, src, tgt) for b in batches) <= 1000
    assert sorted(i for b in batches for i in b) == list(range(5000))


def test_batches_are_nearly_full():
    src, tgt = lengths(5000)
    batches = token_batches(src, tgt, 2000)
    used = sum(cost(b, src, tgt) for b in batches) / (len(batches) * 2000)
    assert used > 0.9


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ():
    src, tgt = lengths(3000)
    a = token_batches(src, tgt, 800, seed=7, epoch=2)
    assert a == token_batches(src, tgt, 800, seed=7, epoch=2)
    assert a != token_batches(src, tgt, 800, seed=7, epoch=3)
    assert a != token_batches(src, tgt, 800, seed=8, epoch=2)


def test_ties_are_broken_differently_per_epoch():
    src = tgt = np.full(100, 10)  # all the same length: batch contents come only from the tiebreak
    first = {tuple(sorted(b)) for b in token_batches(src, tgt, 100, epoch=0)}
    second = {tuple(sorted(b)) for b in token_batches(src, tgt, 100, epoch=1)}
    assert first != second


def test_without_shuffle_batches_follow_length_order():
    src, tgt = lengths(500)
    batches = token_batches(src, tgt, 600, shuffle=False)
    longest = [max(max(src[b]), max(tgt[b])) for b in batches]
    assert longest == sorted(longest)
    assert batches == token_batches(src, tgt, 600, shuffle=False, epoch=5)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_disjoint_equal_shares(world_size):
    src, tgt = lengths(4000)
    everything = token_batches(src, tgt, 900, seed=3, epoch=1)
    shares = [token_batches(src, tgt, 900, seed=3, epoch=1, rank=r, world_size=world_size)
              for r in range(world_size)]
    assert len({len(s) for s in shares}) == 1
    assert len(shares[0]) == len(everything) // world_size
    seen = [i for s in shares for b in s for i in b]
    assert len(seen) == len(set(seen))
    assert {tuple(b) for s in shares for b in s} <= {tuple(b) for b in everything}


def test_a_pair_longer_than_max_tokens_is_named():
    src, tgt = np.array([5, 7, 3, 9]), np.array([5, 7, 40, 50])
    with pytest.raises(DifformerError, match=r"pair 2 needs 40 tokens, more than --max-tokens 30; .*50"):
        token_batches(src, tgt, 30)


def test_million_pairs_take_well_under_a_second():
    src, tgt = lengths(1_000_000)
    t = time.perf_counter()
    batches = token_batches(src, tgt, 4096)
    assert time.perf_counter() - t < 1.5  # typically about 0.3 s on 2 cores
    assert sum(map(len, batches)) == 1_000_000


def naive_greedy(longer: list[int], max_tokens: int) -> list[int]:
    """The definition: walk the sorted lengths, close the batch when the next pair would not fit."""
    ends, size = [], 0
    for i, v in enumerate(longer):
        if (size + 1) * v > max_tokens:
            ends.append(i)
            size = 0
        size += 1
    return ends + [len(longer)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=300),
       st.integers(40, 400), st.integers(0, 3))
def test_batches_are_the_greedy_cut_of_the_sorted_pairs(pairs, max_tokens, epoch):
    src, tgt = np.array(pairs).T
    batches = token_batches(src, tgt, max_tokens, epoch=epoch, shuffle=False)
    order = [i for b in batches for i in b]
    longer = np.maximum(src, tgt)[order].tolist()
    assert longer == sorted(longer)
    assert np.cumsum([len(b) for b in batches]).tolist() == naive_greedy(longer, max_tokens)
    assert all(cost(b, src, tgt) <= max_tokens for b in batches)
