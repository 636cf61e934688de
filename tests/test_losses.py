"""Each loss term on hand-made inputs, and the ablation switches changing exactly what they claim."""
import math

import pytest
import torch
import torch.nn.functional as F

from difformer.config import DiffusionConfig, ModelConfig
from difformer.diffusion.losses import difformer_loss, masked_mean, soft_absorb, token_ce
from difformer.diffusion.schedule import Schedule
from difformer.errors import DifformerError
from difformer.model.difformer import Difformer


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(3.0)


def test_token_ce_with_label_smoothing_by_hand():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    tokens = torch.tensor([[0, 2]])
    mask = torch.tensor([[True, False]])
    logp = torch.log_softmax(logits[0, 0], -1)
    eps = 0.1
    expected = -(1 - eps) * logp[0] - eps * logp.mean()
    assert token_ce(logits, tokens, mask, eps).item() == pytest.approx(expected.item(), rel=1e-6)


def tiny(embed_norm="input", vocab=12, soft_absorb=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, embed_dim=8, d_model=16, n_heads=2, ffn_dim=32, enc_layers=1,
                      dec_layers=1, dropout=0.0, max_positions=16, embed_norm=embed_norm, soft_absorb=soft_absorb)
    return Difformer(cfg)


def batch():
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    tgt = torch.tensor([[2, 7, 6, 5, 3], [2, 9, 8, 3, 0]])
    return src, src != 0, tgt, tgt != 0


def run(model, **diffusion):
    torch.manual_seed(1)
    loss, stats = difformer_loss(model, Schedule("sqrt", 100), DiffusionConfig(timesteps=100, **diffusion), *batch())
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in stats.values())
    return loss, {k: float(v) for k, v in stats.items()}  # device scalars: no synchronisation per batch


def test_loss_is_mse_plus_anchor_plus_a_tenth_of_length():
    loss, s = run(tiny())
    assert loss.item() == pytest.approx(s["mse"] + s["anchor"] + 0.1 * s["length"], rel=1e-5)


def test_anchor_off_drops_exactly_the_anchor_term():
    model = tiny()
    full, s_full = run(model)
    off, s_off = run(model, anchor="none")
    assert s_off["mse"] == pytest.approx(s_full["mse"])
    assert off.item() == pytest.approx(full.item() - s_full["anchor"], rel=1e-5)


def test_rounding_loss_is_the_ce_of_the_clean_z0():
    model = tiny()
    rounding, s = run(model, anchor="rounding")
    src, sm, tgt, tm = batch()
    expected = token_ce(model.logits(model.embed_target(tgt)), tgt, tm, 0.1)
    assert rounding.item() == pytest.approx(s["mse"] + expected.item() + 0.1 * s["length"], rel=1e-5)


def test_noise_factor_reaches_the_noising(monkeypatch):
    seen = []
    real = Schedule.add_noise

    def spy(self, z0, noise, t, noise_factor=1.0, mode="scale"):
        seen.append((noise_factor, mode))
        return real(self, z0, noise, t, noise_factor, mode)

    monkeypatch.setattr(Schedule, "add_noise", spy)
    run(tiny(), noise_factor=4.0)
    run(tiny(), noise_factor=1.0)
    run(tiny(), noise_factor=3.0, noise_mode="vp")
    assert seen == [(4.0, "scale"), (1.0, "scale"), (3.0, "vp")]


def test_min_t_clips_the_training_timesteps(monkeypatch):
    seen = []
    real = Schedule.add_noise

    def spy(self, z0, noise, t, noise_factor=1.0, mode="scale"):
        seen.append(t.clone())
        return real(self, z0, noise, t, noise_factor, mode)

    monkeypatch.setattr(Schedule, "add_noise", spy)
    model = tiny()  # seeds torch itself: made once, before the draws
    for seed in range(30):
        torch.manual_seed(seed)
        difformer_loss(model, Schedule("sqrt", 100), DiffusionConfig(timesteps=100, min_t=0.6), *batch())
    t = torch.cat(seen)
    assert t.min() >= 60 and t.max() <= 99 and t.min() < 70  # U{60..99}


