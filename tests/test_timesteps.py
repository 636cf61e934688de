"""Loss-aware timestep sampling: uniform until measured, then importance sampling that keeps the expected loss
and lowers its variance; its history follows the losses, survives a resume and is agreed by the ranks."""
import json

import pytest
import torch
from safetensors.torch import load_file

from difformer import distributed
from difformer.config import DiffusionConfig, ModelConfig, load_config
from difformer.diffusion.losses import difformer_loss
from difformer.diffusion.schedule import Schedule
from difformer.diffusion.timesteps import BUCKETS, DECAY, UNIFORM_SHARE, LossAwareTimesteps
from difformer.errors import DifformerError
from difformer.model.difformer import Difformer
from difformer.train import Trainer, train
from fixtures_train import tiny_config


def measured(low: int = 200, timesteps: int = 2000) -> LossAwareTimesteps:
    """A sampler whose history says: the loss grows with t, as a denoiser's does (bucket k: loss k + 1)."""
    s = LossAwareTimesteps(low, timesteps)
    s.observe(torch.arange(1.0, BUCKETS + 1) ** 2, torch.ones(BUCKETS))
    return s


def test_draws_are_uniform_over_the_range_until_every_bucket_is_measured():
    s = LossAwareTimesteps(200, 2000)
    s.observe(torch.ones(BUCKETS) * 4, torch.ones(BUCKETS).index_fill(0, torch.tensor([3]), 0))  # one unseen
    torch.manual_seed(0)
    t, w = s.draw(40_000)
    assert t.min() == 200 and t.max() == 1999 and torch.equal(w, torch.ones_like(w))
    counts = torch.bincount(t - 200, minlength=1800).float()  # ~22 draws a timestep
    assert counts.min() > 0 and counts.max() < 2 * counts.mean() and counts.std() / counts.mean() < 0.25


def test_buckets_are_drawn_by_root_mean_square_loss_with_a_uniform_share():
    s = measured()
    p = s.probabilities()
    rms = torch.arange(1.0, BUCKETS + 1, dtype=torch.float64)
    expected = (1 - UNIFORM_SHARE) * rms / rms.sum() + UNIFORM_SHARE / BUCKETS
    assert torch.allclose(p, expected) and p.sum().item() == pytest.approx(1.0)
    torch.manual_seed(0)
    t, _ = s.draw(100_000)
    share = torch.bincount(torch.bucketize(t, s.edges[1:-1], right=True), minlength=BUCKETS) / 100_000
    assert torch.allclose(share.double(), p, atol=0.005)


def test_importance_weights_keep_the_expected_loss_and_lower_its_variance():
    """E_p[w L(t)] = E_uniform[L(t)] for a loss that grows with t, with a smaller variance of w L(t)."""
    s = measured(0, 2000)
    loss = lambda t: (t.double() / 100 + 1) * (1 + 0.1 * torch.randn(t.shape, dtype=torch.float64))  # noqa: E731
    torch.manual_seed(0)
    t, w = s.draw(400_000)
    weighted = w.double() * loss(t)
    plain = loss(torch.randint(0, 2000, (400_000,)))
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=0.01)
    assert weighted.var().item() < 0.5 * plain.var().item()
    assert w.double().mean().item() == pytest.approx(1.0, rel=0.01)  # E_p[p_uniform / p] = 1


