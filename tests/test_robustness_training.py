"""Training under crashes and signals, damaged checkpoints, failing disks and non-finite numbers.

The subprocess tests run the real `difformer train` command with one thread each (OMP_NUM_THREADS=1), so
that every run computes bit-identical floating point and a resumed run can be compared tensor by tensor
with an uninterrupted one.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from difformer import checkpoint, hub
from difformer.cli import main
from difformer.config import save_config
from difformer.data.prepare import prepare
from difformer.errors import DifformerError
from difformer.train import Trainer, train
from fixtures_train import tiny_config

UPDATES, EVERY = 24, 4  # a run of the subprocess tests: 24 updates, a checkpoint every 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "difformer.cli", "train", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode()


def write_config(tiny_data: Path, run: Path, **train_options) -> Path:
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(tiny_data, run, max_updates=UPDATES, validate_every=EVERY, log_every=1, **train_options)
    path = run.parent / f"{run.name}.yaml"
    save_config(cfg, path)
    return path


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def logged_update(run: Path) -> int:
    """The last update the run has logged so far (0 before the first)."""
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["update"] for line in lines if line.endswith("}")), default=0)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1].decode()}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.01)


def assert_same_final_checkpoint(a: Path, b: Path, update: int = UPDATES) -> None:
    name = f"update_{update:07d}"
    assert json.loads((b / "checkpoints" / "last.json").read_text())["checkpoint"] == name
    for file in ("model.safetensors", "trainer.safetensors"):
        x, y = load_file(a / "checkpoints" / name / file), load_file(b / "checkpoints" / name / file)
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), f"{file}:{k} differs from the uninterrupted run"


def assert_no_partial_writes(run: Path) -> None:
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []
    log_records(run)  # every line parses


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted run through the command line."""
    run = tmp_path_factory.mktemp("ref") / "run"
    code, err = finish(start(write_config(tiny_data, run)))
    assert code == 0, err
    return run


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_point_then_resume_gives_the_uninterrupted_parameters(reference, tiny_data,
                                                                                   tmp_path, seed):
    rng = random.Random(seed)
    run = tmp_path / "run"
    kill_after = rng.randint(EVERY + 1, UPDATES - 2 * EVERY)  # after the first checkpoint, well before the end
    proc = start(write_config(tiny_data, run), "train.max_updates=100000")  # cannot finish before the kill
    wait_for(lambda: (run / "checkpoints" / "last.json").exists() and logged_update(run) >= kill_after, proc)
    time.sleep(rng.uniform(0, 0.2))  # anywhere: in an update, a validation, a checkpoint write
    proc.kill()
    proc.wait()
    killed_at = logged_update(run)

    code, err = finish(start(run / "config.yaml", "--resume", f"train.max_updates={UPDATES}"))
    assert code == 0, err
    assert_same_final_checkpoint(reference, run)
    assert_no_partial_writes(run)
    resumed = [r for r in log_records(run) if "resumed_from" in r]
    assert len(resumed) == 1
    start_update = resumed[0]["update"]
    assert resumed[0]["resumed_from"] == f"update_{start_update:07d}" and start_update % EVERY == 0
    assert 0 <= killed_at - start_update <= EVERY  # only the updates since the last checkpoint are redone
    trained = [r["update"] for r in log_records(run) if "tokens_per_second" in r]  # log_every 1
    assert trained == list(range(1, UPDATES + 1))  # each once: the killed run's records after the checkpoint went


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_exit_128_plus_signal_and_resume(reference, tiny_data, tmp_path,
                                                                              sig, code):
    run = tmp_path / "run"
    proc = start(write_config(tiny_data, run))
    wait_for(lambda: logged_update(run) >= 2, proc)
    proc.send_signal(sig)
    returncode, err = finish(proc)
    assert returncode == code, err
    assert "Traceback" not in err
    stopped = json.loads((run / "checkpoints" / "last.json").read_text())["update"]
    assert f"stopped by {sig.name} at update {stopped}; checkpoint saved" in err
    assert f"difformer train {run / 'config.yaml'} --resume" in err
    assert 2 <= stopped < UPDATES and not (run / "model").exists()

    returncode, err = finish(start(run / "config.yaml", "--resume"))
    assert returncode == 0, err
    assert_same_final_checkpoint(reference, run)
    assert (run / "model" / "model.safetensors").is_file()


# ---- crashes inside a checkpoint write, simulated in-process at fixed points ----------------------------

class Crash(BaseException):
    """Stands for the process dying: not an OSError, so nothing is cleaned up on the way out."""


