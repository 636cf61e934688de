"""Batches by token count: pairs of similar length together, so that little compute is spent on padding.

A batch's cost is len(batch) * (longest side of any pair in it), the number of positions of the padded
longer side; it never exceeds max_tokens. Pairs are sorted by (longer side, shorter side) with random
tie-breaking, cut greedily into batches, and the batch order is shuffled; the randomness comes only from
(seed, epoch), so every rank of a distributed run computes the same batches and takes its own share.
"""
from __future__ import annotations

import numpy as np
import torch

from difformer.errors import DifformerError


def token_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, *, seed: int = 0,
                  epoch: int = 0, shuffle: bool = True, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Indices of the pairs of each batch, for one epoch and one rank.

    Lengths must include whatever special tokens the model adds (BOS/EOS). With world_size > 1 every rank
    gets len(batches) // world_size batches, disjoint from the other ranks'; the few batches left over are
    not used in this epoch (a different few each epoch when shuffling). With world_size 1 every pair is in
    exactly one batch.
    """
    src_lens, tgt_lens = np.asarray(src_lens, np.int64), np.asarray(tgt_lens, np.int64)
    if src_lens.shape != tgt_lens.shape or src_lens.ndim != 1:
        raise ValueError(f"length arrays differ: {src_lens.shape} vs {tgt_lens.shape}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    longer = np.maximum(np.maximum(src_lens, tgt_lens), 1)  # an empty pair still takes a batch slot
    if len(longer) and longer.max() > max_tokens:
        i = int(np.argmax(longer > max_tokens))
        raise DifformerError(f"pair {i} needs {longer[i]} tokens, more than --max-tokens {max_tokens}; use "
                             f"--max-tokens {longer.max()} or more, or prepare the data with --max-len")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(longer)) if shuffle else np.arange(len(longer))
    key = longer * (int(longer.max(initial=0)) + 1) + np.minimum(src_lens, tgt_lens)
    order = order[np.argsort(key[order], kind="stable")]  # stable: ties keep the random order
    ends = _greedy_ends(longer[order], max_tokens)
    batches = [b.tolist() for b in np.split(order, ends[:-1])] if len(order) else []
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    if world_size > 1:
        per_rank = len(batches) // world_size
        if per_rank == 0:
            raise DifformerError(f"{len(batches)} batches cannot be shared by {world_size} processes; "
                                 f"lower --max-tokens")
        batches = batches[:per_rank * world_size][rank::world_size]
    return batches


def _greedy_ends(lens: np.ndarray, max_tokens: int) -> list[int]:
    """End of each batch when sorted lengths are cut greedily (a pair joins the open batch while it fits).

    A pair of length v fits into an open batch of b pairs iff (b + 1) * v <= max_tokens, i.e. b < cap(v),
    so the cut points of each run of equal lengths follow by arithmetic: the loop is over distinct lengths
    (a few hundred), not over pairs (millions).
    """
    values, counts = np.unique(lens, return_counts=True)
    ends: list[int] = []
    start = pos = 0  # the open batch is lens[start:pos]
    for v, c in zip(values.tolist(), counts.tolist()):
        cap = max_tokens // v
        if pos - start >= cap:
            ends.append(pos)
            start = pos
        room = cap - (pos - start)
        if c <= room:
            pos += c
            continue
        pos += room
        full, rest = divmod(c - room, cap)
        ends.extend(range(pos, pos + full * cap + 1, cap))  # closes the open batch, then the full ones
        pos += full * cap
        start = pos
        pos += rest
    if pos > start:
        ends.append(pos)
    return ends


def pad_batch(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> padded (B, T) ids and the (B, T) mask of real tokens."""
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, out != pad
