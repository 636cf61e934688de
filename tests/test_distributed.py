"""Data-parallel training on the CPU (gloo, 2 processes): the same parameters as one process accumulating
the same batches, one writer, all ranks stopping together, exact resume, and a rank that dies."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difformer.config import save_config
from difformer.train import train
from fixtures_train import tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(cfg, path: Path) -> Path:
    save_config(cfg, path)
    return path


class Ranks:
    """`difformer train` started once per rank with the environment torchrun would give it."""

    def __init__(self, config: Path, logs: Path, *args: str, world: int = 2):
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        self.errs = [logs / f"rank{r}.err" for r in range(world)]
        self.procs = []
        for r in range(world):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
                   "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(world),
                   "OMP_NUM_THREADS": "1"}
            with open(self.errs[r], "w") as err:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "difformer.cli", "train", str(config),
                                                    "--device", "cpu", "--threads", "1", *args],
                                                   env=env, stdout=subprocess.DEVNULL, stderr=err))

    def wait(self, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                raise AssertionError(f"ranks still running after {timeout}s: {self.stderr()}")
        return codes

    def stderr(self) -> str:
        return "\n".join(f"--- rank {r}\n{e.read_text()}" for r, e in enumerate(self.errs))


def logged_update(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.is_file():
        return 0
    updates = [json.loads(line).get("update", 0) for line in log.read_text().splitlines() if line.endswith("}")]
    return max(updates, default=0)


def weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / name / "model.safetensors")


def test_two_ranks_match_one_process_accumulating_the_same_batches(tiny_data, tmp_path):
    """torchrun (through --nproc 2): rank r takes batches r, r + 2, ...; one process with update_freq 2
    takes them in pairs. Deterministic model (autoregressive, no dropout): the same parameters."""
    overrides = dict(arch="transformer", precision="fp32")
    one = tiny_config(tiny_data, tmp_path / "one", max_updates=6, validate_every=3, update_freq=2, **overrides)
    one.model.dropout = 0.0
    train(one, device="cpu")
    two = tiny_config(tiny_data, tmp_path / "two", max_updates=6, validate_every=3, **overrides)
    two.model.dropout = 0.0
    r = subprocess.run([sys.executable, "-m", "difformer.cli", "train", str(write_config(two, tmp_path / "two.yaml")),
                        "--nproc", "2", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the gradients are summed in another order (all-reduce against accumulation): float rounding, which
    # Adam's division by the running RMS lifts to ~1e-5 here (the logged loss and gradient norm are equal)
    for name in ("update_0000003", "update_0000006"):
        a, b = weights(tmp_path / "one", name), weights(tmp_path / "two", name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4, name
    logged = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    curves = [[(x["update"], round(x["loss"], 4), round(x["grad_norm"], 3)) for x in log if "grad_norm" in x]
              for log in logged]
    assert curves[0] == curves[1] and curves[0]
    state = json.loads((tmp_path / "two" / "checkpoints" / "update_0000006" / "state.json").read_text())["state"]
    assert state["world_size"] == 2 and (state["epoch"], state["batch"]) == (0, 6)  # 6 batches per rank
    # rank 0 alone writes: each record once, one TensorBoard file, the final model
    log = logged[1]
    assert sum("valid_loss" in x for x in log) == 2  # each validation once
    assert [x["processes"] for x in log if "processes" in x] == [2]
    assert len(list((tmp_path / "two" / "tb").iterdir())) == 1
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    assert r.stdout.count("model directory:") == 1


@pytest.mark.parametrize("time_sampling", ["uniform", "loss"])  # loss: a history the ranks agree on
def test_sigterm_to_one_rank_stops_both_after_one_checkpoint_and_resume_is_exact(tiny_data, tmp_path, time_sampling):
    cfg = tiny_config(tiny_data, tmp_path / "stopped", max_updates=150, validate_every=1000, log_every=1,
                      precision="fp32")
    cfg.diffusion.time_sampling = time_sampling
    ranks = Ranks(write_config(cfg, tmp_path / "stopped.yaml"), tmp_path / "logs1")
    deadline = time.monotonic() + 120
    while logged_update(tmp_path / "stopped") < 5:
        assert time.monotonic() < deadline and all(p.poll() is None for p in ranks.procs), ranks.stderr()
        time.sleep(0.05)
    ranks.procs[1].send_signal(signal.SIGTERM)
    assert ranks.wait() == [143, 143], ranks.stderr()
    saved = sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").glob("update_*"))
    assert len(saved) == 1 and 5 <= int(saved[0][7:]) < 150
    assert "stopped by SIGTERM" in ranks.errs[0].read_text()

    one = subprocess.run([sys.executable, "-m", "difformer.cli", "train", str(tmp_path / "stopped" / "config.yaml"),
                          "--resume", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert one.returncode == 2 and "written by 2 process(es), resumed with 1" in one.stderr
    assert one.stderr.strip().count("\n") == 0

    resumed = Ranks(tmp_path / "stopped" / "config.yaml", tmp_path / "logs2", "--resume")
    assert resumed.wait() == [0, 0], resumed.stderr()
    straight_cfg = tiny_config(tiny_data, tmp_path / "straight", max_updates=150, validate_every=1000, log_every=1,
                               precision="fp32")
    straight_cfg.diffusion.time_sampling = time_sampling
    straight = Ranks(write_config(straight_cfg, tmp_path / "straight.yaml"), tmp_path / "logs3")
    assert straight.wait() == [0, 0], straight.stderr()
    a, b = weights(tmp_path / "stopped", "update_0000150"), weights(tmp_path / "straight", "update_0000150")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = load_file(tmp_path / "stopped" / "checkpoints" / "update_0000150" / "trainer.safetensors")
    assert {"rng", "rng.1"} <= set(ta)  # each rank's random stream


def test_a_rank_that_dies_makes_the_other_exit_with_a_clear_error(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "r", max_updates=100000, validate_every=100000, log_every=1,
                      precision="fp32")
    ranks = Ranks(write_config(cfg, tmp_path / "r.yaml"), tmp_path / "logs", "--dist-timeout", "0.5")
    deadline = time.monotonic() + 120
    while logged_update(tmp_path / "r") < 3:
        assert time.monotonic() < deadline and all(p.poll() is None for p in ranks.procs), ranks.stderr()
        time.sleep(0.05)
    ranks.procs[1].kill()
    start = time.monotonic()
    codes = ranks.wait(timeout=120)
    assert codes[0] == 2 and time.monotonic() - start < 60, ranks.stderr()
    err = ranks.errs[0].read_text().strip().splitlines()
    assert "rank 0: lost the other processes of this run" in err[-1]


def test_nproc_is_refused_when_it_cannot_work(tiny_data, tmp_path, monkeypatch, capsys):
    from difformer.cli import main

    config = write_config(tiny_config(tiny_data, tmp_path / "r"), tmp_path / "r.yaml")
    assert main(["train", str(config), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(config), "--nproc", "2"]) == 2
    assert "under torchrun already" in capsys.readouterr().err
