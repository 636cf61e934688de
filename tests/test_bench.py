"""The benchmark scripts' own rules (bench/ is not a package: loaded from its files)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_directory_is_not_reused_for_another_config_nor_resumed_on_another_machine(tmp_path, monkeypatch):
    from difformer.config import load_config, save_config

    multi30k = _bench("multi30k")
    monkeypatch.setattr(multi30k, "train", lambda *a, **k: pytest.fail("trained"))
    run = tmp_path / "run"
    cfg = load_config("quickstart", [f"train.save_dir={run}"])
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    other = load_config("quickstart", [f"train.save_dir={run}", "train.lr=1e-4", "train.max_minutes=3"])
    with pytest.raises(SystemExit, match=r"t: .* was trained with another config \(differing keys: train\.lr\)"):
        multi30k.train_run(other, run, "t")
    (run / "commit.txt").write_text("abc1234")
    (run / "machine.txt").write_text("another CPU")
    resumed = load_config("quickstart", [f"train.save_dir={run}", "train.max_minutes=3"])  # a budget may change
    with pytest.raises(SystemExit, match="started on another CPU, this is "):
        multi30k.train_run(resumed, run, "t")
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"")  # finished: recorded where and with what it started
    assert multi30k.train_run(resumed, run, "t") == (None, {"commit": "abc1234", "machine": "another CPU"})


def _record(machine="Xeon, 2 cores", data="/d", minutes=25.0, overrides=()):
    return {"machine": machine, "data": data, "config": {"train": {"max_minutes": minutes}},
            "overrides": list(overrides)}


def test_sweep_adds_an_arm_only_to_a_batch_of_the_same_machine_data_budget_and_overrides(monkeypatch, tmp_path):
    sweep = _bench("sweep")
    recorded = {"batches": {"b": {"control": _record(), "dropout-0": _record(overrides=["model.dropout=0"])}}}
    monkeypatch.setattr(sweep, "load_results", lambda name: recorded)
    monkeypatch.setattr(sweep, "machine", lambda: "Xeon, 2 cores")
    monkeypatch.setattr(sweep, "prepared", lambda *a: Path("/d"))
    monkeypatch.setattr(sweep, "train_run", lambda *a: pytest.fail("trained beside another batch's runs"))

    def refused(*argv: str, words: str) -> None:
        monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "b", "--minutes", "25", *argv])
        with pytest.raises(SystemExit, match=words):
            sweep.main()

    refused("--arms", "self-cond-0", "--data", "/distilled", words="b's control ran with data /d, this run with "
            "data /distilled: name a new --tag, or repeat the batch's settings")
    refused("--arms", "self-cond-0", "--set", "train.seed=2", words=r"set \[\], this run with set \['train.seed=2'\]")
    monkeypatch.setattr(sweep, "machine", lambda: "EPYC, 2 cores")
    refused("--arms", "self-cond-0", words="machine Xeon, 2 cores, this run with machine EPYC, 2 cores")
    del recorded["batches"]["b"]["control"]  # the control always runs: it too would join the Xeon's arm
    refused("--arms", "dropout-0", words="b's dropout-0 ran with machine Xeon")
    # a batch whose every arm is recorded only reports, wherever it ran
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "b", "--arms", "dropout-0", "--work", str(tmp_path)])
    recorded["batches"]["b"]["control"] = _record()
    sweep.main()


def test_the_sweep_table_names_what_else_differs_from_the_control():
    sweep = _bench("sweep")
    control = {"config": {"diffusion": {"min_t": 0.0}, "train": {"init_from": None, "data": "/a"},
                          "decode": {"prune_keep": None}}}  # an option since removed is not a difference
    arm = {"config": {"diffusion": {"min_t": 0.1}, "train": {"init_from": "/t", "data": "/b"},
                      "decode": {"prune_keep": 1}}}
    assert sweep.also_differs("init-teacher", arm, control) == "diffusion.min_t 0.0 -> 0.1"
    assert sweep.also_differs("min-t-0.2", arm, control) == "train.init_from None -> /t"


def test_teacher_keeps_one_machine_per_results_file_and_stops_where_asked(monkeypatch, tmp_path):
    teacher = _bench("teacher")
    recorded = {"runs": {"ar-25min": {"machine": "Xeon, 2 cores"}}}
    monkeypatch.setattr(teacher, "load_results", lambda name: recorded if name == "teacher" else {})
    monkeypatch.setattr(teacher, "save_results", lambda *a: None)
    monkeypatch.setattr(teacher, "markdown", lambda results: "")  # the stages below record nothing to show
    monkeypatch.setattr(teacher, "machine", lambda: "EPYC, 2 cores")
    monkeypatch.setattr(teacher, "prepared", lambda *a: tmp_path)
    ran = []
    monkeypatch.setattr(teacher, "train_stage", lambda tag, *a, **k: ran.append(tag) or {})
    monkeypatch.setattr(teacher, "distill_stage", lambda *a: ran.append("distill") or {})
    monkeypatch.setattr(sys, "argv", ["teacher.py", "--stop-after", "distill"])
    with pytest.raises(SystemExit, match=r"results/teacher.json holds runs of Xeon, 2 cores, this is EPYC, 2 "
                                         r"cores: pass --name teacher-<this machine>"):
        teacher.main()
    assert ran == []
    monkeypatch.setattr(sys, "argv", ["teacher.py", "--name", "teacher-epyc", "--stop-after", "distill"])
    teacher.main()
    assert ran == ["ar-25min", "distill"]  # the students are left for later


def test_the_inclusive_warm_start_trains_the_batch_budget_less_the_teacher_s_minutes(monkeypatch, tmp_path):
    import json

    sweep = _bench("sweep")
    teacher = tmp_path / "runs" / "ar-25min"
    (teacher / "model").mkdir(parents=True)
    (teacher / "model" / "model.safetensors").write_bytes(b"")
    (teacher / "checkpoints" / "update_0002164").mkdir(parents=True)
    (teacher / "checkpoints" / "last.json").write_text(json.dumps({"checkpoint": "update_0002164"}))
    (teacher / "checkpoints" / "update_0002164" / "state.json").write_text(json.dumps({"state": {"seconds": 1500.6}}))
    (teacher / "machine.txt").write_text("Xeon, 2 cores")
    control = {**_record(minutes=120.0), "overrides": []}
    recorded = {"batches": {"b": {"control": control}}}
    monkeypatch.setattr(sweep, "TEACHER", teacher / "model")
    monkeypatch.setattr(sweep, "load_results", lambda name: recorded)
    monkeypatch.setattr(sweep, "machine", lambda: "EPYC, 2 cores")
    monkeypatch.setattr(sweep, "prepared", lambda *a: Path("/d"))
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "b", "--minutes", "120", "--arms", "init-teacher-inclusive"])
    recorded["batches"]["b"]["control"]["machine"] = "EPYC, 2 cores"
    with pytest.raises(SystemExit, match="trained on Xeon, 2 cores, this is EPYC, 2 cores: its minutes do not count"):
        sweep.main()
    (teacher / "machine.txt").write_text("EPYC, 2 cores")
    budgets = []

    def train_run(cfg, run, tag):
        budgets.append(cfg.train.max_minutes)
        raise SystemExit("stopped")

    monkeypatch.setattr(sweep, "train_run", train_run)
    with pytest.raises(SystemExit, match="stopped"):
        sweep.main()
    assert budgets == [pytest.approx(120 - 25.01)]
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--tag", "b", "--minutes", "120", "--arms",
                                      "init-teacher-inclusive-dropout-0.1"])
    with pytest.raises(SystemExit, match="stopped"):
        sweep.main()
    assert budgets == [pytest.approx(120 - 25.01)] * 2
    inclusive = {**_record(minutes=94.99, overrides=sweep.ARMS["init-teacher-inclusive"]), "teacher_minutes": 25.01}
    assert sweep.batch_settings("init-teacher-inclusive", inclusive)["minutes"] == 120.0  # a run of the batch


def test_the_inclusive_warm_start_is_not_compared_per_update(monkeypatch):
    """Its updates come after the teacher's minutes: it must not move the batch's per-update column back to
    its own last update, nor be compared with the control at an equal update."""
    sweep = _bench("sweep")

    def run(updates, bleus, **extra):
        return {**_record(minutes=120.0), "train_minutes": 120.0, "updates": updates[-1], "test2016": bleus[-1],
                "best_valid_bleu": max(bleus), "command": "c", "commit": "k", **extra,
                "valid": [{"update": u, "minutes": 0, "valid_bleu": b} for u, b in zip(updates, bleus)]}

    control = run([250, 500, 750], [1.0, 2.0, 3.0])
    inclusive = run([250, 500], [20.0, 30.0], teacher_minutes=25.0)
    inclusive["overrides"] = sweep.ARMS["init-teacher-inclusive"]
    table = sweep.markdown({"batches": {"b": {"control": control, "init-teacher-inclusive": inclusive}}})
    assert "valid BLEU at update 750 " in table
    assert "| init-teacher-inclusive | (preset) | 120.0 + 25.0 teacher | 500 | - (after the teacher's minutes) | " \
           "30.0 (500) | 30.0 | 30.0 |" in table
    assert "| init-teacher-inclusive | b | - (after the teacher's minutes) | +27.00 | +27.00 | - |" in table


def test_speed_leaves_out_the_config_keys_an_older_tree_does_not_know():
    speed = _bench("speed")
    raw = {"model": {"dropout": 0.0, "added_later": 3}, "decode": {"steps": 20}, "train": {"lr": 1e-3}}
    assert speed.drop_unknown_keys(raw) == ["model.added_later=3"]
    assert raw == {"model": {"dropout": 0.0}, "decode": {"steps": 20}, "train": {"lr": 1e-3}}


def test_bench_reads_a_split_as_prepare_does(tmp_path):
    """At LF only: a U+2028 or form feed inside a sentence must not shift every later pair."""
    common = _bench("common")
    (tmp_path / "test.de").write_text("a\u2028b\x0cc\r\nzwei\n", encoding="utf-8")
    (tmp_path / "test.en").write_text("\ufeffone\ntwo\n", encoding="utf-8")
    assert common.split_text(tmp_path, "test") == (["a\u2028b\x0cc", "zwei"], ["one", "two"])


def _aeslc_data(path: Path) -> Path:
    for split in ("valid", "test"):
        for name in ("src", "tgt", "ann0", "ann1", "ann2"):
            (path / f"{split}.{name}").write_text("an email about the budget\nanother email\n")
    return path


def test_the_aeslc_side_by_side_keeps_a_batch_on_one_machine_and_runs_its_stages_in_order(monkeypatch, tmp_path):
    aeslc = _bench("aeslc")
    recorded = {"side_by_side": {"xeon": {"ar-25min": {"machine": "Xeon, 2 cores"}}}}
    monkeypatch.setattr(aeslc, "load_results", lambda name: recorded)
    monkeypatch.setattr(aeslc, "save_results", lambda *a: None)
    monkeypatch.setattr(aeslc, "markdown", lambda results: "")
    monkeypatch.setattr(aeslc, "machine", lambda: "EPYC, 2 cores")
    monkeypatch.setattr(aeslc, "prepared", lambda *a: tmp_path / "prepared")
    ran = []

    def train_run(cfg, run, tag):
        ran.append((tag, cfg.train.init_from))
        (run / "model").mkdir(parents=True)
        (run / "model" / "model.safetensors").write_bytes(b"")
        return None, {"machine": "EPYC, 2 cores"}

    def distill(teacher, data, dest, **options):
        ran.append(("distill", ""))
        dest.mkdir(parents=True)
        (dest / "dataset.json").write_text("{}")
        return {"distilled": {"decoding": "beam 4", "seconds": 60, "teacher_bleu_vs_references": 1.0},
                "splits": {"train": {"pairs": 2}}}
    decodings, reranked = [], []
    monkeypatch.setattr(aeslc, "train_run", train_run)
    monkeypatch.setattr(aeslc, "distill", distill)
    monkeypatch.setattr(aeslc, "training_record", lambda *a: {"machine": "EPYC, 2 cores", "train_minutes": 25.0})
    monkeypatch.setattr(aeslc, "decode_rows", lambda model, e, s, r, settings, reranker=None:
                        decodings.append((settings, reranker)) or list(settings))
    monkeypatch.setattr(aeslc, "rerank_lenpen", lambda model, teacher, emails, subjects:
                        reranked.append((teacher, len(emails))) or ({"chosen": 2.0}, 2.0))
    data = _aeslc_data(tmp_path)
    (data / "valid.src").write_text("an email\n" * 450)  # the lenpen is chosen on the first 400

    def main(*argv: str) -> None:
        monkeypatch.setattr(sys, "argv", ["aeslc.py", "--side-by-side", "--data", str(data),
                                          "--work", str(tmp_path / "work"), *argv])
        aeslc.main()

    with pytest.raises(SystemExit, match="--batch xeon: its stages ran on Xeon, 2 cores, this is EPYC, 2 cores"):
        main("--batch", "xeon", "--stages", "warm-raw")
    with pytest.raises(SystemExit, match="stage warm-raw needs the teacher .*ar-25min/model: run stage ar first"):
        main("--batch", "epyc", "--stages", "warm-raw")
    with pytest.raises(SystemExit, match="stage warm-distilled needs the distilled subjects"):
        main("--batch", "epyc", "--stages", "warm-distilled,ar")  # run in the side by side's order
    assert ran == [("ar-25min", "")]  # no init_from
    main("--batch", "epyc", "--stages", "ar,distill,warm-raw,warm-distilled")  # the teacher is recorded: skipped
    teacher = str(tmp_path / "work" / "aeslc-side-epyc" / "runs" / "ar-25min" / "model")
    assert ran[1:] == [("distill", ""), ("difformer-warm-raw-25min", teacher),
                       ("difformer-warm-distilled-25min", teacher)]
    side = recorded["side_by_side"]["epyc"]
    assert side["ar-25min"]["results"] == ["beam 4"]
    assert side["difformer-warm-raw-25min"]["results"] == ["1x1", "7x3 teacher rerank lenpen 2"]
    assert reranked == [(Path(teacher), 400)] * 2
    assert decodings[1] == ({"1x1": {"length_beam": 1, "noise_beam": 1}, "7x3 teacher rerank lenpen 2": {
        "length_beam": 7, "noise_beam": 3, "selection": "ar", "lenpen": 2.0}}, Path(teacher))
    assert side["difformer-warm-distilled-25min"]["data"].endswith("aeslc-side-epyc/aeslc-distilled")


def test_the_aeslc_rerank_length_penalty_is_chosen_by_valid_rouge_l(monkeypatch):
    aeslc = _bench("aeslc")
    monkeypatch.setattr(aeslc, "load", lambda *a, **k: None)
    rouge_l = {1.0: 7.0, 2.0: 8.5}

    def decoded(pipe, name, options, emails, subjects, references, examples=5):
        s = {"rouge1": 9.0, "rouge2": 3.0 - options["lenpen"], "rougeL": rouge_l[options["lenpen"]]}
        return {"rouge": {"original": s}, "output_words": 2.0 * options["lenpen"], "emails_per_second": 3.0}
    monkeypatch.setattr(aeslc, "decoded", decoded)
    record, lenpen = aeslc.rerank_lenpen(Path("m"), Path("t"), ["e"] * 3, ["s"] * 3)
    assert lenpen == 2.0 and record["chosen"] == 2.0 and record["emails"] == 3
    assert record["lenpen"]["1"]["rouge"]["original"]["rougeL"] == 7.0
    rouge_l[1.0] = 9.0
    assert aeslc.rerank_lenpen(Path("m"), Path("t"), ["e"], ["s"])[1] == 1.0


def test_aeslc_valid_decodings_finds_a_batch_s_stage_and_its_teacher(monkeypatch, tmp_path):
    aeslc = _bench("aeslc")
    teacher = tmp_path / "work" / "aeslc-side-epyc" / "runs" / "ar-25min" / "model"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"")
    recorded = {"runs": {"warm": {}}, "side_by_side": {
        "epyc": {"ar-25min": {}, "difformer-warm-raw-25min": {}}, "xeon": {"difformer-warm-raw-25min": {}}}}
    monkeypatch.setattr(aeslc, "load_results", lambda name: recorded)
    loaded = []

    def load(model, device, reranker):
        loaded.append((model, reranker))
        raise SystemExit("loaded")
    monkeypatch.setattr(aeslc, "load", load)
    data = _aeslc_data(tmp_path)

    def main(*argv: str) -> None:
        monkeypatch.setattr(sys, "argv", ["aeslc.py", "--data", str(data), "--work", str(tmp_path / "work"), *argv])
        aeslc.main()

    with pytest.raises(SystemExit, match="loaded"):
        main("--valid-decodings", "epyc/difformer-warm-raw-25min")
    assert loaded == [(tmp_path / "work" / "aeslc-side-epyc" / "runs" / "difformer-warm-raw-25min" / "model",
                       teacher)]
    with pytest.raises(SystemExit, match="no Difformer stage ar-25min in side-by-side batch epyc"):
        main("--valid-decodings", "epyc/ar-25min")
    with pytest.raises(SystemExit, match="no teacher recorded for it"):
        main("--valid-decodings", "xeon/difformer-warm-raw-25min")
    with pytest.raises(SystemExit, match="name the teacher that reranks"):
        main("--valid-decodings", "warm")
    with pytest.raises(SystemExit, match="loaded"):
        main("--valid-decodings", "warm", "--batch", "epyc")
    assert loaded[-1] == (tmp_path / "work" / "runs" / "warm" / "model", teacher)
