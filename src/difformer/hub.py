"""Self-contained model directories: config.json, model.safetensors, tokenizer.model, dataset.json.

The tokenizer travels with the weights, so a model cannot be loaded with another vocabulary. Only JSON and
safetensors are ever read: loading a directory never runs code.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from difformer.config import Config, ModelConfig
from difformer.data.tokenizer import Tokenizer
from difformer.diffusion.schedule import Schedule
from difformer.errors import DifformerError
from difformer.files import fsync_path, install, write_atomic
from difformer.model.autoregressive import ARTransformer
from difformer.model.difformer import Difformer

CONFIG, WEIGHTS, TOKENIZER, DATASET = "config.json", "model.safetensors", "tokenizer.model", "dataset.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    write_atomic(path, lambda p: save_file(state, str(p)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DifformerError(f"{path}: not a readable safetensors file ({e})") from None


def build_model(cfg: ModelConfig) -> Difformer | ARTransformer:
    """The network that `model.arch` names: the model directory's config says which kind it holds."""
    return ARTransformer(cfg) if cfg.arch == "transformer" else Difformer(cfg)


def build_schedule(config: Config) -> Schedule | None:
    """A Difformer's noise schedule (None for an autoregressive model, which has none)."""
    if config.model.arch != "difformer":
        return None
    return Schedule(config.diffusion.schedule, config.diffusion.timesteps)


def same_tokenizer(a: str | Path, b: str | Path) -> bool:
    """Whether two sentencepiece model files are the same vocabulary, byte for byte: a teacher, a reranker or
    a warm start means something only with the ids of its own tokenizer."""
    return Path(a).read_bytes() == Path(b).read_bytes()


def check_prepared_with(data_dir: str | Path, tokenizer: str | Path) -> None:
    """Refuse prepared data whose ids come from another tokenizer than a model's `tokenizer`: decoded by
    the model they would be other words (or ids past its vocabulary)."""
    theirs = Path(data_dir) / TOKENIZER
    if not theirs.is_file() or not same_tokenizer(theirs, tokenizer):
        raise DifformerError(f"{data_dir}: prepared with another tokenizer than the model's {tokenizer} "
                             f"(prepare it with --tokenizer {tokenizer})")


def save_pretrained(model: torch.nn.Module, config: Config, tokenizer_path: Path, dataset_json: Path | None,
                    directory: Path) -> None:
    """Write a model directory; built beside the target and renamed so it is never half-written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        (tmp / CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER)
        if dataset_json is not None and Path(dataset_json).exists():
            shutil.copyfile(dataset_json, tmp / DATASET)
        for f in (*tmp.iterdir(), tmp):
            fsync_path(f)
        install(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(directory.parent)


def read_config(path: Path) -> Config:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DifformerError(f"{path}: not a readable JSON config ({e})") from None
    return Config.from_dict(raw, where=str(path))


def from_pretrained(directory: str | Path) -> tuple[Difformer | ARTransformer, Config, Tokenizer]:
    """Load (model in eval mode, config, tokenizer) from a model directory, checking everything first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DifformerError(f"{directory}: no such model directory")
    pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise DifformerError(f"{directory}: holds {pickles[0]}, a pickle-style file; difformer model "
                             "directories hold only JSON, safetensors and the tokenizer, and never unpickle")
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        if not (directory / name).is_file():
            raise DifformerError(f"{directory}: missing {name}; not a difformer model directory")
    config = read_config(directory / CONFIG)
    tokenizer = Tokenizer(directory / TOKENIZER)
    if config.model.vocab_size != tokenizer.vocab_size:
        raise DifformerError(f"{directory / CONFIG}: model.vocab_size {config.model.vocab_size} does not match "
                             f"the tokenizer's {tokenizer.vocab_size}")
    with torch.device("meta"):  # shapes only: a hostile config cannot make us allocate before the check
        expected = build_model(config.model).state_dict()
    check_header(directory / WEIGHTS, expected)
    model = build_model(config.model)
    load_state(model, load_weights(directory / WEIGHTS), directory / WEIGHTS)
    return model.eval(), config, tokenizer


def lowercased(directory: Path) -> bool:
    """Whether the model's data was lowercased by `prepare --lowercase` (its dataset.json says): its inputs
    must be too, or it meets cased words it never saw."""
    path = directory / DATASET
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("options", {}).get("lowercase", False))
    except (ValueError, AttributeError):
        raise DifformerError(f"{path}: not a dataset.json written by difformer prepare") from None


