"""Convergence levers for the Difformer, one change each against the unchanged preset, as short proxy runs
on one machine: validation BLEU per update and per minute, and test2016 once per configuration.

    python bench/sweep.py                                   # every arm, 10 minutes each, the control first
    python bench/sweep.py --arms control lr-cosine-3e-3     # some arms
    python bench/sweep.py --minutes 25 --arms control lr-cosine --tag confirm   # confirm the winners
    python bench/sweep.py --data bench/work/teacher/multi30k-distilled --tag distilled   # on distilled targets
    python bench/sweep.py --minutes 25 --set train.seed=2 --tag seed2 --arms control min-t-0.2   # another seed
    python bench/sweep.py --minutes 25 --tag preset-25min --arms init-teacher-encoder init-teacher-decoder
                                                            # what the warm start owes each side of the teacher
    python bench/sweep.py --minutes 25 --tag epyc-25min --arms dropout-0-self-cond-0 dropout-0 self-cond-0
                                                            # a new machine: a new batch, its own control
    python bench/sweep.py --minutes 120 --tag epyc-120min --arms init-teacher-inclusive
                                                            # teacher (bench/teacher.py) + student = 120 min
    python bench/sweep.py --decoding MODEL [MODEL ...]      # the decoding levers, free at training time
    python bench/sweep.py --decoding MODEL --decodings default min-t-0.1   # some of them
    python bench/sweep.py --report                          # results/sweep.md again from sweep.json

Arms are chosen on validation BLEU (the best of the run, and at the last validation); test2016 (1x1) is
decoded once per run and reported beside, never used to choose. Resumable: a finished run is recorded in
results/sweep.json under TAG/ARM and skipped next time; a killed run continues from its checkpoint. One
heavy job at a time: nothing may run beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from functools import cache
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results, scored, split_text  # noqa: E402
from multi30k import decode_test, last_state, prepared, train_run, training_record  # noqa: E402

from difformer.config import config_diff, load_config  # noqa: E402
from difformer.generate import load  # noqa: E402
from difformer.hub import WEIGHTS  # noqa: E402

HERE = Path(__file__).parent
NAME = "sweep"
TEACHER = HERE / "work" / "teacher" / "runs" / "ar-25min" / "model"  # bench/teacher.py's, same tokenizer
INCLUSIVE = "init-teacher-inclusive"
# the teacher's tensors by side, for the ablation of the warm start: init_from copies what a directory holds
TEACHER_PARTS = {"encoder": ("embed.", "enc_pos.", "encoder.", "enc_norm."),
                 "decoder": ("dec_pos.", "decoder.", "dec_norm.")}
# one change each to the `multi30k` preset (DESIGN.md and issue 15 say why each is a candidate)
ARMS = {
    "control": [],
    "lr-cosine": ["train.lr_schedule=cosine"],
    "lr-cosine-3e-3": ["train.lr_schedule=cosine", "train.lr=3e-3"],
    "lr-linear": ["train.lr_schedule=linear"],
    "embed-64": ["model.embed_dim=64"],
    "embed-32": ["model.embed_dim=32"],
    "self-cond-0.25": ["diffusion.self_cond=0.25"],
    "self-cond-0": ["diffusion.self_cond=0"],  # no second forward at all: more updates, no self-conditioning
    "dropout-0": ["model.dropout=0"],
    # the two that buy updates rather than learning per update, together: the preset since epyc-25min and
    # epyc-seed2-25min (the arms above and this one ran against the preset before, with 0.1 and 0.5)
    "dropout-0-self-cond-0": ["model.dropout=0", "diffusion.self_cond=0"],
    # the preset before them, for longer budgets, where the regularisation may matter (not measured yet)
    "dropout-0.1-self-cond-0.5": ["model.dropout=0.1", "diffusion.self_cond=0.5"],
    # min_t 0.1 is the preset since it won at 25 minutes with two seeds (the runs before name it as an override)
    "min-t-0": ["diffusion.min_t=0"],
    "min-t-0.2": ["diffusion.min_t=0.2"],
    "time-loss": ["diffusion.time_sampling=loss"],
    "soft-absorb-0.5": ["model.soft_absorb=0.5"],
    # warm start from the autoregressive teacher of bench/teacher.py (25 minutes on the raw targets, same
    # tokenizer): its encoder and decoder layers, its source embedding factored into E and enc_in
    "init-teacher": [f"train.init_from={TEACHER}"],
    # the same within the batch's budget: the student trains the batch's minutes less the teacher's, so that
    # both it and the control spend the same CPU minutes (the teacher trained on this machine)
    INCLUSIVE: [f"train.init_from={TEACHER}"],
    # the same with dropout back: from the teacher's layers and without dropout, epyc-120min's run overfit
    # (valid loss lowest at update 3,000 of ~12,000, rising after; valid BLEU highest at 4,500)
    f"{INCLUSIVE}-dropout-0.1": [f"train.init_from={TEACHER}", "model.dropout=0.1"],
    # the same, one side each: embedding, positions, layers and norm of the teacher's encoder, or of its decoder
    **{f"init-teacher-{part}": [f"train.init_from={TEACHER.parent.parent.parent / 'parts' / part}"]
       for part in TEACHER_PARTS},
    # the 10-minute winners together (each beat the control's best valid BLEU by 0.85 or more), for 25 minutes
    "winners": ["train.lr_schedule=cosine", "diffusion.min_t=0.1", "model.dropout=0", "model.embed_dim=64"],
}
# decoding levers of a trained model, 1x1 (issue 15): DINOISER's condition enhancement (the network is told
# t = T-1 at every step), stopping early where `difformer analyze` saw z0_hat peak (step 13-15 of 20), and at
# step 18, the last of the 20 at or above 0.1 T, where a model trained with min_t 0.1 has seen its inputs;
# and the 20 steps spread over [T-1, 0.1 T] instead of [T-1, 0], the noise levels such a model trained on
# (0.05: halfway)
DECODINGS = {"default": {}, "cond-enhance": {"cond_enhance": True}, "early-stop-18": {"early_stop": 18},
             "early-stop-15": {"early_stop": 15}, "early-stop-13": {"early_stop": 13},
             "min-t-0.1": {"min_t": 0.1}, "min-t-0.05": {"min_t": 0.05}}


# what differs between runs of one batch without being a change: paths, and the data's vocabulary size
SETTINGS_OF_A_RUN = {"train.data", "train.save_dir", "model.vocab_size"}


@cache
def preset() -> dict:
    """Today's `multi30k` preset as a run's config.yaml holds it (read once, compared with every run)."""
    return yaml.safe_load(yaml.safe_dump(load_config("multi30k").to_dict()))


def against_preset(config: dict) -> str:
    """What a run's saved config sets otherwise than today's `multi30k` preset (its paths, budget and the
    data's vocabulary size aside): the arm's change, and any preset value the run predates."""
    changed = []
    for section, values in config.items():
        for key, value in values.items():
            if f"{section}.{key}" in SETTINGS_OF_A_RUN | {"train.max_minutes"} or \
                    key not in preset()[section]:  # an option since removed was off in every arm
                continue
            if value != preset()[section][key]:
                if isinstance(value, str) and "/bench/work/" in value:  # a path of the checkout that ran it
                    value = "bench/work/" + value.split("/bench/work/", 1)[1]
                changed.append(f"{section}.{key}={value}")
    return " ".join(changed) or "(preset)"


def teacher_minutes() -> float:
    """The training minutes of the teacher, which must have trained on this machine (its minutes are counted
    into a budget measured here)."""
    run = TEACHER.parent
    if not (TEACHER / WEIGHTS).exists():
        sys.exit(f"sweep: {INCLUSIVE} needs the teacher {TEACHER}: python bench/teacher.py --stop-after teacher")
    stamp = run / "machine.txt"
    trained_on = stamp.read_text().strip() if stamp.exists() else "an unknown machine"
    if trained_on != machine():
        sys.exit(f"sweep: {INCLUSIVE}: the teacher {TEACHER} trained on {trained_on}, this is {machine()}: its "
                 "minutes do not count here; train it here (python bench/teacher.py --name teacher-<machine>)")
    return round(last_state(run)["seconds"] / 60, 2)


def teacher_part(part: str) -> None:
    """The teacher's model directory with only `part`'s tensors (TEACHER_PARTS), made once."""
    dest = TEACHER.parent.parent.parent / "parts" / part
    if (dest / WEIGHTS).exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in TEACHER.iterdir():
        if f.name != WEIGHTS:
            shutil.copy(f, dest / f.name)
    weights = load_file(str(TEACHER / WEIGHTS))
    tmp = dest / (WEIGHTS + ".tmp")  # renamed when whole: a killed run never leaves half a model
    save_file({k: v for k, v in weights.items() if k.startswith(TEACHER_PARTS[part])}, str(tmp))
    os.replace(tmp, dest / WEIGHTS)


def valid_curve(run: Path) -> list[dict]:
    """Every validation of a run: update, training minutes so far, valid BLEU."""
    minutes, out = 0.0, []
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        minutes = r.get("seconds", minutes * 60) / 60
        if "valid_bleu" in r:
            out.append({"update": r["update"], "minutes": round(minutes, 2), "valid_bleu": round(r["valid_bleu"], 2)})
    return out


AFTER_TEACHER = "- (after the teacher's minutes)"  # an inclusive run's cell where runs compare per update


def inclusive(r: dict) -> bool:
    """Whether a recorded run started from the teacher within the batch's budget (its record says how long
    the teacher trained)."""
    return "teacher_minutes" in r


def common_update(runs) -> int | None:
    """The last update at which every run validated: where they compare per update. A warm-started run
    within the budget (INCLUSIVE) is left out: its updates come after the teacher's minutes, so at equal
    updates it has spent more, and its fewer updates would move every other run's column back."""
    counted = [r for r in runs if not inclusive(r)]
    return max(set.intersection(*({v["update"] for v in r["valid"]} for r in counted)), default=None) \
        if counted else None


