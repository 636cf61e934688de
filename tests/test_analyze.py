"""`difformer analyze`: the embedding-norm numbers by hand, the trajectory against `generate`, every file
written by the command, and the ablation's runs switching exactly the modules they name."""
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from difformer import hub
from difformer.analyze import (analyze, embedding_norms, norm_by_count, read_log, settle_step, spearman,
                               trajectory)
from difformer.config import DecodeConfig, ModelConfig
from difformer.data.binarize import PairDataset
from difformer.errors import DifformerError
from difformer.generate import decode_ids, load
from difformer.metrics import corpus_bleu
from difformer.model.difformer import Difformer

ROOT = Path(__file__).resolve().parents[1]


def untrained(embed_norm: str) -> Difformer:
    torch.manual_seed(0)
    return Difformer(ModelConfig(vocab_size=20, embed_dim=8, d_model=16, n_heads=2, ffn_dim=32, enc_layers=1,
                                 dec_layers=1, max_positions=16, embed_norm=embed_norm))


@pytest.mark.parametrize("placement", ["input", "before_noise", "none"])
def test_embedding_norms_by_hand(placement):
    model = untrained(placement)
    with torch.no_grad():  # unequal token norms (as frequency makes them), and a decoder input they dominate
        model.embed.weight.mul_(torch.linspace(0.2, 5.0, 20)[:, None])
        for layer in (model.proj_in, model.in_mlp[0], model.in_mlp[2]):
            torch.nn.init.normal_(layer.weight, std=0.5)
    norms = embedding_norms(model)
    expected = (model.embed.weight * math.sqrt(8)).norm(dim=-1).detach().numpy()
    np.testing.assert_allclose(norms["embedding"], expected, rtol=1e-5)
    if placement == "none":
        assert set(norms) == {"embedding"}
        return
    # a fresh LayerNorm (gain 1, bias 0) gives every token nearly the norm sqrt(width): unequal norms even out
    width = 16 if placement == "input" else 8
    after, before = norms["after_norm"], norms["before_norm"]
    assert after.max() <= math.sqrt(width) and after.std() < 1e-3 * after.mean()
    assert before.std() > 0.2 * before.mean()


def test_norm_by_count_buckets():
    counts = np.array([0, 0, 1, 5, 5, 2000, 7])
    norm = np.array([9.0, 1.0, 2.0, 3.0, 5.0, 8.0, 100.0])
    assert norm_by_count(norm, counts, specials={0}) == {
        "0": {"tokens": 1, "median_norm": 1.0}, "1": {"tokens": 1, "median_norm": 2.0},
        "4-10": {"tokens": 3, "median_norm": 5.0}, ">1000": {"tokens": 1, "median_norm": 8.0}}


def test_spearman():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ties take average ranks: y ranks 1.5, 1.5, 3, 4, 5
    assert spearman(x, np.array([0.0, 0.0, 1.0, 2.0, 3.0])) == pytest.approx(0.9746794, rel=1e-6)


def test_settle_step():
    assert settle_step([1.0, 5.0, 9.0, 9.2, 9.1]) == 3
    assert settle_step([9.0, 9.0]) == 1
    assert settle_step([1.0, 9.0]) == 2


def test_read_log_keeps_training_records_and_names_a_bad_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"update": 5, "mse": 1.0, "anchor": 3.0, "embed_norm": 2.0}\n{"valid_bleu": 1.0}\n'
                   '{"update": 10, "mse": 0.5, "anchor": 2.0, "embed_norm": 2.5}\n')
    assert read_log(log) == {"update": [5.0, 10.0], "mse": [1.0, 0.5], "anchor": [3.0, 2.0], "embed_norm": [2.0, 2.5]}
    log.write_text('{"update": 5, "mse": 1.0, "anchor": 3.0, "embed_norm": 2.0}\n{"upd\n')
    with pytest.raises(DifformerError, match=r"log.jsonl:2: not a JSON line"):
        read_log(log)
    log.write_text('{"valid_bleu": 1.0}\n')
    with pytest.raises(DifformerError, match="no training records"):
        read_log(log)


def test_trajectory_ends_with_what_generate_outputs(trained_model, tiny_data, one_thread):
    pipe = load(trained_model, precision="fp32")
    data = PairDataset(tiny_data, "valid")
    sources = [data.src(i).tolist() for i in range(len(data))]
    refs = pipe.tokenizer.decode([data.tgt(i).tolist() for i in range(len(data))])
    traj = trajectory(pipe, sources, refs, steps=8, max_tokens=300)  # several batches
    hyps = decode_ids(pipe.model, pipe.schedule, pipe.tokenizer, sources, DecodeConfig(steps=8, max_tokens=300))
    assert traj["texts"][-1] == hyps
    assert traj["bleu"][-1] == round(corpus_bleu(hyps, refs).score, 2)
    assert len(traj["bleu"]) == len(traj["change_rate"]) == len(traj["timesteps"]) == 8
    assert traj["change_rate"][0] is None and all(0 <= c <= 1 for c in traj["change_rate"][1:])
    assert traj["change_rate"][-1] < traj["change_rate"][1]  # the prediction settles as the noise goes


