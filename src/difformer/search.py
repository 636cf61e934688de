"""Autoregressive decoding: batched beam search (beam 1 is greedy) with a key/value cache, and teacher-forced
sequence scores for reranking a Difformer's candidates.

Beam search follows fairseq's sequence generator: each step takes the 2k best continuations of the k live
hypotheses; an EOS among the best k finishes a hypothesis (scored by log-prob / length ** lenpen), the best k
others live on; a sentence is done when it has k finished hypotheses and no live one scores better than the
best of them, and done sentences leave the batch.
At max_len_a * source length + max_len_b tokens EOS is forced, at its own log-probability.
"""
from __future__ import annotations

import torch

from difformer.config import DecodeConfig
from difformer.data.batching import pad_batch
from difformer.model.autoregressive import ARTransformer, reorder_cache


def max_lengths(src_mask: torch.Tensor, cfg: DecodeConfig, max_positions: int) -> list[int]:
    """Tokens each output may have, EOS included: max_len_a * source length + max_len_b, within positions
    (BOS takes one)."""
    n = src_mask.sum(1).float() * cfg.max_len_a + cfg.max_len_b
    return n.long().clamp(1, max_positions - 1).tolist()


@torch.no_grad()
def greedy_search(model: ARTransformer, src: torch.Tensor, src_mask: torch.Tensor, cfg: DecodeConfig,
                  bos: int, eos: int, banned: tuple[int, ...] = ()) -> list[list[int]]:
    """The argmax token at every step until EOS (or max length); rows that finished leave the batch."""
    B, device = src.shape[0], src.device
    max_len = max_lengths(src_mask, cfg, model.cfg.max_positions)
    memory = model.encode(src, src_mask)
    cache = model.new_cache(memory)
    last = torch.full((B, 1), bos, device=device)
    alive, out = list(range(B)), [[] for _ in range(B)]
    for step in range(max(max_len)):
        logits = model.decode(last, None, src_mask, cache, start=step)[:, -1].float()  # (rows, V)
        logits[:, list(banned)] = float("-inf")
        word = logits.argmax(-1).tolist()
        keep = []
        for i, (b, w) in enumerate(zip(alive, word)):
            if w != eos and step + 1 < max_len[b]:
                out[b].append(w)
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(alive):
            rows = torch.tensor(keep, device=device)
            cache, src_mask = reorder_cache(cache, rows, rows), src_mask[rows]
        alive = [alive[i] for i in keep]
        last = torch.tensor([[out[b][-1]] for b in alive], device=device)
    return out


@torch.no_grad()
def beam_search(model: ARTransformer, src: torch.Tensor, src_mask: torch.Tensor, cfg: DecodeConfig,
                bos: int, eos: int, banned: tuple[int, ...] = ()) -> list[list[int]]:
    """Best hypothesis per source (B, S) -> B token lists (no BOS/EOS). `banned` tokens (pad, BOS) are never
    emitted."""
    B, k, device = src.shape[0], cfg.beam, src.device
    max_len = max_lengths(src_mask, cfg, model.cfg.max_positions)
    cache = model.new_cache(model.encode(src, src_mask), copies=k)  # rows: B*k, sentence-major
    src_mask = src_mask.repeat_interleave(k, dim=0)
    tokens = torch.full((B * k, 1), bos, device=device)  # (rows, t + 1): BOS and the tokens so far
    scores = torch.zeros(B, k, device=device)
    scores[:, 1:] = float("-inf")  # at step 0 all beams are the same: keep one
    alive = list(range(B))  # the sentences still in the batch, in row order
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for step in range(max(max_len)):
        logits = model.decode(tokens[:, -1:], None, src_mask, cache, start=step)[:, -1].float()  # (rows, V)
        at_limit = [max_len[b] == step + 1 for b in alive]
        top, beam, word = best_continuations(logits, scores, banned, eos, at_limit)
        n = len(alive)
        is_eos = (word == eos) & (top > float("-inf"))
        for i, j in (is_eos[:, :k]).nonzero().tolist():  # finished among the best k: fairseq's rule
            hyp = tokens[i * k + beam[i, j], 1:].tolist()
            finished[alive[i]].append((top[i, j].item() / (step + 1) ** cfg.lenpen, hyp))
        # the best k continuations that are not EOS live on
        live = torch.where(is_eos, float("-inf"), top).topk(k, dim=1).indices  # (n, k)
        scores, beam, word = top.gather(1, live), beam.gather(1, live), word.gather(1, live)
        best_live = (scores.max(1).values / (step + 1) ** cfg.lenpen).tolist()
        keep = [i for i, b in enumerate(alive) if step + 1 < max_len[b] and not _done(finished[b], best_live[i], k)]
        if not keep:
            break
        kept = torch.tensor(keep, device=device)[:, None] * k  # (n', 1): first row of each kept sentence
        rows = (kept + beam[keep]).reshape(-1)
        tokens = torch.cat([tokens[rows], word[keep].reshape(-1, 1)], dim=1)
        source_rows = None
        if len(keep) < n:
            source_rows = (kept + torch.arange(k, device=device)).reshape(-1)
            src_mask = src_mask[source_rows]
        scores, alive = scores[keep], [alive[i] for i in keep]
        cache = reorder_cache(cache, rows, source_rows)
    return [max(f)[1] if f else [] for f in finished]


