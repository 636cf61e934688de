"""The denoiser's structure: length classes, bidirectional decoding, padding invariance, sampler behaviour."""
import dataclasses

import torch

from difformer.config import Config, DecodeConfig, DiffusionConfig, ModelConfig
from difformer.data.tokenizer import Tokenizer
from difformer.diffusion.sampling import generate_candidates, word_logits
from difformer.diffusion.schedule import Schedule
from difformer.generate import Pipeline
from difformer.model.difformer import Difformer, length_targets, predict_lengths


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=20, embed_dim=8, d_model=16, n_heads=2, ffn_dim=32, enc_layers=2, dec_layers=2,
               dropout=0.0, max_positions=32)
    return Difformer(ModelConfig(**{**cfg, **kw})).eval()


def test_length_classes_are_offsets_clamped_to_range():
    src = torch.tensor([10, 10, 10, 300])
    tgt = torch.tensor([10, 14, 5, 2])
    assert length_targets(src, tgt, 256).tolist() == [128, 132, 123, 0]
    assert length_targets(torch.tensor([1]), torch.tensor([400]), 256).tolist() == [255]


def test_absolute_length_classes_ignore_the_source_length():
    src, tgt = torch.tensor([10, 120, 300]), torch.tensor([6, 6, 400])
    assert length_targets(src, tgt, 256, offset=False).tolist() == [6, 6, 255]
    logits = torch.full((2, 256), -10.0)
    logits[:, 6] = 5.0  # 6 tokens, whatever the source
    lengths = predict_lengths(logits, torch.tensor([10, 120]), beam=3, max_len=64, offset=False)
    assert lengths.tolist() == [[5, 6, 7], [5, 6, 7]]


def test_predicted_lengths_centre_the_beam_on_the_argmax():
    logits = torch.full((2, 256), -10.0)
    logits[0, 130] = 5.0  # +2 over the source length
    logits[1, 126] = 5.0  # -2
    lengths = predict_lengths(logits, torch.tensor([10, 3]), beam=3, max_len=64)
    assert lengths.tolist() == [[11, 12, 13], [2, 3, 4]]  # BOS + EOS at least, the window shifted up


def test_length_candidates_near_a_bound_are_distinct_and_keep_the_argmax():
    logits = torch.full((3, 64), -10.0)
    logits[0, 3], logits[1, 62], logits[2, 10] = 5.0, 5.0, 5.0
    lengths = predict_lengths(logits, torch.tensor([0, 0, 0]), beam=7, max_len=63, offset=False)
    assert lengths.tolist() == [[2, 3, 4, 5, 6, 7, 8], [57, 58, 59, 60, 61, 62, 63], [7, 8, 9, 10, 11, 12, 13]]
    # more candidates than lengths that fit: every length once, then the longest repeated
    assert predict_lengths(logits[:1], torch.tensor([0]), beam=5, max_len=4, offset=False).tolist() == \
        [[2, 3, 4, 4, 4]]


def test_decoder_is_bidirectional():
    model = tiny()
    src = torch.tensor([[4, 5, 6, 3]])
    memory, _ = model.encode(src, src != 0)
    z = torch.randn(1, 6, 8)
    mask = torch.ones(1, 6, dtype=torch.bool)
    t = torch.tensor([500.0])
    out = model.denoise(z, torch.zeros_like(z), t, mask, memory, src != 0)
    z2 = z.clone()
    z2[0, 5] += 3.0  # change the last position only
    out2 = model.denoise(z2, torch.zeros_like(z), t, mask, memory, src != 0)
    assert not torch.allclose(out[0, 0], out2[0, 0])  # the first position sees it: no causal mask


