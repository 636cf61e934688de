"""Summarization on CPU: AESLC (email body -> subject line), trained for a wall-clock budget, scored with
ROUGE-1/2/L F1 on test against the original subjects and against the three human annotations (best of
three per email), next to the lead baseline (the email's first words).

    python bench/aeslc.py                          # 25 minutes of the multi30k preset, untuned for this task
    python bench/aeslc.py --tag aeslc-25min-abslen model.length_offset=false   # lengths predicted outright
    python bench/aeslc.py --tag lr1e-3 train.lr=1e-3   # an experiment, recorded under its tag
    python bench/aeslc.py --config aeslc --tag src62-25min   # the `aeslc` preset
    python bench/aeslc.py --config aeslc --tag warm-ar-src62-25min \
        train.init_from=bench/work/aeslc-side-epyc/runs/ar-25min/model   # warm-started from a side by side's teacher
    python bench/aeslc.py --config aeslc --tag warm-ar-distilled-src62-25min \
        --train-data bench/work/aeslc-side-epyc/aeslc-distilled train.init_from=...   # on the teacher's subjects
    python bench/aeslc.py --side-by-side --batch epyc   # the `aeslc-ar` teacher, distillation, and the
                                                   # `aeslc` Difformer on raw and distilled subjects, in one run
    python bench/aeslc.py --side-by-side --batch epyc --stages ar,distill,warm-raw,warm-distilled
    python bench/aeslc.py --valid-decodings epyc/difformer-warm-raw-25min   # decoding variants of a side by
                                                   # side's model on valid (some reranked by its teacher)
    python bench/aeslc.py --valid-decodings TAG --batch epyc   # ... of a run's model, reranked by a batch's

Emails are cut to the model's positions in training and decoding (62 subwords for the `aeslc` preset's 64,
126 for `aeslc-ar`'s 128); each cut has its own prepared copy, work/aeslc-<subwords>, except in the side by
side, where all train on the teacher's and the Difformer's batches cut further. Subjects are about 4 words.
Resumable: a finished run is recorded in results/aeslc.json and skipped next time; a killed run continues
from its last checkpoint. One training at a time: two on 2 cores distort both.

--side-by-side runs the stages of one batch (`--batch NAME`: one machine; its models in work/aeslc-side-NAME)
in order, each recorded in results/aeslc.json when done and skipped next time: ar (`aeslc-ar` for
--minutes, beam 4), distill (the training emails decoded by it, beam 4), then the `aeslc` Difformer on raw
and on distilled subjects, from scratch (raw, distilled) and warm-started from the teacher (warm-raw,
warm-distilled). Each Difformer decodes 1x1 and 7x3 reranked by the teacher, the rerank's length penalty
(1 or 2) chosen on the first 400 valid emails. `--stages` runs some of them (default: all). A stage's
minutes with the teacher's (its targets or its weights) and the distillation's are reported beside its own.
A batch refuses a stage on another machine than its recorded ones: its rows are compared with each other.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, load_results, machine, save_results, timed  # noqa: E402
from multi30k import train_run, training_record  # noqa: E402

from difformer.config import load_config  # noqa: E402
from difformer.data.corpus import read_lines  # noqa: E402
from difformer.data.prepare import prepare  # noqa: E402
from difformer.distill import distill  # noqa: E402
from difformer.generate import Pipeline, load  # noqa: E402
from difformer.metrics import rouge  # noqa: E402

HERE = Path(__file__).parent
LEAD_WORDS = 4  # the mean subject length in words (data/aeslc/SOURCE.md)


def text_lines(path: Path) -> list[str]:
    return list(read_lines(path))  # as `prepare` reads them: split at \n only


def prepared(data: Path, work: Path, max_positions: int) -> Path:
    """The corpus binarized with emails cut to fit `max_positions` (BOS and EOS need two), made once."""
    max_len = max_positions - 2
    dest = work / f"aeslc-{max_len}"
    if not (dest / "dataset.json").exists():
        prepare(source_lang="src", target_lang="tgt", trainpref=str(data / "train"), validpref=str(data / "valid"),
                testpref=str(data / "test"), destdir=str(dest), vocab_size=8000, max_len=max_len, long="truncate",
                force=True)
    return dest


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
             "the best of three human-written subjects per email. *overrides*: the preset of the run's commit "
             "(`--config`) and what the command changed.", "",
             "| system | overrides | train min | updates | decoding | R-1 / R-2 / R-L original | "
             "R-1 / R-2 / R-L annotations | output words | emails/s |", "|---|---|---|---|---|---|---|---|---|"]
    if "lead" in results:
        s = results["lead"]
        lines.append(f"| lead-{LEAD_WORDS} (the email's first {LEAD_WORDS} words) | - | - | - | - | {_r(s['original'])} | "
                     f"{_r(s['annotations'])} | {LEAD_WORDS} | - |")
    for tag, r in results.get("runs", {}).items():
        lines.append(f"| {tag} | {_overrides(r)} | {r['train_minutes']} | {r['updates']} | {r['setting'].split(' NFE')[0]} | "
                     f"{_r(r['rouge']['original'])} | {_r(r['rouge']['annotations'])} | {r.get('output_words', '-')} | "
                     f"{r['emails_per_second']} |")
    for tag, r in results.get("runs", {}).items():
        lines += ["", f"Examples of `{tag}` (first test emails, cut to 100 characters):", "",
                  "| email | subject | output |", "|---|---|---|"]
        lines += ["| " + " | ".join(_cell(x) for x in (e["email"][:100], e["subject"], e["output"])) + " |"
                  for e in r["examples"]]
        lines += ["", f"`{tag}`: `{r['command']}` (commit {r['commit']}; {r['machine']})",
                  f"ROUGE signatures: `{r['rouge']['original']['signature']}`, "
                  f"`{r['rouge']['annotations']['signature']}`"]
    for tag, rows in results.get("valid_decodings", {}).items():
        lines += ["", f"## Decodings of `{tag}` on valid", "",
                  "| decoding | R-1 / R-2 / R-L original | R-1 / R-2 / R-L annotations | output words | emails/s |",
                  "|---|---|---|---|---|",
                  f"| lead-{LEAD_WORDS} | {_r(results['valid_lead']['original'])} | "
                  f"{_r(results['valid_lead']['annotations'])} | {LEAD_WORDS} | - |"]
        lines += [f"| {name}{'' if name in VALID_DECODINGS else ' (a variant since removed)'} | "
                  f"{_r(r['rouge']['original'])} | {_r(r['rouge']['annotations'])} | {r['output_words']} | "
                  f"{r['emails_per_second']} |" for name, r in rows.items()]
        missing = [n for n in VALID_DECODINGS if n not in rows]
        if missing:
            lines += ["", f"Not decoded yet (variants added since): {', '.join(missing)}."]
        runs = "; ".join(f"`{c}` (commit {k})" for c, k in
                         dict.fromkeys((r["command"], r["decode_commit"]) for r in rows.values()))
        lines += ["", f"Machine: {next(iter(rows.values()))['machine']}; {runs}"]
        c = results.get("chosen_on_valid", {}).get(tag)
        if c:
            lines += ["", f"Chosen on valid: **{c['decoding']}**. Test, decoded once with it: {_r(c['rouge']['original'])}"
                      f" (original), {_r(c['rouge']['annotations'])} (annotations), {c['output_words']} words, "
                      f"{c['emails_per_second']} emails/s (commit {c['decode_commit']}). Examples:", "",
                      "| email | subject | output |", "|---|---|---|"]
            lines += ["| " + " | ".join(_cell(x) for x in (e["email"][:100], e["subject"], e["output"])) + " |"
                      for e in c["examples"]]
    lines += side_by_side_markdown(results)
    return "\n".join(lines) + "\n"


def side_by_side_markdown(results: dict) -> list[str]:
    lines = []
    for batch, side in results.get("side_by_side", {}).items():
        lines += batch_markdown(batch, side, results)
    return lines


def batch_markdown(batch: str, side: dict, results: dict) -> list[str]:
    teacher = next((r["train_minutes"] for t, r in side.items() if t.startswith("ar-")), 0)
    dist = side.get("distill", {}).get("distill_minutes", 0)
    ref = results["reference_words"]
    lines = ["", f"## Side by side `{batch}`: the teacher, distillation and the Difformer "
             f"(`python bench/aeslc.py --side-by-side --batch {batch}`)",
             "", f"Machine: {next(iter(side.values()))['machine']}. Reference subjects average {ref['original']} "
             f"words (original) and {ref['annotations']} (annotations).", "",
             "| system | min (with teacher + distillation) | updates | decoding | R-1 / R-2 / R-L original | "
             "R-1 / R-2 / R-L annotations | output words | emails/s |", "|---|---|---|---|---|---|---|---|"]
    if "lead" in results:
        s = results["lead"]
        lines.append(f"| lead-{LEAD_WORDS} | - | - | - | {_r(s['original'])} | {_r(s['annotations'])} | "
                     f"{LEAD_WORDS} | - |")
    for tag, r in side.items():
        if tag == "distill":
            continue
        uses_teacher = "distilled" in tag or "warm" in tag  # its targets, or its weights as the start
        total = round(r["train_minutes"] + teacher * uses_teacher + dist * ("distilled" in tag), 1)
        for row in r["results"]:
            lines.append(f"| {tag} | {r['train_minutes']} ({total}) | {r['updates']} | {row['decoding']} | "
                         f"{_r(row['rouge']['original'])} | {_r(row['rouge']['annotations'])} | "
                         f"{row['output_words']} | {row['emails_per_second']} |")
    if "distill" in side:
        d = side["distill"]
        lines += ["", f"Distillation: {d['pairs']:,} training emails decoded by the teacher ({d['decoding']}) in "
                  f"{d['distill_minutes']} minutes; teacher BLEU against the training subjects "
                  f"{d['teacher_bleu_vs_train_references']}."]
    chosen = {t: r["rerank_on_valid"] for t, r in side.items() if "rerank_on_valid" in r}
    if chosen:
        lines += ["", f"The rerank's length penalty, chosen on the first {next(iter(chosen.values()))['emails']} "
                  "valid emails by ROUGE-L against the original subjects (R-1 / R-2 / R-L, output words):", ""]
        lines += [f"- {t}: " + "; ".join(f"lenpen {k} {_r(v['rouge']['original'])}, {v['output_words']} words"
                                         for k, v in c["lenpen"].items()) + f" -> **{c['chosen']:g}**"
                  for t, c in chosen.items()]
    for tag, r in side.items():
        if tag == "distill":
            continue
        lines += ["", f"`{tag}` ({r['preset']}, commit {r['commit']}; {r['machine']}; `{r['command']}`):", "",
                  "| email | subject | " + " | ".join(row["decoding"] for row in r["results"]) + " |",
                  "|---|---|" + "---|" * len(r["results"])]
        for i, e in enumerate(r["results"][0]["examples"]):
            outputs = [row["examples"][i]["output"] for row in r["results"]]
            lines.append("| " + " | ".join(_cell(x) for x in (e["email"][:100], e["subject"], *outputs)) + " |")
    return lines


def _overrides(run: dict) -> str:
    """The run's preset (--config) and overrides, paths of a checkout's bench/work as bench/work/..."""
    data = [f"--train-data={run['train_data']}"] if run.get("train_data") else []
    shown = [x if "/bench/work/" not in x else x.split("=")[0] + "=bench/work/" + x.split("/bench/work/", 1)[1]
             for x in data + run.get("overrides", [])]
    return " ".join([f"`{run['config']}`", *shown])


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _r(s: dict) -> str:
    return f"{s['rouge1']} / {s['rouge2']} / {s['rougeL']}"


def words(lines: list[str]) -> float:
    return round(sum(len(x.split()) for x in lines) / max(len(lines), 1), 2)


def decoded(pipe: Pipeline, name: str, options: dict, emails: list[str], subjects: list[str], references: dict,
            examples: int = 5) -> dict:
    """One decoding of `emails` with `options` (none: the model's own): ROUGE against both reference sets,
    output length, speed and the first examples."""
    with timed() as t:
        hyps = pipe.generate(emails, **options)
    return {"decoding": name, "setting": pipe.describe(pipe.decode_config(**options)), "precision": pipe.precision,
            "rouge": scores(hyps, references), "output_words": words(hyps),
            "emails_per_second": round(len(emails) / t["wall"], 1), "decode_commit": commit(), "machine": machine(),
            "command": command(), "examples": [{"email": e, "subject": s, "output": h}
                                               for e, s, h in list(zip(emails, subjects, hyps))[:examples]]}


def decode_rows(model_dir: Path, emails: list[str], subjects: list[str], references: dict, settings: dict,
                reranker: Path | None = None) -> list[dict]:
    """Each decoding of the test emails (`settings`: name -> options)."""
    pipe = load(model_dir, device="cpu", reranker=reranker)  # a CPU benchmark, also on a machine with a GPU
    rows = []
    for name, options in settings.items():
        rows.append(decoded(pipe, name, options, emails, subjects, references))
        print(f"  {name}: ROUGE {_r(rows[-1]['rouge']['original'])} (original)", flush=True)
    return rows


STAGES = ("ar", "distill", "raw", "distilled", "warm-raw", "warm-distilled")
RERANK_LENPENS = (1.0, 2.0)  # the reranked subjects were shorter than the references (2.4 words against 4.1)
RERANK_VALID_EMAILS = 400  # the lenpen choice's valid emails: 7x3 reranked decodes ~2.5 emails/s here


def reranked(lenpen: float) -> dict:
    """7x3 clamped candidates, the teacher's pick by log p / length ** lenpen."""
    return {"length_beam": 7, "noise_beam": 3, "selection": "ar", "lenpen": lenpen}


def batch_dir(work: Path, batch: str) -> Path:
    return work / f"aeslc-side-{batch}"


def stage_tag(stage: str, minutes: float) -> str:
    return f"ar-{minutes:g}min" if stage == "ar" else "distill" if stage == "distill" else \
        f"difformer-{stage}-{minutes:g}min"


def side_by_side(args: argparse.Namespace, results: dict, emails: list[str], subjects: list[str],
                 references: dict) -> None:
    # emails cut for the teacher's positions; the Difformer's batches cut them further to its own (collate)
    data = prepared(args.data, args.work, load_config("aeslc-ar").model.max_positions)
    work = batch_dir(args.work, args.batch)
    teacher = work / "runs" / stage_tag("ar", args.minutes) / "model"
    side = results.setdefault("side_by_side", {}).setdefault(args.batch, {})
    results["reference_words"] = {"original": words(subjects),
                                  "annotations": words([a for ann in references["annotations"] for a in ann])}
    others = {r["machine"] for r in side.values()} - {machine()}
    if others:
        sys.exit(f"--batch {args.batch}: its stages ran on {', '.join(sorted(others))}, this is {machine()}; "
                 "a batch is compared within one machine: name another batch")
    valid = [text_lines(args.data / f"valid.{s}")[:RERANK_VALID_EMAILS] for s in ("src", "tgt")]

    def train_stage(tag: str, preset: str, train_data: Path, overrides: tuple[str, ...] = ()) -> None:
        run = work / "runs" / tag
        cfg = load_config(preset, [f"train.data={train_data}", f"train.save_dir={run}",
                                   f"train.max_minutes={args.minutes}", *overrides])
        train_time, started = train_run(cfg, run, tag)
        if started["machine"] != machine():  # trained elsewhere and killed while decoding: speeds would mix
            sys.exit(f"{tag}: {run} was trained on {started['machine']}, this is {machine()}: decode it there")
        record = {**training_record(run, train_time, started), "preset": preset, "data": str(train_data),
                  "overrides": list(overrides)}
        if preset == "aeslc-ar":
            record["results"] = decode_rows(run / "model", emails, subjects, references, {"beam 4": {"beam": 4}})
        else:
            record["rerank_on_valid"], lenpen = rerank_lenpen(run / "model", teacher, *valid)
            settings = {"1x1": {"length_beam": 1, "noise_beam": 1},
                        f"7x3 teacher rerank lenpen {lenpen:g}": reranked(lenpen)}
            record["results"] = decode_rows(run / "model", emails, subjects, references, settings, teacher)
        side[tag] = record

    def distill_stage() -> None:
        dest = work / "aeslc-distilled"
        with timed() as t:
            info = distill(teacher, data, dest, beam=4, device="cpu", force=dest.exists())
        d = info["distilled"]
        side["distill"] = {"decoding": d["decoding"], "distill_minutes": round(d["seconds"] / 60, 1),
                           "process_cpu_minutes": round(t["cpu"] / 60, 1), "pairs": info["splits"]["train"]["pairs"],
                           "teacher_bleu_vs_train_references": d["teacher_bleu_vs_references"],
                           "machine": machine(), "commit": commit(), "command": command()}

    distilled, warm = work / "aeslc-distilled", (f"train.init_from={teacher}",)
    stages = {"ar": partial(train_stage, stage_tag("ar", args.minutes), "aeslc-ar", data), "distill": distill_stage}
    for name, train_data, overrides in (("raw", data, ()), ("distilled", distilled, ()),
                                        ("warm-raw", data, warm), ("warm-distilled", distilled, warm)):
        stages[name] = partial(train_stage, stage_tag(name, args.minutes), "aeslc", train_data, overrides)
    for name in args.stages:
        tag = stage_tag(name, args.minutes)
        if tag in side:
            print(f"{args.batch} {tag}: recorded in results/aeslc.json; skipped")
            continue
        if name != "ar" and not (stage_tag("ar", args.minutes) in side and (teacher / "model.safetensors").exists()):
            sys.exit(f"--batch {args.batch}: stage {name} needs the teacher {teacher}: run stage ar first")
        if "distilled" in name and not ("distill" in side and (distilled / "dataset.json").exists()):
            sys.exit(f"--batch {args.batch}: stage {name} needs the distilled subjects {distilled}: run stage "
                     "distill first")
        print(f"{args.batch} {tag}: running", flush=True)
        stages[name]()
        save_results("aeslc", results, markdown(results))


def rerank_lenpen(model: Path, teacher: Path, emails: list[str], subjects: list[str]) -> tuple[dict, float]:
    """The teacher rerank's length penalty with the best ROUGE-L on `emails` (valid): each one's scores, and
    the choice. Chosen on valid so that test is decoded once per stage."""
    pipe = load(model, device="cpu", reranker=teacher)
    rows = {}
    for lenpen in RERANK_LENPENS:
        row = decoded(pipe, f"7x3 teacher rerank lenpen {lenpen:g}", reranked(lenpen), emails, subjects,
                      {"original": [subjects]}, examples=0)
        rows[f"{lenpen:g}"] = {k: row[k] for k in ("rouge", "output_words", "emails_per_second")}
        print(f"  valid lenpen {lenpen:g}: ROUGE {_r(row['rouge']['original'])} (original)", flush=True)
    best = max(RERANK_LENPENS, key=lambda x: rows[f"{x:g}"]["rouge"]["original"]["rougeL"])
    return {"emails": len(emails), "lenpen": rows, "chosen": best}, best


# each spelled out in full: a model's own decode config (its preset's, clamp or not) must not show through
_PLAIN = {"steps": 20, "min_t": 0.0, "sampler": "ddpm", "clamp": False, "cond_enhance": False, "length_beam": 1, "noise_beam": 1}
VALID_DECODINGS = {"1x1": _PLAIN, "1x1 50 steps": {**_PLAIN, "steps": 50}, "1x1 ddim": {**_PLAIN, "sampler": "ddim"},
                   "1x1 clamp": {**_PLAIN, "clamp": True}, "1x1 cond-enhance": {**_PLAIN, "cond_enhance": True},
                   "1x1 clamp cond-enhance": {**_PLAIN, "clamp": True, "cond_enhance": True},
                   "7x3 clamp teacher rerank": {**_PLAIN, "clamp": True, "length_beam": 7, "noise_beam": 3,
                                                "selection": "ar"},
                   # the reranked outputs are shorter than the subjects (2.4 words against 4.1): the teacher's
                   # score divided by length ** 2 instead of length favours the longer candidates
                   "7x3 clamp teacher rerank lenpen 2": {**_PLAIN, "clamp": True, "length_beam": 7,
                                                         "noise_beam": 3, "selection": "ar", "lenpen": 2.0}}


def valid_decodings(args: argparse.Namespace, results: dict, test: tuple[list[str], list[str], dict]) -> None:
    """Decoding variants of a recorded Difformer's model (a run TAG, or BATCH/STAGE of a side by side) on the
    valid emails; the best by ROUGE-L against the original subjects then decodes `test` (emails, subjects,
    references) once. The teacher-reranked variants need a teacher: --reranker, or the batch's (--batch
    for a run)."""
    tag = args.valid_decodings
    batch, _, stage = tag.rpartition("/")
    if batch:
        if not stage.startswith("difformer-") or stage not in results.get("side_by_side", {}).get(batch, {}):
            raise SystemExit(f"--valid-decodings {tag}: no Difformer stage {stage} in side-by-side batch {batch} "
                             "of bench/results/aeslc.json")
        model = batch_dir(args.work, batch) / "runs" / stage / "model"
    elif tag in results.get("runs", {}):
        model, batch = args.work / "runs" / tag / "model", args.batch
    else:
        raise SystemExit(f"--valid-decodings {tag}: no such run in bench/results/aeslc.json (runs: "
                         f"{', '.join(results.get('runs', {}))}; a side by side's stage: BATCH/STAGE)")
    reranker = args.reranker or (batch and batch_teacher(args.work, batch, results))
    if not reranker:
        raise SystemExit(f"--valid-decodings {tag}: name the teacher that reranks: --batch NAME (its teacher) "
                         "or --reranker DIR")
    if not (reranker / "model.safetensors").exists():
        raise SystemExit(f"--reranker {reranker}: no model there (train it with --side-by-side --batch NAME)")
    emails, subjects = text_lines(args.data / "valid.src"), text_lines(args.data / "valid.tgt")
    references = {"original": [subjects], "annotations": [text_lines(args.data / f"valid.ann{i}") for i in range(3)]}
    results["valid_lead"] = scores([" ".join(e.split()[:LEAD_WORDS]) for e in emails], references)
    rows = results.setdefault("valid_decodings", {}).setdefault(tag, {})
    pipe = load(model, device="cpu", reranker=reranker)
    for name, options in VALID_DECODINGS.items():
        # a row made with other options or another reranker than the entry's today is made again
        if name not in rows or rows[name]["setting"] != pipe.describe(pipe.decode_config(**options)):
            rows[name] = decoded(pipe, name, options, emails, subjects, references, examples=0)
            print(f"{tag} {name}: ROUGE {_r(rows[name]['rouge']['original'])} (valid, original)", flush=True)
            save_results("aeslc", results, markdown(results))
    best = max(VALID_DECODINGS, key=lambda n: rows[n]["rouge"]["original"]["rougeL"])
    chosen = results.setdefault("chosen_on_valid", {})
    if chosen.get(tag, {}).get("decoding") != best:
        chosen[tag] = decoded(pipe, best, VALID_DECODINGS[best], *test)
        save_results("aeslc", results, markdown(results))
    print(f"{tag}: chosen on valid {best}; test ROUGE {_r(chosen[tag]['rouge']['original'])} (original)")


def stages(text: str) -> tuple[str, ...]:
    names = text.split(",")
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    return tuple(n for n in STAGES if n in names)


def batch_teacher(work: Path, batch: str, results: dict) -> Path:
    """The model of a side-by-side batch's teacher stage."""
    tag = next((t for t in results.get("side_by_side", {}).get(batch, {}) if t.startswith("ar-")), None)
    if tag is None:
        raise SystemExit(f"--batch {batch}: no teacher recorded for it in bench/results/aeslc.json")
    return batch_dir(work, batch) / "runs" / tag / "model"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "aeslc")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--config", default="multi30k")
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--tag", help="name of the run in the results (default: aeslc-<minutes>min)")
    p.add_argument("--side-by-side", action="store_true",
                   help="the teacher, distillation and both Difformers in one run (see above)")
    p.add_argument("--train-data", type=Path, metavar="DIR",
                   help="a prepared directory to train on (the side by side's distilled subjects, say)")
    p.add_argument("--valid-decodings", metavar="TAG",
                   help="decoding variants on valid of the model of run TAG, or of a side by side's BATCH/STAGE")
    p.add_argument("--batch", help="the side by side's batch: one machine, its models in WORK/aeslc-side-BATCH; with "
                        "--valid-decodings of a run, the batch whose teacher reranks")
    p.add_argument("--stages", type=stages, default=STAGES, metavar="S,S",
                   help=f"the side by side's stages to run, in its order (default: {','.join(STAGES)})")
    p.add_argument("--reranker", type=Path, metavar="DIR",
                   help="the autoregressive model that reranks candidates in --valid-decodings "
                        "(default: the --batch's teacher)")
    args = p.parse_args()
    tag = args.tag or f"aeslc-{args.minutes:g}min"
    results = load_results("aeslc")
    emails, subjects = text_lines(args.data / "test.src"), text_lines(args.data / "test.tgt")
    references = {"original": [subjects], "annotations": [text_lines(args.data / f"test.ann{i}") for i in range(3)]}
    results["lead"] = scores([" ".join(e.split()[:LEAD_WORDS]) for e in emails], references)
    if args.side_by_side:
        if not args.batch:
            p.error("--side-by-side needs --batch NAME (a batch is one machine's runs)")
        side_by_side(args, results, emails, subjects, references)
        return
    if args.valid_decodings:
        valid_decodings(args, results, (emails, subjects, references))
        return
    if tag in results.get("runs", {}):
        print(f"{tag}: already recorded in bench/results/aeslc.json; delete it there to rerun")
        save_results("aeslc", results, markdown(results))
        return
    run = args.work / "runs" / tag
    cfg = load_config(args.config, [f"train.save_dir={run}", f"train.max_minutes={args.minutes}", *args.overrides])
    # a prepared directory given (distilled subjects) is cut to the model's positions by its batches
    cfg.train.data = str(args.train_data or prepared(args.data, args.work, cfg.model.max_positions))
    train_time, started = train_run(cfg, run, tag)
    pipe = load(run / "model", device="cpu")  # a CPU benchmark, also on a machine with a GPU
    record = {**training_record(run, train_time, started),
              **decoded(pipe, "as trained", {}, emails, subjects, references, examples=8),
              "nfe": pipe.decode_config().nfe, "config": args.config, "overrides": args.overrides,
              "truncated_inputs": len(pipe.truncated), "train_data": str(args.train_data) if args.train_data else None}
    results.setdefault("runs", {})[tag] = record
    save_results("aeslc", results, markdown(results))
    print(f"{tag}: ROUGE-1/2/L {_r(record['rouge']['original'])} (original subjects), "
          f"{_r(record['rouge']['annotations'])} (annotations); lead-{LEAD_WORDS} {_r(results['lead']['original'])}")


if __name__ == "__main__":
    main()