def best_continuations(logits: torch.Tensor, scores: torch.Tensor, banned: tuple[int, ...], eos: int,
                       at_limit: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2k best continuations of each of n sentences: (sentence log-prob, beam, word), each (n, 2k).

    `logits` (n*k, V; overwritten) are the next-token logits of the k live hypotheses, whose log-probs are
    `scores` (n, k); `banned` tokens never follow; a sentence `at_limit` may only end, EOS keeping its own
    log p (as fairseq: a log p of 0 would favour the hypotheses cut at the limit over those that ended). The
    best 2k of a sentence are among the best 2k of each of its beams, so no (n, k*V) sum is formed; log p is
    the logit minus the logsumexp, taken before banning (as log_softmax then banning would).
    """
    n, k = scores.shape
    norm = logits.logsumexp(-1, keepdim=True)
    logits[:, list(banned)] = float("-inf")
    if any(at_limit):
        rows = torch.tensor(at_limit, device=logits.device).repeat_interleave(k)
        eos_only = torch.arange(logits.shape[1], device=logits.device) == eos
        logits[rows] = torch.where(eos_only, logits[rows], float("-inf"))
    w = min(2 * k, logits.shape[1])
    row_top, row_word = logits.topk(w, dim=-1)  # (n*k, w)
    total = (scores[:, :, None] + (row_top - norm).view(n, k, w)).view(n, k * w)
    top, idx = total.topk(min(2 * k, k * w), dim=1)
    return top, idx // w, row_word.view(n, k * w).gather(1, idx)


def _done(finished: list[tuple[float, list[int]]], best_live: float, k: int) -> bool:
    """k hypotheses finished and none alive scores better than the best of them. fairseq stops at k
    finished alone, which can return a worse output than greedy search when EOS comes early; log-probs
    only fall as a hypothesis grows, so with lenpen 0 this rule never misses a better one in the beam."""
    return len(finished) >= k and best_live <= max(finished)[0]


@torch.no_grad()
def sequence_scores(model: ARTransformer, src: torch.Tensor, src_mask: torch.Tensor,
                    hyps: list[list[int]], bos: int, eos: int, pad: int, lenpen: float = 1.0) -> torch.Tensor:
    """Length-normalised log-probability of each hypothesis (no BOS/EOS) given its source, by teacher
    forcing: sum over y EOS of log p / (len(y) + 1) ** lenpen, beam search's rule (lenpen > 1 favours
    longer hypotheses, 0 ranks by the sum). `src` rows pair with `hyps` one to one."""
    limit = model.cfg.max_positions - 1
    tgt, mask = pad_batch([[bos] + h[:limit - 1] + [eos] for h in hyps], pad)
    tgt, mask = tgt.to(src.device), mask[:, 1:].to(src.device)
    logits = model(src, src_mask, tgt[:, :-1]).float()  # (rows, T, V); log p = logit - logsumexp, gathered
    token_logp = logits.gather(-1, tgt[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)
    return (token_logp * mask).sum(1) / mask.sum(1).float() ** lenpen
