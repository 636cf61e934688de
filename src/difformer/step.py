"""The training step, free of the loop around it: the model kind's objective as one module, and the
gradients of one update over its batches.

The objective is a module so that DistributedDataParallel can wrap it: DDP all-reduces gradients from
hooks that its forward arms, and the losses call the model's parts (encode, denoise), not its forward.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from difformer.config import Config
from difformer.diffusion.losses import difformer_loss
from difformer.diffusion.schedule import Schedule
from difformer.diffusion.timesteps import LossAwareTimesteps
from difformer.model.autoregressive import ARTransformer, ar_loss
from difformer.model.difformer import Difformer
from difformer.precision import autocast


class Objective(torch.nn.Module):
    """(src, src_mask, tgt, tgt_mask) -> (loss, statistics as device tensors): difformer_loss for a
    Difformer (t drawn by `timesteps` when given, uniformly otherwise), label-smoothed cross-entropy for the
    autoregressive model."""

    def __init__(self, model: Difformer | ARTransformer, schedule: Schedule | None, cfg: Config,
                 timesteps: LossAwareTimesteps | None = None):
        super().__init__()
        self.model, self.schedule, self.cfg, self.timesteps = model, schedule, cfg, timesteps

    def forward(self, src, src_mask, tgt, tgt_mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.schedule is None:
            return ar_loss(self.model, src, src_mask, tgt, tgt_mask, self.cfg.train.label_smoothing)
        return difformer_loss(self.model, self.schedule, self.cfg.diffusion, src, src_mask, tgt, tgt_mask,
                              self.timesteps)


def accumulate(objective: Objective | DistributedDataParallel, batches: list[list[torch.Tensor]],
               precision: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Backpropagate loss / len(batches) of each batch, summing the gradients (update_freq); under DDP they
    are all-reduced once, with the last batch. Returns the statistics averaged over the batches."""
    stats: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        hold = objective.no_sync() if isinstance(objective, DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with hold:
            with autocast(precision, device):
                loss, s = objective(*batch)
            (loss / len(batches)).backward()
        for k, v in s.items():
            stats[k] = stats.get(k, 0.0) + v.detach() / len(batches)
    return stats
