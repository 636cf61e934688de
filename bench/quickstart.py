"""The quickstart as a benchmark: time, updates and test BLEU of `difformer quickstart` on this machine.

    python bench/quickstart.py            # writes results/quickstart.json and .md
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, machine, save_results, timed  # noqa: E402

from difformer.quickstart import quickstart  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work, timed() as t:
        bleu = quickstart(work, minutes=args.minutes, seed=args.seed)
        log = [json.loads(line) for line in (Path(work) / "run" / "log.jsonl").read_text().splitlines()]
    curve = []
    seconds = 0.0
    for r in log:
        seconds = r.get("seconds", seconds)
        if "valid_bleu" in r:
            curve.append([r["update"], round(seconds / 60, 2), round(r["valid_bleu"], 1)])
    result = {"test_bleu": round(bleu, 1), "updates": curve[-1][0], "total_minutes": round(t["wall"] / 60, 1),
              "cpu_minutes": round(t["cpu"] / 60, 1), "valid_curve": curve, "final": log[-1].get("final"),
              "machine": machine(), "commit": commit(), "command": command()}
    md = ["# Quickstart: French -> English number words", "",
          f"Test BLEU **{result['test_bleu']}** (sacreBLEU, 1x1 candidates, 20 steps) after {result['updates']} "
          f"updates; {result['total_minutes']} min wall in all (corpus, prepare, training, decoding), "
          f"{result['cpu_minutes']} CPU min.", "", "| update | training minutes | valid BLEU |", "|---|---|---|"]
    md += [f"| {u} | {m} | {b} |" for u, m, b in curve]
    md += ["", f"Machine: {result['machine']}", f"Command: `{result['command']}`", ""]
    save_results("quickstart", result, "\n".join(md))


if __name__ == "__main__":
    main()