def valid_at(run: dict, update: int | None) -> float | str:
    """A run's valid BLEU at `update` ("-" when it did not validate there)."""
    return next((v["valid_bleu"] for v in run["valid"] if v["update"] == update), "-")


def decoding_levers(models: list[Path], names: list[str], data: Path, results: dict) -> None:
    """Each model with each of the decodings `names` (DECODINGS): all 1,014 valid sentences to choose on,
    test2016 beside."""
    rows = results.setdefault("decoding", {})
    valid, test = split_text(data, "valid"), split_text(data, "test")  # read once, decoded many times
    for model in models:
        pipe = load(model, device="cpu")
        for name in names:
            options, key = DECODINGS[name], f"{model} {name}"
            if key in rows:
                continue
            _, valid_bleu, t = scored(pipe, *valid, **options)
            valid_bleu, speed = round(valid_bleu.score, 2), round(t["sentences_per_second"], 1)
            test_bleu = round(scored(pipe, *test, **options)[1].score, 2)
            rows[key] = {"model": str(model), "decoding": name, "options": options, "valid": valid_bleu,
                         "test2016": test_bleu, "valid_sentences_per_second": speed, "machine": machine(),
                         "commit": commit(), "command": command()}
            save_results(NAME, results, markdown(results))
            print(f"{key}: valid {valid_bleu}, test2016 {test_bleu}, {speed} sentences/s", flush=True)