def test_padding_does_not_change_real_positions():
    model = tiny()
    src = torch.tensor([[4, 5, 6, 3]])
    padded = torch.tensor([[4, 5, 6, 3, 0, 0]])
    m1, l1 = model.encode(src, src != 0)
    m2, l2 = model.encode(padded, padded != 0)
    assert torch.allclose(m1, m2[:, :4], atol=1e-5) and torch.allclose(l1, l2, atol=1e-5)
    z = torch.randn(1, 5, 8)
    zp = torch.cat([z, torch.randn(1, 3, 8)], 1)
    t = torch.tensor([100.0])
    out = model.denoise(z, torch.zeros_like(z), t, torch.ones(1, 5, dtype=torch.bool), m1, src != 0)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    outp = model.denoise(zp, torch.zeros_like(zp), t, mask, m2, padded != 0)
    assert torch.allclose(out, outp[:, :5], atol=1e-5)


def test_post_ln_and_pre_ln_both_build_and_differ():
    a, b = tiny(norm_first=False), tiny(norm_first=True)
    src = torch.tensor([[4, 5, 3]])
    assert not torch.allclose(a.encode(src, src != 0)[0], b.encode(src, src != 0)[0])


def test_candidates_have_the_promised_shapes_and_are_deterministic_under_a_seed():
    model, schedule = tiny(), Schedule("sqrt", 2000)
    src = torch.tensor([[4, 5, 6, 3], [7, 3, 0, 0]])
    cfg = DecodeConfig(steps=5, length_beam=3, noise_beam=2)
    run = lambda seed: generate_candidates(model, schedule, src, src != 0, dataclasses.replace(cfg, seed=seed))
    a, b, c = run(0), run(0), run(1)
    assert a.tokens.shape[:2] == (2, 6) and a.lengths.shape == (2, 6) and a.scores.shape == (2, 6)
    assert a.tokens.shape[2] == int(a.lengths.max())
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.scores, c.scores)
    # three lengths around the prediction, each with two noises
    assert (a.lengths[:, 1::2] - a.lengths[:, 0::2]).abs().sum() == 0
    assert torch.all(a.scores <= 0)


