"""Training loop for both model kinds: AdamW with warmup and a learning-rate schedule, token-count batches,
accumulation, validation by BLEU, checkpoints (best k + last, see checkpoint.py), exact resume, and averaging
of the best k at the end. The Difformer trains on difformer_loss, the autoregressive model on label-smoothed
CE. On CUDA the statistics stay on the device until a log line, and the next batch is collated meanwhile.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from difformer import checkpoint, hub
from difformer.checkpoint import State
from difformer.config import Config, TrainConfig, save_config
from difformer.data.batching import pad_batch, token_batches
from difformer.data.binarize import PairDataset
from difformer.data.tokenizer import Tokenizer
from difformer.diffusion.losses import difformer_loss
from difformer.errors import DifformerError
from difformer.generate import decode_ids
from difformer.metrics import corpus_bleu, rouge
from difformer.model.autoregressive import ar_loss
from difformer.precision import allow_tf32, autocast, resolve_device, resolve_precision


def collate(data: PairDataset, idx: list[int], tok: Tokenizer, max_len: int):
    """(src, src_mask, tgt, tgt_mask): source x EOS, target BOS y EOS, padded, cut to max_len positions."""
    srcs = [data.src(i)[: max_len - 1].tolist() + [tok.eos_id] for i in idx]
    tgts = [[tok.bos_id] + data.tgt(i)[: max_len - 2].tolist() + [tok.eos_id] for i in idx]
    return (*pad_batch(srcs, tok.pad_id), *pad_batch(tgts, tok.pad_id))


def inverse_sqrt_lr(update: int, lr: float, warmup: int) -> float:
    """Linear warmup to lr over `warmup` updates, then lr * sqrt(warmup / update)."""
    if warmup == 0:
        return lr
    u = max(update, 1)
    return lr * min(u / warmup, math.sqrt(warmup / u))


def learning_rate(t: TrainConfig, update: int, seconds: float) -> float:
    """train.lr_schedule at `update` (1-based) after `seconds` of training. The decaying ones are
    lr x min(1, update / warmup) x decay(progress), reaching 0 at the end of the budget; the progress is the
    larger of update / max_updates and seconds / max_minutes. A wall-clock budget makes the rate follow the
    clock, so two such runs (or a run and its resume) are not bit-identical, and a budget changed on
    --resume bends the decay from there."""
    if t.lr_schedule == "inverse_sqrt":
        return inverse_sqrt_lr(update, t.lr, t.warmup_updates)
    progress = update / t.max_updates
    if t.max_minutes > 0:
        progress = max(progress, seconds / (t.max_minutes * 60))
    progress = min(progress, 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if t.lr_schedule == "cosine" else 1.0 - progress
    warmup = min(1.0, update / t.warmup_updates) if t.warmup_updates else 1.0
    return t.lr * warmup * decay


def pair_lengths(data: PairDataset, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Positions each pair takes in a batch, as `collate` builds it: cut to max_positions, specials added."""
    limit = cfg.model.max_positions
    return data.src_lens.clip(max=limit - 1) + 1, data.tgt_lens.clip(max=limit - 2) + 2  # + EOS; + BOS, EOS


def epoch_batches(data: PairDataset, cfg: Config, epoch: int) -> list[list[int]]:
    src_lens, tgt_lens = pair_lengths(data, cfg)
    return token_batches(src_lens, tgt_lens, cfg.train.max_tokens, seed=cfg.train.seed, epoch=epoch)


