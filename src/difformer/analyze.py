"""The paper's embedding-space analysis for any trained model: what `difformer analyze` writes.

Three findings of Gao et al. can be looked at on one's own model and data:
- frequent tokens get larger embedding norms, so the same noise corrupts rare tokens more; the embedding
  layer normalization evens out what the decoder sees (`embedding_norms` against `token_counts`);
- with MSE alone the embeddings shrink and the MSE goes to zero (the collapse); the anchor loss stops it
  (`read_log`: MSE, anchor loss and mean embedding norm over updates, from one or more training logs);
- the z0 prediction settles after a few sampling steps (`trajectory`: BLEU and token change rate of the
  argmax of z0_hat at every step), which tells where early stopping can cut decoding.
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from difformer.data.binarize import PairDataset
from difformer.errors import DifformerError
from difformer.generate import Pipeline, detokenize, load, source_batches
from difformer.hub import check_prepared_with
from difformer.metrics import corpus_bleu


def token_counts(data: PairDataset, vocab_size: int) -> np.ndarray:
    """How often each id occurs on the target side of a split: the tokens that get noised in training."""
    return np.bincount(np.asarray(data.target_tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size]


@torch.no_grad()
def embedding_norms(model) -> dict[str, np.ndarray]:
    """Per-token L2 norms (V,): "embedding" is ||sqrt(e) E[v]||, the clean z0 of token v.

    With an embedding norm, "before_norm" and "after_norm" are what that LayerNorm takes and gives for the
    clean token: z0 itself ("before_noise"), or the decoder input built from z0 at t = 0, position 0 and
    no self-conditioning ("input", the published placement).
    """
    device = model.embed.weight.device
    z0 = model.embed(torch.arange(model.cfg.vocab_size, device=device)) * model.embed_scale  # (V, e)

    def norm(x: torch.Tensor) -> np.ndarray:
        return x.norm(dim=-1).float().cpu().numpy()

    out = {"embedding": norm(z0)}
    if model.cfg.embed_norm == "before_noise":
        out["before_norm"], out["after_norm"] = out["embedding"], norm(model.target_norm(z0))
    elif model.cfg.embed_norm == "input":
        zero = torch.zeros(len(z0), device=device)
        h = model.decoder_input(z0[:, None], torch.zeros_like(z0[:, None]), zero, normalize=False)[:, 0]
        out["before_norm"], out["after_norm"] = norm(h), norm(model.input_norm(h))
    return out


COUNT_BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 10), (11, 30), (31, 100), (101, 1000), (1001, math.inf))


def norm_by_count(norm: np.ndarray, counts: np.ndarray, specials: set[int]) -> dict[str, dict]:
    """Median norm and number of tokens per bucket of training-target count ("0": never a target)."""
    out = {}
    ordinary = ~np.isin(np.arange(len(norm)), list(specials))
    for lo, hi in COUNT_BUCKETS:
        m = ordinary & (counts >= lo) & (counts <= hi)
        name = f"{lo}" if lo == hi else f">{lo - 1}" if hi == math.inf else f"{lo}-{hi}"
        if m.any():
            out[name] = {"tokens": int(m.sum()), "median_norm": round(float(np.median(norm[m])), 2)}
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return (sums / counts)[inverse]

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom else float("nan")


def read_log(path: Path) -> dict[str, list[float]]:
    """The training records of a log.jsonl: update, mse, anchor and embed_norm lists of equal length."""
    keys = ("update", "mse", "anchor", "embed_norm")
    curves: dict[str, list[float]] = {k: [] for k in keys}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DifformerError(f"{path}: cannot read ({e.strerror or e})") from None
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise DifformerError(f"{path}:{n}: not a JSON line") from None
        if all(k in record for k in keys):
            for k in keys:
                curves[k].append(float(record[k]))
    if not curves["update"]:
        raise DifformerError(f"{path}: no training records (update, mse, anchor, embed_norm) in this log")
    return curves


@torch.no_grad()
def trajectory(pipe: Pipeline, sources: list[list[int]], refs: list[str], **options) -> dict:
    """Decode with one candidate per source and read z0_hat off (argmax through E) at every step.

    Returns per step: the sampling timestep, corpus BLEU of the step's texts, the fraction of target
    positions whose token changed since the previous step, and the texts. Batching and seed are those of
    `generate`, so the last step's texts are what `generate` outputs with the same options (up to float
    rounding: `generate` denoises a CPU batch in groups of similar length).
    """
    cfg = pipe.decode_config(**{**options, "length_beam": 1, "noise_beam": 1, "early_stop": 0})
    tok = pipe.tokenizer
    texts = [[""] * len(sources) for _ in range(cfg.steps)]
    changed, positions = np.zeros(cfg.steps), 0
    for idx, src, mask in source_batches(sources, 1, cfg.max_tokens, tok.eos_id, tok.pad_id):
        steps, lengths = pipe.step_tokens(src, mask, cfg)  # (B, L) tokens per step
        real = torch.arange(steps[0].shape[1], device=lengths.device)[None, :] < lengths[:, None]
        positions += int(real.sum())
        for k, tokens in enumerate(steps):
            if k:
                changed[k] += int(((tokens != steps[k - 1]) & real).sum())
            decoded = detokenize(tok, tokens.tolist(), lengths.tolist())
            for b, i in enumerate(idx):
                texts[k][i] = decoded[b]
    bleu = [round(corpus_bleu(step, refs).score, 2) for step in texts]
    return {"setting": cfg.describe(), "timesteps": pipe.schedule.timesteps_for(cfg.steps, cfg.min_t), "bleu": bleu,
            "change_rate": [None] + [round(c / max(positions, 1), 4) for c in changed[1:]], "texts": texts}


def settle_step(bleu: list[float], tolerance: float = 0.5) -> int:
    """The first step (1-based) from which BLEU stays within `tolerance` of the last step's."""
    k = len(bleu)
    while k > 1 and abs(bleu[k - 2] - bleu[-1]) <= tolerance:
        k -= 1
    return k