def test_a_trace_ends_with_what_generate_outputs(trained_model, trained_ar, one_thread):
    pipe = load(trained_model, precision="fp32")
    for text, options in (("red cat blue sun", {"steps": 6, "seed": 4}), ("moon", {"steps": 3, "sampler": "ddim"}),
                          ("blue sun", {"steps": 4, "min_t": 0.1})):
        trace = pipe.trace(text, **options)
        assert [s["step"] for s in trace["steps"]] == list(range(1, options["steps"] + 1))
        assert [s["t"] for s in trace["steps"]] == pipe.schedule.timesteps_for(options["steps"], options.get("min_t", 0))
        assert trace["output"] == trace["steps"][-1]["text"] == pipe.generate([text], **options)[0]
        assert len({len(s["tokens"]) for s in trace["steps"]}) == 1  # the length is fixed before denoising
        pieces = [pipe.tokenizer.sp.id_to_piece(i) for i in range(pipe.tokenizer.vocab_size)]
        assert all(t in pieces for s in trace["steps"] for t in s["tokens"])
    with pytest.raises(DifformerError, match="empty"):
        pipe.trace("   ")
    with pytest.raises(DifformerError, match="autoregressive"):
        load(trained_ar).trace("red cat")


def test_min_t_spreads_the_steps_down_to_the_noise_the_model_trained_on(trained_model, one_thread, monkeypatch):
    pipe = load(trained_model, precision="fp32")
    times, denoise = [], pipe.model.denoise

    def spy(z, p, time, *args):
        times.append(time[0].item())
        return denoise(z, p, time, *args)

    monkeypatch.setattr(pipe.model, "denoise", spy)
    T = pipe.schedule.timesteps
    for min_t in (0.0, 0.25):
        times.clear()
        pipe.generate(["red cat blue sun"], steps=5, min_t=min_t)
        assert times == [t * 1000 / T for t in pipe.schedule.timesteps_for(5, min_t)]
        assert times[0] == (T - 1) * 1000 / T and times[-1] == round(min_t * T) * 1000 / T
    with pytest.raises(DifformerError, match="min_t"):
        pipe.generate(["red cat"], min_t=1.0)


def _png_ok(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_analyze_writes_every_plot_and_the_report(trained_model, tiny_data, tmp_path, one_thread):
    out = tmp_path / "analysis"
    summary = analyze(trained_model, out, sentences=30, show=2, steps=6)  # data and log found from the model
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "embedding_norms.png", "report.html",
                                                      "training_curves.png", "trajectory.png"]
    for png in out.glob("*.png"):
        _png_ok(png)
    assert json.loads((out / "analysis.json").read_text()) == summary
    assert summary["data"] == str(tiny_data) and summary["trajectory"]["sentences"] == 30
    assert set(summary["spearman_count_vs_norm"]) == set(summary["norm_spread"]) == {"embedding", "before_norm",
                                                                                    "after_norm"}
    html = (out / "report.html").read_text()
    for name in ("embedding_norms.png", "training_curves.png", "trajectory.png"):
        assert f"src='{name}'" in html
    first = summary["examples"][0]
    assert len(first["steps"]) == 6 and first["reference"] in html
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".analysis.tmp")]