def test_a_source_gets_the_same_candidates_alone_or_in_a_padded_batch():
    """Each candidate's noise is seeded by its own source: neighbours and padding change nothing."""
    model, schedule = tiny(), Schedule("sqrt", 2000)
    encode = model.encode

    def same_length_as_source(src, src_mask):  # so that the longer source pads the shorter one's candidates
        memory, logits = encode(src, src_mask)
        return memory, torch.nn.functional.one_hot(torch.full_like(src[:, 0], logits.shape[-1] // 2),
                                                   logits.shape[-1]).float()

    model.encode = same_length_as_source
    cfg = DecodeConfig(steps=5, length_beam=2, noise_beam=2)
    alone = torch.tensor([[7, 8, 3]])
    batch = torch.tensor([[4, 5, 6, 9, 10, 11, 12, 13, 3], [7, 8, 3, 0, 0, 0, 0, 0, 0]])
    a = generate_candidates(model, schedule, alone, alone != 0, cfg)
    b = generate_candidates(model, schedule, batch, batch != 0, cfg)
    assert torch.equal(a.lengths[0], b.lengths[1]) and b.tokens.shape[2] > a.tokens.shape[2]
    for c, n in enumerate(a.lengths[0].tolist()):
        assert torch.equal(a.tokens[0, c, :n], b.tokens[1, c, :n])
    assert torch.allclose(a.scores[0], b.scores[1], atol=1e-3)  # float rounding of other shapes only


def test_early_stop_and_ddim_and_clamp_run():
    model, schedule = tiny(), Schedule("sqrt", 2000)
    src = torch.tensor([[4, 5, 6, 3]])
    for cfg in (DecodeConfig(steps=10, early_stop=4), DecodeConfig(steps=4, sampler="ddim"),
                DecodeConfig(steps=4, clamp=True)):
        out = generate_candidates(model, schedule, src, src != 0, cfg)
        assert out.tokens.shape[:2] == (1, 1)
    ddim = DecodeConfig(steps=4, sampler="ddim")
    one = generate_candidates(model, schedule, src, src != 0, ddim)
    two = generate_candidates(model, schedule, src, src != 0, ddim)
    assert torch.equal(one.tokens, two.tokens)


def test_clamp_feeds_the_next_step_and_outputs_the_network_s_own_argmax(monkeypatch):
    """Rounding is not idempotent: a word whose embedding points like a longer one's (E_v = 2 E_w + ...)
    rounds to v. The clamped embedding of the argmax word w must not be rounded again for the output."""
    model, schedule = tiny(), Schedule("sqrt", 2000)
    w, v = 5, 6
    with torch.no_grad():
        model.embed.weight.zero_()
        model.embed.weight[w, 0] = 1.0
        model.embed.weight[v, :2] = torch.tensor([2.0, 3.0])
    u = torch.zeros(8)
    u[:2] = torch.tensor([1.0, -1.0])  # u . E_w = 1 > u . E_v = -1: the argmax is w
    seen = []

    def denoise(z, p, t, tgt_mask, memory, src_mask, cross_kv=None):
        seen.append(p.clone())
        return u.expand(*tgt_mask.shape, 8).clone()

    monkeypatch.setattr(model, "denoise", denoise)
    src = torch.tensor([[4, 5, 6, 3]])
    out = generate_candidates(model, schedule, src, src != 0, DecodeConfig(steps=3, clamp=True))
    n = int(out.lengths[0, 0])
    assert (out.tokens[0, 0, :n] == w).all()  # before: v, E_w's own rounding
    fed = model.embed_target(torch.tensor([w]))[0]  # the next step's p (self-conditioning): the clamped z0
    assert len(seen) == 3 and torch.allclose(seen[1][0, :n], fed.expand(n, 8))
    assert model.logits(model.embed_target(torch.tensor([w]))).argmax(-1).item() == v  # the trap is real
    assert torch.allclose(out.scores[0, 0], torch.log_softmax(model.logits(u), -1)[w])


def test_output_words_are_read_in_fp32_under_bf16_autocast():
    model, z = tiny(), torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = word_logits(model, z)
    assert got.dtype == torch.float32 and torch.equal(got, model.logits(z))


def test_candidates_are_seeded_by_their_own_source_tokens_without_padding(monkeypatch):
    """Each of a source's l x n candidates is seeded by that source's tokens alone, not by its row in the
    repeated batch (a bug once seeded the second source of a batch with the first one's padding)."""
    from difformer.diffusion import noise

    seen = []
    real = noise.candidate_seed
    monkeypatch.setattr(noise, "candidate_seed", lambda source, seed, index: seen.append(
        (tuple(source), index)) or real(source, seed, index))
    batch = torch.tensor([[4, 5, 6, 9, 10, 3], [7, 8, 3, 0, 0, 0]])
    generate_candidates(tiny(), Schedule("sqrt", 2000), batch, batch != 0, DecodeConfig(steps=2, length_beam=2,
                                                                                           noise_beam=2))
    assert seen == [((4, 5, 6, 9, 10, 3), c) for c in range(4)] + [((7, 8, 3), c) for c in range(4)]


def test_condition_enhanced_decoding_tells_the_network_the_first_step_at_every_step(monkeypatch):
    model, schedule = tiny(), Schedule("sqrt", 2000)
    times = []
    real = Difformer.denoise
    monkeypatch.setattr(Difformer, "denoise",
                        lambda self, z, p, t, *a: times.append(t.tolist()) or real(self, z, p, t, *a))
    src = torch.tensor([[4, 5, 6, 3]])
    generate_candidates(model, schedule, src, src != 0, DecodeConfig(steps=4))
    plain, times[:] = list(times), []
    generate_candidates(model, schedule, src, src != 0, DecodeConfig(steps=4, cond_enhance=True))
    assert [t[0] for t in plain] == [999.5, 666.5, 333.0, 0.0]
    assert [t[0] for t in times] == [999.5] * 4


def test_a_model_trained_without_self_conditioning_is_sampled_without_it(monkeypatch):
    model, schedule = tiny(), Schedule("sqrt", 2000)
    fed = []
    real = Difformer.denoise
    monkeypatch.setattr(Difformer, "denoise",
                        lambda self, z, p, *a: fed.append(p.abs().sum().item()) or real(self, z, p, *a))
    src = torch.tensor([[4, 5, 6, 3]])
    generate_candidates(model, schedule, src, src != 0, DecodeConfig(steps=4))
    assert fed[0] == 0 and all(x > 0 for x in fed[1:])  # self-conditioned: the previous z0_hat
    fed.clear()
    generate_candidates(model, schedule, src, src != 0, DecodeConfig(steps=4), self_condition=False)
    assert fed == [0] * 4  # as in training with diffusion.self_cond 0: p is always zero


def test_a_pipeline_self_conditions_only_a_model_trained_with_it(tiny_data, monkeypatch):
    tok = Tokenizer(tiny_data / "tokenizer.model")
    cfg = ModelConfig(vocab_size=tok.vocab_size, embed_dim=8, d_model=16, n_heads=2, ffn_dim=32, enc_layers=1,
                      dec_layers=1, dropout=0.0, max_positions=16)
    fed = []
    real = Difformer.denoise
    monkeypatch.setattr(Difformer, "denoise",
                        lambda self, z, p, *a: fed.append(p.abs().sum().item()) or real(self, z, p, *a))
    for self_cond in (0.5, 0.0):
        config = Config(model=cfg, diffusion=DiffusionConfig(self_cond=self_cond), decode=DecodeConfig(steps=3))
        Pipeline(Difformer(cfg), config.validate(), tok, "fp32").generate(["a b c"])
    assert fed[:3] != [0] * 3 and fed[3:] == [0] * 3


def test_length_groups_cover_every_row_once_longest_first():
    from difformer.diffusion.sampling import length_groups

    lengths = [5, 12, 7, 12, 6, 30, 11, 5]
    groups = length_groups(lengths, min_tokens=0, slack=2)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [[lengths[i] for i in g] for g in groups] == [[30], [12, 12, 11], [7, 6, 5, 5]]
    assert length_groups(lengths, min_tokens=60, slack=2)[0] == [5, 1]  # the 30 takes a 12 along: 60 positions
    assert length_groups(lengths, float("inf")) == [list(range(8))]


def test_grouping_candidates_by_length_changes_no_output(monkeypatch):
    from difformer.diffusion import sampling

    model, schedule = tiny(), Schedule("sqrt", 2000)
    encode = model.encode

    def same_length_as_source(src, src_mask):  # an untrained length head predicts 2 or the maximum
        memory, logits = encode(src, src_mask)
        return memory, torch.nn.functional.one_hot(torch.full_like(src[:, 0], logits.shape[-1] // 2),
                                                   logits.shape[-1]).float()

    model.encode = same_length_as_source
    src = torch.tensor([[4, 5, 6, 9, 10, 11, 3], [7, 8, 3, 0, 0, 0, 0], [5, 6, 7, 8, 3, 0, 0]])
    cfg = DecodeConfig(steps=4, length_beam=5, noise_beam=2)
    monkeypatch.setattr(sampling, "CPU_GROUP_TOKENS", float("inf"))
    whole = generate_candidates(model, schedule, src, src != 0, cfg)
    monkeypatch.setattr(sampling, "CPU_GROUP_TOKENS", 1)  # a group wherever the length falls by more than 2
    grouped = generate_candidates(model, schedule, src, src != 0, cfg)
    assert len(set(whole.lengths.flatten().tolist())) > 3
    for b in range(3):
        for c, n in enumerate(whole.lengths[b].tolist()):
            assert torch.equal(whole.tokens[b, c, :n], grouped.tokens[b, c, :n])
    assert torch.allclose(whole.scores, grouped.scores, atol=1e-4)
