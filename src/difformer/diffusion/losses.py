"""The training objective: MSE on z0 + anchor cross-entropy + 0.1 x length cross-entropy.

The anchor loss is the cross-entropy of the *predicted* z0_hat rounded through E^T. Without it the learnable
embeddings collapse: MSE alone is minimised by shrinking E. The Diffusion-LM rounding loss (the same CE on
the clean z0) is kept as an ablation. The noise factor F is applied here, in training only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from difformer.config import DiffusionConfig
from difformer.diffusion.schedule import Schedule
from difformer.model.difformer import Difformer, length_targets


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T) over the True positions of mask (B, T)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def token_ce(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, smoothing: float) -> torch.Tensor:
    ce = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none", label_smoothing=smoothing)
    return masked_mean(ce, mask)  # (B, V, T) vs (B, T) -> mean over real tokens


def soft_absorb(z_t: torch.Tensor, absorb: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """DiffuSeq-v2's soft absorbing state: each position of z_t (B, T, e) becomes the learned latent `absorb`
    (e,) with probability rate (B,), so the denoiser also learns to fill in whole missing words, as a
    masked model does. Training only: sampling never absorbs."""
    hit = torch.rand(z_t.shape[:2], device=z_t.device) < rate[:, None]  # (B, T)
    return torch.where(hit[..., None], absorb.to(z_t.dtype), z_t)


def difformer_loss(model: Difformer, schedule: Schedule, cfg: DiffusionConfig, src: torch.Tensor,
                   src_mask: torch.Tensor, tgt: torch.Tensor, tgt_mask: torch.Tensor,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training loss for a batch; one t ~ U{min_t T..T-1} per sentence. Returns (loss, stats for logging:
    detached scalar tensors)."""
    B = src.shape[0]
    memory, length_logits = model.encode(src, src_mask)
    z0 = model.embed_target(tgt)  # (B, T, e), gradient flows into E
    t = torch.randint(round(cfg.min_t * schedule.timesteps), schedule.timesteps, (B,), device=src.device)
    z_t = schedule.add_noise(z0, torch.randn_like(z0), t, cfg.noise_factor, cfg.noise_mode)
    if model.absorb is not None:
        z_t = soft_absorb(z_t, model.absorb, model.cfg.soft_absorb * schedule.noise_level(t))
    time = schedule.model_time(t)

    p = torch.zeros_like(z_t)
    if cfg.self_cond > 0 and torch.rand(()).item() < cfg.self_cond:
        with torch.no_grad():  # self-conditioning: a first pass without gradient feeds the real one
            p = model.denoise(z_t, p, time, tgt_mask, memory, src_mask).detach()
    z0_hat = model.denoise(z_t, p, time, tgt_mask, memory, src_mask)  # (B, T, e)

    mse = masked_mean((z0_hat.float() - z0.float()).pow(2).mean(-1), tgt_mask)
    anchor_logits = model.logits(z0_hat)  # (B, T, V)
    anchor = token_ce(anchor_logits, tgt, tgt_mask, cfg.label_smoothing)
    src_lens, tgt_lens = src_mask.sum(1), tgt_mask.sum(1)
    classes = length_targets(src_lens, tgt_lens, length_logits.shape[-1], model.cfg.length_offset)
    length = F.cross_entropy(length_logits.float(), classes)

    loss = mse + cfg.length_weight * length
    if cfg.anchor == "anchor":
        loss = loss + anchor
    elif cfg.anchor == "rounding":
        rounding = token_ce(model.logits(z0), tgt, tgt_mask, cfg.label_smoothing)
        loss = loss + rounding
    with torch.no_grad():  # detached device scalars: read (one synchronisation) when a log line is written
        norm = model.embed.weight.float().norm(dim=-1).mean() * model.embed_scale
        stats = {"loss": loss.detach(), "mse": mse.detach(), "anchor": anchor.detach(), "length": length.detach(),
                 "embed_norm": norm}
        if not model.training:  # an argmax over the vocabulary costs ~4% of a CPU training step
            stats["acc"] = masked_mean((anchor_logits.argmax(-1) == tgt).float(), tgt_mask)
    return loss, stats
