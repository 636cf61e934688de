"""Training checkpoints: crash-safe writes, exact resume, and one clear error for any damage.

checkpoints/update_N/ holds model.safetensors, trainer.safetensors (optimizer moments and every rank's
torch RNG states: the CPU's, and the training GPU's on CUDA) and state.json (the State below, the
optimizer's param groups and the config); checkpoints/last.json names the newest complete one. Batches are
a function of (seed, epoch, rank, world size), so they are not saved. At the end of a run the best
checkpoints are averaged (`average`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difformer import hub
from difformer.config import Config, config_diff
from difformer.errors import DifformerError
from difformer.files import fsync_path, write_json

# may differ on --resume: budgets, and the run's own directory (a run may be moved, e.g. to a larger disk)
RESUMABLE_CHANGES = {"train.max_updates", "train.max_minutes", "train.max_bad_updates", "train.save_dir"}


@dataclass
class State:
    """The part of a run that is not tensors; saved as state.json in every checkpoint."""
    update: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    seconds: float = 0.0  # training wall-clock so far, over all resumes
    tokens: int = 0  # target tokens seen
    best: list[list] = field(default_factory=list)  # [bleu, checkpoint name], best first
    bad_steps: int = 0
    world_size: int = 1  # processes that trained it: a resume must have as many (the data and RNG are theirs)
    time_mean_square: list[float] = field(default_factory=list)  # loss-aware timesteps' history (uniform: [])
    precision: str = ""  # device type and what train.precision resolved to there ("cpu:bf16"); "" if unknown


def rng_states(device: torch.device, rank: int = 0) -> dict[str, torch.Tensor]:
    """This process's random state under the names `save` writes ("rng", "rng_cuda"; ".R" after them for
    rank R > 0): the CPU generator, and on CUDA the training GPU's, where timesteps, noise and dropout masks
    are drawn."""
    suffix = f".{rank}" if rank else ""
    out = {f"rng{suffix}": torch.get_rng_state()}
    if device.type == "cuda":
        out[f"rng_cuda{suffix}"] = torch.cuda.get_rng_state(device)
    return out


def average(ckpt_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the named checkpoints' weights (computed in float32, stored as saved)."""
    states = [hub.load_weights(ckpt_dir / n / hub.WEIGHTS) for n in names]
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


def save(ckpt_dir: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: State,
         cfg: Config, keep: set[str], rng: dict[str, torch.Tensor] | None = None) -> None:
    """Write ckpt_dir/NAME/ (built aside, renamed), point last.json at it atomically, then delete the
    update_* checkpoints not in `keep`.

    Order matters for a crash at any instant: files are fsynced before the directory is renamed, the
    rename is made durable (directory fsync) before last.json names it, and older checkpoints are
    deleted only after last.json has moved on. So last.json always names a complete checkpoint.
    """
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        hub.save_weights(model.state_dict(), tmp / hub.WEIGHTS)
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        tensors.update(rng if rng is not None else rng_states(torch.device("cpu")))
        hub.save_weights(tensors, tmp / "trainer.safetensors")
        write_json(tmp / "state.json", {"state": state.__dict__, "param_groups": groups,
                                        "config": cfg.to_dict()})
        fsync_path(tmp)
        shutil.rmtree(final, ignore_errors=True)  # never the one last.json names: that is an older update
        tmp.rename(final)
        fsync_path(ckpt_dir)
        write_json(ckpt_dir / "last.json", {"checkpoint": name, "update": state.update})
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = read_last(ckpt_dir) if (ckpt_dir / "last.json").exists() else None
        kept = (f"the previous checkpoint, {previous}, is intact in checkpoints/last.json" if previous
                else "no checkpoint of this run was written yet")
        raise DifformerError(f"{final}: checkpoint not written ({e.strerror or e}); {kept}") from None
    for old in ckpt_dir.glob("update_*"):
        if old.name not in keep | {name}:
            shutil.rmtree(old, ignore_errors=True)