def markdown(results: dict) -> str:
    lines = ["# Convergence levers: one change each against the preset (Multi30k De->En)", "",
             "Sorted by the best validation BLEU (300 valid sentences, 1x1, 20 steps) within each batch of runs; "
             "test2016 is decoded once per run and not used to choose. Each arm is the `multi30k` preset of its "
             "commit with its overrides; *config* is what the run's saved config sets otherwise than today's "
             "preset (a control that predates a preset change shows the value it ran with).", ""]
    for tag, arms in results.get("batches", {}).items():
        # per update too: the arms' updates per minute differ (the change, and the machine's drift)
        at = common_update(arms.values())
        lines += [f"## {tag}", "", f"| arm | config | minutes | updates | valid BLEU at update {at} | best valid "
                  "BLEU (update) | last valid BLEU | test2016 1x1 |", "|---|---|---|---|---|---|---|---|"]
        for arm, r in sorted(arms.items(), key=lambda a: -a[1]["best_valid_bleu"]):
            best = max(r["valid"], key=lambda v: v["valid_bleu"])
            same = AFTER_TEACHER if inclusive(r) else valid_at(r, at)
            minutes = f"{r['train_minutes']} + {r['teacher_minutes']} teacher" if inclusive(r) \
                else r["train_minutes"]
            lines.append(f"| {arm} | {against_preset(r['config'])} | {minutes} | {r['updates']} "
                         f"| {same} | {best['valid_bleu']} ({best['update']}) | {r['valid'][-1]['valid_bleu']} | "
                         f"{r['test2016']} |")
        first = next(iter(arms.values()))
        runs = "; ".join(f"`{c}` (commit {k})" for c, k in dict.fromkeys((r["command"], r["commit"]) for r in arms.values()))
        lines += ["", f"Machine: {first['machine']}; data `{first['data']}`; commands: {runs}", ""]
    lines += against_control(results.get("batches", {}))
    if results.get("decoding"):
        rows = list(results["decoding"].values())
        lines += ["## Decoding levers (1x1, 20 steps; chosen on all 1,014 valid sentences)", "",
                  "| model | decoding | valid BLEU | test2016 | valid sentences/s |", "|---|---|---|---|---|"]
        lines += [f"| `{r['model']}` | {r['decoding']} | {r['valid']} | {r['test2016']} | "
                  f"{r['valid_sentences_per_second']} |" for r in rows]
        made = dict.fromkeys((r["machine"], r["command"], r["commit"]) for r in rows)
        lines += [""] + [f"Machine: {m}; command: `{c}`, commit {k}" for m, c, k in made] + [""]
    return "\n".join(lines) + "\n"


