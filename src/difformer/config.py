"""Configuration: dataclasses for the model, the diffusion, training and decoding; YAML in and out.

A config is validated when it is built, so a bad value fails at load with one clear message instead of
an hour into training. `key=value` overrides use dotted names: `train.lr=1e-3`, `model.d_model=256`.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from difformer.errors import DifformerError

PRESETS = Path(__file__).parent / "configs"


def lowest_t(timesteps: int, min_t: float) -> int:
    """The cleanest step of a T-step schedule at or above min_t T: where training's draws of t and the
    sampler's steps end."""
    return round(min_t * timesteps)


def check_steps(steps: int, timesteps: int, min_t: float) -> None:
    """K sampling steps are K distinct timesteps from T-1 down to min_t T: no more than there are."""
    lowest = lowest_t(timesteps, min_t)
    _check(steps <= timesteps - lowest, f"decode.steps ({steps}) must be <= {timesteps - lowest}, the diffusion "
           f"timesteps from T-1 down to decode.min_t T = {lowest}")


@dataclass
class ModelConfig:
    # "difformer": the embedding diffusion model; "transformer": the autoregressive teacher and baseline
    # (model/autoregressive.py), which uses only the sizes, dropout, max_positions and norm_first below.
    arch: str = "difformer"
    vocab_size: int = 0  # set from the tokenizer by `train`; a model directory always has it
    embed_dim: int = 128  # e: the latent (embedding) size that diffusion runs in
    d_model: int = 512
    n_heads: int = 8
    ffn_dim: int = 2048
    enc_layers: int = 6
    dec_layers: int = 6
    dropout: float = 0.1
    max_positions: int = 256  # positions per side, BOS/EOS included
    norm_first: bool = False  # False: post-LN as in the reference; True: pre-LN
    embed_norm: str = "input"  # "input" (LayerNorm on the decoder input), "before_noise", "none"
    length_classes: int = 256  # classes of tgt_len - src_len + length_classes // 2 (or of tgt_len)
    # True: predict the target length as an offset from the source length, as NAT translation models do;
    # False: predict it outright, for tasks whose output length does not follow the input (summaries).
    length_offset: bool = True
    # std of E at init. None: 1/sqrt(e), so z0 = sqrt(e) E[y] starts at unit variance per dimension, the
    # scale the noise assumes. The reference's BERT init (0.02) starts z0 tiny, and Adam can then collapse
    # E onto the decoder output before the anchor loss separates the words: see the quickstart notes.
    embed_init_std: float | None = None
    # DiffuSeq-v2's soft absorbing state, lambda: in training each target position of z_t is replaced by a
    # learned embedding (the model's `absorb`) with probability lambda * sqrt(1 - abar_t), a discrete noise
    # beside the Gaussian one; 0: off (and no `absorb` parameter, so older model directories load as before)
    soft_absorb: float = 0.0

    def validate(self) -> None:
        _check(self.arch in ("difformer", "transformer"),
               f"model.arch must be difformer or transformer, not {self.arch!r}")
        _check(self.embed_norm in ("input", "before_noise", "none"),
               f"model.embed_norm must be input, before_noise or none, not {self.embed_norm!r}")
        for name in ("embed_dim", "d_model", "n_heads", "ffn_dim", "enc_layers", "dec_layers",
                     "max_positions", "length_classes"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive")
        _check(self.d_model % self.n_heads == 0,  # after the positivity checks: n_heads may be 0
               f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        _check(self.vocab_size >= 0, "model.vocab_size must be >= 0")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(self.embed_init_std is None or self.embed_init_std > 0, "model.embed_init_std must be positive")
        _check(0.0 <= self.soft_absorb <= 1.0, "model.soft_absorb is a probability scale in [0, 1]")
        _check(self.soft_absorb == 0.0 or self.arch == "difformer", "model.soft_absorb is for arch difformer only")


@dataclass
class DiffusionConfig:
    schedule: str = "sqrt"  # "sqrt" (Diffusion-LM), "linear", "cosine"
    timesteps: int = 2000  # T
    noise_factor: float = 4.0  # F, training only
    noise_mode: str = "scale"  # "scale": F multiplies the noise; "vp": same SNR, variance preserving
    anchor: str = "anchor"  # "anchor" (CE on predicted z0), "rounding" (CE on clean z0), "none"
    label_smoothing: float = 0.1
    length_weight: float = 0.1
    self_cond: float = 0.5  # probability of a self-conditioning pass in training; 0 turns it off
    # "uniform" over min_t * T .. T-1, or "loss": importance sampling by the recent loss (diffusion/timesteps.py)
    time_sampling: str = "uniform"
    # DINOISER's clipping of the smallest noise levels: training draws no t below min_t * T (0: none); they
    # are nearly clean, so the denoiser learns little from them
    min_t: float = 0.0

    @property
    def self_conditioned(self) -> bool:
        """Whether the network learnt to read its previous z0 prediction p (sampling feeds it only then)."""
        return self.self_cond > 0

    def validate(self) -> None:
        _check(self.schedule in ("sqrt", "linear", "cosine"),
               f"diffusion.schedule must be sqrt, linear or cosine, not {self.schedule!r}")
        _check(self.noise_mode in ("scale", "vp"), "diffusion.noise_mode must be scale or vp")
        _check(self.anchor in ("anchor", "rounding", "none"),
               "diffusion.anchor must be anchor, rounding or none")
        _check(self.timesteps >= 2, "diffusion.timesteps must be >= 2")
        _check(self.noise_factor >= 1.0, "diffusion.noise_factor must be >= 1")
        _check(0.0 <= self.self_cond <= 1.0, "diffusion.self_cond is a probability in [0, 1]")
        _check(0.0 <= self.label_smoothing < 1.0, "diffusion.label_smoothing must be in [0, 1)")
        _check(self.time_sampling in ("uniform", "loss"), "diffusion.time_sampling must be uniform or loss")
        _check(0.0 <= self.min_t < 1.0, "diffusion.min_t is a fraction of the timesteps in [0, 1)")
        if self.time_sampling == "loss":
            from difformer.diffusion.timesteps import BUCKETS  # torch: imported only when it is used

            _check(self.timesteps - lowest_t(self.timesteps, self.min_t) >= BUCKETS,
                   f"diffusion.time_sampling loss needs >= {BUCKETS} timesteps from min_t x timesteps to T")


@dataclass
class TrainConfig:
    data: str = ""  # a directory written by `difformer prepare`
    save_dir: str = ""
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_updates: int = 10000
    # with the linear warmup: "inverse_sqrt" (then lr * sqrt(warmup / update), open-ended), or a "cosine" /
    # "linear" decay to 0 at the end of the budget (max_updates or max_minutes, whichever comes first)
    lr_schedule: str = "inverse_sqrt"
    clip_norm: float = 1.0
    max_tokens: int = 8000  # per batch, padded tokens of the longer side
    update_freq: int = 1  # gradient accumulation: batches per update
    max_updates: int = 300000
    max_minutes: float = 0.0  # wall-clock budget; 0 means none
    validate_every: int = 1000  # updates between validations and checkpoints
    valid_bleu_sentences: int = 200  # valid sentences decoded for BLEU (and ROUGE) at each validation
    # what chooses the best checkpoints and the final model: "bleu" (translation), "rouge" (ROUGE-L F1, for
    # summaries: BLEU is about 0 on 4-word subjects) or "loss" (the validation loss, lower is better)
    valid_metric: str = "bleu"
    keep_best: int = 5  # checkpoints kept and averaged by valid_metric
    log_every: int = 50
    seed: int = 1
    precision: str = "auto"  # "auto", "fp32" or "bf16"
    max_bad_updates: int = 10  # updates in a row with a non-finite loss or gradient before training stops
    label_smoothing: float = 0.1  # of the autoregressive model's cross-entropy (the anchor loss: diffusion.*)
    # a model directory whose tensors of the same name and shape initialise this model (a Difformer's
    # encoder from the autoregressive teacher, say); same tokenizer required
    init_from: str = ""

    def validate(self) -> None:
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision must be auto, fp32 or bf16")
        for name in ("max_tokens", "update_freq", "max_updates", "validate_every", "keep_best", "log_every",
                     "max_bad_updates"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive")
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.warmup_updates >= 0 and self.max_minutes >= 0, "train budgets must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas: two values in [0, 1)")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)")
        _check(self.valid_metric in ("bleu", "rouge", "loss"), "train.valid_metric must be bleu, rouge or loss")
        _check(self.lr_schedule in ("inverse_sqrt", "cosine", "linear"),
               "train.lr_schedule must be inverse_sqrt, cosine or linear")


@dataclass
class DecodeConfig:
    steps: int = 20  # K sampling steps spread over the T-step schedule
    early_stop: int = 0  # stop after this many steps and output that step's z0 prediction; 0: off
    # the cleanest step visited, as a fraction of T: the K steps are spread over [T-1, min_t T]; a model
    # trained with diffusion.min_t never saw a t below its min_t, where the default 0 ends
    min_t: float = 0.0
    length_beam: int = 1
    noise_beam: int = 1
    sampler: str = "ddpm"  # "ddpm" (ancestral) or "ddim" (deterministic)
    clamp: bool = False  # each step continues from the embeddings of z0_hat's argmax tokens (not the output)
    # DINOISER's condition-enhanced decoding: the network is told t = T-1 at every step (the noisiest, where
    # it must lean on the source) while the sampler walks the schedule as usual
    cond_enhance: bool = False
    # "score" (model's mean token log-prob), "mbr" (BLEU-MBR) or "ar" (an autoregressive reranker's
    # length-normalised log-probability: Pipeline.reranker, `generate --reranker DIR`)
    selection: str = "score"
    seed: int = 0
    max_tokens: int = 16000  # decoding batch size in target tokens, candidates included
    # autoregressive models (arch transformer) only
    beam: int = 4  # 1: greedy
    lenpen: float = 1.0  # hypotheses ranked by log-prob / length ** lenpen, as fairseq (also the reranker's)
    max_len_a: float = 1.2  # at most max_len_a * source length + max_len_b tokens (EOS included)
    max_len_b: int = 10

    def validate(self) -> None:
        _check(self.steps >= 1, "decode.steps must be >= 1")
        _check(0 <= self.early_stop <= self.steps, "decode.early_stop must be in [0, steps]")
        _check(0 <= self.min_t < 1, "decode.min_t must be in [0, 1)")
        _check(self.length_beam >= 1 and self.noise_beam >= 1, "decode beams must be >= 1")
        _check(self.sampler in ("ddpm", "ddim"), "decode.sampler must be ddpm or ddim")
        _check(self.selection in ("score", "mbr", "ar"), "decode.selection must be score, mbr or ar")
        _check(self.beam >= 1, "decode.beam must be >= 1")
        _check(self.lenpen >= 0, "decode.lenpen must be >= 0")
        _check(self.max_len_a >= 0 and self.max_len_b >= 1, "decode.max_len_a must be >= 0, max_len_b >= 1")
        _check(self.max_tokens > 0, "decode.max_tokens must be positive")
        _check(0 <= self.seed < 2**63, "decode.seed must be in [0, 2^63)")

    @property
    def nfe(self) -> int:
        """Network evaluations per sentence: steps run x candidates."""
        return (self.early_stop or self.steps) * self.length_beam * self.noise_beam

    def describe(self, arch: str = "difformer") -> str:
        """How outputs were made, printed next to every score and speed."""
        if arch == "transformer":
            search = "greedy" if self.beam == 1 else f"beam={self.beam} lenpen={self.lenpen}"
            return f"autoregressive {search} max_len={self.max_len_a:g}*src+{self.max_len_b}"
        return (f"steps={self.steps}{f' min_t={self.min_t:g}' if self.min_t else ''} "
                f"early_stop={self.early_stop or 'off'} "
                f"candidates={self.length_beam}x{self.noise_beam} selection={self.selection} "
                f"sampler={self.sampler} clamp={self.clamp}{' cond_enhance' if self.cond_enhance else ''} "
                f"NFE={self.nfe}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self) -> "Config":
        for section in (self.model, self.diffusion, self.train, self.decode):
            section.validate()
        check_steps(self.decode.steps, self.diffusion.timesteps, self.decode.min_t)
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples become lists

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "Config":
        if not isinstance(raw, dict):
            raise DifformerError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DifformerError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
        sections = {}
        for f in dataclasses.fields(cls):
            sections[f.name] = _build(f.default_factory, raw.get(f.name) or {}, f"{where}: {f.name}")
        try:
            return cls(**sections).validate()
        except DifformerError as e:
            raise DifformerError(f"{where}: {e}") from None  # name the file a bad value came from


def config_diff(a: dict, b: dict, ignore: set[str], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (`ignore`: keys allowed to differ)."""
    keys = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            keys += config_diff(a[k], b[k], ignore, f"{name}.")
        elif a.get(k) != b.get(k) and name not in ignore:
            keys.append(name)
    return keys


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DifformerError(message)


def _build(section_cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise DifformerError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(section_cls)
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(raw) - names
    if unknown:
        raise DifformerError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return section_cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML/JSON value against the field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        hint, origin = typing.get_args(hint)[0], None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise DifformerError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(value) != len(args):
            raise DifformerError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise DifformerError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            raise DifformerError(f"{where}: expected a number, got {value!r}") from None
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise DifformerError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_config(path_or_preset: str, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or a preset name such as `quickstart`) and apply `section.key=value` overrides."""
    path = Path(path_or_preset)
    if not path.is_file() and (PRESETS / f"{path_or_preset}.yaml").is_file():
        path = PRESETS / f"{path_or_preset}.yaml"  # a preset name, even beside a folder of that name
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise DifformerError(f"{path_or_preset}: no such config file or preset ({presets})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DifformerError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise DifformerError(f"override {item!r}: expected section.key=value, e.g. train.lr=1e-3")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise DifformerError(f"{path}: section {section!r} is not a mapping")
        raw[section][name] = yaml.safe_load(value)
    return Config.from_dict(raw, where=str(path))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