def test_the_history_is_a_moving_mean_square_of_each_measured_bucket():
    s = LossAwareTimesteps(0, 2000)
    t = torch.tensor([0, 50, 99, 100, 1999])  # buckets 0, 0, 0, 1, 19
    stats = s.tally(t, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert stats["time_n"].tolist() == [3, 1] + [0] * 17 + [1]
    assert stats["time_sq"][0].item() == 14 and stats["time_sq"][19].item() == 25
    s.observe(stats["time_sq"], stats["time_n"])
    assert s.mean_square[0].item() == pytest.approx(14 / 3) and s.mean_square[5].item() == 0
    s.observe(torch.zeros(BUCKETS).index_fill(0, torch.tensor([0]), 2.0), torch.ones(BUCKETS))
    assert s.mean_square[0].item() == pytest.approx(DECAY * 14 / 3 + (1 - DECAY) * 2)
    assert s.mean_square[5].item() == 0  # measured now, at 0: still unmeasured, and so still uniform
    s.load(s.state())
    assert s.state()[0] == pytest.approx(DECAY * 14 / 3 + (1 - DECAY) * 2)
    with pytest.raises(ValueError, match="20 non-negative numbers"):
        s.load([1.0])


class Fixed(LossAwareTimesteps):
    """Given timesteps and weights, drawn every time: the loss as a function of the weights alone."""

    def __init__(self, t: torch.Tensor, weight: torch.Tensor):
        super().__init__(0, 2000)
        self.t, self.weight = t, weight

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.t, self.weight


def test_the_weights_scale_each_sentences_loss_and_the_history_sees_it_unweighted():
    torch.manual_seed(0)
    model = Difformer(ModelConfig(vocab_size=20, embed_dim=8, d_model=32, n_heads=2, ffn_dim=64, enc_layers=1,
                                  dec_layers=1, dropout=0.0, max_positions=16)).eval()
    schedule, cfg = Schedule("sqrt", 2000), DiffusionConfig(self_cond=0.0)
    src, tgt = torch.randint(4, 20, (4, 7)), torch.randint(4, 20, (4, 9))
    tgt[1, 5:] = 0  # sentences of different lengths
    t = torch.tensor([10, 700, 1500, 1999])

    def stats(weight: list[float]) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the same noise every time
        return difformer_loss(model, schedule, cfg, src, src != 0, tgt, tgt != 0, Fixed(t, torch.tensor(weight)))[1]

    ones, twos = stats([1.0] * 4), stats([2.0] * 4)
    alone = [stats([float(i == j) for j in range(4)]) for i in range(4)]
    for k in ("mse", "anchor"):
        assert twos[k].item() == pytest.approx(2 * ones[k].item(), rel=1e-5)
        assert sum(a[k] for a in alone).item() == pytest.approx(ones[k].item(), rel=1e-5)
    assert twos["length"] == ones["length"]  # the encoder's length loss does not depend on t
    assert torch.allclose(twos["time_sq"], ones["time_sq"])
    assert ones["time_n"].nonzero().flatten().tolist() == [0, 7, 15, 19]  # buckets of 100 timesteps


def loss_aware(tiny_data, run, **overrides):
    cfg = tiny_config(tiny_data, run, **overrides)
    cfg.diffusion.time_sampling = "loss"
    return cfg


def test_loss_aware_training_resumes_exactly_and_saves_its_history(tiny_data, tmp_path):
    train(loss_aware(tiny_data, tmp_path / "straight", max_updates=20), device="cpu")
    train(loss_aware(tiny_data, tmp_path / "halves", max_updates=10), device="cpu")
    train(loss_aware(tiny_data, tmp_path / "halves", max_updates=20), resume=True, device="cpu")
    saved = [tmp_path / run / "checkpoints" / "update_0000020" for run in ("straight", "halves")]
    a, b = (load_file(d / "model.safetensors") for d in saved)
    assert all(torch.equal(a[k], b[k]) for k in a)
    states = [json.loads((d / "state.json").read_text())["state"]["time_mean_square"] for d in saved]
    assert states[0] == states[1] and len(states[0]) == BUCKETS and all(x > 0 for x in states[0])


def test_skipped_updates_leave_the_history_alone(tiny_data, tmp_path):
    trainer = Trainer(loss_aware(tiny_data, tmp_path / "r", max_updates=6, validate_every=6), device="cpu")
    observed, bad = [], {"left": 3}
    observe = trainer.timesteps.observe
    trainer.timesteps.observe = lambda *a: (observed.append(a), observe(*a))

    def poison(grad):  # the first 3 backward passes give an infinite gradient
        bad["left"] -= 1
        return grad * float("inf") if bad["left"] >= 0 else grad
    trainer.model.embed.weight.register_hook(poison)
    trainer.train()
    assert trainer.state.update == 6 and len(observed) == 6  # the 3 skipped updates were not observed
    assert all(torch.isfinite(sq).all() for sq, _ in observed)


def test_a_damaged_history_in_a_checkpoint_is_named(tiny_data, tmp_path):
    train(loss_aware(tiny_data, tmp_path / "r", max_updates=4), device="cpu")
    state = tmp_path / "r" / "checkpoints" / "update_0000004" / "state.json"
    meta = json.loads(state.read_text())
    meta["state"]["time_mean_square"] = [1.0, 2.0]
    state.write_text(json.dumps(meta))
    with pytest.raises(DifformerError, match=r"update_0000004/state.json: damaged checkpoint \(a loss history"):
        train(loss_aware(tiny_data, tmp_path / "r", max_updates=8), resume=True, device="cpu")


def test_the_ranks_agree_on_vector_statistics(monkeypatch):
    """distributed.agree averages the per-bucket vectors with the scalars, keeping shapes and dtypes."""
    monkeypatch.setattr(distributed, "all_reduce", lambda vec, ranks: vec.mul_(2))  # two ranks, same numbers
    stats = {"loss": torch.tensor(1.5), "time_sq": torch.arange(BUCKETS, dtype=torch.float64),
             "time_n": torch.ones(BUCKETS, dtype=torch.float64)}
    out, tokens, seconds, flags = distributed.agree(stats, 100, 3.0, [False, True], distributed.Ranks(world_size=2))
    assert out["loss"].shape == () and out["loss"].dtype == torch.float32 and out["loss"].item() == 1.5
    assert all(out[k].dtype == torch.float64 and torch.equal(out[k], stats[k]) for k in ("time_sq", "time_n"))
    assert (tokens, seconds, flags) == (200, 3.0, [False, True])


def test_config_names_the_sampling_and_its_range():
    cfg = load_config("multi30k", ["diffusion.time_sampling=loss"])
    assert cfg.diffusion.time_sampling == "loss"
    with pytest.raises(DifformerError, match="uniform or loss"):
        load_config("multi30k", ["diffusion.time_sampling=importance"])
    with pytest.raises(DifformerError, match="needs >= 20 timesteps"):
        load_config("multi30k", ["diffusion.time_sampling=loss", "diffusion.timesteps=100", "diffusion.min_t=0.9"])
