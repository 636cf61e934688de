"""Few-step decoding: length prediction, candidate expansion (length beam x noise beam), DDPM/DDIM sampling.

All l x n candidates of a batch are decoded as one batch; the encoder runs and the cross-attention keys
and values are computed once per source. The network is called once per step; the schedule's `step` does the rest. Each candidate draws its noise from its own
generator, seeded by its source tokens, the decoding seed and its index, so a sentence's output does not
depend on the batch it is decoded in, its padding, its place in the input or the device.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import torch

from difformer.config import DecodeConfig
from difformer.diffusion.schedule import Schedule
from difformer.model.difformer import Difformer, predict_lengths


@dataclass
class Candidates:
    tokens: torch.Tensor  # (B, C, L) argmax tokens, C = length_beam x noise_beam
    lengths: torch.Tensor  # (B, C) target lengths, BOS/EOS included
    scores: torch.Tensor  # (B, C) mean token log-probability of the argmax tokens


class CandidateNoise:
    """Standard Gaussian noise, one CPU generator per candidate, zero beyond the candidate's length."""

    def __init__(self, src: torch.Tensor, src_mask: torch.Tensor, lengths: torch.Tensor, seed: int):
        copies = lengths.shape[0] // src.shape[0]
        sources = [[t for t, m in zip(row, keep) if m] for row, keep in zip(src.tolist(), src_mask.tolist())]
        self.generators = [torch.Generator().manual_seed(candidate_seed(tokens, seed, c))
                           for tokens in sources for c in range(copies)]
        self.lengths = lengths.tolist()

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        """Noise shaped like `like` (candidates, L, e), on its device and in its dtype."""
        noise = torch.zeros(like.shape)
        for row, (generator, n) in enumerate(zip(self.generators, self.lengths)):
            noise[row, :n] = torch.randn((n, like.shape[-1]), generator=generator)
        return noise.to(device=like.device, dtype=like.dtype)


def candidate_seed(source: list[int], seed: int, index: int) -> int:
    """A 64-bit seed from the source tokens, the decoding seed and the candidate's index."""
    data = struct.pack(f"<2q{len(source)}q", seed, index, *source)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@torch.no_grad()
def denoise_loop(model: Difformer, schedule: Schedule, cross_kv: list[torch.Tensor], src_mask: torch.Tensor,
                 tgt_mask: torch.Tensor, cfg: DecodeConfig, noise: CandidateNoise,
                 trace: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run K reverse steps from z_T ~ N(0, I) (sampling uses F = 1); return the last z0_hat (N, L, e).

    With `trace`, each step's z0_hat is appended to it (for the trajectory analysis).
    """
    N, L = tgt_mask.shape
    z = noise(torch.empty((N, L, model.cfg.embed_dim), device=src_mask.device))
    p = torch.zeros_like(z)
    ts = schedule.timesteps_for(cfg.steps)
    last = cfg.early_stop or cfg.steps
    for i, t in enumerate(ts[:last]):
        time = schedule.model_time(torch.full((N,), t, device=z.device))
        z0_hat = model.denoise(z, p, time, tgt_mask, None, src_mask, cross_kv).float()
        if cfg.clamp:  # snap to the nearest-by-logit word embedding
            z0_hat = model.embed_target(model.logits(z0_hat).argmax(-1)).float()
        if trace is not None:
            trace.append(z0_hat)
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        if i + 1 < last:
            fresh = noise(z) if cfg.sampler == "ddpm" and t_prev >= 0 else None
            z = schedule.step(z0_hat, z, t, t_prev, cfg.sampler, fresh)
        p = z0_hat
    return z0_hat


@torch.no_grad()
def generate_candidates(model: Difformer, schedule: Schedule, src: torch.Tensor, src_mask: torch.Tensor,
                        cfg: DecodeConfig, trace: list[torch.Tensor] | None = None) -> Candidates:
    """Encode once, predict lengths, expand to l x n candidates per source and denoise them in one batch.

    With `trace`, each step's z0_hat (B*C, L, e) is appended to it, as in `denoise_loop`.
    """
    B = src.shape[0]
    l, n = cfg.length_beam, cfg.noise_beam
    memory, length_logits = model.encode(src, src_mask)
    lengths = predict_lengths(length_logits.float(), src_mask.sum(1), l, model.cfg.max_positions,
                              model.cfg.length_offset)  # (B, l)
    lengths = lengths.repeat_interleave(n, dim=1).reshape(-1)  # (B*l*n,)
    noise = CandidateNoise(src, src_mask, lengths, cfg.seed)  # seeded by each source's own tokens
    # the decoder layers' cross-attention keys/values: once per source, not per candidate and step
    cross_kv = [kv.repeat_interleave(l * n, dim=1) for kv in model.cross_keys_values(memory)]
    src_mask = src_mask.repeat_interleave(l * n, dim=0)
    L = int(lengths.max())
    tgt_mask = torch.arange(L, device=src.device)[None, :] < lengths[:, None]  # (B*C, L)

    z0_hat = denoise_loop(model, schedule, cross_kv, src_mask, tgt_mask, cfg, noise, trace)
    logits = model.logits(z0_hat).float()  # (B*C, L, V)
    top, tokens = logits.max(-1)
    best = top - logits.logsumexp(-1)  # the argmax token's log-probability, without a (B*C, L, V) log-softmax
    scores = (best * tgt_mask).sum(1) / lengths
    C = l * n
    return Candidates(tokens.view(B, C, L), lengths.view(B, C), scores.view(B, C))
