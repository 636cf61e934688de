"""`difformer prepare`: the dataset directory, its statistics, and bad input that leaves nothing behind."""
from __future__ import annotations

import json
import time
from itertools import chain
from pathlib import Path

import pytest

from difformer.cli import main
from difformer.data.binarize import PairDataset
from difformer.data.corpus import read_lines
from difformer.data.prepare import format_summary, prepare
from difformer.data.tokenizer import Tokenizer
from difformer.errors import DifformerError

from conftest import write_pair


def run(corpus: Path, dest: Path, **kw) -> dict:
    args = dict(source_lang="fr", target_lang="en", trainpref=str(corpus / "train"), destdir=str(dest),
                vocab_size=400)
    return prepare(**{**args, **kw})


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")] == []


def test_directory_holds_arrays_tokenizer_and_dataset_json(numbers, tmp_path):
    info = run(numbers, tmp_path / "out", validpref=str(numbers / "valid"))
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["dataset.json", "tokenizer.model", "train.en.bin", "train.en.idx", "train.fr.bin",
                     "train.fr.idx", "valid.en.bin", "valid.en.idx", "valid.fr.bin", "valid.fr.idx"]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == info
    assert info["tokenizer"] == "tokenizer.model" and info["vocab_size"] == 400 and info["dtype"] == "uint16"
    assert set(info["options"]) == {"vocab_size", "model_type", "tokenizer", "max_len", "long", "lowercase", "seed"}
    train = info["splits"]["train"]
    assert train["pairs"] == 300 and info["splits"]["valid"]["pairs"] == 20
    assert set(train["source_len"]) == {"p50", "p90", "p99", "max"}
    assert train["source_file"].endswith("train.fr") and train["target_file"].endswith("train.en")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])  # unigram goes through sentencepiece alone
def test_binarised_arrays_equal_the_tokenizer_output(numbers, tmp_path, model_type):
    run(numbers, tmp_path / "out", validpref=str(numbers / "valid"), model_type=model_type, vocab_size=350)
    tok = Tokenizer(tmp_path / "out" / "tokenizer.model")
    for split in ("train", "valid"):
        data = PairDataset(tmp_path / "out", split)
        src = tok.encode(list(read_lines(numbers / f"{split}.fr")))
        tgt = tok.encode(list(read_lines(numbers / f"{split}.en")))
        assert len(data) == len(src)
        assert [data.src(i).tolist() for i in range(len(data))] == src
        assert [data.tgt(i).tolist() for i in range(len(data))] == tgt
        assert data.src_lens.tolist() == [len(s) for s in src] and data.tgt_lens.tolist() == [len(t) for t in tgt]


def test_loading_a_split_that_was_not_prepared_names_the_ones_there(numbers, tmp_path):
    run(numbers, tmp_path / "out")
    with pytest.raises(DifformerError, match=r"no test split \(it has: train\)"):
        PairDataset(tmp_path / "out", "test")


def test_empty_lines_are_dropped_and_counted(tmp_path):
    write_pair(tmp_path / "c" / "train", "a b\n\nc d\ne f\n\n", "A B\nx\n\nE F\n\n")
    info = run(tmp_path / "c", tmp_path / "out", vocab_size=270)
    s = info["splits"]["train"]
    assert (s["lines"], s["pairs"], s["dropped_empty"]) == (5, 2, 3)


def test_lowercase_and_escapes(tmp_path):
    write_pair(tmp_path / "c" / "train", "L&apos;Homme &amp; MOI\n" * 3, "The MAN &quot;x&quot;\n" * 3)
    run(tmp_path / "c", tmp_path / "out", vocab_size=280, lowercase=True)
    tok, data = Tokenizer(tmp_path / "out" / "tokenizer.model"), PairDataset(tmp_path / "out", "train")
    assert tok.decode([data.src(0), data.tgt(0)]) == ["l&apos;homme &amp; moi", "the man &quot;x&quot;"]
    assert data.info["options"]["lowercase"] is True


@pytest.mark.parametrize("long", ["drop", "truncate"])
def test_max_len_drops_or_truncates_and_counts(numbers, tmp_path, long):
    info = run(numbers, tmp_path / "out", max_len=6, long=long, validpref=str(numbers / "valid"))
    s = info["splits"]["train"]
    data = PairDataset(tmp_path / "out", "train")
    tok = Tokenizer(tmp_path / "out" / "tokenizer.model")
    ids = [tok.encode(list(read_lines(numbers / f"train.{lang}"))) for lang in ("fr", "en")]
    n_long = sum(len(a) > 6 or len(b) > 6 for a, b in zip(*ids))
    assert 0 < n_long < 300
    assert max(data.src_lens.max(), data.tgt_lens.max()) <= 6
    if long == "drop":
        assert (s["dropped_long"], s["truncated"], s["pairs"]) == (n_long, 0, 300 - n_long)
    else:
        assert (s["dropped_long"], s["truncated"], s["pairs"]) == (0, n_long, 300)
        assert [data.src(i).tolist() for i in range(300)] == [a[:6] for a in ids[0]]
    # valid (and test) are scored against their full references: never shortened, never thinned
    valid, v = PairDataset(tmp_path / "out", "valid"), info["splits"]["valid"]
    assert (v["pairs"], v["dropped_long"], v["truncated"]) == (20, 0, 0) and valid.src_lens.max() > 6


