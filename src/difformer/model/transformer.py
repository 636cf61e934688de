"""Transformer blocks on `scaled_dot_product_attention`: encoder and decoder layers, post-LN or pre-LN.

Difformer's decoder is bidirectional: it denoises all target positions at once. The autoregressive
teacher's decoder runs the same layers with a causal mask, and step by step with a key/value cache.
Masks are boolean `(B, S)` key-padding masks, True where a token is real. Dropout sits on the residual
branches only, as fairseq's defaults (attention and activation dropout 0) that the reference trains with:
on CPU every dropout mask costs as much as a matmul of these sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def keys_values(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, S, C) -> keys and values stacked (2, B, H, S, C/H): computed once per source for decoding."""
        B, S, _ = memory.shape
        return self.kv(memory).view(B, S, 2, self.n_heads, -1).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, key_mask: torch.Tensor | None,
                causal: bool = False, kv: torch.Tensor | None = None, cache: dict | None = None) -> torch.Tensor:
        """Attend from x (B, T, C) to memory (B, S, C), or to precomputed `kv`.

        `cache` (self-attention decoded one step at a time): this step's keys and values are appended to the
        earlier steps' kept there, so step t attends to positions 0..t as the causal mask does in training.
        """
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, H, T, C/H)
        k, v = self.keys_values(memory) if kv is None else kv  # 2 x (B, H, S, C/H)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class Sublayer(nn.Module):
    """Residual around one sublayer with its LayerNorm before (pre-LN) or after (post-LN) the sum."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, norm_first: bool):
        super().__init__()
        self.attn = Attention(d_model, n_heads)
        self.ffn = FeedForward(d_model, ffn_dim)
        self.sub_attn = Sublayer(d_model, dropout, norm_first)
        self.sub_ffn = Sublayer(d_model, dropout, norm_first)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.sub_attn(x, lambda h: self.attn(h, h, mask))
        return self.sub_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, norm_first: bool):
        super().__init__()
        self.self_attn = Attention(d_model, n_heads)
        self.cross_attn = Attention(d_model, n_heads)
        self.ffn = FeedForward(d_model, ffn_dim)
        self.sub_self = Sublayer(d_model, dropout, norm_first)
        self.sub_cross = Sublayer(d_model, dropout, norm_first)
        self.sub_ffn = Sublayer(d_model, dropout, norm_first)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor | None,
                memory_mask: torch.Tensor, causal: bool = False, self_cache: dict | None = None,
                cross_kv: torch.Tensor | None = None) -> torch.Tensor:
        """`cross_kv`: this layer's keys/values of memory, computed once per source for decoding (memory is
        then unused); `self_cache`: step-by-step autoregressive decoding (see Attention)."""
        x = self.sub_self(x, lambda h: self.self_attn(h, h, mask, causal=causal, cache=self_cache))
        x = self.sub_cross(x, lambda h: self.cross_attn(h, memory, memory_mask, kv=cross_kv))
        return self.sub_ffn(x, self.ffn)
