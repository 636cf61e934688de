"""Data parallelism under torchrun: this process's rank, its process group and device, and the one
collective per update that makes all ranks agree on statistics and on when to stop.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the run is one
process and nothing here communicates. Gloo on CPU, NCCL on CUDA (each rank on the GPU of its LOCAL_RANK).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from difformer.errors import DifformerError
from difformer.precision import resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, logs and writes files."""
        return self.rank == 0


def from_env() -> Ranks:
    try:
        ranks = Ranks(*(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))))
    except ValueError:
        raise DifformerError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise DifformerError(f"RANK {ranks.rank} is not in [0, WORLD_SIZE {ranks.world_size})")
    return ranks


def setup(device: str, timeout_minutes: float) -> tuple[Ranks, torch.device]:
    """This process's ranks and training device; joins the process group when there are several. A
    collective waits at most `timeout_minutes` for the other ranks (rank 0 validates meanwhile)."""
    ranks, dev = from_env(), resolve_device(device)
    if ranks.world_size == 1:
        return ranks, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return ranks, dev


def agree(stats: dict[str, torch.Tensor], tokens: int, seconds: float, flags: list[bool], ranks: Ranks,
          ) -> tuple[dict[str, torch.Tensor], int, float, list[bool]]:
    """One all-reduce per update: the mean of each statistic and of the training clock over the ranks, the
    total tokens, and each flag set if any rank set it. With one clock, the learning rate and the budget
    are the same on every rank, and a signal to one rank stops all at the same update."""
    if ranks.world_size == 1:
        return stats, tokens, seconds, flags
    device = next(iter(stats.values())).device
    host = torch.tensor([tokens, seconds, *map(float, flags)], dtype=torch.float64)
    sizes = [v.numel() for v in stats.values()]  # scalars, and the per-bucket vectors of loss-aware timesteps
    vec = torch.cat([*(v.double().reshape(-1) for v in stats.values()), host.to(device)])
    all_reduce(vec, ranks)
    n = sum(sizes)
    parts = (vec[:n] / ranks.world_size).split(sizes)
    mean = {k: x.reshape(v.shape).to(v.dtype) for (k, v), x in zip(stats.items(), parts)}
    rest = vec[n:].tolist()
    return mean, int(rest[0]), rest[1] / ranks.world_size, [x > 0 for x in rest[2:]]


def all_reduce(tensor: torch.Tensor, ranks: Ranks) -> None:
    try:
        dist.all_reduce(tensor)
    except RuntimeError as e:
        if not is_comm_error(e, ranks):
            raise
        raise lost(e, ranks) from None


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (rank 0 validating or writing a checkpoint, say)."""
    if ranks.world_size > 1:
        try:
            dist.barrier()
        except RuntimeError as e:
            if not is_comm_error(e, ranks):
                raise
            raise lost(e, ranks) from None


def gather(obj, ranks: Ranks) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if ranks.world_size == 1:
        return [obj]
    out = [None] * ranks.world_size
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as e:
        if not is_comm_error(e, ranks):
            raise
        raise lost(e, ranks) from None
    return out


def is_comm_error(e: BaseException, ranks: Ranks) -> bool:
    """Whether a training error is a failed collective (gloo or NCCL), not the model's own (say, out of
    memory): only those mean that another rank is gone."""
    if ranks.world_size == 1:
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(w in text for w in ("Gloo", "gloo", "NCCL", "Connection closed by peer", "Connection reset by peer"))


def lost(e: BaseException, ranks: Ranks) -> DifformerError:
    """The error of a rank whose collective failed: another process of the run died or hung."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DifformerError(f"rank {ranks.rank}: lost the other processes of this run ({reason}); stopping. "
                          "Resume from the last checkpoint with --resume and the same number of processes")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
