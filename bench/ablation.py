"""Ablation of Difformer's three modules, and a noise-factor sweep, on Multi30k De->En (CPU budget).

    python bench/ablation.py                               # all 12 runs, 25 minutes each (~5.5 h); resumable
    python bench/ablation.py --runs full,baseline,full-anchor   # some of them, in this order
    python bench/ablation.py --runs full-F2 --updates 2302    # a fixed number of updates instead of minutes
    python bench/ablation.py --report                      # rewrite tables and plots from the JSON only

Every run trains the `multi30k` preset for the same wall-clock budget with the module switches below,
decodes test2016 with the default decoding (20 steps, 1 x 1 candidates) and records sacreBLEU, the final
training MSE, anchor loss and mean embedding norm (log.jsonl running means over the last 50 updates),
and the updates. `--updates N` trains every run for N updates instead (no time limit): the budget for
runs made on a slower or faster machine than the others, as bf16 and fp32 reach the same validation
BLEU per update (README, training speed). The baseline is embedding diffusion as in Diffusion-LM: the
rounding loss (CE of the clean z0) instead of the anchor loss, no embedding norm, F = 1; "mse-only" is the full model with no
token loss at all (the collapse setting of the paper's first claim). A finished run is recorded in
results/ablation.json and skipped next time; a killed run continues from its last checkpoint. One
training at a time: two on 2 cores distort both.

Writes results/ablation.{json,md,png}, results/ablation_curves.png (the training curves of every run
whose record keeps them: the collapse shows there) and results/noise_factor.{json,md,png} (F in 1, 2, 3,
4, 6).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, load_results, save_results  # noqa: E402
from multi30k import decode_test, prepared, run_record, train_run  # noqa: E402

from difformer import checkpoint, hub  # noqa: E402
from difformer.analyze import plot_logs, pyplot, read_log  # noqa: E402
from difformer.config import load_config  # noqa: E402
from difformer.data.binarize import PairDataset  # noqa: E402

HERE = Path(__file__).parent
FULL = {"diffusion.anchor": "anchor", "model.embed_norm": "input", "diffusion.noise_factor": 4.0}
BASELINE = {"diffusion.anchor": "rounding", "model.embed_norm": "none", "diffusion.noise_factor": 1.0}
MODULES = {"anchor": "diffusion.anchor", "norm": "model.embed_norm", "F": "diffusion.noise_factor"}
SWEEP = (1.0, 2.0, 3.0, 4.0, 6.0)
BUDGET = ("Budget: 25 minutes of training each; runs made on another machine train instead for as many updates as "
          "the run they are compared with (`--updates N` in their command).")


def arms() -> dict[str, dict]:
    """Run tag -> module switches, most telling first: full, baseline, full minus one, baseline plus one,
    the noise factors the ablation does not already have (F = 1 is full-F, F = 4 is full), and MSE alone.
    "full-anchor" swaps the anchor loss for the rounding loss (the paper's baseline); "mse-only" drops every
    token loss, the setting in which the paper says the embeddings collapse."""
    runs = {"full": dict(FULL), "baseline": dict(BASELINE)}
    runs.update({f"full-{m}": {**FULL, key: BASELINE[key]} for m, key in MODULES.items()})
    runs.update({f"baseline+{m}": {**BASELINE, key: FULL[key]} for m, key in MODULES.items()})
    runs.update({f"full-F{f:g}": {**FULL, "diffusion.noise_factor": f} for f in SWEEP
                 if f not in (FULL["diffusion.noise_factor"], BASELINE["diffusion.noise_factor"])})
    runs["mse-only"] = {**FULL, "diffusion.anchor": "none"}  # claim 1 as stated: no token loss at all
    return runs


def noise_factor_runs(runs: dict) -> list[tuple[float, str]]:
    """(F, tag) of the recorded full-model runs that differ only in F (full, full-F, full-F2, ...), by F."""
    return sorted((s["diffusion.noise_factor"], tag) for tag, s in arms().items()
                  if tag in runs and (tag == "full" or tag.startswith("full-F")))


def run_command(tag: str, argv: list[str]) -> str:
    """The command line that reproduces one run: this script's arguments with `--runs TAG`."""
    args, rest = [], iter(argv)
    for a in rest:
        if a == "--runs":
            next(rest, None)
        elif not a.startswith("--runs="):
            args.append(a)
    return "python " + " ".join(shlex.quote(a) for a in [*args, "--runs", tag])


def final_stats(run: Path, target_ids: np.ndarray, top: int = 1000) -> dict:
    """The log's last running means, and where the `top` most frequent target tokens sit in the last
    checkpoint (not the averaged model): their mean norm ||sqrt(e) E[v]|| and mean pairwise distance.
    MSE alone pulls exactly these tokens together; the source-only tokens keep the mean norm up. Also the
    training curves, kept in the JSON so that the plot does not depend on run directories that a new
    machine does not have."""
    curves = read_log(run / "log.jsonl")
    last = {k: v[-1] for k, v in curves.items()}
    ckpt = run / "checkpoints" / checkpoint.read_last(run / "checkpoints")
    E = hub.load_weights(ckpt / hub.WEIGHTS)["embed.weight"].float()
    counts = np.bincount(target_ids, minlength=E.shape[0])
    ids = np.argsort(-counts, kind="stable")[:top]
    z0 = E[torch.from_numpy(ids[counts[ids] > 0])] * E.shape[1] ** 0.5
    return {"final_mse": round(last["mse"], 4), "final_anchor": round(last["anchor"], 3),
            "embed_norm": round(last["embed_norm"], 3), "target_norm": round(z0.norm(dim=1).mean().item(), 3),
            "target_distance": round(torch.pdist(z0).mean().item(), 3),
            "curves": {k: [float(f"{x:.4g}") for x in v] for k, v in curves.items()}}


def markdown(results: dict) -> str:
    runs = results.get("runs", {})
    lines = ["# Ablation of the three modules on Multi30k De->En (test2016), equal training budgets", "", BUDGET, "",
             "| run | anchor loss | embedding norm | F | updates | final MSE | anchor CE | mean embedding norm "
             "| top-1000 target norm | their mean distance | sacreBLEU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, r in runs.items():
        s = r["switches"]
        lines.append(f"| {tag} | {s['diffusion.anchor']} | {s['model.embed_norm']} | "
                     f"{s['diffusion.noise_factor']:g} | {r['updates']} | {r['final_mse']} | {r['final_anchor']} "
                     f"| {r['embed_norm']} | {r['target_norm']} | {r['target_distance']} | {r['sacrebleu']} |")
    missing = [t for t in arms() if t not in runs]
    if missing:
        lines += ["", f"Not yet run: {', '.join(missing)}."]
    if runs:
        any_run = next(iter(runs.values()))
        lines += ["", "anchor CE is the cross-entropy of the predicted z0 through E^T in every run (logged even "
                  "where it is not trained); final values are log.jsonl means over the last 50 updates. The mean "
                  "embedding norm is over the whole joint vocabulary; the top-1000 columns are the 1,000 most "
                  "frequent target tokens in the last checkpoint (mean ||sqrt(e) E[v]||, mean pairwise distance).",
                  f"Decoding: {any_run['results'][0]['setting']}. sacreBLEU signature: `{any_run['signature']}`"]
        machines = list(dict.fromkeys(r["machine"] for r in runs.values()))
        lines += [f"Machine: {machines[0]}" if len(machines) == 1 else "Machines differ: each run names its own.", ""]
        for tag, r in runs.items():
            cpu = ("CPU min not recorded (resumed)" if r["train_cpu_minutes"] is None
                   else f"{r['train_cpu_minutes']} CPU min")
            lines.append(f"- `{tag}` ({r['updates']} updates in {r['train_minutes']} min, {cpu}, commit {r['commit']}"
                         f"{'' if len(machines) == 1 else ', ' + r['machine']}): `{r['command']}`")
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: list[dict]) -> str:
    lines = ["# Noise factor sweep on Multi30k De->En (test2016), full Difformer, equal training budgets", "", BUDGET, "",
             "| F | run | updates | final MSE | sacreBLEU |", "|---|---|---|---|---|"]
    lines += [f"| {r['noise_factor']:g} | {r['run']} | {r['updates']} | {r['final_mse']} | {r['sacrebleu']} |"
              for r in rows]
    missing = [f"{f:g}" for f in SWEEP if f not in {r["noise_factor"] for r in rows}]
    if missing:
        lines += ["", f"Not yet run: F = {', '.join(missing)}."]
    lines += ["", "Rows are runs of `python bench/ablation.py` (see results/ablation.md for their commands)."]
    return "\n".join(lines) + "\n"


def report(results: dict) -> None:
    """Tables and plots from the recorded runs."""
    runs = results.get("runs", {})
    save_results("ablation", results, markdown(results))
    rows = [{"noise_factor": f, "run": tag, **{k: runs[tag][k] for k in ("sacrebleu", "updates", "final_mse")}}
            for f, tag in noise_factor_runs(runs)]
    save_results("noise_factor", {"runs": rows}, sweep_markdown(rows))
    if not runs:
        return
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(runs) + 1.2))
    tags = list(runs)[::-1]
    bars = ax.barh(tags, [runs[t]["sacrebleu"] for t in tags], color=["C1" if t == "full" else "C0" for t in tags])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xlabel("test2016 sacreBLEU (20 steps, 1x1)")
    ax.set_title("Ablation on Multi30k De->En, equal training budgets")
    fig.tight_layout()
    fig.savefig(RESULTS / "ablation.png", dpi=110)
    plt.close(fig)
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["noise_factor"] for r in rows], [r["sacrebleu"] for r in rows], marker="o")
        ax.set_xlabel("noise factor F (training)")
        ax.set_ylabel("test2016 sacreBLEU")
        ax.set_title("Noise factor sweep, Multi30k De->En")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS / "noise_factor.png", dpi=110)
        plt.close(fig)
    curves = {tag: r["curves"] for tag, r in runs.items() if "curves" in r}
    if curves:
        plot_logs(curves, RESULTS / "ablation_curves.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--minutes", type=float, default=25.0, help="training budget of every run")
    p.add_argument("--updates", type=int, default=0,
                   help="train every run for this many updates instead of --minutes (for another machine)")
    p.add_argument("--runs", help=f"comma-separated tags to run, in order (default: all: {', '.join(arms())})")
    p.add_argument("--report", action="store_true", help="only rewrite the tables and plots")
    args = p.parse_args()
    known = arms()
    todo = args.runs.split(",") if args.runs else list(known)
    unknown = [t for t in todo if t not in known]
    if args.updates < 0:
        p.error("--updates must be >= 0")
    if unknown:
        p.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(known)}")
    results = load_results("ablation")
    runs_dir = args.work / "ablation"
    if args.report:  # refresh what run directories still hold (columns added since a run was recorded)
        present = [tag for tag in results.get("runs", {}) if (runs_dir / tag / "checkpoints" / "last.json").is_file()]
        if present:  # the corpus is needed only for this: a clean clone rewrites the tables without it
            target_ids = PairDataset(prepared(args.data, args.work), "train").target_tokens
        for tag in present:
            results["runs"][tag].update(final_stats(runs_dir / tag, target_ids))
        report(results)
        return
    data = prepared(args.data, args.work)
    target_ids = PairDataset(data, "train").target_tokens
    for tag in todo:
        if tag in results.get("runs", {}):
            print(f"{tag}: already recorded in bench/results/ablation.json; skipped")
            continue
        run = runs_dir / tag
        switches = known[tag]
        budget = ([f"train.max_updates={args.updates}", "train.max_minutes=0"] if args.updates
                  else [f"train.max_minutes={args.minutes}"])
        cfg = load_config("multi30k", [f"train.data={data}", f"train.save_dir={run}", *budget,
                                       *(f"{k}={v}" for k, v in switches.items())])
        print(f"{tag}: training {f'{args.updates} updates' if args.updates else f'{args.minutes:g} minutes'} "
              f"with {switches}", flush=True)
        train_time, started = train_run(cfg, run, tag)
        record = run_record(run, decode_test(run / "model", args.data, ["1x1"]), train_time, started)
        record.update(switches=switches, command=run_command(tag, sys.argv), **final_stats(run, target_ids))
        results.setdefault("runs", {})[tag] = record
        report(results)  # after every run, so a stopped sweep still has its tables
        print(f"{tag}: test2016 sacreBLEU {record['sacrebleu']}, final MSE {record['final_mse']}, "
              f"embedding norm {record['embed_norm']}", flush=True)
    report(results)


if __name__ == "__main__":
    main()