def crash_on(monkeypatch, module, function: str, when) -> None:
    """`module.function` (where its caller looks it up) raises Crash when `when(its first path)`."""
    real = getattr(module, function)

    def fake(*args):
        if when(next(Path(a) for a in args if isinstance(a, (str, Path)))):
            raise Crash
        return real(*args)
    monkeypatch.setattr(module, function, fake)


@pytest.mark.parametrize("point", ["writing trainer.safetensors", "writing last.json"])
def test_crash_inside_a_checkpoint_write_leaves_last_json_on_a_complete_one(tiny_data, tmp_path, monkeypatch,
                                                                           point):
    straight = tmp_path / "straight"
    train(tiny_config(tiny_data, straight, max_updates=8, validate_every=4))
    run = tmp_path / "run"
    if point == "writing trainer.safetensors":
        crash_on(monkeypatch, hub, "save_weights", lambda p: p.name == "trainer.safetensors" and "0000008" in str(p))
    else:
        crash_on(monkeypatch, checkpoint, "write_json", lambda p: p.name == "last.json" and (p.parent / "update_0000008").exists())
    with pytest.raises(Crash):
        train(tiny_config(tiny_data, run, max_updates=8, validate_every=4))
    monkeypatch.undo()
    assert json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"] == "update_0000004"
    train(tiny_config(tiny_data, run, max_updates=8, validate_every=4), resume=True)
    assert_same_final_checkpoint(straight, run, update=8)
    assert_no_partial_writes(run)


def test_disk_full_at_checkpoint_time_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    real = hub.save_weights

    def full_disk(state, path):
        if "0000008" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(state, path)

    monkeypatch.setattr(hub, "save_weights", full_disk)
    run = tmp_path / "run"
    with pytest.raises(DifformerError, match=r"update_0000008: checkpoint not written \(No space left on device\); "
                                             r"the previous checkpoint, update_0000004, is intact"):
        train(tiny_config(tiny_data, run, max_updates=8, validate_every=4))
    assert json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"] == "update_0000004"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.json", "update_0000004"]
    monkeypatch.undo()
    train(tiny_config(tiny_data, run, max_updates=8, validate_every=4), resume=True)  # space freed: go on
    assert (run / "model" / "model.safetensors").is_file()


# ---- damaged checkpoints and other configs on --resume, through the command line -----------------------

