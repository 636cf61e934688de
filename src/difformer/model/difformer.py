"""The Difformer denoiser: an encoder-decoder Transformer over target-token embeddings.

Gao et al., "Empowering Diffusion Models on the Embedding Space for Text Generation" (Difformer).
One embedding matrix E (V x e) serves the encoder input, the diffusion targets z0 = sqrt(e) E[y] and the
output logits z0_hat @ E^T. The decoder sees noisy latents z_t, the self-conditioning input p and the
step t, and predicts z0 directly. ../shared/DESIGN.md 1.1-1.2 is the specification followed here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from difformer.config import ModelConfig
from difformer.model.transformer import DecoderLayer, EncoderLayer


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of a (B,) float step; the model is fed t * 1000 / T so T can change."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim) for even dim


class Difformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        e, d = cfg.embed_dim, cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, e)  # E, shared by everything
        self.embed_scale = math.sqrt(e)
        # "before_noise" placement (first paper version): normalise each target embedding before noising
        self.target_norm = nn.LayerNorm(e) if cfg.embed_norm == "before_noise" else None

        self.enc_in = nn.Linear(e, d)
        self.enc_pos = nn.Embedding(cfg.max_positions, d)
        self.encoder = nn.ModuleList(
            EncoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.norm_first) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.length_head = nn.Linear(d, cfg.length_classes, bias=False)

        self.proj_in = nn.Linear(e, d)  # shared by z_t and the self-conditioning input
        self.in_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d))
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))
        self.dec_pos = nn.Embedding(cfg.max_positions, d)
        # the published "embedding layer normalization": LayerNorm on the d-dim decoder input
        self.input_norm = nn.LayerNorm(d) if cfg.embed_norm == "input" else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.decoder = nn.ModuleList(
            DecoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.norm_first) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.proj_out = nn.Linear(d, e)
        # the soft absorbing state (model.soft_absorb): one learned latent, at the scale of z0's dimensions
        self.absorb = nn.Parameter(torch.randn(e)) if cfg.soft_absorb > 0 else None
        self.apply(_bert_init)
        nn.init.normal_(self.embed.weight, std=cfg.embed_init_std or e ** -0.5)

    def embed_target(self, tokens: torch.Tensor) -> torch.Tensor:
        """z0 for target tokens (B, T) -> (B, T, e): sqrt(e) E[y], layer-normalised in "before_noise"."""
        z0 = self.embed(tokens) * self.embed_scale
        return self.target_norm(z0) if self.target_norm is not None else z0

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Rounding to the vocabulary through the tied embedding: (B, T, e) -> (B, T, V)."""
        return z @ self.embed.weight.t()

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source tokens (B, S) -> encoder states (B, S, d) and length-class logits (B, classes)."""
        pos = torch.arange(src.shape[1], device=src.device)
        h = self.enc_in(self.embed(src) * self.embed_scale) + self.enc_pos(pos)  # (B, S, d)
        h = self.dropout(h)
        for layer in self.encoder:
            h = layer(h, src_mask)
        h = self.enc_norm(h)
        m = src_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # masked mean, (B, d)
        return h, self.length_head(pooled)

    def cross_keys_values(self, memory: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder layer's cross-attention keys/values of the encoder states: in sampling they are the
        same at every step, so they are computed once per source."""
        return [layer.cross_attn.keys_values(memory) for layer in self.decoder]

    def decoder_input(self, z_t: torch.Tensor, p: torch.Tensor, t: torch.Tensor, normalize: bool = True,
                      ) -> torch.Tensor:
        """What the decoder layers see (B, T, d): z_t and p through proj_in and in_mlp, plus the step's
        features and the positions, then the embedding layer normalization ("input" placement)."""
        pos = torch.arange(z_t.shape[1], device=z_t.device)
        h = self.in_mlp(torch.cat([self.proj_in(z_t), self.proj_in(p)], dim=-1))
        h = h + self.time_mlp(timestep_features(t, self.cfg.d_model))[:, None, :] + self.dec_pos(pos)
        return self.input_norm(h) if normalize else h

    def denoise(self, z_t: torch.Tensor, p: torch.Tensor, t: torch.Tensor, tgt_mask: torch.Tensor,
                memory: torch.Tensor | None, src_mask: torch.Tensor,
                cross_kv: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Predict z0 (B, T, e) from z_t and p (B, T, e) at model time t (B,); `cross_kv` (from
        `cross_keys_values`) stands in for memory."""
        h = self.dropout(self.decoder_input(z_t, p, t))
        for i, layer in enumerate(self.decoder):
            h = layer(h, tgt_mask, memory, src_mask, cross_kv=None if cross_kv is None else cross_kv[i])
        return self.proj_out(self.dec_norm(h))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _bert_init(module: nn.Module) -> None:
    """BERT-style N(0, 0.02) for every linear and embedding, as in the reference (E: see embed_init_std)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def length_targets(src_lens: torch.Tensor, tgt_lens: torch.Tensor, classes: int, offset: bool = True) -> torch.Tensor:
    """Length classes tgt_len - src_len + classes // 2 (offset) or tgt_len, clamped (lengths count BOS/EOS)."""
    return (tgt_lens - src_lens + classes // 2 if offset else tgt_lens).clamp(0, classes - 1)


def predict_lengths(length_logits: torch.Tensor, src_lens: torch.Tensor, beam: int,
                    max_len: int, offset: bool = True) -> torch.Tensor:
    """Candidate target lengths (B, beam): `beam` consecutive lengths centred on the argmax, shifted inward
    near a bound (BOS + EOS at least, max_len at most) so that no two candidates share a length: clamping
    the centred window gave short predictions copies ([2, 2, 2, 3, 4, 5, 6] for 3), wasting candidates
    where summaries are short."""
    classes = length_logits.shape[-1]
    best = length_logits.argmax(-1) + (src_lens - classes // 2 if offset else 0)  # (B,)
    low = (best - beam // 2).clamp(max=max_len - beam + 1).clamp(min=2)
    return (low[:, None] + torch.arange(beam, device=best.device)[None, :]).clamp(max=max_len)
