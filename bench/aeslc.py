"""Summarization on CPU: AESLC (email body -> subject line), trained for a wall-clock budget, scored with
ROUGE-1/2/L F1 on test against the original subjects and against the three human annotations (best of
three per email), next to the lead baseline (the email's first words).

    python bench/aeslc.py                          # 25 minutes of the multi30k preset, untuned for this task
    python bench/aeslc.py --tag aeslc-25min-abslen model.length_offset=false   # lengths predicted outright
    python bench/aeslc.py --tag lr1e-3 train.lr=1e-3   # an experiment, recorded under its tag

Emails are cut to the preset's 128 positions (126 subwords) in training and decoding; subjects are about
4 words. Resumable: a finished run is recorded in results/aeslc.json and skipped next time; a killed run
continues from its last checkpoint. One training at a time: two on 2 cores distort both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import commit, load_results, save_results, timed  # noqa: E402
from multi30k import train_run, training_record  # noqa: E402

from difformer.config import load_config  # noqa: E402
from difformer.data.corpus import read_lines  # noqa: E402
from difformer.data.prepare import prepare  # noqa: E402
from difformer.generate import load  # noqa: E402
from difformer.metrics import rouge  # noqa: E402

HERE = Path(__file__).parent
LEAD_WORDS = 4  # the mean subject length in words (data/aeslc/SOURCE.md)


def text_lines(path: Path) -> list[str]:
    return list(read_lines(path))  # as `prepare` reads them: split at \n only


def prepared(data: Path, dest: Path, max_len: int) -> None:
    if not (dest / "dataset.json").exists():
        prepare(source_lang="src", target_lang="tgt", trainpref=str(data / "train"), validpref=str(data / "valid"),
                testpref=str(data / "test"), destdir=str(dest), vocab_size=8000, max_len=max_len, long="truncate",
                force=True)


def scores(hyps: list[str], references: dict[str, list[list[str]]]) -> dict:
    """ROUGE F1 x100 against each set of reference streams (several: the best per email)."""
    out = {}
    for name, refs in references.items():
        result = rouge(hyps, refs)
        out[name] = {k: round(s.score, 2) for k, s in result.items()}
        out[name]["signature"] = result["rouge1"].signature
    return out


def markdown(results: dict) -> str:
    lines = ["# AESLC: email body -> subject line (test, 1,906 emails), trained on this CPU for a wall-clock budget",
             "", "ROUGE F1 x100 (rouge-score, Porter stemming). *original*: the email's own subject; *annotations*: "
             "the best of three human-written subjects per email.", "",
             "| system | train min | updates | decoding | R-1 / R-2 / R-L original | R-1 / R-2 / R-L annotations | emails/s |",
             "|---|---|---|---|---|---|---|"]
    if "lead" in results:
        s = results["lead"]
        lines.append(f"| lead-{LEAD_WORDS} (the email's first {LEAD_WORDS} words) | - | - | - | {_r(s['original'])} | "
                     f"{_r(s['annotations'])} | - |")
    for tag, r in results.get("runs", {}).items():
        lines.append(f"| {tag} | {r['train_minutes']} | {r['updates']} | {r['setting'].split(' NFE')[0]} | "
                     f"{_r(r['rouge']['original'])} | {_r(r['rouge']['annotations'])} | "
                     f"{r['decode_sentences_per_second']} |")
    for tag, r in results.get("runs", {}).items():
        lines += ["", f"Examples of `{tag}` (first test emails, cut to 100 characters):", "",
                  "| email | subject | output |", "|---|---|---|"]
        lines += ["| " + " | ".join(_cell(x) for x in (e["email"][:100], e["subject"], e["output"])) + " |"
                  for e in r["examples"]]
        lines += ["", f"`{tag}`: `{r['command']}` (commit {r['commit']}; {r['machine']})",
                  f"ROUGE signatures: `{r['rouge']['original']['signature']}`, "
                  f"`{r['rouge']['annotations']['signature']}`"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _r(s: dict) -> str:
    return f"{s['rouge1']} / {s['rouge2']} / {s['rougeL']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "aeslc")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--config", default="multi30k")
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--tag", help="name of the run in the results (default: aeslc-<minutes>min)")
    args = p.parse_args()
    tag = args.tag or f"aeslc-{args.minutes:g}min"
    results = load_results("aeslc")
    emails, subjects = text_lines(args.data / "test.src"), text_lines(args.data / "test.tgt")
    references = {"original": [subjects], "annotations": [text_lines(args.data / f"test.ann{i}") for i in range(3)]}
    results["lead"] = scores([" ".join(e.split()[:LEAD_WORDS]) for e in emails], references)
    if tag in results.get("runs", {}):
        print(f"{tag}: already recorded in bench/results/aeslc.json; delete it there to rerun")
        save_results("aeslc", results, markdown(results))
        return
    data, run = args.work / "aeslc", args.work / "runs" / tag
    cfg = load_config(args.config, [f"train.data={data}", f"train.save_dir={run}",
                                    f"train.max_minutes={args.minutes}", *args.overrides])
    prepared(args.data, data, cfg.model.max_positions - 2)
    code = commit()
    train_time = train_run(cfg, run, tag)
    pipe = load(run / "model")
    with timed() as t:
        hyps = pipe.generate(emails)
    decoding = pipe.decode_config()
    record = {**training_record(run, train_time, code), "setting": decoding.describe(), "nfe": decoding.nfe,
              "precision": pipe.precision, "decode_sentences_per_second": round(len(emails) / t["wall"], 1),
              "rouge": scores(hyps, references), "overrides": args.overrides, "truncated_inputs": len(pipe.truncated),
              "examples": [{"email": e, "subject": s, "output": h} for e, s, h in list(zip(emails, subjects, hyps))[:8]]}
    results.setdefault("runs", {})[tag] = record
    save_results("aeslc", results, markdown(results))
    print(f"{tag}: ROUGE-1/2/L {_r(record['rouge']['original'])} (original subjects), "
          f"{_r(record['rouge']['annotations'])} (annotations); lead-{LEAD_WORDS} {_r(results['lead']['original'])}")


if __name__ == "__main__":
    main()