def against_control(batches: dict) -> list[str]:
    """Each arm minus the control of its own batch, arm by arm across batches: whether a gain repeats with
    another seed or budget (a difference between runs of one batch, never a number from two machines)."""
    rows = [(arm, tag, r, arms["control"]) for tag, arms in batches.items() for arm, r in arms.items()
            if arm != "control" and "control" in arms]
    if not rows:
        return []
    lines = ["## Against the control of the same batch", "", "*also differs*: what the arm's config sets otherwise "
             "than its control's beyond the arm's own change (a control that predates a preset change): the "
             "difference is not the arm's alone.", "", "| arm | batch | valid BLEU at a common update | "
             "best valid BLEU | test2016 1x1 | also differs |", "|---|---|---|---|---|---|"]
    for arm, tag, r, c in sorted(rows, key=lambda x: x[0]):
        at = common_update([r, c])
        same = [valid_at(x, at) for x in (r, c)]
        at_update = AFTER_TEACHER if inclusive(r) else \
            "-" if at is None else f"{same[0] - same[1]:+.2f} (update {at})"
        lines.append(f"| {arm} | {tag} | {at_update} | {r['best_valid_bleu'] - c['best_valid_bleu']:+.2f} | "
                     f"{r['test2016'] - c['test2016']:+.2f} | {also_differs(arm, r, c) or '-'} |")
    return lines + [""]


def also_differs(arm: str, r: dict, control: dict) -> str:
    """The settings in which an arm's run differs from its control's other than the arm's own overrides."""
    own = {o.split("=", 1)[0] for o in ARMS.get(arm, [])} | SETTINGS_OF_A_RUN
    if inclusive(r):  # its budget is the batch's less the teacher's
        own |= {"train.max_minutes"}
    known = {f"{s}.{k}" for s, values in preset().items() for k in values}
    keys = [k for k in config_diff(control["config"], r["config"], ignore=own) if k in known]  # not since removed
    return ", ".join(f"{k} {_get(control['config'], k)} -> {_get(r['config'], k)}" for k in keys)


def _get(config: dict, key: str):
    section, name = key.split(".", 1)
    return config.get(section, {}).get(name)


def batch_settings(arm: str, r: dict) -> dict:
    """What every run of a batch shares: the machine, the training data, the budget and the --set overrides."""
    minutes = round(r["config"]["train"]["max_minutes"] + r.get("teacher_minutes", 0), 6)  # the teacher's counted
    return {"machine": r["machine"], "data": r["data"], "minutes": minutes,
            "set": r.get("set", [o for o in r["overrides"] if o not in ARMS.get(arm, [])])}


