"""Batched decoding of lists of strings and of files, for both model kinds, and the `difformer.load` pipeline.

Sources are sorted by length and batched by tokens (candidates included), decoded, then put back in input
order. An empty input gives an empty output; one output per input, always. A Difformer's candidates are
chosen by its own score, by BLEU-MBR, or by an autoregressive reranker (the teacher).
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from difformer.config import Config, DecodeConfig, check_steps
from difformer.data.batching import pad_batch
from difformer.data.tokenizer import Tokenizer
from difformer.diffusion.sampling import generate_candidates, word_logits
from difformer.diffusion.schedule import Schedule
from difformer.errors import DifformerError
from difformer.hub import build_schedule, lowercased, same_tokenizer
from difformer.metrics import mbr_select
from difformer.model.autoregressive import ARTransformer
from difformer.model.difformer import Difformer
from difformer.precision import autocast, resolve_device, resolve_precision
from difformer.search import beam_search, greedy_search, sequence_scores


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


def source_batches(sources: list[list[int]], candidates: int, max_tokens: int, eos: int, pad: int,
                   ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(input indices, padded sources with EOS, mask) in decoding order; empty sources are left out.

    Everything that decodes (generate, the trajectory analysis) batches through here, so its batches hold
    the same sentences at the same padding; the noise does not depend on them (see sampling.py).
    """
    todo = [i for i, s in enumerate(sources) if s]
    for batch in length_batches([len(sources[i]) for i in todo], candidates, max_tokens):
        idx = [todo[j] for j in batch]
        yield (idx, *pad_batch([sources[i] + [eos] for i in idx], pad))