def read_last(ckpt_dir: Path) -> str:
    """The checkpoint name in last.json, checked to be a plain name inside checkpoints/."""
    last = ckpt_dir / "last.json"
    try:
        name = json.loads(last.read_text(encoding="utf-8"))["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DifformerError(f"{last}: unreadable ({type(e).__name__}: {e}); {_earlier(ckpt_dir)}") from None
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise DifformerError(f"{last}: names {name!r}, not a checkpoint directory; {_earlier(ckpt_dir)}")
    return name


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config,
         device: torch.device = torch.device("cpu"), rank: int = 0, world_size: int = 1) -> State:
    """Restore weights, optimizer and this rank's RNG in place and return the state; any damage is reported
    as one error naming the file and the other checkpoints there are to resume from. A run moved between
    CPU and CUDA resumes, but not exactly: the other device's random stream is not there to restore. A run
    resumes with the number of processes that wrote the checkpoint, or not at all."""
    hint = _earlier(path.parent, path.name)
    if not path.is_dir():
        raise DifformerError(f"{path}: checkpoint named by last.json is missing; {hint}")
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        saved = Config.from_dict(meta["config"], where=str(path / "state.json"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DifformerError(f"{path / 'state.json'}: damaged checkpoint ({type(e).__name__}: {e}); "
                             f"{hint}") from None
    diff = config_diff(saved.to_dict(), cfg.to_dict(), ignore=RESUMABLE_CHANGES)
    if diff:
        raise DifformerError(f"{path}: resuming with a different config; differing keys: {', '.join(diff)}")
    written_by = meta.get("state", {}).get("world_size", 1) if isinstance(meta.get("state"), dict) else 1
    if written_by != world_size:
        raise DifformerError(f"{path}: written by {written_by} process(es), resumed with {world_size}; resume with "
                             f"{written_by} (torchrun --nproc_per_node ...): the data position and the random "
                             "streams belong to that many ranks")
    try:
        hub.load_state(model, hub.load_weights(path / hub.WEIGHTS), path / hub.WEIGHTS)
        tensors = hub.load_weights(path / "trainer.safetensors")
        suffix = f".{rank}" if rank else ""
        torch.set_rng_state(tensors[f"rng{suffix}"])
        cuda_rng = tensors.get(f"rng_cuda{suffix}")
        if cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, device)
        tensors = {k: v for k, v in tensors.items() if not k.startswith("rng")}
        for group in meta["param_groups"]:  # this run's kernel (fused on CUDA), not the saved one; set before
            # loading, which places Adam's step counters for the kernel the groups name
            group.update({k: optimizer.defaults[k] for k in ("fused", "foreach") if k in optimizer.defaults})
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["param_groups"]))
        _check_optimizer_shapes(optimizer)
        state = State(**meta["state"])
        if not all(isinstance(v, int) and v >= 0 for v in (state.update, state.epoch, state.batch)):
            raise ValueError("update, epoch and batch must be non-negative integers")
    except DifformerError as e:
        raise DifformerError(f"damaged checkpoint: {e}; {hint}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise DifformerError(f"{path}: damaged checkpoint ({type(e).__name__}: {e}); {hint}") from None
    return state


def remove_partial_writes(ckpt_dir: Path) -> None:
    """Delete what a killed run left half-written: .NAME.tmp directories and .last.json.*.tmp files."""
    for p in ckpt_dir.glob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _earlier(ckpt_dir: Path, damaged: str | None = None) -> str:
    """What to do when the checkpoint to resume from is damaged: the names of the others."""
    others = sorted(p.name for p in ckpt_dir.glob("update_*") if p.name != damaged)
    if not others:
        return "no other checkpoint is left; start the run again in a new train.save_dir"
    return (f"to resume from another checkpoint, write its name into checkpoints/last.json "
            f"(present: {', '.join(others)})")


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict does not compare moment shapes with the parameters; a mismatch would fail later."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if k != "step" and v.shape != p.shape:
                    raise ValueError(f"optimizer {k} has shape {tuple(v.shape)}, its parameter {tuple(p.shape)}")


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {f"{i}.{k}": torch.as_tensor(v) for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    for g in groups:
        g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
