"""Does data-parallel training help on a small CPU? The `multi30k` preset trained for a few minutes as
1 process x 2 threads and as 2 processes x 1 thread (`difformer train --nproc 2`, gloo), one after the
other in one run on one machine: target tokens/s and validation BLEU per update.

    python bench/ddp.py                    # 5 minutes each
    python bench/ddp.py --minutes 10

Two processes take two batches per update (one each), so per update they see about twice the tokens of
one process: compare BLEU at equal tokens as well as at equal updates. Resumable per arm (recorded in
results/ddp.json). On a GPU machine, `--device cuda --arms "torchrun, 1 process"` runs NCCL with world
size 1 through torchrun, to show the path runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results  # noqa: E402
from multi30k import prepared  # noqa: E402

from difformer.config import load_config, save_config  # noqa: E402

HERE = Path(__file__).parent
ARMS = {"1 process x 2 threads": ["--threads", "2"], "2 processes x 1 thread": ["--nproc", "2", "--threads", "1"],
        "torchrun, 1 process": ["--nproc", "1"]}


def run_arm(name: str, flags: list[str], data: Path, work: Path, minutes: float, device: str) -> dict:
    run = work / "runs" / name.replace(" ", "-").replace(",", "")
    cfg = load_config("multi30k", [f"train.data={data}", f"train.save_dir={run}", f"train.max_minutes={minutes}"])
    config = work / f"{run.name}.yaml"
    work.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config)
    resume = ["--resume"] if (run / "checkpoints" / "last.json").exists() else []
    r = subprocess.run([sys.executable, "-m", "difformer.cli", "train", str(config), "--device", device, *flags,
                        *resume])
    if r.returncode != 0:
        raise SystemExit(f"{name}: training exited {r.returncode}; run the same command again to resume")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    windows = [x for x in log if "tokens_per_second" in x]
    state = json.loads((run / "checkpoints" / json.loads((run / "checkpoints" / "last.json").read_text())
                        ["checkpoint"] / "state.json").read_text())["state"]
    return {"updates": state["update"], "tokens": state["tokens"], "minutes": round(state["seconds"] / 60, 2),
            "tokens_per_second": round(state["tokens"] / state["seconds"], 1),
            "median_window_tokens_per_second": round(sorted(x["tokens_per_second"] for x in windows)[len(windows) // 2], 1),
            "valid_bleu": [[x["update"], round(x["valid_bleu"], 2)] for x in log if "valid_bleu" in x],
            "processes": next(x["processes"] for x in log if "processes" in x), "flags": flags}


def markdown(r: dict) -> str:
    lines = ["# Data-parallel training on this CPU (`python bench/ddp.py`)", "",
             f"The `multi30k` preset for {r['minutes']} minutes per arm, one arm after the other.", "",
             "| arm | processes | updates | target tokens | tokens/s | valid BLEU by update |", "|---|---|---|---|---|---|"]
    for name, a in r["arms"].items():
        curve = ", ".join(f"{u}: {b}" for u, b in a["valid_bleu"])
        lines.append(f"| {name} | {a['processes']} | {a['updates']} | {a['tokens']:,} | {a['tokens_per_second']} | "
                     f"{curve} |")
    lines += ["", f"`{r['command']}` (commit {r['commit']}; {r['machine']})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--work", type=Path, default=HERE / "work" / "ddp")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arms", nargs="+", default=["1 process x 2 threads", "2 processes x 1 thread"],
                   choices=list(ARMS))
    args = p.parse_args()
    data = prepared(args.data, HERE / "work")
    results = load_results("ddp")
    if results.get("minutes") != args.minutes or results.get("device") != args.device:
        results = {"minutes": args.minutes, "device": args.device, "arms": {}}
    results.update(machine=machine(), commit=commit(), command=command())
    for name in args.arms:
        if name in results["arms"]:
            print(f"{name}: recorded in results/ddp.json; skipped")
            continue
        results["arms"][name] = run_arm(name, ARMS[name], data, args.work, args.minutes, args.device)
        save_results("ddp", results, markdown(results))
        print(f"{name}: {results['arms'][name]['updates']} updates, "
              f"{results['arms'][name]['tokens_per_second']} tokens/s", flush=True)


if __name__ == "__main__":
    main()
