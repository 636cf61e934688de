"""The speed / quality curve of decoding: BLEU and sentences per second on Multi30k test2016 for steps in
{5, 10, 20}, early stopping on and off, and length x noise beams {1x1, 3x1, 3x3, 7x3}; plus fp32 vs bf16,
and the default decoding one sentence at a time (batch 1: the latency an interactive user sees).

    python bench/decoding.py --model bench/work/runs/multi30k-25min/model
    python bench/decoding.py --grid compare --name decoding-epyc --model M  # fp32 vs bf16 on another machine

Resumable: each finished setting is recorded in results/decoding.json and skipped next time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results, scored, split_text  # noqa: E402

from difformer.generate import load  # noqa: E402

HERE = Path(__file__).parent


def settings() -> list[dict]:
    grid = []
    for steps in (5, 10, 20):
        for early in (0, round(steps * 0.75)):  # the published runs stop after 15 of 20 steps
            for beams in ("1x1", "3x1", "3x3", "7x3"):
                l, n = map(int, beams.split("x"))
                grid.append({"steps": steps, "early_stop": early, "length_beam": l, "noise_beam": n})
    # max_tokens 1 puts every sentence in a batch of its own (same outputs in fp32; bf16 may round differently)
    return grid + [{"steps": 20, "early_stop": 0, "length_beam": 1, "noise_beam": 1, "max_tokens": 1}]


def compared(s: dict) -> bool:
    """The rows decoded in every precision: the default decoding, the largest beam, and batch 1."""
    return s["steps"] == 20 and not s["early_stop"] and (s["length_beam"], s["noise_beam"]) in ((1, 1), (7, 3))


def markdown(results: dict) -> str:
    rows = sorted(results["rows"].values(),
                  key=lambda r: (r["precision"], "max_tokens" in r, r["nfe"], -r["sacrebleu"]))
    lines = ["# Decoding: quality against speed (Multi30k test2016, 1,000 sentences)", "",
             f"Model: `{results['model']}`. Batches: all sentences, sorted by length, batched by "
             "decode.max_tokens, or one sentence at a time (batch 1: the latency an interactive user sees). "
             "Selection: the model's own mean token log-probability.", "",
             "| precision | batch | steps | early stop | candidates | NFE | sacreBLEU | sentences/s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['precision']} | {r.get('max_tokens', 'by max_tokens')} | {r['steps']} | {r['early_stop'] or 'off'} | "
              f"{r['candidates']} | {r['nfe']} | {r['sacrebleu']} | {r['sentences_per_second']} |" for r in rows]
    single = [r for r in rows if "differs_from_batched" in r]
    if single:
        lines += ["", "Outputs of batch 1 that differ from the same decoding in batches: "
                  + ", ".join(f"{r['differs_from_batched']} in {r['precision']}" for r in single)
                  + ". The noise is seeded per source, so only the rounding of batched products can change them."]
    lines += ["", f"sacreBLEU signature: `{rows[0]['signature']}`" if rows else "", f"Machine: {results['machine']}",
              f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=HERE / "work" / "runs" / "multi30k-25min" / "model")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--precision", default="bf16,fp32", help="comma-separated; fp32 runs the 20-step 1x1 and 7x3 rows only")
    p.add_argument("--grid", choices=("full", "compare"), default="full",
                   help="compare: only the rows decoded in every precision (20 steps, 1x1 and 7x3)")
    p.add_argument("--name", default="decoding", help="results file name (results/NAME.json and .md)")
    args = p.parse_args()
    sources, refs = split_text(args.data, "test")
    results = load_results(args.name)
    results.update({"model": str(args.model), "machine": machine(), "commit": commit(), "command": command()})
    results.setdefault("rows", {})
    for precision in args.precision.split(","):
        pipe = load(args.model, device="cpu", precision=precision)  # a CPU benchmark
        for s in settings():
            beams = f"{s['length_beam']}x{s['noise_beam']}"
            if (precision == "fp32" or args.grid == "compare") and not compared(s):
                continue
            batch = " batch=1" if "max_tokens" in s else ""
            key = f"{precision} steps={s['steps']} early={s['early_stop']} {beams}{batch}"
            if key in results["rows"]:
                continue
            hyps, bleu, t = scored(pipe, sources, refs, **s)
            cfg = pipe.decode_config(**s)
            results["rows"][key] = {**s, "precision": precision, "candidates": beams, "nfe": cfg.nfe,
                                    "sacrebleu": round(bleu.score, 2), "signature": bleu.signature,
                                    "sentences_per_second": round(t["sentences_per_second"], 1),
                                    "cpu_seconds": round(t["cpu"], 1)}
            if "max_tokens" in s:  # the same decoding in length-sorted batches: the outputs batching changes
                batched = pipe.generate(sources, **{k: v for k, v in s.items() if k != "max_tokens"})
                results["rows"][key]["differs_from_batched"] = sum(a != b for a, b in zip(hyps, batched, strict=True))
            print(f"{key}: BLEU {bleu.score:.2f}, {t['sentences_per_second']:.1f} sent/s", flush=True)
            save_results(args.name, results, markdown(results))


if __name__ == "__main__":
    main()
