"""Training: exact resume, learning, checkpoint bookkeeping, budgets and guards."""
import json

import pytest
import torch
from safetensors.torch import load_file

from difformer import step as step_module
from difformer.errors import DifformerError
from difformer.config import TrainConfig
from difformer.train import Trainer, inverse_sqrt_lr, learning_rate, train
from fixtures_train import tiny_config


def test_inverse_sqrt_schedule():
    assert inverse_sqrt_lr(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(7, 1e-3, 0) == 1e-3


def test_decaying_schedules_warm_up_then_reach_zero_at_the_end_of_the_budget():
    by_updates = TrainConfig(lr=1e-3, warmup_updates=100, max_updates=1100, lr_schedule="linear")
    assert learning_rate(by_updates, 50, 0.0) == pytest.approx(1e-3 * 0.5 * (1 - 50 / 1100))
    assert learning_rate(by_updates, 550, 0.0) == pytest.approx(5e-4)
    assert learning_rate(by_updates, 1100, 0.0) == 0.0
    cosine = TrainConfig(lr=1e-3, warmup_updates=0, max_updates=1000, lr_schedule="cosine")
    assert learning_rate(cosine, 500, 0.0) == pytest.approx(5e-4)
    assert learning_rate(cosine, 1000, 0.0) == pytest.approx(0.0, abs=1e-12)
    # a wall-clock budget: whichever end comes first sets the progress
    by_clock = TrainConfig(lr=1e-3, warmup_updates=0, max_updates=100000, max_minutes=10, lr_schedule="linear")
    assert learning_rate(by_clock, 10, 150.0) == pytest.approx(7.5e-4)
    assert learning_rate(by_clock, 10, 900.0) == 0.0
    assert learning_rate(TrainConfig(lr=1e-3, warmup_updates=100), 400, 5.0) == pytest.approx(5e-4)  # default


def test_the_decaying_schedule_is_what_the_optimizer_used(tiny_data, tmp_path):
    run = tmp_path / "r"
    train(tiny_config(tiny_data, run, max_updates=20, lr_schedule="linear", warmup_updates=0))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lrs = {r["update"]: r["lr"] for r in log if "lr" in r}
    assert lrs[10] == pytest.approx(2e-3 * (1 - 10 / 20)) and lrs[20] == 0.0


def test_resume_continues_exactly(tiny_data, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(tiny_data, straight, max_updates=20))
    halves = tmp_path / "halves"
    train(tiny_config(tiny_data, halves, max_updates=10))
    train(tiny_config(tiny_data, halves, max_updates=20), resume=True)
    for name in ("model.safetensors", "trainer.safetensors"):
        a = load_file(straight / "checkpoints" / "update_0000020" / name)
        b = load_file(halves / "checkpoints" / "update_0000020" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    sa = json.loads((straight / "checkpoints" / "update_0000020" / "state.json").read_text())["state"]
    sb = json.loads((halves / "checkpoints" / "update_0000020" / "state.json").read_text())["state"]
    assert (sa["epoch"], sa["batch"], sa["tokens"], sa["best"]) == (sb["epoch"], sb["batch"], sb["tokens"], sb["best"])


def test_training_learns_and_keeps_best_and_last(trained_model):
    run = trained_model.parent
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_loss = [r["loss"] for r in log if "loss" in r and "skipped_update" not in r]
    valid = [r for r in log if "valid_bleu" in r]
    assert train_loss[-1] < 0.6 * train_loss[0]
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    assert valid[-1]["valid_acc"] > valid[0]["valid_acc"]
    state = json.loads((run / "checkpoints" / "update_0000150" / "state.json").read_text())["state"]
    assert valid[-1]["seconds"] == state["seconds"] > valid[0]["seconds"] > 0  # the training clock, for curves
    kept = sorted(p.name for p in (run / "checkpoints").glob("update_*"))
    last = json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"]
    assert last == "update_0000150" and last in kept and len(kept) <= 3
    assert sorted(p.name for p in trained_model.iterdir()) == [
        "config.json", "dataset.json", "model.safetensors", "tokenizer.model"]
    assert (run / "tb").is_dir() and any((run / "tb").iterdir())


def test_existing_run_needs_resume_and_resume_needs_a_run(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2))
    with pytest.raises(DifformerError, match="--resume"):
        Trainer(tiny_config(tiny_data, tmp_path / "r"))
    with pytest.raises(DifformerError, match="nothing to resume"):
        Trainer(tiny_config(tiny_data, tmp_path / "empty"), resume=True)


def test_resume_with_another_config_names_the_keys(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2))
    cfg = tiny_config(tiny_data, tmp_path / "r", lr=1e-4)
    cfg.model.d_model = 32
    with pytest.raises(DifformerError, match=r"model\.d_model, train\.lr"):
        Trainer(cfg, resume=True)


def test_wall_clock_budget_stops_training(tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path / "r", max_updates=10_000, max_minutes=0.002))
    state = json.loads((tmp_path / "r" / "checkpoints" / "last.json").read_text())
    assert 1 <= state["update"] < 10_000 and (out / "model.safetensors").exists()


@pytest.mark.parametrize("precision, limit", [("fp32", 10), ("bf16", 3)])
def test_non_finite_losses_skip_updates_then_stop(tiny_data, tmp_path, monkeypatch, precision, limit):
    real = step_module.difformer_loss

    def nan_loss(*args):
        loss, stats = real(*args)
        return loss * float("nan"), {**stats, "loss": torch.tensor(float("nan"))}

    monkeypatch.setattr(step_module, "difformer_loss", nan_loss)
    extra = {} if limit == 10 else {"max_bad_updates": limit}  # 10 is the default
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", max_updates=50, precision=precision, **extra))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(DifformerError, match=f"{limit} updates in a row had a non-finite loss or gradient"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert not trainer.optimizer.state  # Adam's moments never saw the bad gradients
    skipped = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert sum("skipped_update" in r for r in skipped) == limit


