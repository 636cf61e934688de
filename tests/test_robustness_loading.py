"""Hostile or damaged model directories reach the user as one line and exit code 2, never a traceback."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from difformer.cli import main
from difformer.config import Config, DecodeConfig, ModelConfig
from difformer.data.tokenizer import Tokenizer
from difformer.hub import save_pretrained
from difformer.model.difformer import Difformer


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model_dir(tokenizer_path: Path, directory: Path, max_positions: int = 32) -> Path:
    """An untrained tiny model directory: built in milliseconds, enough to exercise loading and decoding."""
    tok = Tokenizer(tokenizer_path)
    model_cfg = ModelConfig(vocab_size=tok.vocab_size, embed_dim=8, d_model=16, n_heads=2, ffn_dim=32,
                            enc_layers=1, dec_layers=1, dropout=0.0, max_positions=max_positions)
    config = Config(model=model_cfg, decode=DecodeConfig(steps=2)).validate()
    torch.manual_seed(0)
    save_pretrained(Difformer(model_cfg), config, tokenizer_path, None, directory)
    return directory


@pytest.fixture(scope="module")
def good_model(tiny_data, tmp_path_factory) -> Path:
    return make_model_dir(tiny_data / "tokenizer.model", tmp_path_factory.mktemp("m") / "model")


def edit_config(edit):
    def apply(d: Path):
        config = json.loads((d / "config.json").read_text())
        edit(config)
        (d / "config.json").write_text(json.dumps(config))
    return apply


def truncate(name: str):
    def apply(d: Path):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    return apply


def write(name: str, data: bytes):
    return lambda d: (d / name).write_bytes(data)


def retype_weights(d: Path):
    from safetensors.torch import load_file
    state = load_file(d / "model.safetensors")
    save_file({k: v.half() for k, v in state.items()}, d / "model.safetensors")


def drop_tensor(d: Path):
    from safetensors.torch import load_file
    state = load_file(d / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, d / "model.safetensors")


# (what is wrong, how to make it so, words the one-line message must hold)
BAD_DIRECTORIES = [
    ("pickle file beside the weights", write("pytorch_model.bin", b"\x80\x04K\x01."), "pickle"),
    ("truncated weights", truncate("model.safetensors"), "not a readable safetensors"),
    ("garbage weights", write("model.safetensors", b"\xff" * 64), "not a readable safetensors"),
    ("empty weights", write("model.safetensors", b""), "not a readable safetensors"),
    ("header claims 1 TB", write("model.safetensors", (1 << 40).to_bytes(8, "little") + b"{}"),
     "not a readable safetensors"),
    ("a tensor missing", drop_tensor, "missing"),
    ("fp16 tensors", retype_weights, "F16"),
    ("config not JSON", write("config.json", b"{not json"), "not a readable JSON config"),
    ("config not UTF-8", write("config.json", b"\xff\xfe{}"), "not a readable JSON config"),
    ("config a list", write("config.json", b"[1, 2]"), "expected a mapping"),
    ("unknown key", edit_config(lambda c: c["model"].update(bogus=1)), "unknown key(s) bogus"),
    ("unknown section", edit_config(lambda c: c.update(extra={})), "unknown section(s) extra"),
    ("wrong type", edit_config(lambda c: c["model"].update(d_model="big")), "expected int"),
    ("bool for int", edit_config(lambda c: c["decode"].update(steps=True)), "expected int"),
    ("d not divisible by heads", edit_config(lambda c: c["model"].update(n_heads=5)), "divisible"),
    ("zero heads", edit_config(lambda c: c["model"].update(n_heads=0)), "n_heads must be positive"),
    ("vocab mismatch", edit_config(lambda c: c["model"].update(vocab_size=c["model"]["vocab_size"] + 1)),
     "tokenizer"),
    ("shapes of another model", edit_config(lambda c: c["model"].update(d_model=32)), "shape"),
    ("huge config, small file", edit_config(lambda c: c["model"].update(d_model=1 << 16, ffn_dim=1 << 20)),
     "shape"),
    ("tokenizer garbage", write("tokenizer.model", b"not a model"), "not a sentencepiece model"),
    ("tokenizer missing", lambda d: (d / "tokenizer.model").unlink(), "missing tokenizer.model"),
    ("weights missing", lambda d: (d / "model.safetensors").unlink(), "missing model.safetensors"),
    ("bad decode default", edit_config(lambda c: c["decode"].update(steps=0)), "decode.steps"),
]


@pytest.mark.parametrize("why, damage, words", BAD_DIRECTORIES, ids=[b[0] for b in BAD_DIRECTORIES])
def test_damaged_model_directory_is_one_line_and_exit_2(good_model, tmp_path, capsys, why, damage, words):
    bad = tmp_path / "bad"
    shutil.copytree(good_model, bad)
    damage(bad)
    code = main(["generate", "--model", str(bad), "--input", "-"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("difformer generate: error: "), err
    assert words in err, err


def test_not_a_directory_and_empty_directory(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--model", str(tmp_path / "empty")]) == 2
    assert "missing config.json" in capsys.readouterr().err


def test_real_command_prints_no_traceback_for_a_pickle_or_truncated_weights(good_model, tmp_path):
    for name, damage in (("pickle", write("model.pt", b"\x80\x04K\x01.")), ("trunc", truncate("model.safetensors"))):
        bad = tmp_path / name
        shutil.copytree(good_model, bad)
        damage(bad)
        r = subprocess.run([sys.executable, "-m", "difformer.cli", "generate", "--model", str(bad)],
                           input=b"red cat\n", capture_output=True, timeout=120)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert r.stdout == b""


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "dataset.json").write_text("{}"), "dataset.json: damaged"),
    (lambda d: (d / "dataset.json").write_text(json.dumps({**json.loads((d / "dataset.json").read_text()),
                                                           "dtype": 7})), "dataset.json: damaged"),
    (lambda d: (d / "test.src.idx").write_bytes(b""), "the index is empty"),
])
def test_a_damaged_prepared_directory_is_one_error(tiny_data, tmp_path, damage, words):
    from difformer.data.binarize import PairDataset
    from difformer.errors import DifformerError

    bad = tmp_path / "data"
    shutil.copytree(tiny_data, bad)
    damage(bad)
    with pytest.raises(DifformerError, match=words):
        PairDataset(bad, "test")


def test_an_unknown_precision_is_refused(good_model):
    from difformer.errors import DifformerError
    from difformer.generate import load

    with pytest.raises(DifformerError, match="precision must be auto, fp32 or bf16, not 'fp16'"):
        load(good_model, device="cpu", precision="fp16")
