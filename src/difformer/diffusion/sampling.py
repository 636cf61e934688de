"""Few-step decoding: length prediction, candidate expansion (length beam x noise beam), the denoising loop.

All l x n candidates of a batch of sources are decoded together (on a CPU in groups of similar length);
the encoder runs and the cross-attention keys and values are computed once per source. The network is
called once per step; the scheduler (DDPM or DDIM, schedulers.py) does the rest. Each candidate's noise is
a function of its source tokens, the decoding seed, its index, the step and the position (noise.py),
computed on the device: a sentence's output does not depend on the batch it is decoded in, its padding,
its place in the input or the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from difformer.config import DecodeConfig
from difformer.diffusion.noise import candidate_keys, gaussian
from difformer.diffusion.schedule import Schedule
from difformer.diffusion.schedulers import Scheduler, make_sampler
from difformer.model.difformer import Difformer, predict_lengths


@dataclass
class Candidates:
    tokens: torch.Tensor  # (B, C, L) argmax tokens, C = length_beam x noise_beam
    lengths: torch.Tensor  # (B, C) target lengths, BOS/EOS included
    scores: torch.Tensor  # (B, C) mean token log-probability of the argmax tokens


def word_logits(model: Difformer, z0_hat: torch.Tensor) -> torch.Tensor:
    """z0_hat (..., e) -> logits over the vocabulary (..., V) in fp32, also under bf16 autocast: the argmax
    between near-tied words and the candidates' scores need more than bf16's 8 bits (one product per
    candidate, small beside the denoising steps)."""
    with torch.autocast(z0_hat.device.type, enabled=False):
        return model.logits(z0_hat.float())


@torch.no_grad()
def denoise_loop(model: Difformer, sampler: Scheduler, cross_kv: list[torch.Tensor], src_mask: torch.Tensor,
                 tgt_mask: torch.Tensor, cfg: DecodeConfig, keys: torch.Tensor,
                 trace: list[torch.Tensor] | None = None, self_condition: bool = True) -> torch.Tensor:
    """Run the sampler's steps from z_T ~ N(0, I) (sampling uses F = 1); return the last z0_hat (N, L, e).

    `keys` (N, 2) are the candidates' noise keys (noise.candidate_keys). With `trace`, each step's z0_hat
    is appended to it (for the trajectory analysis). `self_condition`: feed each step's z0_hat to the next
    as p, as training did when diffusion.self_cond > 0; a model trained without it only ever saw p = 0.
    """
    N, L = tgt_mask.shape
    shape, lengths = (N, L, model.cfg.embed_dim), tgt_mask.sum(1)
    z = gaussian(keys, 0, lengths, shape)  # draw 0: z_T; draw i + 1: the noise of step i
    p = torch.zeros_like(z)
    last = len(sampler.timesteps)
    for i in range(last):
        time = sampler.model_times[0 if cfg.cond_enhance else i].expand(N)
        z0_hat = model.denoise(z, p, time, tgt_mask, None, src_mask, cross_kv).float()
        if trace is not None:
            trace.append(z0_hat)
        if i + 1 < last:
            # clamp: the next step starts from the argmax words' embeddings; the output stays the network's
            # z0_hat (rounding an embedding again can pick another word, and its score would be E's geometry)
            clamped = model.embed_target(word_logits(model, z0_hat).argmax(-1)).float() if cfg.clamp else z0_hat
            fresh = gaussian(keys, i + 1, lengths, shape) if sampler.needs_noise(i) else None
            z = sampler.step(i, clamped, z, fresh)
            p = clamped if self_condition else p
    return z0_hat


def length_groups(lengths: list[int], min_tokens: float, slack: int = 2) -> list[list[int]]:
    """Candidate rows grouped by length, longest first, so that the network computes few padded positions:
    a group closes where a row is more than `slack` shorter than the group's longest, once the group holds
    `min_tokens` positions (so its matrix products stay large). min_tokens inf: one group, input order."""
    if min_tokens == float("inf"):
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (lengths[groups[-1][0]] - lengths[i] <= slack
                       or len(groups[-1]) * lengths[groups[-1][0]] < min_tokens):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# positions per length group on a CPU; elsewhere one group: a GPU is bound by kernel launches, not padding
CPU_GROUP_TOKENS = 2048


@torch.no_grad()
def generate_candidates(model: Difformer, schedule: Schedule, src: torch.Tensor, src_mask: torch.Tensor,
                        cfg: DecodeConfig, trace: list[torch.Tensor] | None = None,
                        self_condition: bool = True) -> Candidates:
    """Encode once, predict lengths, expand to l x n candidates per source and denoise them, on a CPU in
    groups of similar length (see `length_groups`).

    With `trace`, each step's z0_hat (B*C, L, e) is appended to it, as in `denoise_loop` (one group);
    `self_condition` as there (the model's diffusion.self_conditioned).
    """
    B, device = src.shape[0], src.device
    l, n = cfg.length_beam, cfg.noise_beam
    C = l * n
    memory, length_logits = model.encode(src, src_mask)
    lengths = predict_lengths(length_logits.float(), src_mask.sum(1), l, model.cfg.max_positions,
                              model.cfg.length_offset)  # (B, l)
    lengths = lengths.repeat_interleave(n, dim=1).reshape(-1)  # (B*C,): candidate c of source b is b*C + c
    keys = candidate_keys(src, src_mask, C, cfg.seed)  # from each source's own tokens
    sampler = make_sampler(cfg.sampler, schedule)
    sampler.set_timesteps(cfg.steps, cfg.early_stop, device, cfg.min_t)
    # the decoder layers' cross-attention keys/values: once per source, not per candidate and step
    cross_kv = model.cross_keys_values(memory)
    sizes = lengths.tolist()
    L = max(sizes)
    z0_hat = torch.zeros(B * C, L, model.cfg.embed_dim, device=device)
    cpu = device.type == "cpu" and trace is None
    for group in length_groups(sizes, CPU_GROUP_TOKENS if cpu else float("inf")):
        rows = torch.tensor(group, device=device)
        sources = rows // C
        n_pos = max(sizes[i] for i in group)
        mask = torch.arange(n_pos, device=device)[None, :] < lengths[rows][:, None]
        z0_hat[rows, :n_pos] = denoise_loop(model, sampler, [kv.index_select(1, sources) for kv in cross_kv],
                                            src_mask.index_select(0, sources), mask, cfg, keys[rows], trace,
                                            self_condition)
    tgt_mask = torch.arange(L, device=device)[None, :] < lengths[:, None]  # (B*C, L)
    logits = word_logits(model, z0_hat)  # (B*C, L, V)
    top, tokens = logits.max(-1)
    best = top - logits.logsumexp(-1)  # the argmax token's log-probability; no log-softmax is kept
    scores = (best * tgt_mask).sum(1) / lengths
    return Candidates(tokens.view(B, C, L), lengths.view(B, C), scores.view(B, C))
