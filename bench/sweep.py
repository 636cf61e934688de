"""Convergence levers for the Difformer, one change each against the unchanged preset, as short proxy runs
on one machine: validation BLEU per update and per minute, and test2016 once per configuration.

    python bench/sweep.py                                   # every arm, 10 minutes each, the control first
    python bench/sweep.py --arms control lr-cosine-3e-3     # some arms
    python bench/sweep.py --minutes 25 --arms control lr-cosine --tag confirm   # confirm the winners
    python bench/sweep.py --data bench/work/teacher/multi30k-distilled --tag distilled   # on distilled targets

Arms are chosen on validation BLEU (the best of the run, and at the last validation); test2016 (1x1) is
decoded once per run and reported beside, never used to choose. Resumable: a finished run is recorded in
results/sweep.json under TAG/ARM and skipped next time; a killed run continues from its checkpoint. One
heavy job at a time: nothing may run beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import commit, load_results, save_results  # noqa: E402
from multi30k import decode_test, prepared, train_run, training_record  # noqa: E402

from difformer.config import load_config  # noqa: E402

HERE = Path(__file__).parent
NAME = "sweep"
# one change each to the `multi30k` preset (DESIGN.md and issue 15 say why each is a candidate)
ARMS = {
    "control": [],
    "lr-cosine": ["train.lr_schedule=cosine"],
    "lr-cosine-3e-3": ["train.lr_schedule=cosine", "train.lr=3e-3"],
    "lr-linear": ["train.lr_schedule=linear"],
    "embed-64": ["model.embed_dim=64"],
    "embed-32": ["model.embed_dim=32"],
    "self-cond-0.25": ["diffusion.self_cond=0.25"],
    "dropout-0": ["model.dropout=0"],
    "min-t-0.1": ["diffusion.min_t=0.1"],
}


def valid_curve(run: Path) -> list[dict]:
    """Every validation of a run: update, training minutes so far, valid BLEU."""
    minutes, out = 0.0, []
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        minutes = r.get("seconds", minutes * 60) / 60
        if "valid_bleu" in r:
            out.append({"update": r["update"], "minutes": round(minutes, 2), "valid_bleu": round(r["valid_bleu"], 2)})
    return out


def markdown(results: dict) -> str:
    lines = ["# Convergence levers: one change each against the preset (Multi30k De->En)", "",
             "Sorted by the best validation BLEU (300 valid sentences, 1x1, 20 steps) within each batch of runs; "
             "test2016 is decoded once per run and not used to choose.", ""]
    for tag, arms in results.get("batches", {}).items():
        lines += [f"## {tag}", "", "| arm | overrides | minutes | updates | best valid BLEU (update) | last valid "
                  "BLEU | test2016 1x1 |", "|---|---|---|---|---|---|---|"]
        for arm, r in sorted(arms.items(), key=lambda a: -a[1]["best_valid_bleu"]):
            best = max(r["valid"], key=lambda v: v["valid_bleu"])
            lines.append(f"| {arm} | {' '.join(r['overrides']) or '(preset)'} | {r['train_minutes']} | {r['updates']} "
                         f"| {best['valid_bleu']} ({best['update']}) | {r['valid'][-1]['valid_bleu']} | "
                         f"{r['test2016']} |")
        first = next(iter(arms.values()))
        lines += ["", f"Machine: {first['machine']}; data `{first['data']}`; commands: `{first['command']}`, "
                  f"commit {first['commit']}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--tag", help="name of this batch of runs (default: proxy-<minutes>min)")
    p.add_argument("--raw", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k",
                   help="raw Multi30k: prepared once, and its test2016 references")
    p.add_argument("--data", type=Path, help="a prepared directory to train on instead (distilled targets)")
    p.add_argument("--work", type=Path, default=HERE / "work")
    args = p.parse_args()
    tag = args.tag or f"proxy-{args.minutes:g}min"
    results = load_results(NAME)
    batch = results.setdefault("batches", {}).setdefault(tag, {})
    data = args.data or prepared(args.raw, args.work)
    for arm in ["control"] + [a for a in args.arms if a != "control"]:  # the control always runs
        if arm in batch:
            print(f"{tag}/{arm}: recorded in results/{NAME}.json; skipped")
            continue
        run = args.work / NAME / tag / arm
        cfg = load_config("multi30k", [f"train.data={data}", f"train.save_dir={run}",
                                       f"train.max_minutes={args.minutes}", *ARMS[arm]])
        started = run / "commit.txt"  # the code the run was started with, kept across resumes
        if not started.exists():
            run.mkdir(parents=True, exist_ok=True)
            started.write_text(commit())
        print(f"{tag}/{arm}: training {args.minutes:g} minutes", flush=True)
        train_time = train_run(cfg, run, f"{tag}/{arm}")
        record = training_record(run, train_time, started.read_text().strip())
        record.pop("valid_bleu_curve")  # by minutes only; `valid` has updates and minutes
        valid = valid_curve(run)
        test = decode_test(run / "model", args.raw, ["1x1"])[0]
        batch[arm] = {**record, "overrides": ARMS[arm], "data": str(data), "valid": valid,
                      "best_valid_bleu": max(v["valid_bleu"] for v in valid), "test2016": test["sacrebleu"]}
        save_results(NAME, results, markdown(results))
        print(f"{tag}/{arm}: best valid BLEU {batch[arm]['best_valid_bleu']}, test2016 {test['sacrebleu']}")


if __name__ == "__main__":
    main()
