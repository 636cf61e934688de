"""The benchmark scripts' own rules (bench/ is not a package: loaded from its files)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "bench" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_refuses_to_add_arms_to_a_batch_of_another_machine(monkeypatch, tmp_path):
    sweep = _sweep()
    recorded = {"batches": {"b": {"control": {"machine": "Xeon, 2 cores"}}}}
    monkeypatch.setattr(sweep, "load_results", lambda name: recorded)
    monkeypatch.setattr(sweep, "machine", lambda: "EPYC, 2 cores")
    monkeypatch.setattr(sweep, "prepared", lambda *a: pytest.fail("trained beside another machine's control"))
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "b", "--arms", "dropout-0", "--work", str(tmp_path)])
    with pytest.raises(SystemExit, match="batch b ran on Xeon, 2 cores, this is EPYC, 2 cores: name a new --tag"):
        sweep.main()
    recorded["batches"]["c"] = {"dropout-0": {"machine": "Xeon, 2 cores"}}  # the control would run here
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "c", "--arms", "dropout-0", "--work", str(tmp_path)])
    with pytest.raises(SystemExit, match="batch c ran on Xeon"):
        sweep.main()
    # a batch whose every arm is recorded only reports, wherever it ran
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "b", "--arms", "control", "--work", str(tmp_path)])
    monkeypatch.setattr(sweep, "prepared", lambda *a: tmp_path)
    sweep.main()