def check_batch(tag: str, batch: dict, settings: dict) -> None:
    """Refuse to add a run to a batch whose recorded runs differ from it in anything but their arm."""
    for arm, r in batch.items():
        recorded = batch_settings(arm, r)
        differ = [k for k in settings if recorded[k] != settings[k]]
        if differ:
            sys.exit(f"sweep: batch {tag}'s {arm} ran with " + "; ".join(f"{k} {recorded[k]}" for k in differ)
                     + ", this run with " + "; ".join(f"{k} {settings[k]}" for k in differ)
                     + ": name a new --tag, or repeat the batch's settings")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--tag", help="name of this batch of runs (default: proxy-<minutes>min)")
    p.add_argument("--raw", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k",
                   help="raw Multi30k: prepared once, and its test2016 references")
    p.add_argument("--data", type=Path, help="a prepared directory to train on instead (distilled targets)")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every arm of the batch, the control included (another seed: train.seed=2)")
    p.add_argument("--decoding", type=Path, nargs="+", metavar="MODEL",
                   help="instead of training: decode valid and test2016 with each of the decoding levers")
    p.add_argument("--decodings", nargs="+", default=list(DECODINGS), choices=list(DECODINGS),
                   help="with --decoding: which levers (default: all)")
    p.add_argument("--report", action="store_true", help="rewrite results/sweep.md from sweep.json only")
    args = p.parse_args()
    tag = args.tag or f"proxy-{args.minutes:g}min"
    results = load_results(NAME)
    if args.report:
        return save_results(NAME, results, markdown(results))
    if args.decoding:
        return decoding_levers(args.decoding, args.decodings, args.raw, results)
    batch = results.setdefault("batches", {}).setdefault(tag, {})
    arms = ["control"] + [a for a in args.arms if a != "control"]  # the control always runs
    data = args.data or prepared(args.raw, args.work)
    if any(a not in batch for a in arms):  # a new arm is measured against the batch's recorded ones
        check_batch(tag, batch, {"machine": machine(), "data": str(data), "minutes": args.minutes, "set": args.set})
    for arm in arms:
        if arm in batch:
            print(f"{tag}/{arm}: recorded in results/{NAME}.json; skipped")
            continue
        run = args.work / NAME / tag / arm
        if arm.removeprefix("init-teacher-") in TEACHER_PARTS:
            teacher_part(arm.removeprefix("init-teacher-"))
        teacher = {"teacher_minutes": teacher_minutes()} if arm.startswith(INCLUSIVE) else {}
        minutes = round(args.minutes - teacher.get("teacher_minutes", 0), 6)
        if minutes <= 0:
            sys.exit(f"sweep: {arm}: the teacher trained {teacher['teacher_minutes']} minutes, the budget is "
                     f"{args.minutes:g}")
        cfg = load_config("multi30k", [f"train.data={data}", f"train.save_dir={run}",
                                       f"train.max_minutes={minutes}", *args.set, *ARMS[arm]])
        print(f"{tag}/{arm}: training {minutes:g} minutes", flush=True)
        train_time, started = train_run(cfg, run, f"{tag}/{arm}")
        record = training_record(run, train_time, started)
        record.pop("valid_bleu_curve")  # by minutes only; `valid` has updates and minutes
        valid = valid_curve(run)
        test = decode_test(run / "model", args.raw, ["1x1"])[0]
        config = yaml.safe_load((run / "config.yaml").read_text())  # as trained: the preset of its commit
        batch[arm] = {**record, **teacher, "overrides": args.set + ARMS[arm], "set": args.set, "config": config,
                      "data": str(data), "valid": valid,
                      "best_valid_bleu": max(v["valid_bleu"] for v in valid), "test2016": test["sacrebleu"]}
        save_results(NAME, results, markdown(results))
        print(f"{tag}/{arm}: best valid BLEU {batch[arm]['best_valid_bleu']}, test2016 {test['sacrebleu']}")


if __name__ == "__main__":
    main()
