"""Candidate pruning (issue 14), chosen on validation data: 20-step 7x3 decoding of Multi30k valid with
every candidate running every step, against `prune_after` k steps of all 21 and the rest for the
`prune_keep` m best of each sentence (by the mean token log-probability of their k-th z0 prediction).

    python bench/pruning.py --model bench/work/teacher/runs/difformer-distilled-25min/model

The chosen setting is the cheapest (fewest network evaluations) whose valid BLEU is within --tolerance of
the unpruned 7x3; test2016 is not decoded here (bench/speed.py measures the chosen setting there, beside
the old code's unpruned 7x3). Resumable: each finished setting is recorded in results/pruning.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results, scored, split_text  # noqa: E402

from difformer.generate import load  # noqa: E402

HERE = Path(__file__).parent
BEAMS = {"steps": 20, "length_beam": 7, "noise_beam": 3}
PRUNING = [(0, 21), (3, 1), (3, 3), (5, 1), (5, 3), (8, 3)]  # (prune_after, prune_keep); 0: unpruned


def chosen(rows: list[dict], tolerance: float) -> dict | None:
    """The pruned row of fewest network evaluations within `tolerance` valid BLEU of the unpruned one."""
    full = next((r for r in rows if not r["prune_after"]), None)
    good = [r for r in rows if full and r["prune_after"] and r["valid"] >= full["valid"] - tolerance]
    return min(good, key=lambda r: (r["nfe"], -r["valid"]), default=None)


def markdown(results: dict) -> str:
    rows = sorted(results["rows"].values(), key=lambda r: -r["nfe"])
    pick = chosen(rows, results["tolerance"])
    lines = ["# Candidate pruning: 7x3 decoding, 20 steps, chosen on Multi30k valid", "",
             f"Model: `{results['model']}` (fp32). The first {results['sentences']} valid sentences; "
             "selection by the model's own score. Chosen: the fewest network evaluations (NFE) within "
             f"{results['tolerance']} valid BLEU of the unpruned 7x3.", "",
             "| prune after | keep | NFE per sentence | valid BLEU | sentences/s | chosen |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['prune_after'] or 'off'} | {r['prune_keep'] if r['prune_after'] else 21} | {r['nfe']} | "
              f"{r['valid']} | {r['sentences_per_second']} | {'yes' if r is pick else ''} |" for r in rows]
    if "1x1" in results:
        one = results["1x1"]
        lines += ["", f"For scale, one candidate (1x1, NFE 20) on the same sentences: valid BLEU {one['valid']}, "
                  f"{one['sentences_per_second']} sentences/s."]
    lines += ["", f"Machine: {results['machine']}", f"Command: `{results['command']}` (at {results['commit']})", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path,
                   default=HERE / "work" / "teacher" / "runs" / "difformer-distilled-25min" / "model")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--sentences", type=int, default=500, help="the first N valid sentences (7x3 is 21x the work)")
    p.add_argument("--tolerance", type=float, default=0.5, help="valid BLEU the chosen pruning may lose")
    p.add_argument("--name", default="pruning")
    args = p.parse_args()
    sources, refs = (lines[:args.sentences] for lines in split_text(args.data, "valid"))
    results = load_results(args.name)
    if (results.get("model", str(args.model)), results.get("sentences", args.sentences)) != (str(args.model),
                                                                                          args.sentences):
        sys.exit(f"results/{args.name}.json holds another model or sentence count; give --name")
    results.update({"model": str(args.model), "sentences": args.sentences, "tolerance": args.tolerance,
                    "machine": machine(), "commit": commit(), "command": command()})
    rows = results.setdefault("rows", {})
    pipe = load(args.model, device="cpu", precision="fp32")  # a CPU benchmark
    pipe.generate(sources[:20], **BEAMS)  # warm-up
    if "1x1" not in results:  # what pruning must beat to be worth its cost
        _, bleu, t = scored(pipe, sources, refs, steps=BEAMS["steps"])
        results["1x1"] = {"valid": round(bleu.score, 2), "sentences_per_second": round(t["sentences_per_second"], 2)}
        print(f"1x1: valid BLEU {bleu.score:.2f}, {t['sentences_per_second']:.2f} sent/s", flush=True)
        save_results(args.name, results, markdown(results))
    for after, keep in PRUNING:
        key = f"prune_after={after} prune_keep={keep}"
        if key in rows:
            continue
        options = {**BEAMS, "prune_after": after, "prune_keep": keep}
        _, bleu, t = scored(pipe, sources, refs, **options)
        rows[key] = {"prune_after": after, "prune_keep": keep, "nfe": pipe.decode_config(**options).nfe,
                     "valid": round(bleu.score, 2), "sentences_per_second": round(t["sentences_per_second"], 2)}
        print(f"{key}: valid BLEU {bleu.score:.2f}, {t['sentences_per_second']:.2f} sent/s", flush=True)
        save_results(args.name, results, markdown(results))


if __name__ == "__main__":
    main()