def pyplot():
    """matplotlib.pyplot on the Agg backend: every plot here goes to a file, none needs a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_norms(norms: dict[str, np.ndarray], counts: np.ndarray | None, keep: np.ndarray, path: Path) -> None:
    """Norms of the tokens in `keep` (V,) against their frequency rank (or id, without counts)."""
    plt = pyplot()
    if counts is not None:
        order = np.argsort(-counts[keep], kind="stable")
        xlabel = "token frequency rank in the training targets (1 = most frequent)"
    else:
        order = np.arange(keep.sum())
        xlabel = "token id (no --data: frequencies unknown)"
    x = np.arange(1, len(order) + 1)
    panels = [("embedding", "||sqrt(e) E[v]|| (the clean z0)")]
    if "after_norm" in norms:
        panels.append(("before_norm", "what the embedding norm sees / gives"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        series = [(key, "before" if key == "before_norm" else "norm")]
        if key == "before_norm":
            series.append(("after_norm", "after"))
        for name, label in series:
            y = norms[name][keep][order]
            ax.scatter(x, y, s=2, alpha=0.3, label=f"{label} (each token)")
            ax.plot(x, _running_median(y), linewidth=2, label=f"{label} (running median)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("L2 norm")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _running_median(y: np.ndarray, window: int = 101) -> np.ndarray:
    half = min(window, len(y)) // 2
    return np.array([np.median(y[max(0, i - half):i + half + 1]) for i in range(len(y))])


def plot_logs(logs: dict[str, dict[str, list[float]]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(axes, (("mse", "MSE of z0_hat"), ("anchor", "anchor loss (CE of z0_hat)"),
                                       ("embed_norm", "mean ||sqrt(e) E[v]||"))):
        for name, curves in logs.items():
            ax.plot(curves["update"], curves[key], label=name)
        ax.set_xlabel("update")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectory(traj: dict, path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    steps = np.arange(1, len(traj["bleu"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(steps, traj["bleu"], marker="o", color="C0")
    ax.set_xlabel("sampling step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("BLEU of argmax(z0_hat)", color="C0")
    ax.grid(alpha=0.3)
    rate = ax.twinx()
    rate.plot(steps[1:], [100 * c for c in traj["change_rate"][1:]], marker=".", color="C1")
    rate.set_ylabel("tokens changed since the previous step (%)", color="C1")
    ax.set_title("Decoding trajectory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analyze(model_dir: str | Path, out: str | Path, data_dir: str | Path | None = None,
            logs: list[str | Path] | None = None, split: str = "valid", sentences: int = 200, show: int = 5,
            precision: str = "auto", device: str = "auto", **options) -> dict:
    """Write the plots, analysis.json and report.html to `out`; return the summary.

    data_dir defaults to the data the model was trained on (when it is still there); logs default to the
    log.jsonl beside the model directory. Without data, norms are plotted against token id and the
    trajectory is left out; without a log, the training curves are.
    """
    model_dir, out = Path(model_dir), Path(out)
    pipe = load(model_dir, device=device, precision=precision)
    if pipe.arch != "difformer":
        raise DifformerError(f"{model_dir}: analyze studies a Difformer's embedding space and denoising; this is "
                             f"an autoregressive model (model.arch {pipe.arch})")
    data_dir = Path(data_dir) if data_dir else pipe.trained_on
    if data_dir:
        check_prepared_with(data_dir, pipe.tokenizer.path)
    if logs is None:
        logs = [model_dir.parent / "log.jsonl"] if (model_dir.parent / "log.jsonl").is_file() else []
    tok, cfg = pipe.tokenizer, pipe.config
    specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}
    summary: dict = {"model": str(model_dir), "data": str(data_dir) if data_dir else None,
                     "embed_norm": cfg.model.embed_norm, "anchor": cfg.diffusion.anchor,
                     "noise_factor": cfg.diffusion.noise_factor}

    norms = embedding_norms(pipe.model)
    counts = token_counts(PairDataset(data_dir, "train"), cfg.model.vocab_size) if data_dir else None
    summary["mean_embedding_norm"] = round(float(norms["embedding"].mean()), 4)
    seen = ~np.isin(np.arange(cfg.model.vocab_size), list(specials))
    if counts is not None:
        seen &= counts > 0
    summary["tokens_plotted"] = int(seen.sum())  # without specials, and only those in the training targets
    summary["norm_spread"] = {k: round(float(v[seen].std() / v[seen].mean()), 4) for k, v in norms.items()}
    if counts is not None:
        summary["spearman_count_vs_norm"] = {k: round(spearman(counts[seen], v[seen]), 4) for k, v in norms.items()}
        summary["median_norm_by_count"] = norm_by_count(norms["embedding"], counts, specials)

    curves = {_log_name(Path(p)): read_log(Path(p)) for p in logs}
    summary["logs"] = {name: {k: c[k][-1] for k in ("update", "mse", "anchor", "embed_norm")}
                       for name, c in curves.items()}

    traj = None
    if data_dir:
        data = PairDataset(data_dir, split)
        n = min(sentences, len(data))
        limit = cfg.model.max_positions - 1
        sources = [data.src(i)[:limit].tolist() for i in range(n)]
        refs = tok.decode([data.tgt(i).tolist() for i in range(n)])
        traj = trajectory(pipe, sources, refs, **options)
        traj.update(split=split, sentences=n, settle_step=settle_step(traj["bleu"]))
        summary["trajectory"] = {k: v for k, v in traj.items() if k != "texts"}
        summary["examples"] = [{"source": s, "reference": r, "steps": [step[i] for step in traj["texts"]]}
                               for i, (s, r) in enumerate(zip(tok.decode(sources[:show]), refs[:show]))]

    def write(tmp: Path) -> None:
        plot_norms(norms, counts, seen, tmp / "embedding_norms.png")
        if curves:
            plot_logs(curves, tmp / "training_curves.png")
        if traj:
            plot_trajectory(traj, tmp / "trajectory.png")
        (tmp / "analysis.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.html").write_text(report_html(summary), encoding="utf-8")

    _write_dir(out, write)
    return summary


def _log_name(path: Path) -> str:
    return path.parent.name or str(path)


def _write_dir(out: Path, write) -> None:
    """Write every file into a fresh temporary folder beside `out`, then move them in: an error halfway
    leaves `out` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    except OSError as e:
        raise DifformerError(f"{out}: cannot write the analysis ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report_html(s: dict) -> str:
    """A self-contained page beside the PNGs: the numbers, the plots, and the per-step texts."""
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>difformer analysis</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;vertical-align:top}</style>",
             f"<h1>Embedding-space analysis of {e(s['model'])}</h1>",
             f"<p>embed_norm = {e(s['embed_norm'])}, anchor = {e(s['anchor'])}, noise factor F = "
             f"{s['noise_factor']}; mean embedding norm {s['mean_embedding_norm']}</p>",
             "<h2>Embedding norm against token frequency</h2>"]
    spread = ", ".join(f"{e(k)} {v}" for k, v in s["norm_spread"].items())
    parts.append(f"<p>Spread of the norms (std / mean over the tokens plotted): {spread}.</p>")
    if "spearman_count_vs_norm" in s:
        rho = ", ".join(f"{e(k)} {v}" for k, v in s["spearman_count_vs_norm"].items())
        parts.append(f"<p>Spearman correlation of training-target frequency with norm: {rho} "
                     "(positive: frequent tokens have larger norms).</p>")
        rows = "".join(f"<tr><td>{e(k)}</td><td>{v['tokens']}</td><td>{v['median_norm']}</td></tr>"
                       for k, v in s["median_norm_by_count"].items())
        parts.append("<table><tr><th>times in the training targets</th><th>tokens</th>"
                     f"<th>median ||sqrt(e) E[v]||</th></tr>{rows}</table>")
    else:
        parts.append("<p>No data: norms are plotted against token id. Pass --data for frequencies.</p>")
    parts.append("<img src='embedding_norms.png' width='100%'>")
    parts.append("<h2>Training curves</h2>")
    if s["logs"]:
        rows = "".join(f"<tr><td>{e(n)}</td><td>{int(v['update'])}</td><td>{v['mse']:.4g}</td>"
                       f"<td>{v['anchor']:.4g}</td><td>{v['embed_norm']:.4g}</td></tr>" for n, v in s["logs"].items())
        parts += ["<table><tr><th>log</th><th>last update</th><th>MSE</th><th>anchor</th><th>embedding norm</th>"
                  f"</tr>{rows}</table>", "<img src='training_curves.png' width='100%'>"]
    else:
        parts.append("<p>No training log found beside the model; pass --log FILE.</p>")
    parts.append("<h2>Decoding trajectory</h2>")
    if "trajectory" in s:
        t = s["trajectory"]
        parts.append(f"<p>{t['sentences']} {e(t['split'])} sentences, {e(t['setting'])}. BLEU stays within "
                     f"0.5 of the final {t['bleu'][-1]} from step {t['settle_step']} of {len(t['bleu'])}.</p>")
        rows = "".join(f"<tr><td>{k + 1}</td><td>{ts}</td><td>{b}</td><td>{'' if c is None else f'{100 * c:.1f}%'}"
                       f"</td></tr>" for k, (ts, b, c) in enumerate(zip(t["timesteps"], t["bleu"], t["change_rate"])))
        parts += ["<img src='trajectory.png' width='70%'>",
                  f"<table><tr><th>step</th><th>t</th><th>BLEU</th><th>tokens changed</th></tr>{rows}</table>",
                  "<h2>Tokens read off z0_hat at each step</h2>"]
        for ex in s["examples"]:
            rows = "".join(f"<tr><td>{k + 1}</td><td>{e(text)}</td></tr>" for k, text in enumerate(ex["steps"]))
            parts.append(f"<p><b>source</b> {e(ex['source'])}<br><b>reference</b> {e(ex['reference'])}</p>"
                         f"<table><tr><th>step</th><th>argmax(z0_hat)</th></tr>{rows}</table>")
    else:
        parts.append("<p>No data: pass --data DIR to decode a split and trace it.</p>")
    return "\n".join(parts) + "\n"