def test_gradient_accumulation_takes_update_freq_batches_per_update(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r", max_updates=3, validate_every=3, update_freq=2))
    state = json.loads((tmp_path / "r" / "checkpoints" / "update_0000003" / "state.json").read_text())["state"]
    assert state["update"] == 3 and (state["epoch"], state["batch"]) == (0, 6)


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_instructions_that_measure_faster(monkeypatch):
    from difformer import precision

    assert precision.has_bf16_flag("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")  # AMD EPYC
    assert precision.has_bf16_flag("flags\t\t: avx512f amx_bf16 amx_tile\n")  # Intel with AMX
    assert not precision.has_bf16_flag("flags\t\t: fpu avx2 avx512f avx512bw\n")
    assert not precision.has_bf16_flag("model name\t: avx512_bf16\nflags\t\t: avx2\n")  # the flags line only
    assert not precision.has_bf16_flag("")
    assert precision.bf16_speedup.__wrapped__() > 0  # the measurement itself runs
    cpu = torch.device("cpu")
    for has, speedup, expected in ((True, 1.5, "bf16"), (True, 0.6, "fp32"), (False, 1.5, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda has=has: has)
        monkeypatch.setattr(precision, "bf16_speedup", lambda speedup=speedup: speedup)
        assert precision.resolve_precision("auto", cpu) == expected
        assert precision.resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.parametrize("metric, chosen", [("bleu", "update_0000002"), ("rouge", "update_0000004"),
                                            ("loss", "update_0000006")])
def test_valid_metric_chooses_the_checkpoints(tiny_data, tmp_path, monkeypatch, metric, chosen):
    """Three validations on which BLEU, ROUGE-L and the loss each prefer another checkpoint."""
    scripted = iter([{"valid_loss": 3.0, "valid_bleu": 5.0, "valid_rougeL": 1.0},
                     {"valid_loss": 2.0, "valid_bleu": 1.0, "valid_rougeL": 5.0},
                     {"valid_loss": 1.0, "valid_bleu": 3.0, "valid_rougeL": 3.0}])
    monkeypatch.setattr(Trainer, "validate", lambda self: next(scripted))
    run = tmp_path / metric
    train(tiny_config(tiny_data, run, max_updates=6, validate_every=2, keep_best=1, valid_metric=metric))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"]["model"] == chosen
    kept = load_file(run / "checkpoints" / chosen / "model.safetensors")
    final = load_file(run / "model" / "model.safetensors")
    assert all(torch.equal(kept[k], final[k]) for k in kept)


def test_resuming_an_older_checkpoint_ranks_only_the_checkpoints_still_there(tiny_data, tmp_path, monkeypatch):
    """What the damage message suggests (point last.json at an older checkpoint): that checkpoint's ranking
    names update 2, deleted when update 6 entered the best two; the final average must not need it."""
    scripted = iter([{"valid_loss": 1.0, "valid_bleu": b} for b in (12.0, 14.0, 13.0, 0.0)])  # 0: the average
    monkeypatch.setattr(Trainer, "validate", lambda self: next(scripted))
    run = tmp_path / "r"
    train(tiny_config(tiny_data, run, max_updates=6, validate_every=2, keep_best=2))
    assert not (run / "checkpoints" / "update_0000002").exists()
    (run / "checkpoints" / "last.json").write_text(json.dumps({"checkpoint": "update_0000004"}))
    monkeypatch.setattr(Trainer, "validate", lambda self: {"valid_loss": 1.0, "valid_bleu": 0.0})
    train(tiny_config(tiny_data, run, max_updates=4, validate_every=2, keep_best=2), resume=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"]["model"] == "update_0000004"


def test_a_fresh_start_drops_the_log_of_a_run_killed_before_its_first_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "log.jsonl").write_text('{"update": 0, "epoch": 0, "config": {}}\n{"update": 5, "lo')  # killed mid-line
    train(tiny_config(tiny_data, run, max_updates=2, validate_every=2))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["update"] == 0 and all(r.get("update") != 5 for r in log)


def test_validation_decodes_one_candidate_whatever_the_preset_selects(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "r")
    cfg.decode.selection = "ar"  # a preset decoding 7x3 reranked by a teacher: validation has no teacher
    assert "valid_bleu" in Trainer(cfg).validate()


def test_resume_keeps_the_precision_auto_chose_first(tiny_data, tmp_path, monkeypatch):
    import difformer.train as train_module

    monkeypatch.setattr(train_module, "resolve_precision", lambda precision, device: "bf16")
    train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2, precision="auto"))
    monkeypatch.setattr(train_module, "resolve_precision", lambda precision, device: "fp32")  # a busier machine
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "r", max_updates=4, validate_every=2, precision="auto"),
                      resume=True)
    assert resumed.precision == "bf16"
    assert Trainer(tiny_config(tiny_data, tmp_path / "s", max_updates=4, precision="auto")).precision == "fp32"


def test_rouge_validation_logs_rouge_1_2_and_l(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "r", valid_metric="rouge")
    trainer = Trainer(cfg)
    stats = trainer.validate()
    assert {"valid_rouge1", "valid_rouge2", "valid_rougeL", "valid_bleu"} <= set(stats)
    assert trainer.selection_score(stats) == stats["valid_rougeL"]