def check_max_tokens(data: PairDataset, cfg: Config, split: str) -> None:
    """Fail at start, naming the split and the pair, when a pair fits in no batch (the valid split would
    otherwise fail only at the first validation, possibly hours in)."""
    longer = np.maximum(*pair_lengths(data, cfg))
    if len(longer) and longer.max() > cfg.train.max_tokens:
        i = int(np.argmax(longer > cfg.train.max_tokens))
        raise DifformerError(f"{split} pair {i} needs {longer[i]} tokens (BOS/EOS included), more than "
                             f"train.max_tokens {cfg.train.max_tokens}; set train.max_tokens={longer.max()} "
                             f"or more (or a smaller model.max_positions)")


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, device: str = "auto"):
        self.cfg, t = cfg, cfg.train
        self.device = resolve_device(device)
        self.save_dir = Path(t.save_dir)
        self.ckpt_dir = self.save_dir / "checkpoints"
        data = Path(t.data)
        if not (data / "dataset.json").is_file():
            raise DifformerError(f"{data}: no dataset.json; run `difformer prepare` first")
        self.data_dir = data
        self.tokenizer = Tokenizer(data / "tokenizer.model")
        cfg.model.vocab_size = self.tokenizer.vocab_size
        cfg.validate()
        self.train_data = PairDataset(data, "train")
        self.target_lengths = pair_lengths(self.train_data, cfg)[1]  # per pair, BOS/EOS included: tokens/s
        self.valid_data = PairDataset(data, "valid") if _has_split(data, "valid") else None
        for split, split_data in (("train", self.train_data), ("valid", self.valid_data)):
            if split_data is not None:
                check_max_tokens(split_data, cfg, split)
        self.precision = resolve_precision(t.precision, self.device)
        allow_tf32(self.device, self.precision)
        torch.manual_seed(t.seed)
        self.model = hub.build_model(cfg.model).to(self.device)
        self.schedule = hub.build_schedule(cfg)
        warm = None
        if t.init_from and not resume:  # on resume the checkpoint holds the weights
            warm = hub.init_from(self.model, t.init_from, data / "tokenizer.model")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=tuple(t.betas),
                                           weight_decay=t.weight_decay, fused=self.device.type == "cuda")
        self._prefetch: ThreadPoolExecutor | None = None  # on CUDA, while train() runs
        self._next: tuple[tuple[int, ...], Future] | None = None
        self.state = State()
        self.stop_signal: str | None = None
        self._last_log: dict = {}
        self._tb = None
        self._prepare_save_dir(resume)
        self._log({"precision": self.precision, "device": str(self.device),
                   "parameters": sum(p.numel() for p in self.model.parameters())})
        if warm is not None:
            self._log({"init_from": t.init_from, "copied": len(warm[0]), "not_copied": warm[1]})
            print(f"init_from {t.init_from}: copied {len(warm[0])} tensors, left {len(warm[1])} as initialised",
                  file=sys.stderr)

    def loss(self, src, src_mask, tgt, tgt_mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective of the model's kind for one batch: (loss, stats as device scalars)."""
        if self.schedule is None:
            return ar_loss(self.model, src, src_mask, tgt, tgt_mask, self.cfg.train.label_smoothing)
        return difformer_loss(self.model, self.schedule, self.cfg.diffusion, src, src_mask, tgt, tgt_mask)

    def _prepare_save_dir(self, resume: bool) -> None:
        last = self.ckpt_dir / "last.json"
        if resume and last.exists():
            checkpoint.remove_partial_writes(self.ckpt_dir)
            name = checkpoint.read_last(self.ckpt_dir)
            self.state = checkpoint.load(self.ckpt_dir / name, self.model, self.optimizer, self.cfg, self.device)
            _end_log_at_a_full_line(self.save_dir / "log.jsonl")
            hub.write_atomic(self.save_dir / "config.yaml", lambda p: save_config(self.cfg, p))  # budgets may differ
            self._log({"resumed_from": name})
            return
        if resume:
            raise DifformerError(f"{self.save_dir}: nothing to resume (no checkpoints/last.json: no checkpoint "
                                 "was written yet); start it again without --resume")
        if last.exists():
            raise DifformerError(f"{self.save_dir}: holds a run already; pass --resume to continue it "
                                 "or choose another train.save_dir")
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            probe = self.save_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise DifformerError(f"{self.save_dir}: cannot write there ({e.strerror})") from None
        checkpoint.remove_partial_writes(self.ckpt_dir)  # of a run killed before its first checkpoint
        save_config(self.cfg, self.save_dir / "config.yaml")

    # ---- validation --------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Valid losses (fixed seed, so comparable across validations) and BLEU of a fast decode: 1x1 over
        the full schedule (no early stop) for a Difformer, greedy for an autoregressive model."""
        data, tok, cfg = self.valid_data, self.tokenizer, self.cfg
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        # the training device's generator is forked too: manual_seed reseeds it, and without the fork every
        # validation would restart training's CUDA random stream from the same state
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)
            batches = epoch_batches(data, cfg, 0)
            for idx in batches:
                with autocast(self.precision, self.device):
                    _, stats = self.loss(*self._on_device(self._collate(data, idx)))
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v.double()
        totals = dict(zip(sums, (torch.stack(list(sums.values())) / len(batches)).tolist()))  # one sync
        n = min(cfg.train.valid_bleu_sentences, len(data))
        limit = cfg.model.max_positions - 1
        sources = [data.src(i)[:limit].tolist() for i in range(n)]
        refs = tok.decode([data.tgt(i).tolist() for i in range(n)])
        decode_cfg = dataclasses.replace(cfg.decode, length_beam=1, noise_beam=1, early_stop=0, beam=1)
        hyps = decode_ids(self.model, self.schedule, tok, sources, decode_cfg, self.precision)
        totals["bleu"] = corpus_bleu(hyps, refs).score
        if cfg.train.valid_metric == "rouge":
            totals.update({k: s.score for k, s in rouge(hyps, refs).items()})
        self.model.train()
        return {f"valid_{k}": v for k, v in totals.items()}

    def selection_score(self, stats: dict[str, float]) -> float:
        """train.valid_metric of a validation, higher is better: what ranks checkpoints."""
        metric = self.cfg.train.valid_metric
        if metric == "loss":
            return -stats["valid_loss"]
        return stats["valid_rougeL" if metric == "rouge" else "valid_bleu"]

    def _validate_and_save(self) -> None:
        name = f"update_{self.state.update:07d}"
        if self.valid_data is not None:
            stats = self.validate()
            self._log(stats)
            self.state.best.append([self.selection_score(stats), name])
            self.state.best.sort(key=lambda b: -b[0])
            self.state.best = self.state.best[: self.cfg.train.keep_best]
        keep = {n for _, n in self.state.best[: self.cfg.train.keep_best]}
        checkpoint.save(self.ckpt_dir, name, self.model, self.optimizer, self.state, self.cfg, keep, self.device)

    # ---- the loop ----------------------------------------------------------------------------------

    def train(self) -> Path:
        """Train until max_updates or max_minutes (or SIGINT/SIGTERM); return the final model directory."""
        t, st = self.cfg.train, self.state
        self.model.train()
        batches = epoch_batches(self.train_data, self.cfg, st.epoch)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=t.max_updates, initial=st.update, desc="train", unit="upd", dynamic_ncols=True,
                   disable=None)
        clock, seconds0, window = time.monotonic(), st.seconds, _Window()
        saved_at = st.update
        self._prefetch = ThreadPoolExecutor(1) if self.device.type == "cuda" else None
        try:
            while st.update < t.max_updates and not self._out_of_time() and self.stop_signal is None:
                stats, batches = self._update(batches, window)
                st.seconds = seconds0 + time.monotonic() - clock
                if stats is None:
                    continue
                bar.update(1)
                if st.update % t.log_every == 0:
                    self._log({**window.flush(st.seconds), "lr": self.optimizer.param_groups[0]["lr"]})
                    bar.set_postfix(loss=f"{self._last_log['loss']:.3f}",
                                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                    tok_s=f"{self._last_log.get('tokens_per_second', 0):.0f}")
                if st.update % t.validate_every == 0:
                    self._validate_and_save()
                    saved_at = st.update
            if st.update != saved_at:
                self._validate_and_save()
        finally:
            bar.close()
            if self._prefetch is not None:
                self._prefetch.shutdown(cancel_futures=True)
                self._prefetch = self._next = None
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.stop_signal is not None:
            device = f" --device {self.device}" if self.device.type != "cpu" else ""
            print(f"stopped by {self.stop_signal} at update {st.update}; checkpoint saved. Continue with: "
                  f"difformer train {self.save_dir / 'config.yaml'} --resume{device}", file=sys.stderr)
            return self.ckpt_dir
        return self.finish()

    def _collate(self, data: PairDataset, idx: list[int]) -> list[torch.Tensor]:
        """`collate`, in pinned memory on CUDA (so that the copy to the device need not wait)."""
        batch = collate(data, idx, self.tokenizer, self.cfg.model.max_positions)
        return [x.pin_memory() for x in batch] if self.device.type == "cuda" else list(batch)

    def _on_device(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x.to(self.device, non_blocking=True) for x in batch]

    def _batch(self, batches: list[list[int]], i: int) -> list[torch.Tensor]:
        """Batch i of the epoch on the device; on CUDA the next one is collated meanwhile, in a thread."""
        key = tuple(batches[i])
        if self._next is not None and self._next[0] == key:
            ready = self._next[1].result()
        else:
            ready = self._collate(self.train_data, batches[i])
        self._next = None
        if self._prefetch is not None and i + 1 < len(batches):
            self._next = (tuple(batches[i + 1]), self._prefetch.submit(self._collate, self.train_data, batches[i + 1]))
        return self._on_device(ready)

    def _update(self, batches: list[list[int]], window: "_Window"):
        """One optimizer update over update_freq batches; returns (stats or None if skipped, batches).

        The stats stay on the device; the one synchronisation per update is the finite check that decides
        whether the optimizer may step.
        """
        t, st = self.cfg.train, self.state
        self.optimizer.zero_grad(set_to_none=True)
        stats: dict[str, torch.Tensor] = {}
        tokens = 0
        for _ in range(t.update_freq):
            if st.batch >= len(batches):
                st.epoch, st.batch = st.epoch + 1, 0
                batches = epoch_batches(self.train_data, self.cfg, st.epoch)
            src, src_mask, tgt, tgt_mask = self._batch(batches, st.batch)
            tokens += int(self.target_lengths[batches[st.batch]].sum())
            st.batch += 1
            with autocast(self.precision, self.device):
                loss, s = self.loss(src, src_mask, tgt, tgt_mask)
            (loss / t.update_freq).backward()
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / t.update_freq
        for g in self.optimizer.param_groups:
            g["lr"] = learning_rate(t, st.update + 1, st.seconds)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)
        if not bool(torch.isfinite(stats["loss"] + gnorm)):
            st.bad_steps += 1
            self._log({"skipped_update": st.update + 1, "loss": float(stats["loss"]), "grad_norm": float(gnorm)})
            if st.bad_steps >= t.max_bad_updates:
                raise DifformerError(f"{st.bad_steps} updates in a row had a non-finite loss or gradient; "
                                     f"stopped. The last good checkpoint is in {self.ckpt_dir}")
            return None, batches
        self.optimizer.step()
        st.update += 1
        st.bad_steps = 0
        st.tokens += tokens
        window.add({**stats, "grad_norm": gnorm.detach()}, tokens)
        return stats, batches

    def _out_of_time(self) -> bool:
        return self.cfg.train.max_minutes > 0 and self.state.seconds >= self.cfg.train.max_minutes * 60

    def _on_signal(self, signum, frame) -> None:
        """First SIGINT/SIGTERM: finish the update, save, stop. A second one: stop now (KeyboardInterrupt);
        the previous checkpoint stays valid. os.write, not print: print can fail re-entering stderr."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name
        os.write(2, f"{self.stop_signal}: finishing this update, then saving a checkpoint "
                    "(send it again to stop at once, without saving)\n".encode())

    def _log(self, record: dict) -> None:
        """Append to log.jsonl and TensorBoard."""
        record = {"update": self.state.update, "epoch": self.state.epoch, **record}
        self._last_log = record
        try:
            with open(self.save_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise DifformerError(f"{self.save_dir / 'log.jsonl'}: cannot write ({e.strerror or e}); the last "
                                 f"checkpoint in {self.ckpt_dir} is intact") from None
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.save_dir / "tb"))
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("update", "epoch"):
                self._tb.add_scalar(k, v, self.state.update)
        self._tb.flush()

    def finish(self) -> Path:
        """Write save_dir/model: the average of the best k checkpoints by train.valid_metric, unless the best
        single checkpoint validates better (in a short run the early checkpoints drag the average down)."""
        names = [n for _, n in self.state.best[: self.cfg.train.keep_best]]
        if not names:
            names = [checkpoint.read_last(self.ckpt_dir)]
        states = [hub.load_weights(self.ckpt_dir / n / hub.WEIGHTS) for n in names]
        chosen = {"model": names[0]}
        if len(states) > 1:
            averaged = {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                        for k in states[0]}
            self.model.load_state_dict(averaged)
            metric = self.cfg.train.valid_metric
            score, best = self.selection_score(self.validate()), self.state.best[0][0]
            shown = (lambda x: -x) if metric == "loss" else (lambda x: x)  # the loss as logged, lower is better
            chosen = {"model": f"average of {', '.join(names)}", f"valid_{metric}": shown(score)}
            if score < best:
                chosen = {"model": names[0], f"valid_{metric}": shown(best), f"average_valid_{metric}": shown(score)}
        if not chosen["model"].startswith("average"):
            self.model.load_state_dict(states[0])
        out = self.save_dir / "model"
        try:
            hub.save_pretrained(self.model, self.cfg, self.data_dir / "tokenizer.model",
                                self.data_dir / "dataset.json", out)
        except OSError as e:
            raise DifformerError(f"{out}: model directory not written ({e.strerror or e}); the checkpoints are "
                                 f"intact: free space, then run again with --resume to write it") from None
        self._log({"final": chosen, "directory": str(out)})
        return out


class _Window:
    """Running means of the training stats between two log lines (summed on the device, read at the log
    line), and the tokens per second."""

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
        out = dict(zip(self.sums, means))  # one synchronisation per log line
        out["tokens_per_second"] = self.tokens / max(now - self.start, 1e-9)
        out["seconds"] = seconds
        self.sums, self.n, self.tokens, self.start = {}, 0, 0, now
        return out


def _end_log_at_a_full_line(log: Path) -> None:
    """Cut a line a killed run left half-written at the end of log.jsonl, so every line stays JSON."""
    if not log.is_file() or log.stat().st_size == 0:
        return
    with open(log, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            f.truncate(size - len(tail) + cut + 1 if cut >= 0 or size <= len(tail) else size)


def _has_split(data: Path, split: str) -> bool:
    info = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    return split in info.get("splits", {}) and info["splits"][split].get("pairs", 0) > 0


def train(cfg: Config, resume: bool = False, device: str = "auto") -> Path:
    return Trainer(cfg, resume=resume, device=device).train()