def init_from(model: torch.nn.Module, directory: str | Path, tokenizer: Path) -> tuple[list[str], list[str]]:
    """Copy into `model` every tensor of a model directory whose name and shape match; return the names
    copied and those left as initialised. A position table shorter than the directory's takes its first
    rows (position i means the same in both: a model for shorter inputs starts from a longer one's). From an
    autoregressive teacher into a Difformer with an E as wide as the teacher's table or narrower, the
    teacher's encoder input embedding is factored into E and enc_in (factor_embedding), so the copied encoder
    layers see the inputs they were trained on: exactly when E is as wide, as nearly as e dimensions allow
    when narrower. The directory's tokenizer must be
    `tokenizer`, byte for byte: an embedding row means a word only in its own vocabulary."""
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        if not (directory / name).is_file():
            raise DifformerError(f"train.init_from: {directory} has no {name}; not a difformer model directory")
    if not same_tokenizer(directory / TOKENIZER, tokenizer):
        raise DifformerError(f"train.init_from: {directory / TOKENIZER} differs from the data's tokenizer "
                             f"{tokenizer}; warm starts need the same vocabulary")
    theirs = read_config(directory / CONFIG).model
    # same names and shapes, another function: a LayerNorm before or after the sublayer, d split into other heads
    differ = [f"model.{k} {getattr(theirs, k)} (ours {getattr(model.cfg, k)})" for k in ("norm_first", "n_heads")
              if getattr(theirs, k) != getattr(model.cfg, k)]
    if differ:
        raise DifformerError(f"train.init_from: {directory / CONFIG} has {', '.join(differ)}: its layers would be "
                             "copied into layers that compute something else; train with the same values")
    source = load_weights(directory / WEIGHTS)
    own = model.state_dict()
    copied = [k for k, v in own.items() if k in source and source[k].shape == v.shape]
    shorter = [k for k, v in own.items() if k.endswith("_pos.weight") and k in source and k not in copied
               and source[k].shape[1:] == v.shape[1:] and source[k].shape[0] > v.shape[0]]
    with torch.no_grad():
        for k in copied:
            own[k].copy_(source[k])
        for k in shorter:
            own[k].copy_(source[k][:own[k].shape[0]])
        copied += shorter
        table = source.get("embed.weight")
        if (isinstance(model, Difformer) and table is not None
                and theirs.arch == "transformer"
                and table.shape == (model.embed.num_embeddings, model.enc_in.out_features)
                and model.embed.embedding_dim <= table.shape[1]):
            # the teacher feeds its encoder sqrt(d) * table[x]; ours enc_in(sqrt(e) * E[x]), e <= d; a table
            # copied by name (e == d) would leave enc_in random between them
            embed, weight = factor_embedding(table * table.shape[1] ** 0.5, model.embed.embedding_dim)
            model.embed.weight.copy_(embed / model.embed_scale)
            model.enc_in.weight.copy_(weight)
            model.enc_in.bias.zero_()
            copied += [k for k in ("embed.weight", "enc_in.weight", "enc_in.bias") if k not in copied]
    return copied, [k for k in own if k not in copied]


def factor_embedding(inputs: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a teacher's encoder inputs (V x d) as z @ W^T with z (V x width) and W (d x width): the best
    rank-`width` approximation (truncated SVD). z gets orthogonal columns at unit mean square, the statistics
    of a fresh sqrt(e) * E, so the isotropic diffusion noise meets every latent dimension at the same scale."""
    u, s, vh = torch.linalg.svd(inputs.double(), full_matrices=False)
    u, s, vh = u[:, :width], s[:width], vh[:width]
    scale = u.shape[0] ** 0.5  # u's columns are unit vectors: each entry has mean square 1 / V
    return (u * scale).to(inputs.dtype), (vh.t() * s / scale).to(inputs.dtype)


def check_header(path: Path, expected: dict[str, torch.Tensor]) -> None:
    """Compare the names, shapes and dtypes in a safetensors header with `expected`, reading no tensor data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DifformerError(f"{path}: not a readable safetensors file ({e})") from None
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise DifformerError(f"{path}: tensors do not match the config (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    for k, v in expected.items():
        shape, dtype = found[k]
        if shape != tuple(v.shape) or dtype != _SAFETENSORS_DTYPES.get(v.dtype):
            raise DifformerError(f"{path}: tensor {k} has shape {shape} {dtype}, the config needs "
                                 f"{tuple(v.shape)} {_SAFETENSORS_DTYPES.get(v.dtype, v.dtype)}")


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """load_state_dict with one clear error for a missing, extra or mis-shaped tensor."""
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise DifformerError(f"{where}: tensors do not match the config (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    for k, v in expected.items():
        if state[k].shape != v.shape or state[k].dtype != v.dtype:
            raise DifformerError(f"{where}: tensor {k} has shape {tuple(state[k].shape)} {state[k].dtype}, "
                                 f"the config needs {tuple(v.shape)} {v.dtype}")
    model.load_state_dict(state)