def strip_specials(tokenizer: Tokenizer, rows: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """Token rows cut to their lengths, without the BOS/EOS/pad a Difformer emits in place."""
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
    return [[t for t in row[:n] if t not in specials] for row, n in zip(rows, lengths)]


def detokenize(tokenizer: Tokenizer, rows: list[list[int]], lengths: list[int]) -> list[str]:
    """Texts of argmax token rows, each cut to its length and without specials; one batched decode call."""
    return tokenizer.decode(strip_specials(tokenizer, rows, lengths))


@torch.no_grad()
def decode_ids(model: Difformer | ARTransformer, schedule: Schedule | None, tokenizer: Tokenizer,
               sources: list[list[int]], cfg: DecodeConfig, precision: str = "fp32",
               reranker: ARTransformer | None = None, self_condition: bool = True) -> list[str]:
    """Decode tokenized sources (no EOS, within max_positions - 1) into detokenized strings, in order.

    `schedule` is the Difformer's (None for an autoregressive model); `reranker` scores the candidates
    when cfg.selection is "ar" (same tokenizer); `self_condition`: the model's diffusion.self_conditioned.
    """
    if isinstance(model, ARTransformer):
        return tokenizer.decode(search_tokens(model, tokenizer, sources, cfg, precision))
    if cfg.selection == "ar" and reranker is None:
        raise DifformerError("selection 'ar' needs an autoregressive reranker (generate --reranker DIR, "
                             "or difformer.load(..., reranker=DIR))")
    device = next(model.parameters()).device
    C = cfg.length_beam * cfg.noise_beam
    outputs = [""] * len(sources)
    for idx, src, mask in source_batches(sources, C, cfg.max_tokens, tokenizer.eos_id, tokenizer.pad_id):
        src, mask = src.to(device), mask.to(device)
        with autocast(precision, device):
            cand = generate_candidates(model, schedule, src, mask, cfg, self_condition=self_condition)
        ids = strip_specials(tokenizer, cand.tokens.flatten(0, 1).tolist(), cand.lengths.flatten().tolist())
        flat = tokenizer.decode(ids)
        texts = [flat[b * C:(b + 1) * C] for b in range(len(idx))]
        if C == 1:
            picks = [0] * len(idx)
        elif cfg.selection == "mbr":
            picks = mbr_select(texts)
        elif cfg.selection == "ar":
            with autocast(precision, device):
                scores = rerank_scores(reranker, src, mask, ids, tokenizer, cfg.lenpen)
            picks = scores.view(len(idx), C).argmax(-1).tolist()
        else:
            picks = cand.scores.argmax(-1).tolist()
        for b, i in enumerate(idx):
            outputs[i] = texts[b][picks[b]]
    return outputs


def rerank_scores(reranker: ARTransformer, src: torch.Tensor, src_mask: torch.Tensor, hyps: list[list[int]],
                  tokenizer: Tokenizer, lenpen: float = 1.0, max_tokens: int = 8192) -> torch.Tensor:
    """The reranker's log-probability / length ** lenpen of each of the len(hyps) // B candidates of each
    source row, in chunks of about `max_tokens` target tokens (its logits are rows x length x vocabulary)."""
    C = len(hyps) // src.shape[0]
    limit = reranker.cfg.max_positions
    src, src_mask = src[:, :limit], src_mask[:, :limit]
    rows = max(1, max_tokens // (max(map(len, hyps)) + 2))
    scores = []
    for start in range(0, len(hyps), rows):
        part = torch.arange(start, min(start + rows, len(hyps)), device=src.device) // C
        scores.append(sequence_scores(reranker, src[part], src_mask[part], hyps[start:start + rows],
                                      tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, lenpen))
    return torch.cat(scores)


def search_tokens(model: ARTransformer, tokenizer: Tokenizer, sources: list[list[int]], cfg: DecodeConfig,
                  precision: str = "fp32") -> list[list[int]]:
    """Greedy (beam 1) or beam search output ids (no BOS/EOS) per source, in order, batched by length."""
    device = next(model.parameters()).device
    search = greedy_search if cfg.beam == 1 else beam_search
    banned = (tokenizer.pad_id, tokenizer.bos_id)
    outputs: list[list[int]] = [[] for _ in sources]
    for idx, src, mask in source_batches(sources, cfg.beam, cfg.max_tokens, tokenizer.eos_id, tokenizer.pad_id):
        with autocast(precision, device):
            hyps = search(model, src.to(device), mask.to(device), cfg, tokenizer.bos_id, tokenizer.eos_id, banned)
        for i, hyp in zip(idx, hyps):
            outputs[i] = hyp
    return outputs


class Pipeline:
    """A loaded model directory of either kind: `.generate(list_of_str, **decoding_options)` -> list of str.

    `reranker`: a loaded autoregressive Pipeline with the same tokenizer, for `selection="ar"`.
    """

    def __init__(self, model: Difformer | ARTransformer, config: Config, tokenizer: Tokenizer,
                 precision: str = "auto", reranker: "Pipeline | None" = None):
        self.model, self.config, self.tokenizer = model.eval(), config, tokenizer
        self.arch = config.model.arch
        self.schedule = build_schedule(config)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.truncated: list[int] = []  # indices of the inputs cut to max_positions by the last call
        self.lowercase = lowercased(tokenizer.path.parent)  # inputs as `prepare` made the training data
        self.reranker = None
        if reranker is not None:
            self.set_reranker(reranker)

    def set_reranker(self, reranker: "Pipeline") -> None:
        """Use an autoregressive model's scores for `selection="ar"`; it must share this model's tokenizer."""
        if self.arch != "difformer":
            raise DifformerError("a reranker chooses among a Difformer's candidates; this model is "
                                 "autoregressive (use --beam)")
        if reranker.arch != "transformer":
            raise DifformerError(f"{reranker.tokenizer.path.parent}: the reranker must be an autoregressive "
                                 f"model (model.arch transformer), not {reranker.arch}")
        if not same_tokenizer(reranker.tokenizer.path, self.tokenizer.path):
            raise DifformerError(f"{reranker.tokenizer.path}: the reranker's tokenizer differs from the model's "
                                 f"({self.tokenizer.path}); both must be trained on the same prepared data")
        self.reranker = reranker

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
        wrong = set(options) & (AR_OPTIONS if self.arch == "difformer" else DIFFUSION_OPTIONS)
        if self.arch == "difformer" and options.get("selection", self.config.decode.selection) == "ar":
            wrong.discard("lenpen")  # the teacher ranks a Difformer's candidates as its beam search would
        if wrong:
            kind = "a Difformer" if self.arch == "difformer" else "an autoregressive model"
            raise DifformerError(f"decoding option(s) {', '.join(sorted(wrong))} do not apply to {kind}")
        cfg = dataclasses.replace(self.config.decode, **options)
        cfg.validate()
        if self.schedule is not None:  # the model's T, which the config's decode section was checked against
            check_steps(cfg.steps, self.schedule.timesteps, cfg.min_t)
        if cfg.selection == "ar" and self.arch == "difformer" and self.reranker is None:
            raise DifformerError("selection 'ar' needs an autoregressive reranker: generate --reranker DIR "
                                 "(Python: difformer.load(MODEL, reranker=DIR))")
        return cfg

    def describe(self, cfg: DecodeConfig) -> str:
        """The decoding report: how outputs were made, the reranker named where one chose them."""
        text = cfg.describe(self.arch)
        if self.arch == "difformer" and cfg.selection == "ar":
            text += (f" lenpen={cfg.lenpen:g}" if cfg.lenpen != 1 else "") + \
                f" reranker={self.reranker.tokenizer.path.parent}"
        return text

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of inputs as the training data was made: stripped, lowercased if it was."""
        return self.tokenizer.encode([t.strip().lower() if self.lowercase else t.strip() for t in texts])

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Tokenize inputs, cutting any longer than the model's positions (EOS needs one)."""
        limit = self.config.model.max_positions - 1
        ids = self.tokenize(texts)
        self.truncated = [i for i, s in enumerate(ids) if len(s) > limit]
        return [s[:limit] for s in ids]

    def decode_ids(self, sources: list[list[int]], cfg: DecodeConfig) -> list[str]:
        reranker = self.reranker.model if self.reranker is not None else None
        return decode_ids(self.model, self.schedule, self.tokenizer, sources, cfg, self.precision, reranker,
                          self.config.diffusion.self_conditioned)

    def generate(self, texts: list[str], **options) -> list[str]:
        return self.decode_ids(self.encode(texts), self.decode_config(**options))

    @torch.no_grad()
    def step_tokens(self, src: torch.Tensor, src_mask: torch.Tensor, cfg: DecodeConfig,
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A Difformer's argmax tokens of z0_hat at every sampling step, (B, L) each, and the target lengths
        (B,), BOS/EOS included, for one candidate per source (cfg's beams must be 1)."""
        with autocast(self.precision, self.device):
            trace: list[torch.Tensor] = []
            cand = generate_candidates(self.model, self.schedule, src.to(self.device), src_mask.to(self.device),
                                       cfg, trace=trace, self_condition=self.config.diffusion.self_conditioned)
            return [word_logits(self.model, z).argmax(-1) for z in trace], cand.lengths[:, 0]

    def trace(self, text: str, **options) -> dict:
        """One input decoded by a Difformer with one candidate, and what z0_hat reads at every step: the
        timestep, the token pieces of every target position (BOS/EOS included) and the text. The last
        step's text is what `generate` outputs with the same options."""
        if self.arch != "difformer":
            raise DifformerError("a trace shows a Difformer's denoising steps; this model is autoregressive")
        cfg = self.decode_config(**{**options, "length_beam": 1, "noise_beam": 1})
        ids = self.encode([text])[0]
        if not ids:
            raise DifformerError("the input is empty")
        src = torch.tensor([ids + [self.tokenizer.eos_id]])
        steps, lengths = self.step_tokens(src, torch.ones_like(src, dtype=torch.bool), cfg)
        n = int(lengths[0])
        rows = [tokens[0, :n].tolist() for tokens in steps]
        texts = detokenize(self.tokenizer, rows, [n] * len(rows))
        timesteps = self.schedule.timesteps_for(cfg.steps, cfg.min_t)
        return {"input": text, "output": texts[-1], "setting": self.describe(cfg), "precision": self.precision,
                "steps": [{"step": k + 1, "t": int(timesteps[k]), "tokens": self.tokenizer.pieces(row), "text": t}
                          for k, (row, t) in enumerate(zip(rows, texts))]}


def check_reranker_used(reranker: str | None, cfg: DecodeConfig) -> None:
    """A reranker named on the command line must choose the outputs: loaded and never used, it would
    leave the user believing it did."""
    if reranker and cfg.selection != "ar":
        raise DifformerError(f"--reranker {reranker} scores candidates only with --selection ar "
                             f"(this decoding selects by {cfg.selection})")


# decoding options that only one model kind reads; given to the other, they are an error, not ignored
AR_OPTIONS = {"beam", "lenpen", "max_len_a", "max_len_b"}
DIFFUSION_OPTIONS = {"steps", "min_t", "early_stop", "length_beam", "noise_beam", "sampler", "clamp",
                     "cond_enhance", "selection", "seed"}


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines (and some editors) split on
_ONE_LINE = str.maketrans(dict.fromkeys(LINE_BREAKS, " "))


def one_line(text: str) -> str:
    """`text` with every line-breaking character replaced by a space: a model can emit any byte (byte
    fallback), and an output holding a newline or U+2028 would shift every later line for other tools."""
    return text.translate(_ONE_LINE)


def load(path: str | Path, device: str = "auto", precision: str = "auto",
         reranker: str | Path | None = None) -> Pipeline:
    """Load a model directory written by `difformer train` (or `save_pretrained`), of either kind, on
    `device` ("auto": CUDA when present); with `reranker`, an autoregressive model directory that
    `selection="ar"` scores candidates with."""
    from difformer.hub import from_pretrained

    model, config, tokenizer = from_pretrained(path)
    device = resolve_device(device)
    pipe = Pipeline(model.to(device), config, tokenizer, precision)
    if reranker is not None:
        pipe.set_reranker(load(reranker, device, precision))
    return pipe


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
