"""One joint sentencepiece vocabulary for source and target, with fixed special ids.

The source and target share one embedding matrix (DESIGN 1.1), so they share one vocabulary. Training
settings make decoding exactly invert encoding on any text: no Unicode normalisation ('identity'), no
whitespace clean-up, and byte fallback so that a character never seen in training is spelt as UTF-8 bytes
instead of becoming <unk>. Scores are then computed on the text the user gave, not on a normalised copy.

Binarising a large corpus goes through `encode_flat`, which for such BPE models encodes every distinct
word once and reuses its ids (about 3x faster than sentencepiece alone on two cores, same ids).
"""
from __future__ import annotations

import io
import os
import re
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from difformer.data.corpus import read_lines
from difformer.errors import DifformerError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
THREADS = os.cpu_count() or 1


class Tokenizer:
    """A sentencepiece .model file with pad=0, unk=1, bos=2, eos=3; encode and decode work on batches."""

    pad_id, unk_id, bos_id, eos_id = PAD, UNK, BOS, EOS

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DifformerError(f"missing tokenizer file: {self.path}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise DifformerError(f"{self.path} is not a sentencepiece model ({e})") from None
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD, UNK, BOS, EOS):
            raise DifformerError(f"{self.path} has special ids pad/unk/bos/eos = {ids}; difformer needs "
                                 f"{(PAD, UNK, BOS, EOS)} (learn one with `difformer prepare`)")
        self._words = _WordCache(self.sp) if _words_independent(self.sp) else None

    @classmethod
    def train(cls, text: Iterable[str] | Sequence[os.PathLike], model_prefix: str | Path, vocab_size: int,
              model_type: str = "bpe", seed: int = 1, max_sentences: int = 1_000_000) -> Tokenizer:
        """Learn a vocabulary from lines of text (or from a sequence of Path objects naming text files) and
        write it to MODEL_PREFIX.model.

        At most `max_sentences` lines, a uniform sample drawn with `seed`, are used: a million lines give
        the subwords of a large corpus at a fraction of its time and memory.
        """
        if isinstance(text, (list, tuple)) and text and all(isinstance(t, os.PathLike) for t in text):
            text = chain.from_iterable(map(read_lines, text))
        sample = sample_lines(text, max_sentences, seed)
        if not sample:
            raise DifformerError("no text to learn a vocabulary from")
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size,
                model_type=model_type, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
                normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
                num_threads=THREADS, minloglevel=2,
            )
        except RuntimeError as e:
            raise DifformerError(_explain_training_error(str(e), vocab_size)) from None
        path = Path(f"{model_prefix}.model")
        path.write_bytes(model.getvalue())
        return cls(path)

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Token ids of each line, without BOS/EOS (the model adds them)."""
        return self.sp.encode(lines, out_type=int, num_threads=THREADS)

    def encode_flat(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of all lines end to end (int64) and the number of ids of each line; same ids as encode."""
        if self._words is not None:
            return self._words.encode(lines)
        ids = self.encode(lines)
        lens = np.fromiter(map(len, ids), np.int64, len(ids))
        return np.fromiter(chain.from_iterable(ids), np.int64, int(lens.sum())), lens

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence; pad, BOS and EOS decode to nothing, so padded model output is fine.

        Rows may be lists, numpy arrays or torch tensors.
        """
        rows = [seq.tolist() if hasattr(seq, "tolist") else list(seq) for seq in ids]
        if not rows:
            return []  # sentencepiece reads an empty batch as one empty sequence and returns a str
        return self.sp.decode(rows, num_threads=THREADS)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The subword of each id as the vocabulary spells it ("▁" starts a word; <s>, </s>, <pad>)."""
        return [self.sp.id_to_piece(int(i)) for i in ids]

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()


