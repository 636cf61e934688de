"""What a training run reports: log.jsonl (one JSON record per line), TensorBoard scalars and the progress
bar. Under torchrun only rank 0 writes; the others' RunLog does nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from difformer.errors import DifformerError
from difformer.files import write_atomic


class RunLog:
    def __init__(self, save_dir: Path, enabled: bool = True):
        self.path, self.enabled = save_dir / "log.jsonl", enabled
        self.last: dict = {}
        self._tb = None
        self._bar = None

    def write(self, update: int, epoch: int, record: dict) -> None:
        """Append one record to log.jsonl and its numbers to TensorBoard."""
        record = {"update": update, "epoch": epoch, **record}
        self.last = record
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise DifformerError(f"{self.path}: cannot write ({e.strerror or e}); the last checkpoint in "
                                 f"{self.path.parent / 'checkpoints'} is intact") from None
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path.parent / "tb"))
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("update", "epoch"):
                self._tb.add_scalar(k, v, update)
        self._tb.flush()

    def progress(self, total: int, initial: int) -> None:
        if self.enabled:
            self._bar = tqdm(total=total, initial=initial, desc="train", unit="upd", dynamic_ncols=True, disable=None)

    def advance(self, lr: float) -> None:
        """One update done; the bar shows the last logged loss and speed."""
        if self._bar is not None:
            self._bar.update(1)
            if "loss" in self.last:
                self._bar.set_postfix(loss=f"{self.last['loss']:.3f}", lr=f"{lr:.2e}",
                                      tok_s=f"{self.last.get('tokens_per_second', 0):.0f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def resume_at(self, update: int) -> None:
        """Keep the records of updates up to `update`, the checkpoint a resumed run continues from: a killed
        run may have logged updates (and a validation) after it, which the resumed run does again, and a
        half-written last line. Every update then has its records once, as in an uninterrupted run."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        # the last piece is "" after the final newline, or the line a kill cut short
        for line in self.path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
            try:
                if json.loads(line)["update"] <= update:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                raise DifformerError(f"{self.path}: a line is not a log record ({line[:60]!r}); move the "
                                     "file aside to resume") from None
        try:
            write_atomic(self.path, lambda p: p.write_text("".join(kept), encoding="utf-8"))
        except OSError as e:
            raise DifformerError(f"{self.path}: cannot write ({e.strerror or e}); the checkpoints are intact") from None


class Window:
    """Running means of the training statistics between two log lines (summed on the device, read once at
    the log line), and the tokens per second."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = self.tokens = 0
        self.start = time.monotonic()

    def add(self, stats: dict[str, torch.Tensor], tokens: int) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.n += 1
        self.tokens += tokens

    def flush(self, seconds: float) -> dict[str, float]:
        now = time.monotonic()
        means = (torch.stack(list(self.sums.values())) / max(self.n, 1)).tolist() if self.sums else []
        out = dict(zip(self.sums, means))
        out["tokens_per_second"] = self.tokens / max(now - self.start, 1e-9)
        out["seconds"] = seconds
        self.sums, self.n, self.tokens, self.start = {}, 0, 0, now
        return out
