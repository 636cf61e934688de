"""The command line: train, generate and evaluate end to end, and their errors."""
import json
import shutil
import subprocess
import sys

import pytest

from difformer.cli import main
from difformer.errors import DifformerError


def run_cli(*args, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "difformer.cli", *map(str, args)], input=stdin,
                          capture_output=True, timeout=300)


def test_every_subcommand_has_help(capsys):
    for command in ("prepare", "train", "generate", "evaluate", "quickstart"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert "usage: difformer " + command in capsys.readouterr().out


def test_generate_writes_one_line_per_input_line(trained_model, tmp_path):
    lines = ["red cat", "", "blue sun moon", "  ", "tree " * 200, "stone \x07 fire 🔥 мир 世界"]
    src = tmp_path / "in.txt"
    src.write_bytes(("\n".join(lines)).encode() + b"\n\xff\xfe bad bytes")  # no final newline
    out = tmp_path / "out.txt"
    r = run_cli("generate", "--model", trained_model, "--input", src, "--output", out, "--steps", "5")
    assert r.returncode == 0, r.stderr.decode()
    hyps = out.read_text(encoding="utf-8").split("\n")
    assert hyps[-1] == "" and len(hyps) - 1 == len(lines) + 1
    assert hyps[1] == "" and hyps[3] == ""
    err = r.stderr.decode()
    assert "invalid UTF-8 replaced on line(s) 7" in err
    assert "cut to 31 tokens, line(s) 5" in err
    assert "sentences/s" in err and "NFE=5" in err


def test_generate_reads_stdin_and_is_deterministic(trained_model):
    # precision pinned: `auto` is a timing measured in each process (precision.py), not a decoding option
    a = run_cli("generate", "--model", trained_model, "--seed", "7", "--precision", "fp32", stdin=b"red cat\nsun\n")
    b = run_cli("generate", "--model", trained_model, "--seed", "7", "--length-beam", "1", "--precision", "fp32",
                stdin=b"red cat\nsun\n")
    assert a.returncode == 0 and a.stdout == b.stdout and len(a.stdout.decode().splitlines()) == 2


def test_generate_with_candidates_and_mbr(trained_model):
    r = run_cli("generate", "--model", trained_model, "--length-beam", "3", "--noise-beam", "2",
                "--selection", "mbr", "--sampler", "ddim", "--early-stop", "3", stdin=b"red cat\nsun moon\n")
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout.decode().splitlines()) == 2 and "candidates=3x2" in r.stderr.decode()


def test_evaluate_files_and_split(trained_model, tmp_path, tiny_data):
    hyp, ref = tmp_path / "hyp", tmp_path / "ref"
    hyp.write_text("the cat sat on the mat\na dog runs in the park\n")
    ref.write_text("the cat sat on the mat\na dog runs in the park\n")
    r = run_cli("evaluate", "--hyp", hyp, "--ref", ref, "--metric", "bleu", "--metric", "rouge")
    out = r.stdout.decode()
    assert r.returncode == 0 and "BLEU = 100.00" in out and "nrefs:1" in out and "ROUGE-L" in out.replace("rougeL", "ROUGE-L")
    ref.write_text("only one line\n")
    r = run_cli("evaluate", "--hyp", hyp, "--ref", ref)
    assert r.returncode == 2 and "has 2 lines" in r.stderr.decode() and len(r.stderr.decode().splitlines()) == 1
    r = run_cli("evaluate", "--model", trained_model, "--data", tiny_data, "--split", "test", "--steps", "5",
                "--output", tmp_path / "test.hyp")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith("BLEU = ") and "60 sentences" in r.stderr.decode()
    assert len((tmp_path / "test.hyp").read_text().splitlines()) == 60
    assert "warning" not in r.stderr.decode()
    thinned = tmp_path / "thinned"  # a test split of an older prepare, which applied --max-len to it too
    shutil.copytree(tiny_data, thinned)
    info = json.loads((thinned / "dataset.json").read_text())
    info["splits"]["test"]["dropped_long"] = 3
    (thinned / "dataset.json").write_text(json.dumps(info))
    r = run_cli("evaluate", "--model", trained_model, "--data", thinned, "--split", "test", "--steps", "5")
    assert r.returncode == 0 and "test split lost 3 pairs and had 0 cut to --max-len: not the whole test set" \
        in r.stderr.decode()


