"""The quickstart corpus: reproducible from its seed, disjoint splits, short sentences."""
from __future__ import annotations

from num2words import num2words

from difformer.data.corpus import read_lines
from difformer.data.prepare import prepare
from difformer.data.toy import make_numbers_corpus


def read_split(d, split):
    return list(read_lines(d / f"{split}.fr")), list(read_lines(d / f"{split}.en"))


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kw = dict(n_train=200, n_valid=20, n_test=20)
    make_numbers_corpus(tmp_path / "a", seed=5, **kw)
    make_numbers_corpus(tmp_path / "b", seed=5, **kw)
    make_numbers_corpus(tmp_path / "c", seed=6, **kw)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["test.en", "test.fr", "train.en", "train.fr", "valid.en", "valid.fr"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "train.fr").read_bytes() != (tmp_path / "c" / "train.fr").read_bytes()


def test_splits_are_disjoint_aligned_and_sized(tmp_path):
    info = make_numbers_corpus(tmp_path, seed=0, n_train=1000, n_valid=100, n_test=100, max_number=9999)
    assert info["pairs"] == {"train": 1000, "valid": 100, "test": 100}
    splits = {s: read_split(tmp_path, s) for s in ("train", "valid", "test")}
    assert len(set(splits["train"][1]) | set(splits["valid"][1]) | set(splits["test"][1])) == 1200
    number = {num2words(n): n for n in range(10_000)}  # English words -> number, to check alignment
    fr, en = splits["test"]
    assert [num2words(number[e], lang="fr") for e in en] == fr


def test_default_corpus_prepares_into_short_sentences(tmp_path):
    make_numbers_corpus(tmp_path / "toy")
    info = prepare(source_lang="fr", target_lang="en", trainpref=str(tmp_path / "toy" / "train"),
                   validpref=str(tmp_path / "toy" / "valid"), testpref=str(tmp_path / "toy" / "test"),
                   destdir=str(tmp_path / "data"), vocab_size=400)
    assert {s: v["pairs"] for s, v in info["splits"].items()} == {"train": 8000, "valid": 500, "test": 500}
    assert max(v[side]["max"] for v in info["splits"].values() for side in ("source_len", "target_len")) < 16
