"""Scoring: hypothesis files against references, or a prepared split decoded by a model and scored."""
from __future__ import annotations

import time
from pathlib import Path

from difformer.data.binarize import PairDataset
from difformer.errors import DifformerError
from difformer.generate import check_reranker_used, load, read_lines
from difformer.files import write_atomic
from difformer.hub import check_prepared_with
from difformer.metrics import corpus_bleu, rouge, tokenized_bleu
from difformer.precision import allow_tf32


def read_references(hyp_path: str, ref_paths: list[str]) -> tuple[list[str], list[list[str]]]:
    """Hypotheses and reference streams, checked to have the same number of lines."""
    hyps, _ = read_lines(hyp_path)
    refs = []
    for path in ref_paths:
        ref, _ = read_lines(path)
        if len(ref) != len(hyps):
            raise DifformerError(f"{hyp_path} has {len(hyps)} lines but {path} has {len(ref)}")
        refs.append(ref)
    return hyps, refs


def score(hyps: list[str], refs: list[list[str]], metrics: list[str], lowercase: bool = False) -> list[str]:
    """One line per metric, each with its signature."""
    lines = []
    for metric in metrics:
        if metric == "bleu":
            lines.append(str(corpus_bleu(hyps, refs, lowercase=lowercase)))
        elif metric == "tok-bleu":
            lines.append(str(tokenized_bleu(hyps, refs, lowercase=lowercase)))
        elif metric == "rouge":
            lines += [str(s) for s in rouge(hyps, refs).values()]
    return lines


def decode_split(model_dir: str, data_dir: str | None, split: str, precision: str, device: str,
                 options: dict, output: str | None, reranker: str | None = None,
                 ) -> tuple[list[str], list[list[str]], str]:
    """Decode the sources of a prepared split; references are its detokenized targets."""
    pipe = load(model_dir, device=device, precision=precision, reranker=reranker)
    allow_tf32(pipe.device, pipe.precision)
    data_dir = data_dir or pipe.trained_on
    if not data_dir or not (Path(data_dir) / "dataset.json").is_file():
        raise DifformerError(f"{data_dir or model_dir}: no prepared data; pass --data DIR")
    check_prepared_with(data_dir, pipe.tokenizer.path)
    data = PairDataset(data_dir, split)
    limit = pipe.config.model.max_positions - 1
    sources = [data.src(i)[:limit].tolist() for i in range(len(data))]
    refs = pipe.tokenizer.decode([data.tgt(i).tolist() for i in range(len(data))])
    cfg = pipe.decode_config(**options)
    check_reranker_used(reranker, cfg)
    start = time.perf_counter()
    hyps = pipe.decode_ids(sources, cfg)
    seconds = time.perf_counter() - start
    if output:
        write_atomic(Path(output), lambda p: p.write_text("".join(h + "\n" for h in hyps), encoding="utf-8"))
    info = (f"{split}: {len(hyps)} sentences in {seconds:.1f}s ({len(hyps) / max(seconds, 1e-9):.1f} "
            f"sentences/s); {pipe.describe(cfg)} precision={pipe.precision}")
    stats = data.info["splits"][split]
    if stats.get("dropped_long") or stats.get("truncated"):  # prepared before --max-len spared valid and test
        info += (f"\nwarning: {data_dir}'s {split} split lost {stats.get('dropped_long', 0)} pairs and had "
                 f"{stats.get('truncated', 0)} cut to --max-len: not the whole {split} set; prepare it again")
    return hyps, [refs], info