def test_evaluate_and_generate_refuse_what_they_would_ignore_or_misread(trained_model, trained_ar, tiny_data,
                                                                       tmp_path):
    from difformer.data.prepare import prepare
    from fixtures_train import write_reversal_corpus

    r = run_cli("evaluate", "--model", trained_model, "--ref", tiny_data / "dataset.json")
    assert r.returncode == 2 and "--ref" in r.stderr.decode() and len(r.stderr.decode().splitlines()) == 1
    r = run_cli("generate", "--model", trained_model, "--reranker", trained_ar, stdin=b"red cat\n")
    assert r.returncode == 2 and "only with --selection ar" in r.stderr.decode() and not r.stdout
    raw = write_reversal_corpus(tmp_path / "raw")  # the same corpus, another vocabulary
    prepare(source_lang="src", target_lang="tgt", trainpref=str(raw / "train"), validpref=str(raw / "valid"),
            testpref=str(raw / "test"), destdir=str(tmp_path / "other"), vocab_size=330)
    for command in (("evaluate", "--model", trained_model, "--data", tmp_path / "other", "--steps", "2"),
                    ("analyze", "--model", trained_model, "--data", tmp_path / "other", "--out", tmp_path / "a")):
        r = run_cli(*command)
        err = r.stderr.decode()
        assert r.returncode == 2 and "another tokenizer" in err and "Traceback" not in err, err


def test_train_errors_are_one_line(tmp_path):
    r = run_cli("train", "quickstart", f"train.data={tmp_path}", f"train.save_dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "no dataset.json" in r.stderr.decode()
    assert len(r.stderr.decode().strip().splitlines()) == 1
    r = run_cli("train", "quickstart", "train.lr=fast")
    assert r.returncode == 2 and "train.lr: expected a number" in r.stderr.decode()
    r = run_cli("train", "nosuchpreset")
    assert r.returncode == 2 and "quickstart" in r.stderr.decode()


def test_a_pair_takes_two_values_exactly():
    from difformer.config import load_config

    assert load_config("quickstart", ["train.betas=[0.9,0.99]"]).train.betas == (0.9, 0.99)
    with pytest.raises(DifformerError, match=r"train\.betas: expected 2 values, got 3"):
        load_config("quickstart", ["train.betas=[0.9,0.98,0.5]"])


def test_decode_steps_must_fit_between_T_and_decode_min_t():
    from difformer.config import load_config

    assert load_config("quickstart", ["diffusion.timesteps=100", "decode.steps=90", "decode.min_t=0.1"])
    with pytest.raises(DifformerError, match=r"decode\.steps \(91\) must be <= 90, the diffusion timesteps from "
                                             r"T-1 down to decode\.min_t T = 10"):
        load_config("quickstart", ["diffusion.timesteps=100", "decode.steps=91", "decode.min_t=0.1"])


def test_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from difformer.config import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()  # what `difformer quickstart` leaves in the working directory
    assert load_config("quickstart").model.d_model == 128


def test_every_preset_loads_and_the_summary_presets_choose_by_rouge():
    from difformer.config import PRESETS, load_config

    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    assert {"aeslc", "aeslc-ar", "multi30k", "multi30k-ar"} <= set(names)
    for name in names:
        load_config(name).validate()
    for name in ("aeslc", "aeslc-ar"):
        cfg = load_config(name)
        assert cfg.train.valid_metric == "rouge"
    # bench/aeslc.py --side-by-side prepares emails for the teacher's positions: the Difformer's may not be more
    assert load_config("aeslc").model.max_positions == 64 <= load_config("aeslc-ar").model.max_positions == 128
    assert not load_config("aeslc").model.length_offset and load_config("aeslc-ar").decode.max_len_a == 0
