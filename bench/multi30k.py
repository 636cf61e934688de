"""Multi30k De->En on CPU: train a preset for a wall-clock budget, decode test2016, record BLEU and speed.

    python bench/multi30k.py                      # 25 minutes of configs multi30k, the README's row
    python bench/multi30k.py --minutes 120        # the long run
    python bench/multi30k.py --tag lr2e-3 train.lr=2e-3   # an experiment, recorded under its tag
    python bench/multi30k.py --config multi30k-ar  # the autoregressive model, greedy and beam 4

Resumable: a finished run is recorded in results/multi30k.json and skipped next time; a killed run
continues from its last checkpoint. One training at a time: two on 2 cores distort both.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results, scored, split_text, timed  # noqa: E402

from difformer.analyze import pyplot  # noqa: E402
from difformer.checkpoint import RESUMABLE_CHANGES, read_last  # noqa: E402
from difformer.config import Config, config_diff, load_config  # noqa: E402
from difformer.data.prepare import prepare  # noqa: E402
from difformer.errors import DifformerError  # noqa: E402
from difformer.generate import load  # noqa: E402
from difformer.train import train  # noqa: E402

HERE = Path(__file__).parent
PRIMARY = "multi30k-25min"
RESULTS_PNG = HERE / "results" / "multi30k_bleu_vs_minutes.png"


def prepared(data: Path, work: Path) -> Path:
    dest = work / "multi30k-de-en"
    if not (dest / "dataset.json").exists():
        prepare(source_lang="de", target_lang="en", trainpref=str(data / "train"), validpref=str(data / "valid"),
                testpref=str(data / "test"), destdir=str(dest), vocab_size=8000, force=True)
    return dest


def decode_options(setting: str, diffusion: bool) -> dict[str, int]:
    """LxN: a Difformer's length x noise beams; beamK: an autoregressive model's beam."""
    try:
        if diffusion:
            length_beam, noise_beam = map(int, setting.split("x"))
            return {"length_beam": length_beam, "noise_beam": noise_beam}
        return {"beam": int(setting.removeprefix("beam"))}
    except ValueError:
        sys.exit(f"--settings {setting}: expected {'LxN, e.g. 7x3' if diffusion else 'beamK, e.g. beam4'} "
                 f"for {'a Difformer' if diffusion else 'an autoregressive model'}")


def decode_test(model_dir: Path, data: Path, settings: list[str] | None = None) -> list[dict]:
    """Decode test2016 with each setting: LxN (a Difformer's length x noise beams; default 1x1 and 7x3) or
    beamK (an autoregressive model's beam; default beam1 and beam4)."""
    pipe = load(model_dir, device="cpu")  # a CPU benchmark, also on a machine with a GPU
    diffusion = pipe.arch == "difformer"
    settings = settings or (["1x1", "7x3"] if diffusion else ["beam1", "beam4"])
    sources, refs = split_text(data, "test")
    rows = []
    for setting in settings:
        options = decode_options(setting, diffusion)
        cfg = pipe.decode_config(**options)
        _, bleu, t = scored(pipe, sources, refs, **options)
        rows.append({"setting": pipe.describe(cfg), "candidates": setting, "sacrebleu": round(bleu.score, 2),
                     "signature": bleu.signature, "nfe": cfg.nfe if diffusion else None, "precision": pipe.precision,
                     "decode_seconds": round(t["wall"], 1),
                     "decode_sentences_per_second": round(t["sentences_per_second"], 1)})
        print(f"  {setting}: BLEU {bleu.score:.2f}, {t['sentences_per_second']:.1f} sentences/s", flush=True)
    return rows


def train_run(cfg: Config, run: Path, tag: str) -> tuple[dict | None, dict]:
    """Train `run` unless its model exists; a killed run continues from its last checkpoint, on the machine
    it started on. Returns the process's wall and CPU time (None when it trained nothing or resumed: it saw
    part of the training) and where the run started: {"commit", "machine"}, kept in the run's directory.

    A run directory trained with another config is refused, not reused: a recorded number must belong to
    the config recorded beside it."""
    if (run / "config.yaml").exists():
        try:
            saved = load_config(str(run / "config.yaml"))
        except DifformerError as e:
            sys.exit(f"{tag}: {e}; remove {run} to train this config")
        # the data's vocabulary size is filled in by training; paths and budgets may change on a resume
        diff = config_diff(saved.to_dict(), cfg.to_dict(), ignore=RESUMABLE_CHANGES | {"model.vocab_size"})
        if diff:
            sys.exit(f"{tag}: {run} was trained with another config (differing keys: {', '.join(diff)}); "
                     "remove that directory to train this one")
    started = {"commit": run / "commit.txt", "machine": run / "machine.txt"}
    if not started["commit"].exists():
        run.mkdir(parents=True, exist_ok=True)
        started["commit"].write_text(commit())
        started["machine"].write_text(machine())
    where = {k: f.read_text().strip() if f.exists() else machine() for k, f in started.items()}
    if (run / "model" / "model.safetensors").exists():
        return None, where
    if where["machine"] != machine():
        sys.exit(f"{tag}: {run} started on {where['machine']}, this is {machine()}: a run's minutes and speed "
                 "belong to one machine; finish it there or remove the directory")
    resumed = (run / "checkpoints" / "last.json").exists()
    with timed() as t:
        train(cfg, resume=resumed, device="cpu")
    if not (run / "model" / "model.safetensors").exists():  # stopped by a signal: checkpoint saved
        sys.exit(f"{tag}: training stopped; run the same command again to continue from its checkpoint")
    return None if resumed else t, where


def run_record(run: Path, rows: list[dict], train_time: dict | None, started: dict) -> dict:
    """The JSON record of a finished run decoded with `rows` (the first is the headline)."""
    first = rows[0]
    return {"sacrebleu": first["sacrebleu"], "signature": first["signature"],
            **training_record(run, train_time, started),
            "decode_sentences_per_second": first["decode_sentences_per_second"], "nfe": first["nfe"],
            "results": rows}


def last_state(run: Path) -> dict:
    """The training state (update, seconds, tokens) of a run's last checkpoint."""
    name = read_last(run / "checkpoints")
    return json.loads((run / "checkpoints" / name / "state.json").read_text())["state"]


def training_record(run: Path, train_time: dict | None, started: dict) -> dict:
    """What a finished training left: updates, time, speed, validation curve; `started`: the commit and
    machine it started with (train_run)."""
    state = last_state(run)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    curve = [[round(r["seconds"] / 60, 2), round(r["valid_bleu"], 2)] for r in _with_seconds(log)]
    return {"updates": state["update"], "train_minutes": round(state["seconds"] / 60, 1),
            "train_cpu_minutes": round(train_time["cpu"] / 60, 1) if train_time else None,
            "train_tokens_per_second": round(state["tokens"] / state["seconds"]),
            "valid_bleu_curve": curve, "final_model": log[-1].get("final"),
            "machine": started["machine"], "commit": started["commit"], "command": command()}


def _with_seconds(log: list[dict]) -> list[dict]:
    """Validation records with their training clock (a log written before validations carried it: the clock
    of the log line before them)."""
    seconds, out = 0.0, []
    for r in log:
        seconds = r.get("seconds", seconds)
        if "valid_bleu" in r:
            out.append({**r, "seconds": seconds})
    return out


def markdown(results: dict) -> str:
    lines = ["# Multi30k De->En (test2016), trained on this CPU for a wall-clock budget", "",
             "| run | train min (CPU min) | updates | train tok/s | decoding | NFE | sacreBLEU | sent/s |",
             "|---|---|---|---|---|---|---|---|"]
    for tag, r in results.get("runs", {}).items():
        for row in r["results"]:
            cpu = "-" if r["train_cpu_minutes"] is None else r["train_cpu_minutes"]
            lines.append(f"| {tag} | {r['train_minutes']} ({cpu}) | {r['updates']} | "
                         f"{r['train_tokens_per_second']} | {row['setting'].split(' NFE')[0]} | "
                         f"{row['nfe'] or '-'} | {row['sacrebleu']} | {row['decode_sentences_per_second']} |")
    any_run = next(iter(results.get("runs", {}).values()), None)
    if any_run:
        lines += ["", "CPU min: the training process's CPU time; - where it was resumed or trained by an earlier "
                  "call (a decoding that was stopped and run again).", "",
                  f"sacreBLEU signature: `{any_run['signature']}`", ""]
        lines += [f"- `{tag}`: `{r['command']}`, commit {r['commit']}, {r['machine']}" for tag, r in results["runs"].items()]
    return "\n".join(lines) + "\n"


def plot(results: dict) -> None:
    """Validation BLEU (300 valid sentences, 1x1) over training minutes for every run, test BLEU as a dot."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tag, r in results.get("runs", {}).items():
        if r["valid_bleu_curve"]:
            minutes, bleu = zip(*r["valid_bleu_curve"])
            line, = ax.plot(minutes, bleu, marker=".", label=f"{tag} (valid)")
            ax.scatter([r["train_minutes"]], [r["sacrebleu"]], color=line.get_color(), marker="*", s=120,
                       label=f"{tag}: test2016 {r['sacrebleu']}")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("sacreBLEU")
    ax.set_title("Multi30k De->En: BLEU against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS_PNG, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--config", default="multi30k")
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--tag", help="name of the run in the results (default: multi30k-<minutes>min)")
    p.add_argument("--settings", help="test decodings, comma-separated: LxN length x noise beams for a Difformer "
                   "(default 1x1,7x3), beamK for an autoregressive config (default beam1,beam4)")
    args = p.parse_args()
    tag = args.tag or f"{args.config}-{args.minutes:g}min"
    results = load_results("multi30k")
    if tag in results.get("runs", {}):
        print(f"{tag}: already recorded in bench/results/multi30k.json; delete it there to rerun")
        return
    data = prepared(args.data, args.work)
    run = args.work / "runs" / tag
    cfg = load_config(args.config, [f"train.data={data}", f"train.save_dir={run}",
                                    f"train.max_minutes={args.minutes}", *args.overrides])
    settings = args.settings.split(",") if args.settings else None
    for setting in settings or []:  # before training, not after it
        decode_options(setting, cfg.model.arch == "difformer")
    train_time, started = train_run(cfg, run, tag)
    record = run_record(run, decode_test(run / "model", args.data, settings), train_time, started)
    record["overrides"] = args.overrides
    results.setdefault("runs", {})[tag] = record
    if tag == PRIMARY:
        results.update({k: v for k, v in record.items() if k != "valid_bleu_curve"})
    save_results("multi30k", results, markdown(results))
    plot(results)
    print(f"{tag}: test2016 sacreBLEU {record['sacrebleu']} after {record['updates']} updates")


if __name__ == "__main__":
    main()
