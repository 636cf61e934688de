"""Training input: each epoch's token batches (this process's share under torchrun), collated into padded
tensors on the training device; on CUDA in pinned memory, the next batch collated in a thread meanwhile.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from difformer.checkpoint import State
from difformer.config import Config
from difformer.data.batching import pad_batch, token_batches
from difformer.data.binarize import PairDataset
from difformer.data.tokenizer import Tokenizer
from difformer.errors import DifformerError


def collate(data: PairDataset, idx: list[int], tok: Tokenizer, max_len: int):
    """(src, src_mask, tgt, tgt_mask): source x EOS, target BOS y EOS, padded, cut to max_len positions."""
    srcs = [data.src(i)[: max_len - 1].tolist() + [tok.eos_id] for i in idx]
    tgts = [[tok.bos_id] + data.tgt(i)[: max_len - 2].tolist() + [tok.eos_id] for i in idx]
    return (*pad_batch(srcs, tok.pad_id), *pad_batch(tgts, tok.pad_id))


def pair_lengths(data: PairDataset, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Positions each pair takes in a batch, as `collate` builds it: cut to max_positions, specials added."""
    limit = cfg.model.max_positions
    return data.src_lens.clip(max=limit - 1) + 1, data.tgt_lens.clip(max=limit - 2) + 2  # + EOS; + BOS, EOS


def epoch_batches(data: PairDataset, cfg: Config, epoch: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    src_lens, tgt_lens = pair_lengths(data, cfg)
    return token_batches(src_lens, tgt_lens, cfg.train.max_tokens, seed=cfg.train.seed, epoch=epoch, rank=rank,
                         world_size=world_size)


def check_max_tokens(data: PairDataset, cfg: Config, split: str) -> None:
    """Fail at start, naming the split and the pair, when a pair fits in no batch (the valid split would
    otherwise fail only at the first validation, possibly hours in)."""
    longer = np.maximum(*pair_lengths(data, cfg))
    if len(longer) and longer.max() > cfg.train.max_tokens:
        i = int(np.argmax(longer > cfg.train.max_tokens))
        raise DifformerError(f"{split} pair {i} needs {longer[i]} tokens (BOS/EOS included), more than "
                             f"train.max_tokens {cfg.train.max_tokens}; set train.max_tokens={longer.max()} "
                             f"or more (or a smaller model.max_positions)")


class Loader:
    """This process's batches in order, epoch after epoch, from the position (epoch, batch) in a State."""

    def __init__(self, data: PairDataset, cfg: Config, tok: Tokenizer, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        self.data, self.cfg, self.tok, self.device = data, cfg, tok, device
        self.rank, self.world_size = rank, world_size
        self.target_lengths = pair_lengths(data, cfg)[1]  # per pair, BOS/EOS included: tokens/s
        self.batches: list[list[int]] = []
        self.epoch = -1
        self.pool = ThreadPoolExecutor(1) if device.type == "cuda" else None
        self.ahead: tuple[tuple[int, ...], Future] | None = None

    def next(self, st: State) -> tuple[list[torch.Tensor], int]:
        """The batch at st's position on the device and its target tokens; moves st to the next batch."""
        if self.epoch != st.epoch:
            self.epoch, self.batches = st.epoch, self._epoch(st.epoch)
        if st.batch >= len(self.batches):
            st.epoch, st.batch = st.epoch + 1, 0
            self.epoch, self.batches = st.epoch, self._epoch(st.epoch)
        idx = self.batches[st.batch]
        if self.ahead is not None and self.ahead[0] == tuple(idx):
            ready = self.ahead[1].result()
        else:
            ready = self._collate(idx)
        self.ahead = None
        st.batch += 1
        if self.pool is not None and st.batch < len(self.batches):
            following = self.batches[st.batch]
            self.ahead = (tuple(following), self.pool.submit(self._collate, following))
        return [x.to(self.device, non_blocking=True) for x in ready], int(self.target_lengths[idx].sum())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        self.ahead = None

    def _epoch(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.data, self.cfg, epoch, self.rank, self.world_size)

    def _collate(self, idx: list[int]) -> list[torch.Tensor]:
        """`collate`, in pinned memory on CUDA (so that the copy to the device need not wait)."""
        batch = collate(self.data, idx, self.tok, self.cfg.model.max_positions)
        return [x.pin_memory() for x in batch] if self.device.type == "cuda" else list(batch)
