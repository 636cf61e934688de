"""Quality and diversity metrics: sacreBLEU, tokenized BLEU, ROUGE, BLEU-MBR selection, self-BLEU.

Every score comes back with a signature that says how it was computed (sacreBLEU's convention), so a
printed number can always be reproduced. BLEU is computed by sacreBLEU (Post, 2018,
https://github.com/mjpost/sacrebleu) and ROUGE by Google's `rouge-score` package.

References follow sacreBLEU's layout: either one stream (``list[str]``, aligned with the hypotheses) or
several streams (``list[list[str]]``, each aligned with the hypotheses; e.g. AESLC has four).

`sentence_bleu_matrix` re-implements sacreBLEU's sentence BLEU (exp smoothing, effective order) with
n-gram counts taken once per candidate and clipped overlaps computed as arrays, because BLEU-MBR over
21 candidates x 1000 sentences needs 420k sentence-BLEU pairs and sacreBLEU takes ~40 us per pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version

import numpy as np
from sacrebleu.metrics import BLEU

from difformer.errors import DifformerError

MAX_NGRAM_ORDER = 4


@dataclass(frozen=True)
class Score:
    """A number together with the name of the metric and the signature that says how it was made."""

    score: float
    signature: str
    name: str = "BLEU"

    def __str__(self) -> str:
        return format_score(self)


def format_score(score: Score) -> str:
    """One line in sacreBLEU's style, e.g. ``BLEU = 34.21  nrefs:1|case:mixed|...|version:2.6.0``."""
    return f"{score.name} = {score.score:.2f}  {score.signature}"


