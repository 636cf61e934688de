"""Shared fixtures: the corpora in ../shared/data (skipped when absent) and small parallel files on disk."""
from __future__ import annotations

from pathlib import Path

import pytest
from num2words import num2words

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """Prefix directory of Multi30k (train/valid/test .de/.en)."""
    path = SHARED_DATA / "multi30k"
    if not (path / "train.de").is_file():
        pytest.skip(f"Multi30k not found at {path} (the shared corpora are not on this machine)")
    return path


def write_pair(prefix: Path, src: bytes | str, tgt: bytes | str, langs: tuple[str, str] = ("fr", "en")) -> Path:
    """Write PREFIX.fr and PREFIX.en as given (bytes are written verbatim) and return the prefix."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for lang, text in zip(langs, (src, tgt)):
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        Path(f"{prefix}.{lang}").write_bytes(data)
    return prefix


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    """A small French -> English corpus (train 300, valid 20 pairs) under tmp_path/corpus/."""
    for split, nums in (("train", range(300)), ("valid", range(1000, 1020))):
        write_pair(tmp_path / "corpus" / split, "".join(num2words(n, lang="fr") + "\n" for n in nums),
                   "".join(num2words(n) + "\n" for n in nums))
    return tmp_path / "corpus"


@pytest.fixture
def one_thread():
    """One torch thread: tiny models are fastest so, and two threads fight any other job for 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def cpu_unless_a_gpu_test(request, monkeypatch):
    """`--device auto` takes a GPU when there is one; the suite's exactness tests are CPU tests, so on a GPU
    machine every test outside test_gpu.py sees none (and so do the commands it starts)."""
    if request.node.path.name != "test_gpu.py":
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


from fixtures_train import tiny_data, trained_ar, trained_model  # noqa: E402,F401  (shared by the training/CLI tests)
