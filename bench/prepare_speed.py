"""How long `difformer prepare` takes, and how much memory, on a WMT-sized corpus of synthetic pairs.

A synthetic corpus is written to a temporary directory: per side a vocabulary of 200k random letter strings
drawn with Zipf's law (s = 1), 5-45 words a line (mean 25). That is harder than real text: random strings
split into about two subwords each, and few words repeat. Then `difformer prepare` runs in a child process
with its defaults (joint BPE of 8000), so its wall time and peak resident memory are its own; generating the
corpus is timed separately. Targets on a 2-core machine: under 60 s and under 1.5 GB.

    python bench/prepare_speed.py [--pairs 1000000] [--out bench/results/prepare_speed]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece

TARGET_S, TARGET_MB = 60, 1536
WORD_TYPES, ZIPF_S, CHUNK = 200_000, 1.0, 100_000


def make_words(rng: np.random.Generator) -> np.ndarray:
    """A language's vocabulary: random letter strings of 2 to 11 letters."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return np.array(["".join(letters[rng.integers(0, 26, n)]) for n in rng.integers(2, 12, WORD_TYPES)],
                    dtype=object)


def write_side(path: Path, rng: np.random.Generator, words: np.ndarray, lens: np.ndarray) -> None:
    """One side of the corpus: Zipf-distributed words, one line per entry of lens."""
    p = 1.0 / np.arange(1, WORD_TYPES + 1) ** ZIPF_S
    p /= p.sum()
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, len(lens), CHUNK):
            chunk = lens[start:start + CHUNK]
            toks = words[rng.choice(WORD_TYPES, size=int(chunk.sum()), p=p)].tolist()
            ends = np.cumsum(chunk).tolist()
            f.write("".join(" ".join(toks[e - n:e]) + "\n" for e, n in zip(ends, chunk.tolist())))


def make_corpus(outdir: Path, pairs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    src_words, tgt_words = make_words(rng), make_words(rng)
    for split, n in (("train", pairs), ("valid", 3000), ("test", 3000)):
        lens = rng.integers(5, 46, n)
        write_side(outdir / f"{split}.src", rng, src_words, lens)
        write_side(outdir / f"{split}.tgt", rng, tgt_words, np.clip(lens + rng.integers(-3, 4, n), 1, None))


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "sentencepiece": sentencepiece.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--out", default="bench/results/prepare_speed", help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, dest = Path(tmp) / "corpus", Path(tmp) / "prepared"
        corpus.mkdir()
        t0 = time.perf_counter()
        make_corpus(corpus, args.pairs)
        generate_s = time.perf_counter() - t0
        cmd = ["difformer", "prepare", "--source-lang", "src", "--target-lang", "tgt",
               *(f"--{s}pref={corpus / s}" for s in ("train", "valid", "test")), f"--destdir={dest}"]
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "difformer.cli", *cmd[1:]], capture_output=True,
                             text=True)
        prepare_s = time.perf_counter() - t0
        if run.returncode:
            sys.exit(f"prepare failed:\n{run.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
        generator_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        corpus_mb = sum(f.stat().st_size for f in corpus.iterdir()) / 2**20
    result = {
        "pairs": args.pairs, "corpus_mb": round(corpus_mb, 1), "generate_s": round(generate_s, 2),
        "prepare_s": round(prepare_s, 2), "prepare_peak_rss_mb": round(peak_mb, 1),
        "generator_peak_rss_mb": round(generator_mb, 1),
        "target": {"prepare_s": TARGET_S, "peak_rss_mb": TARGET_MB},
        "met": prepare_s < TARGET_S and peak_mb < TARGET_MB,
        "summary": run.stdout.rstrip("\n"), "machine": machine(),
        "command": " ".join(cmd).replace(tmp, "$TMP"),
        "bench_command": f"python bench/prepare_speed.py --pairs {args.pairs}",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    m = r["machine"]
    return (f"# difformer prepare: speed on {r['pairs']:,} synthetic pairs\n\n"
            f"Corpus: {WORD_TYPES:,} random words per side drawn with Zipf's law (s = {ZIPF_S}), 5-45 words "
            f"a line, plus valid and test splits of 3,000 pairs ({r['corpus_mb']:.0f} MB in all).\n\n"
            f"| prepare wall time | prepare peak RSS | corpus generation (not included) | corpus size |\n"
            f"|---|---|---|---|\n"
            f"| {r['prepare_s']:.1f} s (target < {TARGET_S} s) | {r['prepare_peak_rss_mb']:.0f} MB "
            f"(target < {TARGET_MB} MB) | {r['generate_s']:.1f} s | {r['corpus_mb']:.0f} MB |\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, "
            f"sentencepiece {m['sentencepiece']}.\n\n"
            f"Reproduce: `{r['bench_command']}`, which runs\n\n    {r['command']}\n\n"
            f"Output of prepare:\n\n" + "".join(f"    {line}\n" for line in r["summary"].splitlines()))


if __name__ == "__main__":
    main()
