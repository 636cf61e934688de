"""Hostile input to `generate` and `prepare`, and outputs that cannot be written.

`generate` writes exactly one output line per input line, whatever the input holds: empty lines, 100k
characters, control characters, emoji, invalid UTF-8, CRLF, lone CR, U+2028, no final newline.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difformer import generate as generate_module
from difformer import files
from difformer.cli import main
from difformer.data.binarize import PairDataset
from difformer.data.prepare import prepare
from difformer.errors import DifformerError
from difformer.generate import LINE_BREAKS, Pipeline, load, one_line, read_lines
from test_robustness_loading import make_model_dir

LONG = "a" * 100_000  # one word of 100k characters
LONG_WORDS = "red cat " * 12_500  # 100k characters of known words
HOSTILE_LINES = [  # the input lines, as `generate` reads them (split on LF only; CRLF counts as LF)
    "red cat",
    "",
    "   \t ",
    LONG,
    "\x00\x01\x07\x1b[31m red \x7f",
    "мир 世界 🔥 👩‍👩‍👧 e\u0301 \u200b \ufeff",
    "before\rafter",  # a lone CR does not end a line
    "x\u2028y\u0085z\x0b\x0c\x1c",  # nor do these, although str.splitlines would split there
    "crlf line",
    LONG_WORDS,
    "last line without newline",
]


def hostile_file_bytes() -> bytes:
    lines = [line.encode() for line in HOSTILE_LINES]
    lines[8] += b"\r"  # CRLF
    lines.insert(9, b"bad \xff\xfe bytes \xc3")  # invalid UTF-8: line 10
    return b"\xef\xbb\xbf" + b"\n".join(lines)  # BOM, and no final newline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tiny_data, tmp_path_factory) -> Path:
    return make_model_dir(tiny_data / "tokenizer.model", tmp_path_factory.mktemp("m") / "model")


def test_read_lines_splits_on_lf_only_and_reports_invalid_utf8(tmp_path):
    (tmp_path / "in").write_bytes(hostile_file_bytes())
    lines, bad = read_lines(tmp_path / "in")
    assert len(lines) == len(HOSTILE_LINES) + 1 and bad == [10]
    assert lines[:9] == HOSTILE_LINES[:9] and lines[10:] == HOSTILE_LINES[9:]
    assert "\ufffd" in lines[9]


def test_generate_command_on_hostile_input_writes_one_line_per_input_line(model_dir, tmp_path):
    (tmp_path / "in").write_bytes(hostile_file_bytes())
    out = tmp_path / "out"
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "difformer.cli", "generate", "--model", str(model_dir), "--input",
                        str(tmp_path / "in"), "--output", str(out)], capture_output=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert time.perf_counter() - start < 60
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n") and len(text.splitlines()) == len(HOSTILE_LINES) + 1  # splitlines: the strictest
    outputs = text.split("\n")[:-1]
    assert outputs[1] == outputs[2] == ""  # empty and blank inputs give empty outputs
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, err
    assert "invalid UTF-8 replaced on line(s) 10" in warnings[0]
    assert warnings[1].startswith("warning: 3 input(s) cut to 31 tokens, line(s) 4, 6, 11")  # one, for all


def test_outputs_holding_line_breaks_are_made_one_line_with_a_warning(model_dir, tmp_path, monkeypatch, capsys):
    evil = ["a\nb", "c\r\nd", "e\u2028f\u2029g\x85h", "\x0b\x0c\x1c\x1d\x1e", "fine"]
    monkeypatch.setattr(Pipeline, "generate", lambda self, texts, **o: evil[: len(texts)])
    (tmp_path / "in").write_text("1\n2\n3\n4\n5\n")
    assert main(["generate", "--model", str(model_dir), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out").read_text(encoding="utf-8")
    assert text.splitlines() == [one_line(e) for e in evil] and len(text.splitlines()) == 5
    assert not any(c in line for line in text.split("\n") for c in LINE_BREAKS)
    assert "line breaks inside output line(s) 1, 2, 3, 4 replaced by spaces" in capsys.readouterr().err


def test_one_line_covers_everything_splitlines_splits_on():
    every = "".join(chr(c) for c in range(0x3000))
    assert len(one_line(every).splitlines()) == 1 and len(one_line(every)) == len(every)


def test_encoding_a_100k_character_line_is_fast_and_cut(model_dir):
    pipe = load(model_dir, precision="fp32")
    for text in (LONG, LONG_WORDS, "🔥" * 100_000):
        start = time.perf_counter()
        ids = pipe.encode([text, "red"])
        assert time.perf_counter() - start < 2.0  # linear: ~0.01 s on one core
        assert len(ids[0]) == 31 and pipe.truncated == [0]


def test_output_into_a_missing_or_unwritable_directory_fails_before_decoding(model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    def no_decoding(*a, **k):
        raise AssertionError("the model was loaded although the output cannot be written")

    monkeypatch.setattr(generate_module, "load", no_decoding)
    (tmp_path / "a_file").write_text("x")
    cases = [(tmp_path / "no" / "such" / "dir" / "out.txt", "is not an existing directory"),
             (tmp_path / "a_file" / "out.txt", "is not an existing directory"),
             (tmp_path, "is a directory")]
    if Path("/proc/self").is_dir():  # unwritable even for root
        cases.append((Path("/proc/self/out.txt"), "cannot write there"))
    for out, words in cases:
        code = main(["generate", "--model", str(model_dir), "--input", "-", "--output", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err


def test_evaluate_output_is_checked_before_decoding_the_split(model_dir, tiny_data, tmp_path, capsys):
    code = main(["evaluate", "--model", str(model_dir), "--data", str(tiny_data),
                 "--output", str(tmp_path / "nope" / "hyp.txt")])
    assert code == 2 and "is not an existing directory" in capsys.readouterr().err


def test_disk_full_while_writing_the_output_is_one_line(model_dir, tmp_path, monkeypatch, capsys):
    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_atomic", full)
    (tmp_path / "in").write_text("red cat\n")
    code = main(["generate", "--model", str(model_dir), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write (No space left on device)" in err and err.count("error") == 1


def test_missing_input_file_is_one_line(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir), "--input", str(tmp_path / "nope")]) == 2
    assert "cannot read (No such file or directory)" in capsys.readouterr().err


def test_reader_closing_the_pipe_early_gives_exit_141_and_no_traceback(model_dir):
    r = subprocess.run(["bash", "-c", f'printf "red cat\\nsun\\n" | "{sys.executable}" -m difformer.cli generate '
                        f'--model "{model_dir}" | true; echo "${{PIPESTATUS[1]}}"'],
                       capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.stdout.decode().strip() == "141" and "Traceback" not in r.stderr.decode(), r.stderr.decode()


@pytest.mark.parametrize("option, value, words", [
    ("--steps", "0", "decode.steps must be >= 1"),
    ("--max-tokens", "-5", "decode.max_tokens must be positive"),
    ("--early-stop", "99", "decode.early_stop must be in [0, steps]"),
    ("--steps", "100000", "decode.steps (100000) must be <= "),
    ("--seed", "-1", "decode.seed must be in [0, 2^63)"),
    ("--min-t", "1", "decode.min_t must be in [0, 1)"),
    ("--min-t", "0.9999", "diffusion timesteps from T-1 down to decode.min_t T = "),
])
def test_bad_decoding_options_are_one_line(model_dir, capsys, option, value, words):
    assert main(["generate", "--model", str(model_dir), option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_threads_option_sets_torch_threads_and_refuses_zero(model_dir, tmp_path, capsys, one_thread):
    import torch

    (tmp_path / "in.txt").write_text("red cat\n")
    assert main(["generate", "--model", str(model_dir), "-i", str(tmp_path / "in.txt"), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2  # the one_thread fixture restores the count afterwards
    capsys.readouterr()
    for command in (["generate", "--model", str(model_dir)], ["train", "quickstart"], ["quickstart"]):
        assert main([*command, "--threads", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--threads must be >= 1, got 0" in err


# ---- prepare ---------------------------------------------------------------------------------------

def test_prepare_keeps_hostile_text_aligned(tiny_data, tmp_path):
    src = list(HOSTILE_LINES)
    tgt = [f"target {i}" for i in range(len(src))]
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "train.src").write_bytes(b"\r\n".join(line.encode() for line in src))  # CRLF, no final newline
    (corpus / "train.tgt").write_text("\n".join(tgt) + "\n")
    for learn in (True, False):  # a vocabulary learnt from this text, and a given one
        dest = tmp_path / f"d{learn}"
        options = dict(vocab_size=400) if learn else dict(tokenizer=str(tiny_data / "tokenizer.model"))
        start = time.perf_counter()
        info = prepare(source_lang="src", target_lang="tgt", trainpref=str(corpus / "train"), destdir=str(dest),
                       **options)
        assert time.perf_counter() - start < 30
        stats = info["splits"]["train"]
        assert stats["lines"] == len(src) and stats["dropped_empty"] == 2  # "" and the blank line
        data = PairDataset(dest, "train")
        assert len(data) == len(src) - 2 and data.src_lens.max() >= 12_500


def test_prepare_refuses_invalid_utf8_naming_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "train.src").write_bytes(b"ok\nfine\r\nbad \xc3\x28\n")
    (corpus / "train.tgt").write_text("a\nb\nc\n")
    code = main(["prepare", "-s", "src", "-t", "tgt", "--trainpref", str(corpus / "train"),
                 "--destdir", str(tmp_path / "out"), "--vocab-size", "300"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{corpus / 'train.src'}: line 3 is not valid UTF-8 (byte 0xc3)" in err


def test_prepare_into_an_unwritable_place_is_one_line(numbers, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DifformerError, match="cannot write there"):
        prepare(source_lang="fr", target_lang="en", trainpref=str(numbers / "train"),
                destdir=str(tmp_path / "a_file" / "out"), vocab_size=300)


def test_prepare_disk_full_leaves_nothing_behind(numbers, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("difformer.data.prepare.binarize_split", full_disk)
    with pytest.raises(DifformerError, match=r"out: not written \(No space left on device\); nothing was left"):
        prepare(source_lang="fr", target_lang="en", trainpref=str(numbers / "train"),
                destdir=str(tmp_path / "out"), vocab_size=300)
    assert list(tmp_path.glob(".out*")) == [] and not (tmp_path / "out").exists()
