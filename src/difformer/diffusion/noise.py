"""Counter-based Gaussian noise for decoding, computed on the decoding device.

A candidate's noise must not depend on the batch it is decoded in, its padding, its place in the input or
the device, so that `generate` is reproducible one sentence at a time. So each value is a pure function of
(the candidate's key, the step, the position, the dimension): the key is a hash of the source's tokens, the
decoding seed and the candidate's index (made once per batch on the host), and the rest is integer hashing
and a Box-Muller transform in tensor ops, with no generator state, no Python loop and no host copy per step.

The integer arithmetic is exact on every device; the float transform may differ between devices in the
last bit only. Each candidate's draw is keyed by 32 bits (its 64-bit key hashed with the step): two rows
of a decode share a draw with probability 2^-32, harmless for noise.
"""
from __future__ import annotations

import hashlib
import math
import struct

import torch

MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash ("lowbias32", C. Wellons) of int64 tensors holding values in [0, 2^32).

    A product may pass 2^63 and wrap around; its low 32 bits, all that is kept, are exact either way
    (tests compare with Python's unbounded integers).
    """
    x = x ^ (x >> 16)  # a new tensor: the rest works in place (these tensors are the noise's size)
    x.mul_(0x7FEB352D).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(0x846CA68B).bitwise_and_(MASK32)
    x ^= x >> 16
    return x


def candidate_seed(source: list[int], seed: int, index: int) -> int:
    """A 64-bit key from the source tokens (no padding), the decoding seed and the candidate's index."""
    data = struct.pack(f"<2q{len(source)}q", seed, index, *source)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def candidate_keys(src: torch.Tensor, src_mask: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """(B * copies, 2) int64 32-bit words of each candidate's key, on the device of `src`; candidate c of
    source b is row b * copies + c."""
    sources = [[t for t, m in zip(row, keep) if m] for row, keep in zip(src.tolist(), src_mask.tolist())]
    keys = [candidate_seed(tokens, seed, c) for tokens in sources for c in range(copies)]
    words = [[k & MASK32, k >> 32] for k in keys]
    return torch.tensor(words, dtype=torch.int64).view(-1, 2).to(src.device, non_blocking=True)


def gaussian(keys: torch.Tensor, step: int, lengths: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Standard normal noise (N, L, e) for draw number `step` of each of the N candidates, float32 on the
    keys' device, zero at and beyond each candidate's length (N,)."""
    N, L, e = shape
    device = keys.device
    half = (e + 1) // 2  # Box-Muller makes two values from each pair of uniforms
    position = mix32(torch.arange(L * half, device=device, dtype=torch.int64)).view(1, L, half)  # any L: same
    u = []
    for stream in (1, 2):  # the two uniforms of a pair come from two keys per candidate and step
        row = mix32(mix32(keys[:, 0] ^ mix32(torch.full_like(keys[:, 0], 2 * step + stream))) ^ keys[:, 1])
        h = mix32(row.view(N, 1, 1) ^ position)  # (N, L, half)
        h >>= 9
        u.append(h.mul_(2).add_(1).float().mul_(2.0 ** -24))  # odd multiples of 2^-24: exact, never 0 or 1
    radius = u[0].log_().mul_(-2.0).sqrt_()
    angle = u[1].mul_(2.0 * math.pi)
    z = torch.cat([radius * angle.cos(), radius.mul_(angle.sin_())], dim=-1)[..., :e]
    real = torch.arange(L, device=device)[None, :] < lengths.to(device)[:, None]
    return z.mul_(real[..., None])
