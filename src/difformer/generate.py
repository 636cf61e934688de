"""Batched decoding of lists of strings and of files, and the `difformer.load` pipeline.

Sources are sorted by length and batched by tokens (candidates included), decoded, then put back in input
order. An empty input gives an empty output; one output per input, always.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from difformer.config import Config, DecodeConfig
from difformer.data.batching import pad_batch
from difformer.data.tokenizer import Tokenizer
from difformer.diffusion.sampling import generate_candidates
from difformer.diffusion.schedule import Schedule
from difformer.errors import DifformerError
from difformer.metrics import mbr_select
from difformer.model.difformer import Difformer
from difformer.precision import autocast, resolve_precision


def length_batches(lengths: list[int], candidates: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first), grouped so that rows x padded length <= max_tokens.

    A target is rarely much longer than its source, so 2 x source + 8 bounds a candidate's padded length.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * candidates * (2 * lengths[batches[-1][0]] + 8) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def source_batches(sources: list[list[int]], cfg: DecodeConfig, eos: int, pad: int,
                   ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(input indices, padded sources with EOS, mask) in decoding order; empty sources are left out.

    Everything that decodes (generate, the trajectory analysis) batches through here, so its batches hold
    the same sentences at the same padding; the noise does not depend on them (see sampling.py).
    """
    todo = [i for i, s in enumerate(sources) if s]
    for batch in length_batches([len(sources[i]) for i in todo], cfg.length_beam * cfg.noise_beam,
                                cfg.max_tokens):
        idx = [todo[j] for j in batch]
        yield (idx, *pad_batch([sources[i] + [eos] for i in idx], pad))


def detokenize(tokenizer: Tokenizer, rows: list[list[int]], lengths: list[int]) -> list[str]:
    """Texts of argmax token rows, each cut to its length and without the BOS/EOS/pad the model emits in
    place; one batched decode call."""
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
    return tokenizer.decode([[t for t in row[:n] if t not in specials] for row, n in zip(rows, lengths)])


@torch.no_grad()
def decode_ids(model: Difformer, schedule: Schedule, tokenizer: Tokenizer, sources: list[list[int]],
               cfg: DecodeConfig, precision: str = "fp32") -> list[str]:
    """Decode tokenized sources (no EOS, within max_positions - 1) into detokenized strings, in order."""
    device = next(model.parameters()).device
    C = cfg.length_beam * cfg.noise_beam
    outputs = [""] * len(sources)
    for idx, src, mask in source_batches(sources, cfg, tokenizer.eos_id, tokenizer.pad_id):
        with autocast(precision, device):
            cand = generate_candidates(model, schedule, src.to(device), mask.to(device), cfg)
        flat = detokenize(tokenizer, cand.tokens.flatten(0, 1).tolist(), cand.lengths.flatten().tolist())
        texts = [flat[b * C:(b + 1) * C] for b in range(len(idx))]
        if cfg.selection == "mbr" and C > 1:
            picks = mbr_select(texts)
        else:
            picks = cand.scores.argmax(-1).tolist()
        for b, i in enumerate(idx):
            outputs[i] = texts[b][picks[b]]
    return outputs


class Pipeline:
    """A loaded model directory: `.generate(list_of_str, **decoding_options)` -> list of str."""

    def __init__(self, model: Difformer, config: Config, tokenizer: Tokenizer, precision: str = "auto"):
        self.model, self.config, self.tokenizer = model.eval(), config, tokenizer
        self.schedule = Schedule(config.diffusion.schedule, config.diffusion.timesteps)
        self.precision = resolve_precision(precision, next(model.parameters()).device)
        self.truncated: list[int] = []  # indices of the inputs cut to max_positions by the last call

    @property
    def trained_on(self) -> Path | None:
        """The prepared data folder the model was trained on, where it is still there."""
        data = self.config.train.data
        return Path(data) if data and (Path(data) / "dataset.json").is_file() else None

    def decode_config(self, **options) -> DecodeConfig:
        names = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = set(options) - names
        if unknown:
            raise DifformerError(f"unknown decoding option(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(sorted(names))}")
        cfg = dataclasses.replace(self.config.decode, **options)
        cfg.validate()
        if cfg.steps > self.schedule.timesteps:
            raise DifformerError(f"steps ({cfg.steps}) exceeds the model's {self.schedule.timesteps} diffusion "
                                 "timesteps")
        return cfg

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Tokenize inputs, cutting any longer than the model's positions (EOS needs one)."""
        limit = self.config.model.max_positions - 1
        ids = self.tokenizer.encode([t.strip() for t in texts])
        self.truncated = [i for i, s in enumerate(ids) if len(s) > limit]
        return [s[:limit] for s in ids]

    def generate(self, texts: list[str], **options) -> list[str]:
        cfg = self.decode_config(**options)
        return decode_ids(self.model, self.schedule, self.tokenizer, self.encode(texts), cfg, self.precision)


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines (and some editors) split on
_ONE_LINE = str.maketrans(dict.fromkeys(LINE_BREAKS, " "))


def one_line(text: str) -> str:
    """`text` with every line-breaking character replaced by a space: a model can emit any byte (byte
    fallback), and an output holding a newline or U+2028 would shift every later line for other tools."""
    return text.translate(_ONE_LINE)


def load(path: str | Path, device: str = "cpu", precision: str = "auto") -> Pipeline:
    """Load a model directory written by `difformer train` (or `save_pretrained`)."""
    from difformer.hub import from_pretrained

    model, config, tokenizer = from_pretrained(path)
    return Pipeline(model.to(device), config, tokenizer, precision)


def read_lines(path: str | None) -> tuple[list[str], list[int]]:
    """Lines of a file or stdin, invalid UTF-8 replaced; returns (lines, 1-based numbers that had bad bytes)."""
    data = sys.stdin.buffer.read() if path in (None, "-") else _read_bytes(Path(path))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows = data.split(b"\n")  # only LF ends a line (CRLF too, below): a lone CR or U+2028 does not
    if rows[-1] == b"":
        rows.pop()
    lines, bad = [], []
    for n, raw in enumerate(rows, start=1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("utf-8", errors="replace"))
            bad.append(n)
    return lines, bad


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DifformerError(f"{path}: cannot read ({e.strerror})") from None