@pytest.fixture(scope="module")
def stopped_run(tiny_data, tmp_path_factory) -> Path:
    """A run with checkpoints at updates 2 and 4, to copy and damage."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train(tiny_config(tiny_data, run, max_updates=4, validate_every=2))
    return run


def copy_run(stopped_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    return run


def resume_cli(run: Path, capsys, *overrides: str) -> tuple[int, str]:
    code = main(["train", str(run / "config.yaml"), "--resume", f"train.save_dir={run}", *overrides])
    return code, capsys.readouterr().err


DAMAGE = [
    ("state.json garbage", "update_0000004/state.json", b"{\"state\": ", "state.json: damaged checkpoint"),
    ("state.json missing", "update_0000004/state.json", None, "state.json: damaged checkpoint"),
    ("state.json wrong fields", "update_0000004/state.json", None, "damaged checkpoint (TypeError"),
    ("trainer.safetensors truncated", "update_0000004/trainer.safetensors", b"\x10\x00", "not a readable safetensors"),
    ("model.safetensors garbage", "update_0000004/model.safetensors", b"\xff" * 99, "not a readable safetensors"),
    ("last.json garbage", "last.json", b"{", "last.json: unreadable"),
    ("last.json escapes", "last.json", b'{"checkpoint": "../../etc"}', "not a checkpoint directory"),
    ("checkpoint gone", "update_0000004", None, "checkpoint named by last.json is missing"),
]


@pytest.mark.parametrize("why, name, data, words", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_checkpoint_on_resume_is_one_clear_line(stopped_run, tmp_path, capsys, why, name, data, words):
    run = copy_run(stopped_run, tmp_path)
    target = run / "checkpoints" / name
    if why == "state.json wrong fields":
        meta = json.loads(target.read_text())
        meta["state"]["surprise"] = 1
        target.write_text(json.dumps(meta))
    elif data is None:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:
        target.write_bytes(data)
    code, err = resume_cli(run, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert words in err, err
    if name.startswith("update_0000004"):
        assert "write its name into checkpoints/last.json (present: update_0000002" in err, err


def test_optimizer_moments_of_the_wrong_shape_are_found_at_load_not_at_the_first_step(stopped_run, tmp_path,
                                                                                     capsys):
    run = copy_run(stopped_run, tmp_path)
    path = run / "checkpoints" / "update_0000004" / "trainer.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[key] = torch.zeros(3)
    save_file(tensors, path)
    code, err = resume_cli(run, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "damaged checkpoint (ValueError: optimizer exp_avg has shape (3,)" in err and "present: update_0000002" in err


def test_resume_with_another_config_names_the_keys_and_budgets_may_change(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    code, err = resume_cli(run, capsys, "train.lr=0.1", "model.dropout=0.2")
    assert code == 2 and err.count("\n") == 1 and "differing keys: model.dropout, train.lr" in err, err
    code, err = resume_cli(run, capsys, "train.max_updates=6", "train.max_bad_updates=3")
    assert code == 0, err
    assert json.loads((run / "checkpoints" / "last.json").read_text())["update"] == 6


def test_half_written_log_line_of_a_killed_run_is_cut_on_resume(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"update": 5, "lo')
    (run / "checkpoints" / ".update_0000006.tmp").mkdir()
    assert resume_cli(run, capsys, "train.max_updates=6")[0] == 0
    assert_no_partial_writes(run)


def test_a_second_signal_stops_at_once(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r"))
    trainer._on_signal(signal.SIGTERM, None)
    assert trainer.stop_signal == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):  # the CLI prints "interrupted" and exits 130
        trainer._on_signal(signal.SIGINT, None)


# ---- resources -------------------------------------------------------------------------------------

def test_unwritable_save_dir_fails_before_training(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    config = tmp_path / "c.yaml"
    save_config(tiny_config(tiny_data, blocker / "run"), config)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write there (Not a directory)" in err, err


def test_unwritable_log_stops_with_one_line(tiny_data, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "log.jsonl").mkdir()  # opening it for appending fails like a full or read-only disk
    with pytest.raises(DifformerError, match=r"log\.jsonl: cannot write \(Is a directory\)"):
        train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, log_every=1))


def test_disk_full_when_writing_the_final_model_then_resume_writes_it(tiny_data, tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hub, "save_pretrained", full_disk)
    with pytest.raises(DifformerError, match=r"model: model directory not written \(No space left on device\); "
                                             r"the checkpoints are intact.*--resume"):
        train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2))
    monkeypatch.undo()
    assert train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2), resume=True).is_dir()


def test_max_tokens_too_small_names_the_split_pair_and_size(tiny_data, tmp_path):
    with pytest.raises(DifformerError, match=r"train pair \d+ needs \d+ tokens .*train\.max_tokens 5; "
                                             r"set train\.max_tokens=\d+"):
        Trainer(tiny_config(tiny_data, tmp_path / "r", max_tokens=5))
    corpus = tmp_path / "corpus"  # short training pairs, one long validation pair
    corpus.mkdir()
    for split, lines in (("train", ["red cat", "sun", "blue moon"] * 5), ("valid", ["red " * 12 + "cat"])):
        for side in ("src", "tgt"):
            (corpus / f"{split}.{side}").write_text("".join(line + "\n" for line in lines))
    data = tmp_path / "data"
    prepare(source_lang="src", target_lang="tgt", trainpref=str(corpus / "train"), validpref=str(corpus / "valid"),
            destdir=str(data), tokenizer=str(tiny_data / "tokenizer.model"))
    with pytest.raises(DifformerError, match=r"^valid pair 0 needs (\d+) tokens .*train\.max_tokens=\1 or more"):
        Trainer(tiny_config(data, tmp_path / "r2", max_tokens=8))


# ---- non-finite numbers under bf16 autocast ----------------------------------------------------------

def test_non_finite_gradients_under_bf16_are_skipped_logged_and_training_goes_on(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", max_updates=6, validate_every=6, precision="bf16"))
    assert trainer.precision == "bf16"
    bad = {"left": 3}

    def poison(grad):  # the first 3 backward passes give an infinite gradient, the loss stays finite
        if bad["left"] > 0:
            bad["left"] -= 1
            return grad * float("inf")
        return grad
    trainer.model.embed.weight.register_hook(poison)
    trainer.train()
    records = log_records(tmp_path / "r")
    skipped = [r for r in records if "skipped_update" in r]
    assert [r["skipped_update"] for r in skipped] == [1, 1, 1]
    assert all(r["grad_norm"] != r["grad_norm"] or r["grad_norm"] == float("inf") for r in skipped)
    assert trainer.state.update == 6 and trainer.state.bad_steps == 0


