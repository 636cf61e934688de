"""CPU speed of this code against an older commit, side by side in one run on one machine: Difformer decoding
of Multi30k test2016 (20 steps, 1x1 and 7x3, fp32 or --precision) and training target tokens/s of the
`multi30k` preset.

    git worktree add /tmp/old 32177a0
    python bench/speed.py --model bench/work/teacher/runs/difformer-distilled-25min/model --old /tmp/old

Each measurement runs in a fresh process with PYTHONPATH at one tree's `src`, old and new alternating, one
at a time (nothing else may run beside it). Both trees run one config: the model directory's for decoding,
the new tree's `multi30k` preset for training (an older tree's preset may differ: its dropout and
self-conditioning change the speed); keys an older tree does not know (options added since) are left out
for it and listed in the JSON.
Writes results/speed.json and .md (--name to keep another machine's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, machine, save_results  # noqa: E402

HERE = Path(__file__).parent
DECODINGS = {"1x1": {"steps": 20, "length_beam": 1, "noise_beam": 1},
             "7x3": {"steps": 20, "length_beam": 7, "noise_beam": 3}}


def drop_unknown_keys(raw: dict) -> list[str]:
    """Drop from a config dict the keys this tree's Config does not know; returns them as KEY=VALUE."""
    import dataclasses

    from difformer import config as C

    dropped = []
    for section in dataclasses.fields(C.Config):
        known = {f.name for f in dataclasses.fields(getattr(C, section.type) if isinstance(section.type, str)
                                                    else section.type)}
        for key in sorted(set(raw.get(section.name, {})) - known):
            dropped.append(f"{section.name}.{key}={raw[section.name].pop(key)}")
    return dropped


def worker(task: dict) -> dict:
    """Runs inside the measured tree (its difformer is the one imported)."""
    import shutil
    import tempfile
    import time

    import torch
    import yaml

    from difformer import config as C

    if task["kind"] == "preset":
        return C.load_config("multi30k").to_dict()
    if task["kind"] == "train":
        from difformer.train import train

        save = Path(tempfile.mkdtemp()) / "run"
        raw = task["config"]
        dropped = drop_unknown_keys(raw)
        (save.parent / "config.yaml").write_text(yaml.safe_dump(raw))
        cfg = C.load_config(str(save.parent / "config.yaml"), [
            f"train.data={task['data']}", f"train.save_dir={save}", f"train.max_minutes={task['minutes']}",
            "train.validate_every=1000000"])
        train(cfg, device="cpu")
        state = json.loads((save / "checkpoints" / json.loads((save / "checkpoints" / "last.json").read_text())
                            ["checkpoint"] / "state.json").read_text())["state"]
        shutil.rmtree(save.parent)
        return {"updates": state["update"], "tokens_per_second": round(state["tokens"] / state["seconds"], 1),
                "dropped_config": dropped}

    from difformer.generate import load
    from difformer.metrics import corpus_bleu

    model = Path(task["model"])
    raw = json.loads((model / "config.json").read_text())
    dropped = drop_unknown_keys(raw)
    copy = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(model, copy)
    (copy / "config.json").write_text(json.dumps(raw))
    pipe = load(copy, device="cpu", precision=task["precision"])
    precision = pipe.precision
    sources = (Path(task["data_raw"]) / "test.de").read_text(encoding="utf-8").splitlines()[: task["sentences"]]
    refs = (Path(task["data_raw"]) / "test.en").read_text(encoding="utf-8").splitlines()[: task["sentences"]]
    pipe.generate(sources[:20], **task["options"])  # warm-up
    start = time.perf_counter()
    hyps = pipe.generate(sources, **task["options"])
    seconds = time.perf_counter() - start
    shutil.rmtree(copy.parent)
    return {"sentences": len(sources), "seconds": round(seconds, 2),
            "sentences_per_second": round(len(sources) / seconds, 2),
            "sacrebleu": round(corpus_bleu(hyps, refs).score, 2), "dropped_config": dropped, "precision": precision,
            "threads": torch.get_num_threads()}


def measure(tree: Path, task: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(f"{tree}: {task['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_commit(tree: Path) -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=tree, capture_output=True, text=True)
    return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def markdown(r: dict) -> str:
    lines = ["# CPU speed, old and new code side by side", "",
             f"Old: {r['old_commit']}, new: {r['new_commit']}. Model: `{r['model']}`; decoding precision "
             f"{r.get('precision', 'fp32')}.", "",
             "| measurement | old | new | new / old | BLEU old | BLEU new |", "|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        unit = "tok/s" if name == "train" else "sent/s"
        key = "tokens_per_second" if name == "train" else "sentences_per_second"
        o, n = row["old"][key], row["new"][key]
        bleu = ("-", "-") if name == "train" else (row["old"]["sacrebleu"], row["new"]["sacrebleu"])
        what = (f"training, {r['train_minutes']} min from scratch" if name == "train"
                else f"decoding 20 steps {name}, {row['new']['sentences']} test2016 sentences, "
                f"{row['old'].get('precision', 'fp32')} / {row['new'].get('precision', 'fp32')}")
        lines.append(f"| {what} | {o} {unit} | {n} {unit} | {n / o:.2f}x | {bleu[0]} | {bleu[1]} |")
    lines += ["", f"Machine: {r['machine']}", f"Command: `{r['command']}` (at {r['commit']})", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help="a trained Difformer model directory")
    p.add_argument("--old", type=Path, help="a checkout (git worktree) of the older commit")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--prepared", type=Path, default=HERE / "work" / "multi30k-de-en",
                   help="prepared Multi30k for the training measurement (bench/multi30k.py makes it)")
    p.add_argument("--sentences-7x3", type=int, default=200, help="7x3 is 21x the work: a prefix of test2016")
    p.add_argument("--train-minutes", type=float, default=2.0, help="0: skip the training measurement")
    p.add_argument("--name", default="speed")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="decoding precision; auto: what each tree's own rule picks on this machine")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not (args.model and args.old):
        p.error("--model and --old are required")
    new = Path(__file__).resolve().parent.parent
    tasks = {name: {"kind": "decode", "model": str(args.model.resolve()), "data_raw": str(args.data.resolve()),
                    "options": options, "sentences": 1000 if name == "1x1" else args.sentences_7x3,
                    "precision": args.precision}
             for name, options in DECODINGS.items()}
    if args.train_minutes:  # the new tree's preset, in full, for both
        tasks["train"] = {"kind": "train", "config": measure(new, {"kind": "preset"}),
                          "data": str(args.prepared.resolve()), "minutes": args.train_minutes}
    rows = {}
    for name, task in tasks.items():
        rows[name] = {}
        for label, tree in (("old", args.old), ("new", new)):
            rows[name][label] = measure(tree, task)
            print(name, label, rows[name][label], flush=True)
    result = {"old_commit": tree_commit(args.old), "new_commit": tree_commit(new), "model": str(args.model),
              "train_minutes": args.train_minutes, "precision": args.precision, "rows": rows, "machine": machine(),
              "commit": commit(), "command": command()}
    save_results(args.name, result, markdown(result))


if __name__ == "__main__":
    main()
