"""The quickstart corpus: French number words -> English number words, made on the spot with num2words.

Why this task: it is small enough to learn in minutes on a laptop CPU, yet it is real translation, with
what makes translation hard for a non-autoregressive model. Words are reordered and regrouped
(quatre-vingt-dix-sept = 4 x 20 + 17 -> ninety-seven; soixante et onze -> seventy-one), target length is
not source length (mille -> one thousand), and agreement depends on context (quatre-vingts but
quatre-vingt-un; deux cents but deux cent un). Test numbers never occur in training, so a model that
scores well has learnt the composition rules rather than memorised pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from num2words import num2words

LANGS = ("fr", "en")


def make_numbers_corpus(outdir: str | Path, seed: int = 0, n_train: int = 8000, n_valid: int = 500,
                        n_test: int = 500, max_number: int = 9999) -> dict:
    """Write {train,valid,test}.{fr,en} to outdir; the splits use disjoint numbers drawn with `seed`.

    With the defaults and a joint BPE vocabulary of 400 (the text supports at most about 630), no side is
    longer than 13 subwords.
    """
    n_total = n_train + n_valid + n_test
    if n_total > max_number + 1:
        raise ValueError(f"{n_total} distinct numbers requested from only {max_number + 1}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    numbers = np.random.default_rng(seed).choice(max_number + 1, size=n_total, replace=False).tolist()
    splits = {"train": numbers[:n_train], "valid": numbers[n_train:n_train + n_valid],
              "test": numbers[n_train + n_valid:]}
    for split, nums in splits.items():
        for lang in LANGS:
            text = "".join(num2words(n, lang=lang) + "\n" for n in nums)
            (outdir / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return {"dir": str(outdir), "source_lang": LANGS[0], "target_lang": LANGS[1], "seed": seed,
            "max_number": max_number, "pairs": {split: len(nums) for split, nums in splits.items()}}
