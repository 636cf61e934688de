"""`difformer distill`: sequence-level knowledge distillation (Kim & Rush, 2016) for a prepared corpus.

The autoregressive teacher decodes every training source; the result is a prepared directory whose training
targets are the teacher's outputs, while valid and test keep their references and the tokenizer is the
same. Non-autoregressive students learn far faster from these less multimodal targets; the published
Difformer numbers are all made with them.

Long corpora: the sources are decoded in chunks, each written to a partial directory beside the destination
as soon as it is done, so a killed run resumes at the first missing chunk. The destination appears, whole,
only at the end.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from difformer.data.binarize import PairDataset, dtype_for, length_stats
from difformer.data.prepare import check_destination
from difformer.data.tokenizer import Tokenizer
from difformer.errors import DifformerError
from difformer.generate import load, search_tokens
from difformer.files import install, write_atomic, write_json
from difformer.hub import same_tokenizer
from difformer.metrics import corpus_bleu
from difformer.precision import allow_tf32


def distill(teacher: str | Path, data: str | Path, destdir: str | Path, *, beam: int = 4, lenpen: float = 1.0,
            max_len_a: float | None = None, max_len_b: int | None = None, max_tokens: int | None = None,
            chunk_size: int = 2000, device: str = "auto", precision: str = "auto", force: bool = False) -> dict:
    """Write destdir: `data` with the training targets replaced by the teacher's beam-search outputs; return
    its dataset.json. A partial run of the same options is resumed."""
    data, dest = Path(data), Path(destdir)
    if not (data / "dataset.json").is_file():
        raise DifformerError(f"{data}: no dataset.json; run `difformer prepare` first")
    pipe = load(teacher, device=device, precision=precision)
    allow_tf32(pipe.device, pipe.precision)
    if pipe.arch != "transformer":
        raise DifformerError(f"{teacher}: the teacher must be an autoregressive model (model.arch "
                             f"transformer), not {pipe.arch}")
    if not same_tokenizer(data / "tokenizer.model", pipe.tokenizer.path):
        raise DifformerError(f"{teacher}: the teacher's tokenizer differs from {data / 'tokenizer.model'}; "
                             "distil with a teacher trained on this prepared data")
    check_destination(dest, force)
    if chunk_size < 1:
        raise DifformerError(f"--chunk-size must be >= 1, got {chunk_size}")
    options = {k: v for k, v in (("beam", beam), ("lenpen", lenpen), ("max_len_a", max_len_a),
                                 ("max_len_b", max_len_b), ("max_tokens", max_tokens)) if v is not None}
    cfg = pipe.decode_config(**options)
    record = {"teacher": str(Path(teacher).resolve()), "decoding": pipe.describe(cfg), "beam": cfg.beam,
              "lenpen": cfg.lenpen, "max_len_a": cfg.max_len_a, "max_len_b": cfg.max_len_b,
              "precision": pipe.precision, "source_data": str(data.resolve()), "chunk_size": chunk_size}
    partial = dest.parent / f".{dest.name}.distill-partial"
    _open_partial(partial, record)

    train = PairDataset(data, "train")
    limit = pipe.config.model.max_positions - 1
    chunks = range(0, len(train), chunk_size)
    done = [c for c in chunks if (partial / _chunk_name(c)).is_file()]
    bar = tqdm(total=len(train), initial=min(len(done) * chunk_size, len(train)), unit="sent",
               desc="distill", dynamic_ncols=True, disable=None)
    for start in chunks:
        path = partial / _chunk_name(start)
        if path.is_file():
            continue
        end = min(start + chunk_size, len(train))
        sources = [train.src(i)[:limit].tolist() for i in range(start, end)]
        clock = time.perf_counter()
        hyps = search_tokens(pipe.model, pipe.tokenizer, sources, cfg, pipe.precision)
        seconds = time.perf_counter() - clock
        lengths = np.array([len(h) for h in hyps], np.int64)
        flat = np.array([t for h in hyps for t in h], np.int64)
        write_atomic(path, lambda p: _save_chunk(p, lengths, flat, seconds))
        bar.update(end - start)
    bar.close()
    info = _install(data, partial, dest, train, record)
    shutil.rmtree(partial, ignore_errors=True)
    return info


def _save_chunk(path: Path, lengths: np.ndarray, flat: np.ndarray, seconds: float) -> None:
    with open(path, "wb") as f:  # a file object: given a name, np.savez would append ".npz" to it
        np.savez(f, lengths=lengths, flat=flat, seconds=seconds)


def _chunk_name(start: int) -> str:
    return f"chunk_{start:010d}.npz"


def _open_partial(partial: Path, record: dict) -> None:
    """Create the partial directory, or check that the one there was started with the same options."""
    options = partial / "options.json"
    if options.is_file():
        before = json.loads(options.read_text(encoding="utf-8"))
        if before != record:
            differ = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
            raise DifformerError(f"{partial}: a distillation with other options ({', '.join(differ)}) was "
                                 "interrupted here; rerun it with the same options to resume, or delete the "
                                 "directory to start over")
        return
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DifformerError(f"{partial}: cannot write there ({e.strerror or e})") from None
    write_json(options, record)


def _install(data: Path, partial: Path, dest: Path, train: PairDataset, record: dict) -> dict:
    """Build the distilled directory beside dest (the source side and other splits copied, the training
    targets from the chunks) and rename it into place."""
    info = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    tgt_lang = info["target_lang"]
    lengths, flat, seconds = [], [], 0.0
    for start in range(0, len(train), record["chunk_size"]):
        with np.load(partial / _chunk_name(start)) as z:
            lengths.append(z["lengths"])
            flat.append(z["flat"])
            seconds += float(z["seconds"])
    lengths, flat = np.concatenate(lengths), np.concatenate(flat)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hyps = [flat[offsets[i]:offsets[i + 1]] for i in range(len(train))]
    tok = Tokenizer(data / "tokenizer.model")  # scored on what the teacher said, empty outputs included
    bleu = corpus_bleu(tok.decode(hyps), tok.decode([train.tgt(i) for i in range(len(train))]))
    empty = [i for i, h in enumerate(hyps) if len(h) == 0]
    for i in empty:  # an empty target teaches nothing: keep the reference there (counted in dataset.json)
        hyps[i] = np.asarray(train.tgt(i), np.int64)
    tmp = dest.parent / f".{dest.name}.distill-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for f in data.iterdir():
            if f.is_file() and f.name != "dataset.json" and not f.name.startswith(f"train.{tgt_lang}."):
                shutil.copyfile(f, tmp / f.name)
        new_lens = np.array([len(h) for h in hyps], np.int64)
        np.concatenate(hyps).astype(dtype_for(info["vocab_size"])).tofile(tmp / f"train.{tgt_lang}.bin")
        np.concatenate([[0], np.cumsum(new_lens)]).astype(np.int64).tofile(tmp / f"train.{tgt_lang}.idx")
        split = info["splits"]["train"]
        split.update({"target_file": None, "targets": "the teacher's outputs (see distilled)",
                      "target_tokens": int(new_lens.sum()), "target_len": length_stats(new_lens)})
        info["distilled"] = {**record, "teacher_bleu_vs_references": round(bleu.score, 2),
                             "bleu_signature": bleu.signature, "seconds": round(seconds, 1),
                             "empty_outputs_kept_reference": len(empty)}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        install(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DifformerError(f"{dest}: not written ({e.strerror or e}); the decoded chunks are kept in "
                             f"{partial}") from None
    return info