def test_given_tokenizer_is_copied_and_used(numbers, tmp_path):
    run(numbers, tmp_path / "first")
    info = run(numbers, tmp_path / "second", tokenizer=str(tmp_path / "first" / "tokenizer.model"))
    assert info["options"]["tokenizer"].endswith("first/tokenizer.model")
    a, b = (PairDataset(tmp_path / d, "train") for d in ("first", "second"))
    assert a.src(5).tolist() == b.src(5).tolist()
    assert (tmp_path / "second" / "tokenizer.model").read_bytes() == (tmp_path / "first" / "tokenizer.model").read_bytes()


def test_force_replaces_a_dataset_only_when_complete(numbers, tmp_path):
    run(numbers, tmp_path / "out")
    with pytest.raises(DifformerError, match="missing file"):
        run(numbers, tmp_path / "out", force=True, validpref=str(numbers / "nope"))
    assert PairDataset(tmp_path / "out", "train").info["options"]["max_len"] is None  # old one intact
    run(numbers, tmp_path / "out", force=True, max_len=50)
    assert PairDataset(tmp_path / "out", "train").info["options"]["max_len"] == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_force_refuses_to_replace_a_directory_prepare_did_not_write(numbers, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("x")
    with pytest.raises(DifformerError, match="refusing to replace"):
        run(numbers, tmp_path / "home", force=True)
    assert (tmp_path / "home" / "precious.txt").exists()


def test_summary_is_a_compact_table(numbers, tmp_path):
    text = format_summary(run(numbers, tmp_path / "out", validpref=str(numbers / "valid")))
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].split()[:2] == ["train", "300"] and lines[3].split()[:2] == ["valid", "20"]


# Bad input: one clear error, and the destination neither exists nor leaves a temporary directory behind.

def test_missing_file(numbers, tmp_path):
    with pytest.raises(DifformerError, match=r"missing file: .*test\.fr"):
        run(numbers, tmp_path / "out", testpref=str(numbers / "test"))
    assert_nothing_left(tmp_path / "out")


def test_line_count_mismatch(tmp_path):
    write_pair(tmp_path / "c" / "train", "a\nb\nc\n", "A\nB\n")
    with pytest.raises(DifformerError, match=r"train\.fr has 3 lines but .*train\.en has 2"):
        run(tmp_path / "c", tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_mismatch_in_valid_split_found_after_the_tokenizer_was_learnt(numbers, tmp_path):
    write_pair(tmp_path / "c" / "valid", "a\nb\n", "A\n")
    with pytest.raises(DifformerError, match="line counts differ"):
        run(numbers, tmp_path / "out", validpref=str(tmp_path / "c" / "valid"))
    assert_nothing_left(tmp_path / "out")


def test_invalid_utf8(numbers, tmp_path):
    write_pair(tmp_path / "c" / "train", "a\nb\n", b"A\n\xc3\x28\n")
    with pytest.raises(DifformerError, match=r"train\.en: line 2 is not valid UTF-8"):
        run(tmp_path / "c", tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_empty_training_set(tmp_path):
    write_pair(tmp_path / "c" / "train", "a\n\n\n", "\nb\n \n")
    with pytest.raises(DifformerError, match=r"no training pairs .*3 lines"):
        run(tmp_path / "c", tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_training_set_emptied_by_max_len(tmp_path):
    write_pair(tmp_path / "c" / "train", "a b\nc d e\n", "x y\nz w\n")  # every side has 2+ tokens
    with pytest.raises(DifformerError, match=r"no train pairs left .*2 over --max-len"):
        run(tmp_path / "c", tmp_path / "out", max_len=1, vocab_size=270)
    assert_nothing_left(tmp_path / "out")


def test_existing_output_directory_without_force(numbers, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(DifformerError, match="already exists; pass --force"):
        run(numbers, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_vocab_size_too_large(numbers, tmp_path):
    with pytest.raises(DifformerError, match="smaller --vocab-size"):
        run(numbers, tmp_path / "out", vocab_size=8000)
    assert_nothing_left(tmp_path / "out")


def test_cli_error_is_one_line_with_exit_code_2(numbers, tmp_path, capsys):
    write_pair(tmp_path / "c" / "train", "a\nb\nc\n", "A\nB\n")
    code = main(["prepare", "-s", "fr", "-t", "en", "--trainpref", str(tmp_path / "c" / "train"),
                 "--destdir", str(tmp_path / "out"), "--vocab-size", "300"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("difformer prepare: error: line counts differ")
    assert_nothing_left(tmp_path / "out")


def test_cli_prints_the_summary(numbers, tmp_path, capsys):
    code = main(["prepare", "-s", "fr", "-t", "en", "--trainpref", str(numbers / "train"),
                 "--destdir", str(tmp_path / "out"), "--vocab-size", "400"])
    assert code == 0 and "train  300" in " ".join(capsys.readouterr().out.split("  "))


def test_multi30k_counts(multi30k, tmp_path):
    t = time.perf_counter()
    info = prepare(source_lang="de", target_lang="en", trainpref=str(multi30k / "train"),
                   validpref=str(multi30k / "valid"), testpref=str(multi30k / "test"), destdir=str(tmp_path / "m"))
    assert time.perf_counter() - t < 30
    assert {k: v["pairs"] for k, v in info["splits"].items()} == {"train": 29000, "valid": 1014, "test": 1000}
    assert all(v["dropped_empty"] == 0 for v in info["splits"].values())
    data, tok = PairDataset(tmp_path / "m", "test"), Tokenizer(tmp_path / "m" / "tokenizer.model")
    lines = list(read_lines(multi30k / "test.de"))
    assert tok.decode([data.src(i) for i in range(len(data))]) == lines
    assert data.src_lens.sum() == info["splits"]["test"]["source_tokens"] == len(list(chain(*tok.encode(lines))))
