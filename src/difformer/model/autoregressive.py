"""The autoregressive encoder-decoder Transformer: the teacher (distillation, reranking) and the baseline.

Vaswani et al., "Attention Is All You Need", as fairseq's `transformer` with `share_all_embeddings`: one
embedding matrix (V x d) for the source, the target and the output projection, learned positions. It is
built from the same blocks as the Difformer (model/transformer.py) with the same parameter names for the
encoder, so `train.init_from` can warm-start a Difformer's encoder from it. Trained with label-smoothed
cross-entropy; decoded by search.py (greedy, beam search) with a key/value cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from difformer.config import ModelConfig
from difformer.model.transformer import DecoderLayer, EncoderLayer


class ARTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)  # source, target and output projection
        self.embed_scale = math.sqrt(d)
        self.enc_pos = nn.Embedding(cfg.max_positions, d)
        self.dec_pos = nn.Embedding(cfg.max_positions, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(
            EncoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.norm_first) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.decoder = nn.ModuleList(
            DecoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.norm_first) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.apply(_xavier_init)
        nn.init.normal_(self.embed.weight, std=d ** -0.5)  # fairseq's: scaled by sqrt(d), unit variance

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Source tokens (B, S) -> encoder states (B, S, d)."""
        pos = torch.arange(src.shape[1], device=src.device)
        h = self.dropout(self.embed(src) * self.embed_scale + self.enc_pos(pos))
        for layer in self.encoder:
            h = layer(h, src_mask)
        return self.enc_norm(h)

    def decode(self, prev: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               cache: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        """Next-token logits (B, T, V) for the target prefix `prev` (B, T): BOS y_1 .. y_{T-1}.

        With `cache` (from `new_cache`), `prev` holds only the new positions start..start+T-1 and the
        earlier ones are read from the cache: one step of greedy or beam search costs one position.
        """
        pos = torch.arange(start, start + prev.shape[1], device=prev.device)
        h = self.dropout(self.embed(prev) * self.embed_scale + self.dec_pos(pos))  # (B, T, d)
        causal = cache is None and prev.shape[1] > 1
        for i, layer in enumerate(self.decoder):
            if cache is None:
                h = layer(h, None, memory, src_mask, causal=causal)
            else:
                h = layer(h, None, None, src_mask, self_cache=cache[i]["self"], cross_kv=cache[i]["cross"])
        return self.dec_norm(h) @ self.embed.weight.t()

    def new_cache(self, memory: torch.Tensor, copies: int = 1) -> list[dict]:
        """Per decoder layer: the cross-attention keys/values of `memory`, computed once per source and
        repeated for its `copies` beams, and an empty self-attention cache."""
        return [{"self": {}, "cross": layer.cross_attn.keys_values(memory).repeat_interleave(copies, dim=1)}
                for layer in self.decoder]

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return self.decode(prev, self.encode(src, src_mask), src_mask)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def reorder_cache(cache: list[dict], rows: torch.Tensor, source_rows: torch.Tensor | None = None) -> list[dict]:
    """Keep (and repeat) the rows `rows` of the self-attention caches: beam search's reordering and pruning.
    The cross-attention keys/values depend on the source only: they are selected by `source_rows`, and
    left as they are when it is None (beams reordered within their sentences, no sentence dropped)."""
    out = []
    for layer in cache:
        own = {k: v.index_select(0, rows) for k, v in layer["self"].items()}
        cross = layer["cross"] if source_rows is None else layer["cross"].index_select(1, source_rows)
        out.append({"self": own, "cross": cross})
    return out


def ar_loss(model: ARTransformer, src: torch.Tensor, src_mask: torch.Tensor, tgt: torch.Tensor,
            tgt_mask: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Label-smoothed cross-entropy of y EOS given BOS y (teacher forcing), per target token.

    `tgt` is BOS y EOS padded, as collate builds it for both model kinds. The stats carry the plain NLL
    too, the number that perplexity and validation compare.
    """
    logp = F.log_softmax(model(src, src_mask, tgt[:, :-1]).float(), dim=-1)  # (B, T-1, V)
    gold, mask = tgt[:, 1:], tgt_mask[:, 1:]
    n = mask.sum().clamp(min=1)
    nll = -logp.gather(-1, gold[..., None]).squeeze(-1)  # (B, T-1)
    smooth = -logp.mean(-1)  # the uniform part of the smoothed target, as F.cross_entropy computes it
    loss = (((1 - label_smoothing) * nll + label_smoothing * smooth) * mask).sum() / n
    with torch.no_grad():  # detached device scalars, as difformer_loss's
        stats = {"loss": loss.detach(), "nll": (nll * mask).sum() / n}
        if not model.training:
            stats["acc"] = ((logp.argmax(-1) == gold) & mask).sum() / n
    return loss, stats


def _xavier_init(module: nn.Module) -> None:
    """fairseq's transformer init: Xavier-uniform linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
