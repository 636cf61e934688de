"""Fixtures for the training, model-directory and CLI tests: a tiny prepared corpus and a trained model."""
import random
from pathlib import Path

import pytest

from difformer.config import Config, DecodeConfig, DiffusionConfig, ModelConfig, TrainConfig
from difformer.data.prepare import prepare

WORDS = "red green blue cat dog sun moon tree river stone fire wind".split()


def write_reversal_corpus(folder: Path, seed: int = 0) -> Path:
    """Word sequences and their reversals: a task small enough to learn in seconds."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 2000), ("valid", 60), ("test", 60)):
        src = [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(n)]
        (folder / f"{split}.src").write_text("".join(s + "\n" for s in src))
        (folder / f"{split}.tgt").write_text("".join(" ".join(s.split()[::-1]) + "\n" for s in src))
    return folder


def tiny_config(data: Path, save_dir: Path, arch: str = "difformer", **train) -> Config:
    model = ModelConfig(arch=arch, embed_dim=16, d_model=64, n_heads=4, ffn_dim=128, enc_layers=1, dec_layers=1,
                        dropout=0.1, max_positions=32)
    t = TrainConfig(data=str(data), save_dir=str(save_dir), lr=2e-3, warmup_updates=20, max_tokens=600,
                    max_updates=20, validate_every=10, valid_bleu_sentences=20, keep_best=2, log_every=5)
    for k, v in train.items():
        setattr(t, k, v)
    return Config(model=model, diffusion=DiffusionConfig(), train=t, decode=DecodeConfig(steps=5)).validate()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    corpus = write_reversal_corpus(root / "corpus")
    dest = root / "data"
    prepare(source_lang="src", target_lang="tgt", trainpref=str(corpus / "train"),
            validpref=str(corpus / "valid"), testpref=str(corpus / "test"), destdir=str(dest), vocab_size=300)
    return dest


@pytest.fixture(scope="session")
def trained_model(tiny_data, tmp_path_factory) -> Path:
    """A tiny model trained for 150 updates: enough to beat chance clearly, a few seconds on CPU."""
    from difformer.train import train

    save = tmp_path_factory.mktemp("run") / "run"
    return train(tiny_config(tiny_data, save, max_updates=150, validate_every=50), device="cpu")


@pytest.fixture(scope="session")
def trained_ar(tiny_data, tmp_path_factory) -> Path:
    """A tiny autoregressive model (the teacher) trained on the same data for 600 updates (a few seconds)."""
    from difformer.train import train

    save = tmp_path_factory.mktemp("run-ar") / "run"
    return train(tiny_config(tiny_data, save, arch="transformer", max_updates=600, validate_every=200), device="cpu")
