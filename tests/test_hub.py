"""Model directories: save/load equality, and safe refusal of anything that is not ours."""
import json
import shutil

import pytest
import torch

import difformer
from difformer.errors import DifformerError
from difformer.hub import from_pretrained, save_pretrained


@pytest.fixture
def model_dir(trained_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    return copy


def test_save_then_load_gives_identical_weights_and_outputs(model_dir, tmp_path):
    model, config, tok = from_pretrained(model_dir)
    again = tmp_path / "again"
    save_pretrained(model, config, model_dir / "tokenizer.model", model_dir / "dataset.json", again)
    model2, config2, tok2 = from_pretrained(again)
    assert config2.to_dict() == config.to_dict() and tok2.vocab_size == tok.vocab_size
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    texts = ["red cat blue", "sun moon"]
    assert difformer.load(model_dir).generate(texts, seed=3) == difformer.load(again).generate(texts, seed=3)


def test_written_files_and_directories_get_a_plain_open_and_mkdirs_permissions(model_dir, tmp_path):
    import os
    import stat

    from difformer.files import write_atomic

    out = tmp_path / "written"
    out.mkdir()
    old = os.umask(0o022)
    try:
        model, config, _ = from_pretrained(model_dir)
        save_pretrained(model, config, model_dir / "tokenizer.model", None, out / "saved")
        save_pretrained(model, config, model_dir / "tokenizer.model", None, out / "saved")  # over the old one
        write_atomic(out / "out.txt", lambda p: p.write_text("x\n"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "saved").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "out.txt").stat().st_mode) == 0o644
    assert sorted(p.name for p in out.iterdir()) == ["out.txt", "saved"]  # no old copy left beside


def test_pickle_file_is_refused(model_dir):
    (model_dir / "model.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(DifformerError, match="pickle"):
        from_pretrained(model_dir)


def test_truncated_or_tampered_weights_give_one_clear_error(model_dir):
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(DifformerError, match="safetensors"):
        from_pretrained(model_dir)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(DifformerError, match="safetensors"):
        from_pretrained(model_dir)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(bogus=1), "unknown key"),
    (lambda c: c["model"].update(d_model="big"), "expected int"),
    (lambda c: c["model"].update(n_heads=5), "divisible"),
    (lambda c: c["model"].update(vocab_size=c["model"]["vocab_size"] + 1), "tokenizer"),
    (lambda c: c["model"].update(d_model=32, n_heads=4), "shape"),
])
def test_bad_configs_are_refused(model_dir, edit, message):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(DifformerError, match=message):
        from_pretrained(model_dir)


def test_missing_files_are_named(model_dir, tmp_path):
    (model_dir / "tokenizer.model").unlink()
    with pytest.raises(DifformerError, match="tokenizer.model"):
        from_pretrained(model_dir)
    with pytest.raises(DifformerError, match="no such model directory"):
        from_pretrained(tmp_path / "nowhere")


def test_a_model_of_lowercased_data_lowercases_its_inputs(model_dir):
    """`prepare --lowercase` is recorded in the model's dataset.json; generate and serve read it, or the
    model would meet cased subwords it never trained on."""
    texts = ["RED Cat blue", "red cat blue"]
    cased = difformer.load(model_dir)
    assert cased.tokenize(texts)[0] != cased.tokenize(texts)[1]  # the test shows something
    info = json.loads((model_dir / "dataset.json").read_text())
    info["options"]["lowercase"] = True
    (model_dir / "dataset.json").write_text(json.dumps(info))
    lowered = difformer.load(model_dir)
    assert lowered.tokenize(texts)[0] == lowered.tokenize(texts)[1] == cased.tokenize(texts)[1]
    assert lowered.generate(texts[:1], seed=3) == cased.generate(texts[1:], seed=3)
    (model_dir / "dataset.json").write_text("{")
    with pytest.raises(DifformerError, match="dataset.json: not a dataset.json written by difformer prepare"):
        difformer.load(model_dir)
