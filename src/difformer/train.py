"""Training for both model kinds: the loop, validation, checkpoints and the run's end, on one process or as
one rank of a torchrun run (DistributedDataParallel, gloo on CPU, NCCL on CUDA).

The parts live beside it: step.py (the objective and one update's gradients), data/loader.py (batches of
this rank, collate, prefetch), runlog.py (log.jsonl, TensorBoard, progress), checkpoint.py (crash-safe
checkpoints, exact resume, averaging), distributed.py (ranks, and the one collective per update that
agrees on statistics and on stopping). Rank 0 alone validates, logs and writes files; the others wait.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from difformer import checkpoint, distributed, hub
from difformer.checkpoint import State
from difformer.config import Config, TrainConfig, lowest_t, save_config
from difformer.data.binarize import PairDataset
from difformer.data.loader import Loader, check_max_tokens, collate, epoch_batches
from difformer.data.tokenizer import Tokenizer
from difformer.diffusion.timesteps import LossAwareTimesteps
from difformer.errors import DifformerError
from difformer.files import write_atomic
from difformer.generate import decode_ids
from difformer.metrics import corpus_bleu, rouge
from difformer.precision import allow_tf32, autocast, resolve_precision
from difformer.runlog import RunLog, Window
from difformer.step import Objective, accumulate

__all__ = ["Trainer", "train", "learning_rate", "inverse_sqrt_lr", "collate", "epoch_batches"]


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


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, device: str = "auto", timeout_minutes: float = 30.0):
        self.cfg, t = cfg, cfg.train
        self.ranks, self.device = distributed.setup(device, timeout_minutes)
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
        self.valid_data = PairDataset(data, "valid") if _has_split(data, "valid") else None
        for split, split_data in (("train", self.train_data), ("valid", self.valid_data)):
            if split_data is not None:
                check_max_tokens(split_data, cfg, split)
        self.loader = Loader(self.train_data, cfg, self.tokenizer, self.device, self.ranks.rank, self.ranks.world_size)
        # `auto` is a timing made in each process: rank 0's choice holds for all
        self.precision = distributed.gather(resolve_precision(t.precision, self.device), self.ranks)[0]
        allow_tf32(self.device, self.precision)
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        self.model = hub.build_model(cfg.model).to(self.device)
        self.schedule = hub.build_schedule(cfg)
        d = cfg.diffusion
        self.timesteps = (LossAwareTimesteps(lowest_t(d.timesteps, d.min_t), d.timesteps, self.device)
                          if self.schedule is not None and d.time_sampling == "loss" else None)
        warm = None
        if t.init_from and not resume:  # on resume the checkpoint holds the weights
            warm = hub.init_from(self.model, t.init_from, data / "tokenizer.model")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=tuple(t.betas),
                                           weight_decay=t.weight_decay, fused=self.device.type == "cuda")
        self.state = State(world_size=self.ranks.world_size)
        self.stop_signal: str | None = None  # asked of this process
        self.stopped_by: str | None = None  # what stopped the run, on every rank: a signal's name
        self.log = RunLog(self.save_dir, enabled=self.ranks.main)
        self._prepare_save_dir(resume)
        distributed.barrier(self.ranks)
        if self.ranks.rank:  # each rank its own timesteps, noise and dropout; rank 0 that of one process
            torch.manual_seed(t.seed + self.ranks.rank)
        if resume:
            self._resume()
        self.saved_at = self.state.update  # the update of the newest checkpoint
        # a resume on the same kind of device continues in what `auto` chose first, not in what a timing on
        # a busier machine says now
        if t.precision == "auto" and self.state.precision.startswith(f"{self.device.type}:"):
            self.precision = self.state.precision.split(":")[1]
            allow_tf32(self.device, self.precision)
        self.state.precision = f"{self.device.type}:{self.precision}"
        self.objective: Objective | DistributedDataParallel = Objective(self.model, self.schedule, cfg,
                                                                        self.timesteps)
        if self.ranks.world_size > 1:
            self.objective = DistributedDataParallel(self.objective, device_ids=[self.device.index]
                                                     if self.device.type == "cuda" else None)
        self._log({"precision": self.precision, "device": str(self.device), "processes": self.ranks.world_size,
                   "parameters": sum(p.numel() for p in self.model.parameters())})
        if warm is not None:
            self._log({"init_from": t.init_from, "copied": len(warm[0]), "not_copied": warm[1]})
            if self.ranks.main:
                print(f"init_from {t.init_from}: copied {len(warm[0])} tensors, left {len(warm[1])} as "
                      "initialised", file=sys.stderr)

    def loss(self, src, src_mask, tgt, tgt_mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective of the model's kind for one batch: (loss, stats as device scalars)."""
        return Objective(self.model, self.schedule, self.cfg, self.timesteps)(src, src_mask, tgt, tgt_mask)

    def _prepare_save_dir(self, resume: bool) -> None:
        """Every rank checks (so that all fail alike); rank 0 alone writes: a new run's directory, or on resume
        the removal of what a killed run left half-written."""
        last = self.ckpt_dir / "last.json"
        if resume and not last.exists():
            raise DifformerError(f"{self.save_dir}: nothing to resume (no checkpoints/last.json: no checkpoint "
                                 "was written yet); start it again without --resume")
        if not resume and last.exists():
            raise DifformerError(f"{self.save_dir}: holds a run already; pass --resume to continue it "
                                 "or choose another train.save_dir")
        if not self.ranks.main:
            return
        if resume:
            checkpoint.remove_partial_writes(self.ckpt_dir)
            return
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            probe = self.save_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise DifformerError(f"{self.save_dir}: cannot write there ({e.strerror})") from None
        checkpoint.remove_partial_writes(self.ckpt_dir)  # of a run killed before its first checkpoint
        try:  # its log too: a new run's records must not follow a half line
            self.log.path.unlink(missing_ok=True)
        except OSError as e:
            raise DifformerError(f"{self.log.path}: cannot write ({e.strerror or e})") from None
        save_config(self.cfg, self.save_dir / "config.yaml")

    def _resume(self) -> None:
        """Every rank loads the checkpoint last.json names (and its own random state); then rank 0 records
        the resume, with the config it continues under (budgets may differ)."""
        name = checkpoint.read_last(self.ckpt_dir)
        self.state = checkpoint.load(self.ckpt_dir / name, self.model, self.optimizer, self.cfg, self.device,
                                     self.ranks.rank, self.ranks.world_size)
        if self.timesteps is not None:
            try:
                self.timesteps.load(self.state.time_mean_square)
            except ValueError as e:
                raise DifformerError(f"{self.ckpt_dir / name / 'state.json'}: damaged checkpoint ({e})") from None
        # a checkpoint older than the last (last.json pointed back at it after damage) may rank checkpoints
        # deleted since: the best are those still there
        self.state.best = [b for b in self.state.best if (self.ckpt_dir / b[1]).is_dir()]
        if self.ranks.main:
            self.log.resume_at(self.state.update)
            write_atomic(self.save_dir / "config.yaml", lambda p: save_config(self.cfg, p))
        self._log({"resumed_from": name})

    # ---- validation --------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Valid losses (fixed seed, so comparable across validations) and BLEU of a fast decode: 1x1 over
        the full schedule (no early stop) for a Difformer, greedy for an autoregressive model."""
        data, tok, cfg = self.valid_data, self.tokenizer, self.cfg
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        objective = Objective(self.model, self.schedule, cfg)
        # the training device's generator is forked too: manual_seed reseeds it, and without the fork every
        # validation would restart training's CUDA random stream from the same state
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)
            batches = epoch_batches(data, cfg, 0)
            for idx in batches:
                batch = [x.to(self.device) for x in collate(data, idx, tok, cfg.model.max_positions)]
                with autocast(self.precision, self.device):
                    _, stats = objective(*batch)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v.double()
        totals = dict(zip(sums, (torch.stack(list(sums.values())) / len(batches)).tolist()))  # one sync
        n = min(cfg.train.valid_bleu_sentences, len(data))
        limit = cfg.model.max_positions - 1
        sources = [data.src(i)[:limit].tolist() for i in range(n)]
        refs = tok.decode([data.tgt(i).tolist() for i in range(n)])
        # one candidate: nothing to select (a preset's selection "ar" has no reranker here)
        decode_cfg = dataclasses.replace(cfg.decode, length_beam=1, noise_beam=1, early_stop=0, beam=1,
                                         selection="score")
        hyps = decode_ids(self.model, self.schedule, tok, sources, decode_cfg, self.precision,
                          self_condition=cfg.diffusion.self_conditioned)
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

    def _validate_and_save(self, validate: bool = True) -> None:
        """Rank 0 validates and writes the checkpoint (with every rank's random state); the others wait."""
        rng = distributed.gather(checkpoint.rng_states(self.device, self.ranks.rank), self.ranks)
        self.saved_at = self.state.update
        if self.ranks.main:
            name = f"update_{self.state.update:07d}"
            if validate and self.valid_data is not None:
                stats = self.validate()
                self._log({**stats, "seconds": self.state.seconds})  # the training clock at this update
                self.state.best.append([self.selection_score(stats), name])
                self.state.best.sort(key=lambda b: -b[0])
                self.state.best = self.state.best[: self.cfg.train.keep_best]
            if self.timesteps is not None:  # the same on every rank: it learns from agreed statistics
                self.state.time_mean_square = self.timesteps.state()
            keep = {n for _, n in self.state.best[: self.cfg.train.keep_best]}
            checkpoint.save(self.ckpt_dir, name, self.model, self.optimizer, self.state, self.cfg, keep,
                            {k: v for r in rng for k, v in r.items()})
        distributed.barrier(self.ranks)

    # ---- the loop ----------------------------------------------------------------------------------

    def train(self) -> Path:
        """Train until max_updates or max_minutes (or SIGINT/SIGTERM on any rank); return the final model
        directory (or the checkpoint directory when stopped)."""
        t, st = self.cfg.train, self.state
        self.model.train()
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.log.progress(t.max_updates, st.update)
        clock, seconds0, window, self.saved_at = time.monotonic(), st.seconds, Window(), st.update
        try:
            while st.update < t.max_updates and not self._stopping() and not self._out_of_time():
                stats = self._update(window, lambda: seconds0 + time.monotonic() - clock)
                if stats is None:
                    continue
                self.log.advance(self.optimizer.param_groups[0]["lr"])
                if st.update % t.log_every == 0:
                    self._log({**window.flush(st.seconds), "lr": self.optimizer.param_groups[0]["lr"]})
                if st.update % t.validate_every == 0:
                    self._validate_and_save()
            if st.update != self.saved_at:
                self._validate_and_save()
            self._stopping()  # a signal in the last update or save still stops one process
        except RuntimeError as e:
            if distributed.is_comm_error(e, self.ranks):  # DDP's all-reduce inside backward
                raise distributed.lost(e, self.ranks) from e
            raise
        finally:
            self.log.close()
            self.loader.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.stopped_by is not None:
            if self.ranks.main:
                device = f" --device {self.device.type}" if self.device.type != "cpu" else ""
                launch = "difformer train"
                if self.ranks.world_size > 1:
                    per_node = os.environ.get("LOCAL_WORLD_SIZE", self.ranks.world_size)
                    launch = f"torchrun (as before) --nproc_per_node {per_node} -m difformer.cli train"
                print(f"stopped by {self.stopped_by} at update {st.update}; checkpoint saved. Continue with: "
                      f"{launch} {self.save_dir / 'config.yaml'} --resume{device}", file=sys.stderr)
            return self.ckpt_dir
        out = self.finish() if self.ranks.main else self.save_dir / "model"
        distributed.barrier(self.ranks)
        return out

    def release(self) -> None:
        """Drop the DDP wrapper, which holds the process group, before `distributed.teardown`: a group kept
        alive by a reference cycle is finalised with the interpreter, and gloo's threads finalised there can
        abort a finished rank (SIGABRT, "terminate called without an active exception")."""
        if self.ranks.world_size > 1:
            self.objective = None
            gc.collect()

    def _update(self, window: Window, clock) -> dict[str, torch.Tensor] | None:
        """One optimizer update over update_freq batches; None when skipped (a non-finite loss or gradient on
        any rank). `clock()`: this rank's training seconds so far. The one synchronisation per update reads the
        finite check, the clock and the stop flags, agreed by all ranks in one all-reduce with the
        statistics: the same learning rate, budget and stop on every rank."""
        t, st = self.cfg.train, self.state
        self.optimizer.zero_grad(set_to_none=True)
        batches, tokens = [], 0
        for _ in range(t.update_freq):
            batch, n = self.loader.next(st)
            batches.append(batch)
            tokens += n
        stats = accumulate(self.objective, batches, self.precision, self.device)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)  # the same on every rank
        flags = [self.stop_signal == "SIGINT", self.stop_signal == "SIGTERM"]
        stats, tokens, st.seconds, (sigint, sigterm) = distributed.agree(stats, tokens, clock(), flags, self.ranks)
        history = [stats.pop(k) for k in ("time_sq", "time_n")] if self.timesteps is not None else None
        if sigint or sigterm:
            self.stopped_by = "SIGTERM" if sigterm else "SIGINT"
        for g in self.optimizer.param_groups:
            g["lr"] = learning_rate(t, st.update + 1, st.seconds)
        finite = bool(torch.isfinite(stats["loss"] + gnorm))
        if not finite:
            st.bad_steps += 1
            self._log({"skipped_update": st.update + 1, "loss": float(stats["loss"]), "grad_norm": float(gnorm)})
            if st.bad_steps >= t.max_bad_updates:  # every rank at the same update: the statistics are agreed
                if st.update != self.saved_at:
                    self._validate_and_save(validate=False)  # the weights of the last good update
                raise DifformerError(f"{st.bad_steps} updates in a row had a non-finite loss or gradient; "
                                     f"stopped. The last good update's checkpoint is in {self.ckpt_dir}")
            return None
        self.optimizer.step()
        if history is not None:
            self.timesteps.observe(*history)
        st.update += 1
        st.bad_steps = 0
        st.tokens += tokens
        window.add({**stats, "grad_norm": gnorm.detach()}, tokens)
        return stats

    def _stopping(self) -> bool:
        """A signal stops one process after the update it came in; ranks stop at the update they agreed on."""
        if self.ranks.world_size == 1 and self.stop_signal is not None:
            self.stopped_by = self.stop_signal
        return self.stopped_by is not None

    def _out_of_time(self) -> bool:
        return self.cfg.train.max_minutes > 0 and self.state.seconds >= self.cfg.train.max_minutes * 60

    def _on_signal(self, signum, frame) -> None:
        """First SIGINT/SIGTERM: finish the update, save, stop (every rank, at the same update). A second
        one: stop now (KeyboardInterrupt); the previous checkpoint stays valid. os.write, not print: print
        can fail re-entering stderr."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name
        where = f" (rank {self.ranks.rank})" if self.ranks.world_size > 1 else ""
        os.write(2, f"{self.stop_signal}{where}: finishing this update, then saving a checkpoint "
                    "(send it again to stop at once, without saving)\n".encode())

    def _log(self, record: dict) -> None:
        self.log.write(self.state.update, self.state.epoch, record)

    def finish(self) -> Path:
        """Write save_dir/model: the average of the best k checkpoints by train.valid_metric, unless the best
        single checkpoint validates better (in a short run the early checkpoints drag the average down)."""
        names = [n for _, n in self.state.best[: self.cfg.train.keep_best]]
        if not names:
            names = [checkpoint.read_last(self.ckpt_dir)]
        chosen = {"model": names[0]}
        if len(names) > 1:
            self.model.load_state_dict(checkpoint.average(self.ckpt_dir, names))
            metric = self.cfg.train.valid_metric
            score, best = self.selection_score(self.validate()), self.state.best[0][0]
            shown = (lambda x: -x) if metric == "loss" else (lambda x: x)  # the loss as logged, lower is better
            chosen = {"model": f"average of {', '.join(names)}", f"valid_{metric}": shown(score)}
            if score < best:
                chosen = {"model": names[0], f"valid_{metric}": shown(best), f"average_valid_{metric}": shown(score)}
        if not chosen["model"].startswith("average"):
            self.model.load_state_dict(hub.load_weights(self.ckpt_dir / names[0] / hub.WEIGHTS))
        out = self.save_dir / "model"
        try:
            hub.save_pretrained(self.model, self.cfg, self.data_dir / "tokenizer.model",
                                self.data_dir / "dataset.json", out)
        except OSError as e:
            raise DifformerError(f"{out}: model directory not written ({e.strerror or e}); the checkpoints are "
                                 f"intact: free space, then run again with --resume to write it") from None
        self._log({"final": chosen, "directory": str(out)})
        return out


def _has_split(data: Path, split: str) -> bool:
    info = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    return split in info.get("splits", {}) and info["splits"][split].get("pairs", 0) > 0


def train(cfg: Config, resume: bool = False, device: str = "auto") -> Path:
    return Trainer(cfg, resume=resume, device=device).train()
