"""`difformer prepare`: parallel text files in, a self-describing dataset directory out.

The directory holds dataset.json (what was done and the statistics of every split), tokenizer.model and
the token arrays of binarize.py. It is built in a hidden sibling directory and renamed into place at the
end, so a failed or interrupted run leaves nothing behind and --force never destroys the old directory
before the new one is complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

from difformer.data.binarize import binarize_split, dtype_for
from difformer.data.corpus import ParallelCorpus
from difformer.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer
from difformer.errors import DifformerError
from difformer.files import install, sibling

FORMAT_VERSION = 1


def prepare(*, source_lang: str, target_lang: str, trainpref: str, validpref: str | None = None,
            testpref: str | None = None, destdir: str, vocab_size: int = 8000, model_type: str = "bpe",
            tokenizer: str | None = None, max_len: int | None = None, long: str = "drop",
            lowercase: bool = False, force: bool = False, seed: int = 1) -> dict:
    """Check the input, learn (or copy) the tokenizer, binarise every split; return dataset.json's content.

    `max_len` drops or truncates training pairs only: valid and test are kept whole, because they are
    scored against their full references (a shortened test set is not the published one)."""
    dest = Path(destdir)
    _check_options(source_lang, target_lang, vocab_size, model_type, max_len, long)
    check_destination(dest, force)
    prefixes = {"train": trainpref, "valid": validpref, "test": testpref}
    corpora = {split: ParallelCorpus.from_prefix(pref, source_lang, target_lang, lowercase)
               for split, pref in prefixes.items() if pref}  # every file is checked before any work
    if tokenizer is not None:
        Tokenizer(tokenizer)  # a bad --tokenizer fails before anything is written
    learnt = tokenizer is None
    options = {"vocab_size": vocab_size if learnt else None, "model_type": model_type if learnt else None,
               "tokenizer": None if learnt else str(Path(tokenizer).resolve()),
               "max_len": max_len, "long": long, "lowercase": lowercase, "seed": seed}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = sibling(dest, "tmp")
    except OSError as e:
        raise DifformerError(f"{dest}: cannot write there ({e.strerror or e})") from None
    try:
        if learnt:
            tok = Tokenizer.train(_both_sides(corpora["train"]), tmp / "tokenizer", vocab_size, model_type,
                                  seed)
        else:
            shutil.copyfile(tokenizer, tmp / "tokenizer.model")
            tok = Tokenizer(tmp / "tokenizer.model")
        langs = (source_lang, target_lang)
        info = {"format_version": FORMAT_VERSION, "source_lang": source_lang, "target_lang": target_lang,
                "tokenizer": tok.path.name, "vocab_size": tok.vocab_size,
                "dtype": dtype_for(tok.vocab_size).name,
                "special_ids": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS}, "options": options,
                "splits": {split: _binarize(corpus, tok, tmp, split, langs, max_len, long)
                           for split, corpus in corpora.items()}}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        install(tmp, dest)
    except OSError as e:  # reading errors are DifformerErrors already: this is a full disk or the like
        shutil.rmtree(tmp, ignore_errors=True)
        raise DifformerError(f"{dest}: not written ({e.strerror or e}); nothing was left behind") from None
    except BaseException:  # KeyboardInterrupt too: never leave a half-built directory
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _binarize(corpus: ParallelCorpus, tok: Tokenizer, tmp: Path, split: str, langs: tuple[str, str],
              max_len: int | None, long: str) -> dict:
    if split != "train":  # scored against full references: never shortened, never thinned
        max_len = None
    stats = binarize_split(corpus, tok, tmp, split, langs, max_len=max_len, long=long)
    if stats["pairs"] == 0:
        raise DifformerError(f"no {split} pairs left in {corpus.src} / {corpus.tgt} ({corpus.lines} lines, "
                             f"{stats['dropped_empty']} empty, {stats['dropped_long']} over --max-len)")
    return stats


def _check_options(source_lang: str, target_lang: str, vocab_size: int, model_type: str,
                   max_len: int | None, long: str) -> None:
    if source_lang == target_lang:
        raise DifformerError(f"--source-lang and --target-lang are both {source_lang!r}; "
                             f"they must name two different files")
    if vocab_size < 1:
        raise DifformerError(f"--vocab-size must be positive, got {vocab_size}")
    if model_type not in ("bpe", "unigram"):
        raise DifformerError(f"--model-type must be bpe or unigram, got {model_type!r}")
    if max_len is not None and max_len < 1:
        raise DifformerError(f"--max-len must be at least 1, got {max_len}")
    if long not in ("drop", "truncate"):
        raise DifformerError(f"--long must be drop or truncate, got {long!r}")


def check_destination(dest: Path, force: bool) -> None:
    if not dest.exists() and not dest.is_symlink():
        return
    if not force:
        raise DifformerError(f"{dest} already exists; pass --force to replace it")
    ours = dest.is_dir() and not dest.is_symlink() and (
        (dest / "dataset.json").is_file() or not any(dest.iterdir()))
    if not ours:  # --force with a mistyped --destdir must not delete something that is not ours
        raise DifformerError(f"refusing to replace {dest}: it is not a directory written by "
                             f"difformer prepare")


def _both_sides(train: ParallelCorpus) -> Iterator[str]:
    """Source and target lines of the training pairs, for the joint vocabulary."""
    for src, tgt in train.chunks():
        yield from src
        yield from tgt
    if train.lines == train.dropped_empty:
        raise DifformerError(f"no training pairs in {train.src} / {train.tgt} "
                             f"({train.lines} lines, all empty on one side or both)")


def format_summary(info: dict) -> str:
    """A short table of what prepare wrote, one row per split."""
    opts = info["options"]
    notes = [f"{'given' if opts['tokenizer'] else opts['model_type']} vocabulary of {info['vocab_size']}",
             f"ids stored as {info['dtype']}"]
    if opts["lowercase"]:
        notes.append("lowercased")
    if opts["max_len"]:
        notes.append(f"--max-len {opts['max_len']} ({opts['long']})")
    rows = [["split", "pairs", "src tok", "tgt tok", "src len 50/90/99/max", "tgt len 50/90/99/max",
             "empty", "long", "trunc"]]
    for split, s in info["splits"].items():
        rows.append([split, *(f"{s[k]:,}" for k in ("pairs", "source_tokens", "target_tokens")),
                     *("/".join(map(str, s[side].values())) for side in ("source_len", "target_len")),
                     *(f"{s[k]:,}" for k in ("dropped_empty", "dropped_long", "truncated"))])
    widths = [max(map(len, col)) for col in zip(*rows)]
    table = ["  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])
             for r in rows]
    return "\n".join([f"{info['source_lang']} -> {info['target_lang']}: {', '.join(notes)}", *table])
