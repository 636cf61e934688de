"""Training speed with bf16 autocast against fp32 (and the cost of dropout and self-conditioning) on the
multi30k preset, or another: target tokens per second over the same batches.

    python bench/precision.py                        # writes results/precision.json and .md
    python bench/precision.py --name precision-epyc  # another machine's results beside the first
    python bench/precision.py --config multi30k-ar --name precision-ar   # the autoregressive preset

Decoding speed and BLEU in both precisions are in results/decoding.md (bench/decoding.py).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, machine, save_results  # noqa: E402

from difformer.config import load_config  # noqa: E402
from difformer.precision import autocast, bf16_speedup, resolve_precision  # noqa: E402
from difformer.train import Trainer, collate, epoch_batches  # noqa: E402

HERE = Path(__file__).parent
VARIANTS = {"bf16": ["train.precision=bf16"], "fp32": ["train.precision=fp32"],
            "bf16, dropout 0": ["train.precision=bf16", "model.dropout=0.0"],
            "bf16, no self-conditioning": ["train.precision=bf16", "diffusion.self_cond=0.0"]}


def tokens_per_second(config: str, data: Path, overrides: list[str], steps: int, warmup: int = 3) -> float:
    save = Path(tempfile.mkdtemp())
    try:
        cfg = load_config(config, [f"train.data={data}", f"train.save_dir={save / 'run'}", *overrides])
        trainer = Trainer(cfg, device="cpu")
        batches = epoch_batches(trainer.train_data, cfg, 0)[: warmup + steps]
        tokens, start = 0, 0.0
        for i, idx in enumerate(batches):
            if i == warmup:
                tokens, start = 0, time.perf_counter()
            src, sm, tgt, tm = collate(trainer.train_data, idx, trainer.tokenizer, cfg.model.max_positions)
            with autocast(trainer.precision, trainer.device):
                loss, _ = trainer.loss(src, sm, tgt, tm)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            tokens += int(tm.sum())
        return tokens / (time.perf_counter() - start)
    finally:
        shutil.rmtree(save, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE / "work" / "multi30k-de-en",
                   help="Multi30k prepared by bench/multi30k.py")
    p.add_argument("--config", default="multi30k", help="preset or config file")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--name", default="precision", help="results file name (results/NAME.json and .md)")
    args = p.parse_args()
    rows = {}
    for name, overrides in VARIANTS.items():
        if "self_cond" in str(overrides) and load_config(args.config).model.arch != "difformer":
            continue
        rows[name] = round(tokens_per_second(args.config, args.data, overrides, args.steps))
        print(f"{name}: {rows[name]} target tokens/s", flush=True)
    base = rows["fp32"]
    md = [f"# Training speed: bf16 autocast against fp32 ({args.config} preset, same batches)", "",
          "| variant | target tokens/s | vs fp32 |", "|---|---|---|"]
    md += [f"| {k} | {v} | {v / base:.2f}x |" for k, v in rows.items()]
    md += ["", f"{args.steps} updates of train.max_tokens=2048 after 3 warm-up updates.",
           f"`precision: auto` resolves to {resolve_precision('auto', torch.device('cpu'))} on this machine "
           f"(bf16 matrix products measured {bf16_speedup():.2f}x as fast as fp32).",
           f"Machine: {machine()}", f"Command: `{command()}`", ""]
    save_results(args.name, {"config": args.config, "tokens_per_second": rows, "steps": args.steps, "machine": machine(), "commit": commit(),
                               "command": command()}, "\n".join(md))


if __name__ == "__main__":
    main()