def test_soft_absorb_replaces_whole_positions_at_the_rate_of_each_row():
    torch.manual_seed(0)
    z = torch.randn(3, 4000, 8)
    absorb = torch.full((8,), 7.0)
    out = soft_absorb(z, absorb, torch.tensor([0.0, 0.3, 1.0]))
    hit = (out == 7.0).all(-1)  # (3, 4000): a position is replaced whole or not at all
    assert ((out == 7.0) == hit[..., None]).all()
    assert torch.equal(out[~hit], z[~hit])
    assert hit[0].sum() == 0 and hit[2].all() and abs(hit[1].float().mean().item() - 0.3) < 0.03


def test_soft_absorb_rate_follows_the_noise_level_and_trains_the_absorbing_latent(monkeypatch):
    rates = []
    real = soft_absorb
    monkeypatch.setattr("difformer.diffusion.losses.soft_absorb", lambda z, a, r: rates.append(r) or real(z, a, r))
    seen_t = []
    add_noise = Schedule.add_noise
    monkeypatch.setattr(Schedule, "add_noise", lambda self, z0, n, t, *a: seen_t.append(t) or add_noise(self, z0, n, t, *a))
    model = tiny(soft_absorb=0.5)
    schedule = Schedule("sqrt", 100)
    loss, _ = run(model, min_t=0.9)  # nearly pure noise: rate close to 0.5, so some positions absorb
    loss.backward()
    expected = 0.5 * (1 - schedule.alphas_cumprod[seen_t[0]]).sqrt().float()
    assert torch.allclose(rates[0], expected) and (rates[0] > 0.45).all()
    assert model.absorb.grad is not None and model.absorb.grad.abs().sum() > 0


def test_soft_absorb_off_adds_no_parameter():
    """Model directories written before the switch existed keep loading: same state dict keys."""
    assert tiny().absorb is None and "absorb" not in tiny().state_dict()
    assert tuple(tiny(soft_absorb=0.5).state_dict()["absorb"].shape) == (8,)
    with pytest.raises(DifformerError, match="soft_absorb"):
        ModelConfig(arch="transformer", soft_absorb=0.5).validate()
    with pytest.raises(DifformerError, match="soft_absorb"):
        ModelConfig(soft_absorb=1.5).validate()


def test_self_conditioning_switch_controls_the_extra_pass(monkeypatch):
    model = tiny()
    calls = []
    real = Difformer.denoise
    monkeypatch.setattr(Difformer, "denoise", lambda self, *a: calls.append(1) or real(self, *a))
    for _ in range(20):
        run(model, self_cond=0.0)
    assert len(calls) == 20
    calls.clear()
    for _ in range(20):
        run(model, self_cond=1.0)
    assert len(calls) == 40


def test_embedding_norm_placements():
    tokens = torch.tensor([[4, 5, 6]])
    before = tiny("before_noise")
    z0 = before.embed_target(tokens)
    assert torch.allclose(z0.mean(-1), torch.zeros(1, 3), atol=1e-5)
    assert torch.allclose(z0.std(-1, unbiased=False), torch.ones(1, 3), atol=1e-3)
    assert isinstance(before.input_norm, torch.nn.Identity)
    assert isinstance(tiny("input").input_norm, torch.nn.LayerNorm) and tiny("input").target_norm is None
    none = tiny("none")
    assert isinstance(none.input_norm, torch.nn.Identity) and none.target_norm is None
    assert torch.allclose(none.embed_target(tokens), none.embed(tokens) * math.sqrt(8))


def test_length_loss_uses_offset_classes():
    model = tiny()
    src, sm, tgt, tm = batch()
    _, length_logits = model.encode(src, sm)
    expected = F.cross_entropy(length_logits, torch.tensor([5 - 4 + 128, 4 - 3 + 128]))
    _, s = run(model)
    assert s["length"] == pytest.approx(expected.item(), rel=1e-5)
