"""The autoregressive teacher beside the Difformer, on one machine in one run: Multi30k De->En, test2016.

    python bench/teacher.py                  # AR 25 min, distillation, Difformer distilled and raw, 25 min each
    python bench/teacher.py --long 120       # then the Difformer on distilled targets for 120 minutes
    python bench/teacher.py --decode-again ar-25min   # decode a recorded model again after a decoding change
    python bench/teacher.py --name teacher-epyc --stop-after distill   # another machine: its own results,
                                                      # the teacher and its targets only (for bench/sweep.py)

Stages, in order, each recorded in results/NAME.json (default teacher) when done and skipped next time (a
killed training continues from its checkpoint; a killed distillation from its last chunk). The runs live in
bench/work/teacher whatever NAME is: bench/sweep.py's warm start reads the teacher there. A results file
holds one machine's runs; another machine's stages need another --name.
  ar-25min                   the `multi30k-ar` preset; test decoded greedy and with beam 4
  distill                    the training sources decoded by that model (beam 4): targets for the students
  difformer-distilled-25min  the `multi30k` preset on the distilled targets
  difformer-raw-25min        the `multi30k` preset on the original targets
Each Difformer is decoded 1x1, 7x3 chosen by its own score, and 7x3 reranked by the teacher. One heavy job
at a time: run nothing beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results, scored, split_text, timed  # noqa: E402
from multi30k import prepared, train_run, training_record  # noqa: E402

from difformer.config import load_config  # noqa: E402
from difformer.distill import distill  # noqa: E402
from difformer.generate import load  # noqa: E402

HERE = Path(__file__).parent
WORK = "teacher"  # bench/work/teacher: the runs and the distilled targets
AR = {"greedy": {"beam": 1}, "beam 4": {"beam": 4}}
DIFFUSION = {"1x1": {"length_beam": 1, "noise_beam": 1},
             "7x3 own score": {"length_beam": 7, "noise_beam": 3, "selection": "score"},
             "7x3 teacher rerank": {"length_beam": 7, "noise_beam": 3, "selection": "ar"}}


def decode_rows(model_dir: Path, data: Path, settings: dict[str, dict], reranker: Path | None = None) -> list[dict]:
    """Decode test2016 with each setting: sacreBLEU, sentences/s, NFE and the decoding report."""
    pipe = load(model_dir, device="cpu", reranker=reranker)  # a CPU benchmark
    sources, refs = split_text(data, "test")
    rows = []
    for name, options in settings.items():
        cfg = pipe.decode_config(**options)
        _, bleu, t = scored(pipe, sources, refs, **options)
        nfe = cfg.nfe if pipe.arch == "difformer" else None
        rows.append({"decoding": name, "setting": pipe.describe(cfg), "nfe": nfe, "sacrebleu": round(bleu.score, 2),
                     "signature": bleu.signature, "precision": pipe.precision, "decode_seconds": round(t["wall"], 1),
                     "sentences_per_second": round(t["sentences_per_second"], 1), "decode_commit": commit(),
                     "decode_machine": machine()})
        print(f"  {name}: BLEU {bleu.score:.2f}, {t['sentences_per_second']:.1f} sentences/s", flush=True)
    return rows


def train_stage(tag: str, preset: str, data: Path, work: Path, minutes: float, test: Path, settings: dict,
                reranker: Path | None = None) -> dict:
    run = work / "runs" / tag
    cfg = load_config(preset, [f"train.data={data}", f"train.save_dir={run}", f"train.max_minutes={minutes}"])
    train_time, started = train_run(cfg, run, tag)
    return {**training_record(run, train_time, started), "preset": preset, "data": str(data),
            "results": decode_rows(run / "model", test, settings, reranker)}


def distill_stage(teacher: Path, data: Path, dest: Path) -> dict:
    with timed() as t:
        info = distill(teacher, data, dest, beam=4, device="cpu", force=dest.exists())
    d = info["distilled"]
    return {
        "teacher": str(teacher), "decoding": d["decoding"], "precision": d["precision"],
        "distill_minutes": round(d["seconds"] / 60, 1), "process_cpu_minutes": round(t["cpu"] / 60, 1),
        "pairs": info["splits"]["train"]["pairs"], "teacher_bleu_vs_train_references": d["teacher_bleu_vs_references"],
        "empty_outputs_kept_reference": d["empty_outputs_kept_reference"],
        "machine": machine(), "commit": commit(), "command": command()}


def check_machine(name: str, results: dict) -> None:
    """Refuse to add this machine's stages to another machine's: they are compared side by side."""
    others = sorted({r["machine"] for r in results["runs"].values()} - {machine()})
    if others:
        sys.exit(f"teacher: results/{name}.json holds runs of {'; '.join(others)}, this is {machine()}: "
                 f"pass --name {name}-<this machine> for a set of its own")


def markdown(results: dict) -> str:
    runs = results.get("runs", {})
    dist = runs.get("distill", {})  # the distilled targets and the teacher that made them
    teacher = runs.get(Path(dist["teacher"]).parent.name, {}).get("train_minutes", 0) if dist else 0
    dist = dist.get("distill_minutes", 0)
    lines = ["# The autoregressive teacher and the Difformer, side by side (Multi30k De->En, test2016)", "",
             "| system | training data | student min | min incl. teacher + distillation | updates | decoding "
             "| NFE | sacreBLEU | sent/s |", "|---|---|---|---|---|---|---|---|---|"]
    for tag, r in runs.items():
        if tag == "distill":
            continue
        distilled = "distilled" in tag
        total = round(r["train_minutes"] + teacher + dist, 1) if distilled else r["train_minutes"]
        for row in r["results"]:
            lines.append(f"| {tag} | {'teacher beam 4' if distilled else 'original'} | {r['train_minutes']} | "
                         f"{total} | {r['updates']} | {row['decoding']} | {row['nfe'] or '-'} | "
                         f"{row['sacrebleu']} | {row['sentences_per_second']} |")
    if "distill" in runs:
        d = runs["distill"]
        lines += ["", f"Distillation: {d['pairs']:,} training sources decoded by the teacher ({d['decoding']}) in "
                  f"{d['distill_minutes']} minutes; teacher BLEU against the training references "
                  f"{d['teacher_bleu_vs_train_references']}."]
    lines += ["", "NFE: network evaluations per sentence (steps x candidates); an autoregressive decoder runs "
              "once per output token. Rerank: the teacher's length-normalised log-probability of each of the 21 "
              "candidates (one teacher-forced pass each, counted in sent/s)."]
    for tag, r in runs.items():
        first = r.get("results", [{}])[0]
        lines.append(f"- `{tag}`: `{r['command']}`, commit {r['commit']}" +
                     (f", decoded at {first['decode_commit']}" if first.get("decode_commit") else "") +
                     (f" on {first['decode_machine']}" if first.get("decode_machine", r["machine"]) != r["machine"]
                      else "") +
                     (f", {first['precision']}" if first else ""))
    if runs:
        lines += [""] + [f"Machine: {m}" for m in dict.fromkeys(r["machine"] for r in runs.values())]
        sig = next((r["results"][0]["signature"] for r in runs.values() if r.get("results")), None)
        if sig:
            lines.append(f"sacreBLEU signature: `{sig}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--minutes", type=float, default=25.0, help="training budget of every system")
    p.add_argument("--long", type=float, help="then train the distilled student this many minutes")
    p.add_argument("--name", default="teacher", help="results file name (results/NAME.json and .md)")
    p.add_argument("--stop-after", choices=["teacher", "distill"],
                   help="stop after the teacher's stage, or after its distillation (the students later)")
    p.add_argument("--report", action="store_true", help="rewrite the Markdown from the JSON only")
    p.add_argument("--decode-again", metavar="TAG", action="append", default=[],
                   help="decode a recorded run's model again with the code as it is now (after a decoding "
                   "change), keeping its training record")
    args = p.parse_args()
    results = load_results(args.name)
    results.setdefault("runs", {})

    def save() -> None:
        save_results(args.name, results, markdown(results))

    if args.report:
        save()
        return
    unknown = [t for t in args.decode_again if t not in results["runs"]]
    if unknown:  # before decoding, not after it
        sys.exit(f"--decode-again {' '.join(unknown)}: not recorded in results/{args.name}.json "
                 f"({', '.join(results['runs'])})")
    for tag in args.decode_again:
        run, teacher_dir = args.work / WORK / "runs" / tag, args.work / WORK / "runs" / "ar-25min" / "model"
        settings = AR if tag.startswith("ar-") else DIFFUSION
        results["runs"][tag]["results"] = decode_rows(run / "model", args.data, settings,
                                                      None if tag.startswith("ar-") else teacher_dir)
        save()
    if args.decode_again:
        return
    data = prepared(args.data, args.work)
    work = args.work / WORK
    m = f"{args.minutes:g}min"
    teacher_tag = f"ar-{m}"
    teacher = work / "runs" / teacher_tag / "model"
    recorded = results["runs"].get("distill", {}).get("teacher")
    if recorded and recorded != str(teacher):  # one set of distilled targets: the teacher of its record
        sys.exit(f"the distilled targets were made by {recorded}, not by this run's teacher {teacher}: "
                 "run with the --minutes of that teacher, or remove the distill record and its directory")
    distilled = work / "multi30k-distilled"
    student = partial(train_stage, preset="multi30k", work=work, test=args.data, settings=DIFFUSION, reranker=teacher)
    stages = [(teacher_tag, partial(train_stage, teacher_tag, "multi30k-ar", data, work, args.minutes, args.data, AR)),
              ("distill", partial(distill_stage, teacher, data, distilled)),
              (f"difformer-distilled-{m}", partial(student, f"difformer-distilled-{m}", data=distilled,
                                                   minutes=args.minutes)),
              (f"difformer-raw-{m}", partial(student, f"difformer-raw-{m}", data=data, minutes=args.minutes))]
    if args.long:
        tag = f"difformer-distilled-{args.long:g}min"
        stages.append((tag, partial(student, tag, data=distilled, minutes=args.long)))
    if args.stop_after:
        stages = stages[:2 if args.stop_after == "distill" else 1]
    if any(tag not in results["runs"] for tag, _ in stages):
        check_machine(args.name, results)
    for tag, run in stages:
        if tag in results["runs"]:
            print(f"{tag}: recorded in results/{args.name}.json; skipped")
            continue
        print(f"{tag}: running", flush=True)
        results["runs"][tag] = run()
        save()
    print(json.dumps({t: [r["sacrebleu"] for r in v.get("results", [])] for t, v in results["runs"].items()}))


if __name__ == "__main__":
    main()
