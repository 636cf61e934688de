"""`difformer distill`: the teacher's outputs become the training targets, the rest of the corpus is kept,
and a killed run resumes without duplicating or losing a line."""
import json
import subprocess
import sys

import numpy as np
import pytest

import difformer.distill as distill_module
from difformer.data.binarize import PairDataset
from difformer.distill import distill
from difformer.generate import load


def test_distilled_targets_are_the_teachers_outputs_and_the_rest_is_kept(trained_ar, tiny_data, tmp_path):
    info = distill(trained_ar, tiny_data, tmp_path / "dist", beam=2, chunk_size=700)
    out, raw = PairDataset(tmp_path / "dist", "train"), PairDataset(tiny_data, "train")
    assert len(out) == len(raw) == info["splits"]["train"]["pairs"]
    pipe = load(trained_ar)
    some = [0, 1, 699, 700, len(raw) - 1]  # across chunk borders
    sources = [raw.src(i).tolist() for i in some]
    assert pipe.tokenizer.decode([out.tgt(i) for i in some]) == pipe.decode_ids(sources, pipe.decode_config(beam=2))
    assert all(np.array_equal(out.src(i), raw.src(i)) for i in range(len(raw)))
    for split in ("valid", "test"):
        a, b = PairDataset(tmp_path / "dist", split), PairDataset(tiny_data, split)
        assert all(np.array_equal(a.tgt(i), b.tgt(i)) for i in range(len(b)))
    assert (tmp_path / "dist" / "tokenizer.model").read_bytes() == (tiny_data / "tokenizer.model").read_bytes()
    d = info["distilled"]
    assert d["beam"] == 2 and d["teacher"] == str(trained_ar.resolve()) and 0 < d["teacher_bleu_vs_references"] <= 100
    assert json.loads((tmp_path / "dist" / "dataset.json").read_text())["distilled"] == d
    assert not list(tmp_path.glob(".dist.*"))  # the partial chunks are gone


def test_the_teachers_bleu_is_of_what_it_said_empty_outputs_included(trained_ar, tiny_data, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(distill_module, "search_tokens", lambda model, tok, sources, *a: [[] for _ in sources])
    info = distill(trained_ar, tiny_data, tmp_path / "dist", beam=1)
    d = info["distilled"]
    assert d["empty_outputs_kept_reference"] == info["splits"]["train"]["pairs"]  # the targets stay usable
    assert d["teacher_bleu_vs_references"] == 0  # though the teacher said nothing


def test_distill_resumes_after_a_kill_without_duplicating_or_losing_a_line(trained_ar, tiny_data, tmp_path,
                                                                           monkeypatch):
    distill(trained_ar, tiny_data, tmp_path / "whole", beam=2, chunk_size=300)
    real, calls = distill_module.search_tokens, []

    def killed_at_the_fourth_chunk(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(distill_module, "search_tokens", killed_at_the_fourth_chunk)
    with pytest.raises(KeyboardInterrupt):
        distill(trained_ar, tiny_data, tmp_path / "resumed", beam=2, chunk_size=300)
    assert not (tmp_path / "resumed").exists()  # nothing half-written where the data should be
    assert len(list((tmp_path / ".resumed.distill-partial").glob("chunk_*"))) == 3
    calls.clear()
    monkeypatch.setattr(distill_module, "search_tokens", lambda *a: calls.append(1) or real(*a))
    distill(trained_ar, tiny_data, tmp_path / "resumed", beam=2, chunk_size=300)
    assert len(calls) == -(-2000 // 300) - 3  # only the missing chunks were decoded
    for name in ("train.tgt.bin", "train.tgt.idx", "train.src.bin"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_distill_with_other_options_over_a_partial_run_is_refused(trained_ar, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(distill_module, "search_tokens", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        distill(trained_ar, tiny_data, tmp_path / "d", beam=2)
    from difformer import DifformerError

    with pytest.raises(DifformerError, match=r"other options \(beam"):
        distill(trained_ar, tiny_data, tmp_path / "d", beam=3)


def test_distill_command_line(trained_ar, tiny_data, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "difformer.cli", "distill", *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run("--teacher", str(trained_ar), "--data", str(tiny_data), "--destdir", str(tmp_path / "d"), "--beam", "1")
    assert r.returncode == 0, r.stderr
    assert "teacher BLEU against the training references" in r.stdout
    r = run("--teacher", str(trained_ar), "--data", str(tiny_data), "--destdir", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
