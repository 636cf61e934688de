"""Training and decoding speed on one GPU: the `multi30k` preset trained for a few minutes, test2016 decoded.

    # on the GPU machine (nothing to download: torch and the pure-Python dependencies are there)
    PYTHONPATH=src python bench/gpu.py --data shared-data/multi30k --minutes 4
    # tried on CPU first with a tiny budget
    python bench/gpu.py --device cpu --minutes 0.2 --sentences 40 --out /tmp/gpu.json

Writes one JSON (default results/gpu.json; under the device tool, `--out $OUT/gpu.json`): updates/s and
target tokens/s of training at the preset's batch size, and for test2016 sacreBLEU and sentences/s of
20-step 1x1, 5-step 1x1 and 20-step 7x3 decoding, with the machine, device and commit. The whole run keeps
within about --minutes + 3 minutes on an H100/H200 (prepare about 40 s, decoding well under a minute).
Old against new: run the same script with PYTHONPATH pointing at a worktree of the older commit's `src`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, machine  # noqa: E402

import torch  # noqa: E402

from difformer.config import load_config  # noqa: E402
from difformer.data.prepare import prepare  # noqa: E402
from difformer.generate import load  # noqa: E402
from difformer.metrics import corpus_bleu  # noqa: E402
from difformer.train import Trainer  # noqa: E402

HERE = Path(__file__).parent
DECODINGS = {"20 steps 1x1": {"steps": 20, "length_beam": 1, "noise_beam": 1},
             "5 steps 1x1": {"steps": 5, "length_beam": 1, "noise_beam": 1},
             "20 steps 7x3": {"steps": 20, "length_beam": 7, "noise_beam": 3}}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "multi30k",
                   help="raw Multi30k (train/valid/test .de/.en), prepared here with the benchmark's 8k BPE")
    p.add_argument("--prepared", type=Path, help="an already prepared directory instead (skips prepare)")
    p.add_argument("--work", type=Path, help="where to prepare and train (default: a temporary directory)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget")
    p.add_argument("--device", default="auto")
    p.add_argument("--sentences", type=int, help="decode only the first N test sentences (CPU trials)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. "
                   "train.max_tokens=16000")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="difformer-gpu-"))
    clock = time.perf_counter()
    data = args.prepared
    if data is None:
        data = work / "multi30k-de-en"
        if not (data / "dataset.json").exists():
            prepare(source_lang="de", target_lang="en", trainpref=str(args.data / "train"),
                    validpref=str(args.data / "valid"), testpref=str(args.data / "test"), destdir=str(data),
                    vocab_size=8000, force=True)
    prepare_seconds = time.perf_counter() - clock

    run = work / "run"
    cfg = load_config("multi30k", [f"train.data={data}", f"train.save_dir={run}",
                                   f"train.max_minutes={args.minutes}", *args.overrides])
    trainer = Trainer(cfg, device=args.device)
    model_dir = trainer.train()
    state = trainer.state
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    valid = [r["valid_bleu"] for r in log if "valid_bleu" in r]
    # the median log window: the training step's own throughput (a validation slows one window in five)
    windows = sorted(r["tokens_per_second"] for r in log if "tokens_per_second" in r)

    sources = (args.data / "test.de").read_text(encoding="utf-8").splitlines()
    refs = (args.data / "test.en").read_text(encoding="utf-8").splitlines()
    if args.sentences:
        sources, refs = sources[: args.sentences], refs[: args.sentences]
    device = trainer.device
    pipe = load(model_dir, device=str(device))
    pipe.generate(sources[:64])  # warm-up: kernels, allocator
    decoding = {}
    for name, options in DECODINGS.items():
        synchronize(device)
        start = time.perf_counter()
        hyps = pipe.generate(sources, **options)
        synchronize(device)
        seconds = time.perf_counter() - start
        bleu = corpus_bleu(hyps, refs)
        decoding[name] = {"sacrebleu": round(bleu.score, 2), "sentences_per_second": round(len(sources) / seconds, 1),
                          "seconds": round(seconds, 2), "setting": pipe.describe(pipe.decode_config(**options))}
        print(f"{name}: BLEU {bleu.score:.2f}, {len(sources) / seconds:.1f} sentences/s", flush=True)

    result = {"device": str(device), "device_name": device_name(device),
              "precision": trainer.precision, "machine": machine(), "commit": commit(), "command": command(),
              "torch": torch.__version__, "prepare_seconds": round(prepare_seconds, 1),
              "train": {"updates": state.update, "seconds": round(state.seconds, 1),
                        "updates_per_second": round(state.update / state.seconds, 2),  # validations included
                        "target_tokens_per_second": round(state.tokens / state.seconds),
                        "median_window_tokens_per_second": round(windows[len(windows) // 2]) if windows else None,
                        "max_tokens": cfg.train.max_tokens, "valid_bleu_last": valid[-1] if valid else None},
              "test_sentences": len(sources), "decoding": decoding,
              "total_seconds": round(time.perf_counter() - clock, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["train"]), f"-> {args.out}")


if __name__ == "__main__":
    main()
