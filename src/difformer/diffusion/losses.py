"""The training objective: MSE on z0 + anchor cross-entropy + 0.1 x length cross-entropy.

The anchor loss is the cross-entropy of the *predicted* z0_hat rounded through E^T. Without it the learnable
embeddings collapse: MSE alone is minimised by shrinking E. The Diffusion-LM rounding loss (the same CE on
the clean z0) is kept as an ablation. The noise factor F is applied here, in training only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from difformer.config import DiffusionConfig, lowest_t
from difformer.diffusion.schedule import Schedule
from difformer.diffusion.timesteps import LossAwareTimesteps
from difformer.model.difformer import Difformer, length_targets


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T) over the True positions of mask (B, T)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def sentence_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T) over each row's True positions of mask: (B,)."""
    m = mask.to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def token_ce(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, smoothing: float) -> torch.Tensor:
    return masked_mean(token_ce_all(logits, tokens, smoothing), mask)  # mean over real tokens


def token_ce_all(logits: torch.Tensor, tokens: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy of every position: (B, T, V) logits against (B, T) tokens -> (B, T)."""
    return F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none", label_smoothing=smoothing)


def soft_absorb(z_t: torch.Tensor, absorb: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """DiffuSeq-v2's soft absorbing state: each position of z_t (B, T, e) becomes the learned latent `absorb`
    (e,) with probability rate (B,), so the denoiser also learns to fill in whole missing words, as a
    masked model does. Training only: sampling never absorbs."""
    hit = torch.rand(z_t.shape[:2], device=z_t.device) < rate[:, None]  # (B, T)
    return torch.where(hit[..., None], absorb.to(z_t.dtype), z_t)


def difformer_loss(model: Difformer, schedule: Schedule, cfg: DiffusionConfig, src: torch.Tensor,
                   src_mask: torch.Tensor, tgt: torch.Tensor, tgt_mask: torch.Tensor,
                   timesteps: LossAwareTimesteps | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training loss for a batch; one t per sentence, ~ U{min_t T..T-1} or drawn by `timesteps` (whose
    importance weights then scale each sentence's MSE and anchor loss, the logged ones too: unbiased estimates
    of the uniform ones). Returns (loss, stats: detached tensors, scalars for logging, and with `timesteps`
    the per-bucket sums its `observe` takes)."""
    B = src.shape[0]
    memory, length_logits = model.encode(src, src_mask)
    z0 = model.embed_target(tgt)  # (B, T, e), gradient flows into E
    if timesteps is None:
        t = torch.randint(lowest_t(schedule.timesteps, cfg.min_t), schedule.timesteps, (B,), device=src.device)
    else:
        t, weight = timesteps.draw(B)
    z_t = schedule.add_noise(z0, torch.randn_like(z0), t, cfg.noise_factor, cfg.noise_mode)
    if model.absorb is not None:
        z_t = soft_absorb(z_t, model.absorb, model.cfg.soft_absorb * schedule.noise_level(t))
    time = schedule.model_time(t)

    p = torch.zeros_like(z_t)
    if cfg.self_conditioned and torch.rand(()).item() < cfg.self_cond:
        with torch.no_grad():  # self-conditioning: a first pass without gradient feeds the real one
            p = model.denoise(z_t, p, time, tgt_mask, memory, src_mask).detach()
    z0_hat = model.denoise(z_t, p, time, tgt_mask, memory, src_mask)  # (B, T, e)

    mse_all = (z0_hat.float() - z0.float()).pow(2).mean(-1)  # (B, T)
    anchor_logits = model.logits(z0_hat)  # (B, T, V)
    anchor_all = token_ce_all(anchor_logits, tgt, cfg.label_smoothing)
    history = {}
    if timesteps is not None:  # the weights scale whole sentences; the means stay over the batch's tokens
        trained = mse_all + anchor_all if cfg.anchor == "anchor" else mse_all  # the terms that depend on t
        history = timesteps.tally(t, sentence_means(trained.detach(), tgt_mask))  # unweighted, per sentence
        mse_all, anchor_all = mse_all * weight[:, None], anchor_all * weight[:, None]
    mse, anchor = masked_mean(mse_all, tgt_mask), masked_mean(anchor_all, tgt_mask)
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
    return loss, {**stats, **history}
