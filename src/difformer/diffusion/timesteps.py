"""Which noise levels training spends its updates on.

`diffusion.time_sampling: uniform` draws t uniformly over min_t * T .. T-1. `loss` is importance sampling by
the loss (Nichol & Dhariwal 2021, section 3.3): the range is cut into BUCKETS buckets of timesteps, bucket k is
drawn with probability proportional to the root mean square of its recent per-sentence losses, and each
sentence's loss is weighted by p_uniform(k) / p(k). The expected loss is the uniform one; its estimate is less
noisy, because more of every batch goes where the loss is large and varies most (the noisiest timesteps).
Nichol & Dhariwal found it helped their noisiest objective (L_vlb) and not L_hybrid; whether it helps ours
(MSE + anchor, whose terms grow tenfold from t = 0 to T) is what bench/sweep.py's `time-loss` arm measures.

The loss history lives in the trainer, agreed by every rank at every update and saved in each checkpoint, so
that a resumed or distributed run draws exactly what one uninterrupted process would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The paper keeps the last 10 losses of every one of 4,000 timesteps and 0.1% uniform draws; with ~150
# sentences an update, buckets and a moving average measure every noise level within a few updates instead.
BUCKETS = 20  # 100 timesteps each at T = 2000: about 7 sentences a bucket in a 2,048-token batch at uniform
UNIFORM_SHARE = 0.1  # of the draws kept uniform: every bucket stays measured, and weights stay <= 1 / 0.1
DECAY = 0.95  # of the moving average, per update: a memory of about 20 updates


class LossAwareTimesteps:
    """Buckets of min_t * T .. T-1, their moving mean square loss, and draws of (t, weight) from them."""

    def __init__(self, low: int, timesteps: int, device: torch.device | str = "cpu"):
        if timesteps - low < BUCKETS:
            raise ValueError(f"loss-aware time sampling needs >= {BUCKETS} timesteps to draw from, not {timesteps - low}")
        self.edges = torch.linspace(low, timesteps, BUCKETS + 1, dtype=torch.float64).round().long().to(device)
        widths = (self.edges[1:] - self.edges[:-1]).double()
        self.uniform = widths / widths.sum()  # (BUCKETS,) what uniform sampling gives each bucket
        self.mean_square = torch.zeros(BUCKETS, dtype=torch.float64, device=device)  # 0: not measured yet

    def probabilities(self) -> torch.Tensor:
        """(BUCKETS,) float64: uniform until every bucket has been measured, then by root mean square loss."""
        rms = self.mean_square.sqrt()
        by_loss = (1 - UNIFORM_SHARE) * rms / rms.sum().clamp(min=1e-12) + UNIFORM_SHARE * self.uniform
        return torch.where((rms > 0).all(), by_loss, self.uniform)  # on the device: no synchronisation

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n timesteps (long) and their importance weights p_uniform / p (float32); E[weight] = 1."""
        p = self.probabilities()
        k = torch.multinomial(p, n, replacement=True)
        low, width = self.edges[k], self.edges[k + 1] - self.edges[k]
        t = low + (torch.rand(n, device=k.device, dtype=torch.float64) * width).long()
        return t, (self.uniform[k] / p[k]).float()

    def tally(self, t: torch.Tensor, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """The statistics `observe` takes from a batch: per bucket, the sum of squared per-sentence losses and
        the number of sentences (sums, so that averaging over batches and ranks keeps their ratio)."""
        hit = F.one_hot(torch.bucketize(t, self.edges[1:-1], right=True), BUCKETS).double()  # (B, BUCKETS)
        # a product, not index_add_: CUDA's atomic adds would change the last bits from run to run
        return {"time_sq": losses.detach().double().square() @ hit, "time_n": hit.sum(0)}

    def observe(self, time_sq: torch.Tensor, time_n: torch.Tensor) -> None:
        """Move each measured bucket's mean square towards this update's; a first measurement is taken as is."""
        seen = time_n > 0
        batch = time_sq.double() / time_n.double().clamp(min=1e-12)
        moved = torch.where(self.mean_square > 0, DECAY * self.mean_square + (1 - DECAY) * batch, batch)
        self.mean_square = torch.where(seen, moved, self.mean_square)

    def state(self) -> list[float]:
        """The history as JSON numbers for a checkpoint's state.json (float64 round-trips exactly)."""
        return self.mean_square.tolist()

    def load(self, state: list[float]) -> None:
        """The history `state` returned; ValueError when it is not BUCKETS non-negative numbers."""
        if not (isinstance(state, list) and len(state) == BUCKETS
                and all(isinstance(x, (int, float)) and x >= 0 for x in state)):
            raise ValueError(f"a loss history must be {BUCKETS} non-negative numbers")
        self.mean_square = torch.tensor(state, dtype=torch.float64, device=self.mean_square.device)
