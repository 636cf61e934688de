"""Shared bits of the benchmarks: machine description, JSON results that record finished runs, timing, and
the decode-and-score every translation benchmark runs."""
from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def commit() -> str:
    """The code a result was made with (and whether the tree had uncommitted changes)."""
    import subprocess

    root = Path(__file__).parent.parent  # the pathspecs are read relative to the working directory
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "bench/*.py"], cwd=root, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return rev + ("+changes" if dirty.strip() else "")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def load_results(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(name: str, results: dict, markdown: str) -> None:
    """Write results/NAME.json and .md atomically (a killed benchmark never leaves half a file)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", markdown)):
        path = RESULTS / f"{name}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


@contextmanager
def timed():
    """Yields a dict filled with wall and process CPU seconds (children included) when the block ends."""
    out: dict[str, float] = {}
    wall = time.perf_counter()
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    yield out
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out["wall"] = time.perf_counter() - wall
    out["cpu"] = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
                  + c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)


def split_text(data: Path, split: str, src: str = "de", tgt: str = "en") -> tuple[list[str], list[str]]:
    """The (sources, references) of a raw corpus split: data/split.src and data/split.tgt, a line each, split
    as `prepare` splits them (at LF only: str.splitlines would also split at U+2028 and the like, and
    misalign the pairs)."""
    from difformer.data.corpus import read_lines

    return tuple(list(read_lines(data / f"{split}.{lang}")) for lang in (src, tgt))


def scored(pipe, sources: list[str], refs: list[str], **options):
    """Decode `sources` with `options` and score them against `refs`: (hypotheses, sacreBLEU, timing), the
    timing being timed()'s wall and CPU seconds plus sentences per second."""
    from difformer.metrics import corpus_bleu

    with timed() as t:
        hyps = pipe.generate(sources, **options)
    t["sentences_per_second"] = len(sources) / t["wall"]
    return hyps, corpus_bleu(hyps, refs), t