def sample_lines(lines: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform random sample of `size` lines (all of them if there are fewer), reproducible from `seed`.

    Reservoir sampling (Algorithm R) in one pass, holding only the sample. sentencepiece can sample by
    itself, but its sample changes from one process to the next whatever the seed.
    """
    rng = np.random.default_rng(seed)
    lines = iter(lines)
    sample = list(islice(lines, size))
    seen = len(sample)
    while block := list(islice(lines, 100_000)):
        slots = rng.integers(0, np.arange(seen + 1, seen + len(block) + 1))  # line seen+k+1 -> U{0..seen+k}
        seen += len(block)
        for k in np.flatnonzero(slots < size).tolist():
            sample[slots[k]] = block[k]
    return sample


def _explain_training_error(message: str, vocab_size: int) -> str:
    """Turn sentencepiece's vocabulary-size complaints into advice about --vocab-size."""
    if m := re.search(r"value <= (\d+)", message):
        return (f"vocabulary size {vocab_size} is too large for this training text (at most {m[1]} subwords "
                f"can be learned from it); pass a smaller --vocab-size")
    if m := re.search(r"required_chars\. \d+ vs (\d+)", message):
        return (f"vocabulary size {vocab_size} is too small: the 256 byte pieces, 4 special ids and the "
                f"characters of the training text need at least {m[1]}; pass a larger --vocab-size")
    return f"sentencepiece could not learn a vocabulary: {message.splitlines()[-1]}"


def _words_independent(sp: spm.SentencePieceProcessor) -> bool:
    """True when a line's ids are its space-separated words' ids end to end, as for Tokenizer.train's models.

    With whitespace kept verbatim, the dummy prefix, no normalisation and split_by_whitespace, every
    piece lies inside one '▁word' segment, and BPE merges within a segment in an order that depends only on
    that segment (Unigram's Viterbi scores could round differently, so it is left to sentencepiece).
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf; without it, no shortcut
    except ImportError:
        return False
    m = pb.ModelProto()
    m.ParseFromString(sp.serialized_model_proto())
    norm, spec = m.normalizer_spec, m.trainer_spec
    return (spec.model_type == pb.TrainerSpec.BPE and norm.name == "identity" and norm.add_dummy_prefix
            and not norm.remove_extra_whitespaces and norm.escape_whitespaces and spec.split_by_whitespace
            and not spec.allow_whitespace_only_pieces
            and not spec.treat_whitespace_as_suffix and not spec.user_defined_symbols
            and sp.id_to_piece(sp.piece_to_id("\u2581")) == "\u2581")


class _WordCache:
    """Encodes each distinct space-separated word once, then assembles lines from the words' ids."""

    MAX_WORDS = 2_000_000  # bounds memory on corpora with very many distinct words (numbers, names, URLs)

    def __init__(self, sp: spm.SentencePieceProcessor):
        self.sp = sp
        self.space_id = sp.piece_to_id("\u2581")  # the empty word between two spaces is a lone '▁'
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.ids, self.starts, self.lens = (np.zeros(0, np.int64) for _ in range(3))

    def _add(self, words: list[str]) -> None:
        ids = [seq or [self.space_id] for seq in self.sp.encode(words, out_type=int, num_threads=THREADS)]
        lens = np.fromiter(map(len, ids), np.int64, len(ids))
        self.starts = np.concatenate([self.starts, len(self.ids) + np.cumsum(lens) - lens])
        self.lens = np.concatenate([self.lens, lens])
        flat = np.fromiter(chain.from_iterable(ids), np.int64, int(lens.sum()))
        self.ids = np.concatenate([self.ids, flat])
        self.index.update(zip(words, range(len(self.index), len(self.index) + len(words))))

    def encode(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not lines:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        words = " ".join(lines).split(" ")
        words_per_line = np.fromiter(map(str.count, lines, repeat(" ")), np.int64, len(lines)) + 1
        w = np.fromiter(map(self.index.get, words, repeat(-1)), np.int64, len(words))  # (n_words,)
        if len(missing := np.flatnonzero(w < 0)):
            new = list(dict.fromkeys(words[i] for i in missing.tolist()))
            if len(self.index) + len(new) > self.MAX_WORDS:
                self._reset()
                new, missing = list(dict.fromkeys(words)), np.arange(len(words))
            self._add(new)
            w[missing] = np.fromiter(map(self.index.__getitem__, (words[i] for i in missing.tolist())),
                                     np.int64, len(missing))
        line_starts = np.cumsum(words_per_line) - words_per_line  # index of each line's first word
        wlens = self.lens[w]
        wlens[line_starts[np.fromiter(map(len, lines), np.int64, len(lines)) == 0]] = 0  # "" has no ids
        out_starts = np.cumsum(wlens) - wlens  # where each word's ids go in the output
        pos = np.arange(int(wlens.sum())) + np.repeat(self.starts[w] - out_starts, wlens)
        return self.ids[pos], np.add.reduceat(wlens, line_starts)