def test_analyze_cli_without_data_and_its_errors(trained_model, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "difformer.cli", "analyze", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    # a model whose training data is gone: norms against token id, no trajectory, still a report
    moved = tmp_path / "model"
    shutil.copytree(trained_model, moved)
    config = json.loads((moved / "config.json").read_text())
    config["train"]["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    r = cli("--model", moved, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["analysis.json", "embedding_norms.png",
                                                                     "report.html"]
    _png_ok(tmp_path / "out" / "embedding_norms.png")
    assert "pass --data DIR" in (tmp_path / "out" / "report.html").read_text()

    r = cli("--model", trained_model, "--out", tmp_path / "x", "--length-beam", "3")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--length-beam do not apply" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = cli("--model", trained_model, "--out", tmp_path / "y", "--log", bad)
    assert r.returncode == 2 and r.stderr.strip().endswith("bad.jsonl:1: not a JSON line")
    assert not (tmp_path / "y").exists()


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_runs_switch_exactly_the_modules_they_name():
    ab = _ablation()
    runs = ab.arms()
    assert runs["full"] == {"diffusion.anchor": "anchor", "model.embed_norm": "input", "diffusion.noise_factor": 4.0}
    assert runs["baseline"] == {"diffusion.anchor": "rounding", "model.embed_norm": "none",
                                "diffusion.noise_factor": 1.0}
    for module, key in ab.MODULES.items():
        for start, sign in (("full", "-"), ("baseline", "+")):
            changed = {k for k in runs[start] if runs[f"{start}{sign}{module}"][k] != runs[start][k]}
            assert changed == {key}
    assert {k for k in runs["full"] if runs["mse-only"][k] != runs["full"][k]} == {"diffusion.anchor"}
    assert runs["mse-only"]["diffusion.anchor"] == "none"
    assert sorted(f for f, _ in ab.noise_factor_runs(runs)) == [1.0, 2.0, 3.0, 4.0, 6.0]
    assert len(runs) == 12


def test_ablation_records_the_command_of_each_run():
    ab = _ablation()
    assert ab.run_command("full", ["bench/ablation.py", "--runs", "mse-only,full", "--minutes", "5"]) == \
        "python bench/ablation.py --minutes 5 --runs full"
    assert ab.run_command("baseline", ["bench/ablation.py", "--runs=full,baseline"]) == \
        "python bench/ablation.py --runs baseline"
    assert ab.run_command("full", ["bench/ablation.py"]) == "python bench/ablation.py --runs full"
    assert ab.run_command("full-F2", ["bench/ablation.py", "--updates", "2302", "--runs", "full-F2,full-F3"]) == \
        "python bench/ablation.py --updates 2302 --runs full-F2"


def test_ablation_report_tables_and_plots(tmp_path, monkeypatch):
    ab = _ablation()
    monkeypatch.setattr(sys.modules["common"], "RESULTS", tmp_path / "results")
    monkeypatch.setattr(ab, "RESULTS", tmp_path / "results")
    runs, work = {}, tmp_path / "work"
    # targets use ids 2, 3, 5; their z0 = sqrt(4) E[v] are orthogonal with norm 3; ids 0, 1, 4 are far away
    target_ids = np.array([2, 2, 2, 3, 3, 5])
    embed = torch.full((6, 4), 100.0)
    embed[[2, 3, 5]] = 1.5 * torch.eye(4)[:3]
    for i, tag in enumerate(["full", "full-F", "full-F2", "baseline"]):
        (work / tag / "checkpoints" / "update_150").mkdir(parents=True)
        hub.save_weights({"embed.weight": embed}, work / tag / "checkpoints" / "update_150" / hub.WEIGHTS)
        (work / tag / "checkpoints" / "last.json").write_text('{"checkpoint": "update_150"}')
        (work / tag / "log.jsonl").write_text("".join(
            json.dumps({"update": u, "mse": 1.0 / u, "anchor": 5.0 - u / 100, "embed_norm": 10.0 + i}) + "\n"
            for u in (50, 100, 150)))
        runs[tag] = {"switches": ab.arms()[tag], "updates": 150, "sacrebleu": 10.0 + i, "signature": "sig",
                     "machine": "other" if tag == "baseline" else "m", "command": "c", "commit": "x", "train_minutes": 1.0, "train_cpu_minutes": 2.0,
                     "results": [{"setting": "steps=20"}], **ab.final_stats(work / tag, target_ids)}
    runs["full-F"]["train_cpu_minutes"] = None  # resumed: the process saw part of the training only
    assert runs["full"]["curves"]["mse"] == [0.02, 0.01, 0.006667]  # 1 / update, 4 significant digits
    shutil.rmtree(work)  # the report, curves included, is made from the JSON alone (as on a new machine)
    ab.report({"runs": runs})
    md = (tmp_path / "results" / "ablation.md").read_text()
    assert "| full-F2 | anchor | input | 2 | 150 | 0.0067 | 3.5 | 12.0 | 3.0 | 4.243 | 12.0 |" in md
    assert "Machines differ: each run names its own." in md
    assert "- `baseline` (150 updates in 1.0 min, 2.0 CPU min, commit x, other): `c`" in md
    assert "- `full-F` (150 updates in 1.0 min, CPU min not recorded (resumed), commit x, m): `c`" in md
    assert "Not yet run: full-anchor, full-norm, baseline+anchor, baseline+norm, baseline+F, full-F3, full-F6, mse-only." in md
    sweep = json.loads((tmp_path / "results" / "noise_factor.json").read_text())["runs"]
    assert [(r["noise_factor"], r["run"], r["sacrebleu"]) for r in sweep] == [
        (1.0, "full-F", 11.0), (2.0, "full-F2", 12.0), (4.0, "full", 10.0)]
    for png in ("ablation.png", "noise_factor.png", "ablation_curves.png"):
        _png_ok(tmp_path / "results" / png)