def _as_streams(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """Normalise references to a list of streams and check they line up with the hypotheses."""
    if isinstance(hyps, str) or any(not isinstance(h, str) for h in hyps):
        raise DifformerError("hypotheses must be a list of strings")
    if len(hyps) == 0:
        raise DifformerError("no hypotheses to score")
    if isinstance(refs, str) or len(refs) == 0:
        raise DifformerError("references must be a non-empty list of strings or of reference streams")
    streams = [list(refs)] if isinstance(refs[0], str) else [list(s) for s in refs]
    for k, stream in enumerate(streams):
        if len(stream) != len(hyps):
            raise DifformerError(
                f"reference stream {k} has {len(stream)} lines but there are {len(hyps)} hypotheses "
                "(several references are passed as streams: refs[k][i] is reference k of sentence i)"
            )
        if any(not isinstance(r, str) for r in stream):
            raise DifformerError(f"reference stream {k} contains a non-string line")
    return streams


def _sacrebleu(hyps: Sequence[str], refs, tokenize: str, lowercase: bool) -> Score:
    streams = _as_streams(hyps, refs)
    bleu = _bleu(tokenize=tokenize, lowercase=lowercase)
    result = bleu.corpus_score(list(hyps), streams)
    return Score(score=float(result.score), signature=str(bleu.get_signature()), name="BLEU")


def corpus_bleu(
    hyps: list[str],
    refs: list[str] | list[list[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
) -> Score:
    """Corpus sacreBLEU on detokenized text: the comparable number across papers and toolkits."""
    return _sacrebleu(hyps, refs, tokenize, lowercase)


def tokenized_bleu(
    hyps: list[str],
    refs: list[str] | list[list[str]],
    *,
    lowercase: bool = False,
) -> Score:
    """Corpus BLEU on already-tokenized text split at whitespace (``tok:none`` in the signature).

    This is what the field reports for IWSLT14 (multi-bleu.perl, fairseq's tokenized BLEU); the number
    depends on the tokenization of the references, so it is only comparable under the same one.
    """
    return _sacrebleu(hyps, refs, "none", lowercase)


def rouge(hyps: list[str], refs: list[str] | list[list[str]]) -> dict[str, Score]:
    """Mean ROUGE-1/2/L F1 (x100) with `rouge-score`, Porter stemming on, as summarisation papers report.

    With several reference streams each sentence takes, per ROUGE type, its best F1 over its references
    (`RougeScorer.score_multi`, the usual convention), then sentences are averaged. Note that
    `rouge-score` keeps only ASCII letters and digits when tokenizing, so it suits English output only.
    Returns ``{"rouge1": Score, "rouge2": Score, "rougeL": Score}``.
    """
    from rouge_score import rouge_scorer

    streams = _as_streams(hyps, refs)
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for i, hyp in enumerate(hyps):
        best = scorer.score_multi([stream[i] for stream in streams], hyp)
        for t in types:
            totals[t] += best[t].fmeasure
    agg = "max-ref|" if len(streams) > 1 else ""
    signature = (
        f"nrefs:{len(streams)}|{agg}f1|mean|stem:porter|tok:rouge_score"
        f"|version:rouge-score-{version('rouge-score')}"
    )
    names = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
    return {t: Score(100.0 * totals[t] / len(hyps), signature, names[t]) for t in types}


def _bleu(**kwargs) -> BLEU:
    """sacreBLEU's BLEU object, with an unknown tokenizer name turned into a user-facing error."""
    try:
        return BLEU(**kwargs)
    except KeyError as err:
        raise DifformerError(
            f"unknown BLEU tokenizer {kwargs.get('tokenize')!r}; try one of {sorted(BLEU.TOKENIZERS)}"
        ) from err


@lru_cache(maxsize=None)
def _tokenizer(tokenize: str):
    """sacreBLEU's tokenizer object by name, built once (some load resources on construction)."""
    return _bleu(tokenize=tokenize).tokenizer


def _ngram_counts(token_lists: list[list[str]], n: int) -> np.ndarray:
    """Count matrix (m, V_n) of the order-n n-grams of m token lists over their shared n-gram vocabulary."""
    ids: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for i, toks in enumerate(token_lists):
        for k in range(len(toks) - n + 1):
            rows.append(i)
            cols.append(ids.setdefault(tuple(toks[k : k + n]), len(ids)))
    counts = np.zeros((len(token_lists), max(len(ids), 1)), dtype=np.int64)
    np.add.at(counts, (rows, cols), 1)
    return counts


def sentence_bleu_matrix(
    cands: list[str], *, tokenize: str = "none", lowercase: bool = False
) -> np.ndarray:
    """(m, m) matrix with M[i, j] = sentence BLEU of cands[i] against the single reference cands[j].

    Equal to sacreBLEU's ``BLEU(tokenize=..., smooth_method="exp", effective_order=True)
    .sentence_score(cands[i], [cands[j]])`` (tested to 1e-6) but computed from n-gram counts taken
    once per candidate, which makes BLEU-MBR over many candidates cheap.
    """
    tokenizer = _tokenizer(tokenize)
    # the same pre-processing as sacreBLEU: lowercase, strip the right end, tokenize, split at whitespace
    toks = [tokenizer((c.lower() if lowercase else c).rstrip()).split() for c in cands]
    m = len(toks)
    lens = np.array([len(t) for t in toks], dtype=np.float64)  # (m,)
    correct = np.empty((MAX_NGRAM_ORDER, m, m))  # (N, hyp, ref): clipped n-gram matches
    total = np.empty((MAX_NGRAM_ORDER, m))  # (N, hyp): n-grams in the hypothesis
    for n in range(1, MAX_NGRAM_ORDER + 1):
        c = _ngram_counts(toks, n)  # (m, V)
        if c.size * m <= 1 << 22:
            correct[n - 1] = np.minimum(c[:, None, :], c[None, :, :]).sum(-1)  # (m, m)
        else:  # row by row, so many long candidates do not need an (m, m, V) array
            for i in range(m):
                correct[n - 1, i] = np.minimum(c[i], c).sum(-1)  # (m,)
        total[n - 1] = np.maximum(lens - n + 1, 0)
    total = np.broadcast_to(total[:, :, None], correct.shape)  # (N, m, m)
    has = total > 0
    # exp smoothing (mteval's NIST trick): the k-th order without a match gets precision 1 / (2^k total)
    zero = (correct == 0) & has
    k = np.cumsum(zero, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(zero, 1.0 / (2.0**k * total), correct / total)
        log_prec = np.where(has, np.log(prec), 0.0)
    eff_order = np.maximum(has.sum(0), 1)  # (m, m): effective order = orders the hypothesis has
    sys_len, ref_len = lens[:, None], lens[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_bp = np.where(sys_len < ref_len, 1.0 - ref_len / sys_len, 0.0)
    scores = 100.0 * np.exp(log_bp + log_prec.sum(0) / eff_order)
    return np.where(correct.sum(0) > 0, scores, 0.0)  # sacreBLEU: no match at any order is 0


def mbr_scores(cands: list[str], *, tokenize: str = "none") -> np.ndarray:
    """Mean sentence BLEU of each candidate against the others: the expected utility BLEU-MBR ranks by."""
    if len(cands) == 0:
        raise DifformerError("BLEU-MBR needs at least one candidate")
    if len(cands) == 1:
        return np.zeros(1)
    mat = sentence_bleu_matrix(cands, tokenize=tokenize)
    np.fill_diagonal(mat, 0.0)
    return mat.sum(1) / (len(cands) - 1)


def mbr_select(candidates: list[list[str]], *, tokenize: str = "none") -> list[int]:
    """Index of the BLEU-MBR choice in each group of candidates (one group per source; ties -> first)."""
    return [int(np.argmax(mbr_scores(group, tokenize=tokenize))) for group in candidates]


def self_bleu(texts: list[str], *, tokenize: str = "13a") -> float:
    """Mean sentence BLEU of each text against all the others as references; lower means more diverse."""
    if len(texts) < 2:
        raise DifformerError("self-BLEU needs at least two texts")
    texts = list(texts)
    bleu = _bleu(tokenize=tokenize, smooth_method="exp", effective_order=True)
    scores = [bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return float(math.fsum(scores) / len(scores))
