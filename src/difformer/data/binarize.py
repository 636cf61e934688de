"""Token arrays on disk: one flat array of ids per split and side, plus offsets, read back memory-mapped.

`{split}.{lang}.bin` holds the ids of all lines end to end (uint16 when the vocabulary fits, else int32) and
`{split}.{lang}.idx` holds n+1 int64 offsets, so line i is bin[idx[i]:idx[i+1]]. Ids are stored without
BOS/EOS. Memory mapping lets a training run on a multi-million-pair corpus start instantly and share pages
between data-loader workers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from difformer.data.corpus import ParallelCorpus
from difformer.data.tokenizer import Tokenizer
from difformer.errors import DifformerError


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def _limit(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray], max_len: int,
           long: str) -> tuple[tuple, tuple, int]:
    """Apply --max-len to one chunk of (flat ids, lengths) per side: drop or truncate the long pairs."""
    too_long = (src[1] > max_len) | (tgt[1] > max_len)
    out = []
    for flat, lens in (src, tgt):
        if long == "drop":
            keep = np.repeat(~too_long, lens)
            flat, lens = flat[keep], lens[~too_long]
        else:
            pos = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)  # position in its line
            flat, lens = flat[pos < max_len], np.minimum(lens, max_len)
        out.append((flat, lens))
    return out[0], out[1], int(too_long.sum())


def length_stats(lens: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(lens, [50, 90, 99], method="higher").tolist() if len(lens) else (0, 0, 0)
    return {"p50": p50, "p90": p90, "p99": p99, "max": int(lens.max(initial=0))}


def binarize_split(corpus: ParallelCorpus, tokenizer: Tokenizer, destdir: Path, split: str,
                   langs: tuple[str, str], *, max_len: int | None = None, long: str = "drop",
                   chunk_size: int = 50_000) -> dict:
    """Encode one split chunk by chunk into destdir and return its statistics for dataset.json."""
    dtype = dtype_for(tokenizer.vocab_size)
    paths = [destdir / f"{split}.{lang}" for lang in langs]
    lens: tuple[list, list] = ([], [])
    n_long = 0
    with open(f"{paths[0]}.bin", "wb") as fs, open(f"{paths[1]}.bin", "wb") as ft:
        for src_lines, tgt_lines in corpus.chunks(chunk_size):
            src, tgt = tokenizer.encode_flat(src_lines), tokenizer.encode_flat(tgt_lines)
            if max_len is not None:
                src, tgt, n = _limit(src, tgt, max_len, long)
                n_long += n
            for f, (flat, chunk_lens), side_lens in zip((fs, ft), (src, tgt), lens):
                flat.astype(dtype).tofile(f)
                side_lens.append(chunk_lens)
    src_lens, tgt_lens = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in lens)
    for path, side in zip(paths, (src_lens, tgt_lens)):
        np.concatenate([[0], np.cumsum(side)]).astype(np.int64).tofile(f"{path}.idx")
    return {
        "source_file": str(corpus.src.resolve()), "target_file": str(corpus.tgt.resolve()),
        "lines": corpus.lines,
        "pairs": len(src_lens), "source_tokens": int(src_lens.sum()), "target_tokens": int(tgt_lens.sum()),
        "source_len": length_stats(src_lens), "target_len": length_stats(tgt_lens),
        "dropped_empty": corpus.dropped_empty,
        "dropped_long": n_long if long == "drop" else 0, "truncated": n_long if long == "truncate" else 0,
    }


class PairDataset:
    """One split of a prepared directory: pair i is (src(i), tgt(i)), token ids without BOS/EOS."""

    def __init__(self, destdir: str | Path, split: str):
        destdir = Path(destdir)
        try:
            self.info: dict = json.loads((destdir / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DifformerError(f"{destdir} is not a prepared dataset (dataset.json: {e})") from None
        try:
            splits, dtype = self.info["splits"], np.dtype(self.info["dtype"])
            src_lang, tgt_lang = self.info["source_lang"], self.info["target_lang"]
        except (KeyError, TypeError) as e:
            raise DifformerError(f"{destdir / 'dataset.json'}: damaged ({type(e).__name__}: {e}); prepare the "
                                 "data again") from None
        if split not in splits:
            raise DifformerError(f"{destdir} has no {split} split (it has: {', '.join(splits)})")
        self._src, self._src_off = _load(destdir / f"{split}.{src_lang}", dtype)
        self._tgt, self._tgt_off = _load(destdir / f"{split}.{tgt_lang}", dtype)
        self.src_lens, self.tgt_lens = np.diff(self._src_off), np.diff(self._tgt_off)

    def __len__(self) -> int:
        return len(self.src_lens)

    def src(self, i: int) -> np.ndarray:
        return self._src[self._src_off[i]:self._src_off[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self._tgt[self._tgt_off[i]:self._tgt_off[i + 1]]

    @property
    def target_tokens(self) -> np.ndarray:
        """Every target id of the split, pairs back to back (memory-mapped)."""
        return self._tgt


def _load(prefix: Path, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    try:
        offsets = np.fromfile(f"{prefix}.idx", dtype=np.int64)
        if len(offsets) == 0:  # even an empty split has its one offset, 0
            raise ValueError("the index is empty")
        tokens = np.memmap(f"{prefix}.bin", dtype=dtype, mode="r") if offsets[-1] else np.zeros(0, dtype)
    except (OSError, ValueError) as e:
        raise DifformerError(f"cannot load {prefix}.bin/.idx: {e}") from None
    if len(tokens) != offsets[-1]:
        raise DifformerError(f"{prefix}.bin has {len(tokens)} ids but {prefix}.idx expects {offsets[-1]}")
    return tokens, offsets
