"""The autoregressive teacher: it learns, its cached search equals plain recomputation, beam 1 is greedy,
and it reranks, distils and warm-starts only with the same tokenizer."""
import json

import pytest
import torch
from safetensors.torch import load_file

from difformer import DifformerError, hub
from difformer.config import DecodeConfig, ModelConfig
from difformer.data.batching import pad_batch
from difformer.data.binarize import PairDataset
from difformer.data.prepare import prepare
from difformer.diffusion.sampling import generate_candidates
from difformer.generate import load, strip_specials
from difformer.metrics import corpus_bleu
from difformer.model.autoregressive import ARTransformer
from difformer.model.difformer import Difformer
from difformer.search import beam_search, best_continuations, greedy_search, sequence_scores
from difformer.train import Trainer, train
from fixtures_train import tiny_config, write_reversal_corpus


def split_sources(data, pipe, n=60):
    test = PairDataset(data, "test")
    n = min(n, len(test))
    sources = [test.src(i).tolist() for i in range(n)]
    refs = pipe.tokenizer.decode([test.tgt(i).tolist() for i in range(n)])
    return sources, refs


def batch(pipe, sources):
    tok = pipe.tokenizer
    return pad_batch([s + [tok.eos_id] for s in sources], tok.pad_id)


def test_autoregressive_training_learns_and_loads_by_architecture(trained_ar, tiny_data):
    """Through `difformer train`: losses fall, validation BLEU rises, and the model directory loads as the
    autoregressive kind (learning to high accuracy: test_learning.py)."""
    log = [json.loads(line) for line in (trained_ar.parent / "log.jsonl").read_text().splitlines()]
    assert log[0]["precision"] in ("fp32", "bf16")
    valid = [r for r in log if "valid_bleu" in r]
    assert valid[-1]["valid_nll"] < 0.75 * valid[0]["valid_nll"] and valid[-1]["valid_bleu"] > valid[0]["valid_bleu"]
    pipe = load(trained_ar, precision="fp32")
    assert pipe.arch == "transformer" and pipe.schedule is None and isinstance(pipe.model, ARTransformer)
    sources, refs = split_sources(tiny_data, pipe)
    assert corpus_bleu(pipe.decode_ids(sources, pipe.decode_config(beam=4)), refs).score > 20


def greedy_without_cache(model, src, mask, steps, bos, eos, banned):
    """The reference: the whole prefix through the causal decoder at every step."""
    out = torch.full((src.shape[0], 1), bos)
    for _ in range(steps):
        logits = model(src, mask, out)[:, -1].float()
        logits[:, list(banned)] = float("-inf")
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    rows = []
    for row in out[:, 1:].tolist():
        rows.append(row[:row.index(eos)] if eos in row else row)
    return rows


@pytest.mark.parametrize("trained", [True, False])
def test_cached_decoding_equals_uncached_token_for_token(trained_ar, tiny_data, trained):
    pipe = load(trained_ar, precision="fp32")
    model = pipe.model
    if not trained:  # long random outputs exercise the cache over many steps
        torch.manual_seed(0)
        model = ARTransformer(pipe.config.model).eval()
    sources, _ = split_sources(tiny_data, pipe, 20)
    src, mask = batch(pipe, sources)
    tok = pipe.tokenizer
    cfg = DecodeConfig(beam=1, max_len_a=0, max_len_b=12)
    cached = greedy_search(model, src, mask, cfg, tok.bos_id, tok.eos_id, (tok.pad_id, tok.bos_id))
    plain = greedy_without_cache(model, src, mask, 11, tok.bos_id, tok.eos_id, (tok.pad_id, tok.bos_id))
    assert cached == [row[:11] for row in plain]
    assert any(len(row) > 3 for row in cached)


def test_beam_1_equals_greedy_and_a_wider_beam_scores_no_worse(trained_ar, tiny_data):
    pipe = load(trained_ar, precision="fp32")
    tok, model = pipe.tokenizer, pipe.model
    sources, _ = split_sources(tiny_data, pipe)
    src, mask = batch(pipe, sources)
    banned = (tok.pad_id, tok.bos_id)
    greedy = greedy_search(model, src, mask, DecodeConfig(beam=1), tok.bos_id, tok.eos_id, banned)
    beam1 = beam_search(model, src, mask, DecodeConfig(beam=1), tok.bos_id, tok.eos_id, banned)
    assert beam1 == greedy
    beam4 = beam_search(model, src, mask, DecodeConfig(beam=4, lenpen=0.0), tok.bos_id, tok.eos_id, banned)
    total = lambda hyps: sequence_scores(model, src, mask, hyps, tok.bos_id, tok.eos_id, tok.pad_id) * torch.tensor(  # noqa: E731
        [len(h) + 1 for h in hyps])
    assert (total(beam4) >= total(greedy) - 1e-4).all()  # lenpen 0: beam search maximises the sum of log-probs


def test_rerank_picks_the_candidate_the_teacher_scores_highest(trained_model, trained_ar, tiny_data):
    pipe = load(trained_model, precision="fp32", reranker=trained_ar)
    tok = pipe.tokenizer
    sources, _ = split_sources(tiny_data, pipe, 40)
    cfg = pipe.decode_config(length_beam=3, noise_beam=3, selection="ar")
    src, mask = batch(pipe, sources)
    cand = generate_candidates(pipe.model, pipe.schedule, src, mask, cfg)
    C = 9
    ids = strip_specials(tok, cand.tokens.flatten(0, 1).tolist(), cand.lengths.flatten().tolist())
    teacher = sequence_scores(pipe.reranker.model, src.repeat_interleave(C, 0), mask.repeat_interleave(C, 0), ids,
                              tok.bos_id, tok.eos_id, tok.pad_id).view(-1, C)
    texts = tok.decode(ids)
    expected = [texts[b * C + int(teacher[b].argmax())] for b in range(len(sources))]
    assert pipe.decode_ids(sources, cfg) == expected
    own = cand.scores.argmax(-1)
    assert (own != teacher.argmax(-1)).any(), "own score and teacher agree everywhere: the test shows nothing"
    assert "reranker=" in pipe.describe(cfg) and "lenpen" not in pipe.describe(cfg)
    # lenpen, the teacher's beam-search rule, ranks the candidates: log p / length ** lenpen
    lengths = torch.tensor([len(h) + 1 for h in ids], dtype=torch.float).view(-1, C)
    long = pipe.decode_config(length_beam=3, noise_beam=3, selection="ar", lenpen=3.0)
    favoured = [texts[b * C + int((teacher[b] / lengths[b] ** 2).argmax())] for b in range(len(sources))]
    assert pipe.decode_ids(sources, long) == favoured and "lenpen=3 reranker=" in pipe.describe(long)
    assert sum(map(len, favoured)) > sum(map(len, expected)), "longer outputs: the test shows nothing"
    with pytest.raises(DifformerError, match="lenpen do not apply to a Difformer"):
        pipe.decode_config(length_beam=3, noise_beam=3, lenpen=3.0)  # selection by its own score


def test_init_from_copies_exactly_the_matching_tensors(trained_ar, tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "warm", init_from=str(trained_ar))
    cfg.model.vocab_size = load(trained_ar).tokenizer.vocab_size
    torch.manual_seed(cfg.train.seed)
    fresh = Difformer(cfg.model).state_dict()  # what the trainer builds before copying
    trainer = Trainer(cfg)
    teacher = load_file(trained_ar / "model.safetensors")
    same = {k for k, v in fresh.items() if k in teacher and teacher[k].shape == v.shape}
    assert {k for k in same if k.startswith("encoder.")} and "embed.weight" not in same  # e 16 vs d 64
    factored = {"embed.weight", "enc_in.weight", "enc_in.bias"}
    for k, v in trainer.model.state_dict().items():
        if k not in factored:
            assert torch.equal(v, teacher[k] if k in same else fresh[k]), k
    record = [json.loads(line) for line in (tmp_path / "warm" / "log.jsonl").read_text().splitlines()]
    warm = next(r for r in record if "init_from" in r)
    assert warm["copied"] == len(same | factored) and set(warm["not_copied"]) == set(fresh) - same - factored


def test_init_from_a_longer_model_takes_the_first_rows_of_its_position_tables(trained_ar, tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "warm", init_from=str(trained_ar))
    cfg.model.max_positions = 20  # the teacher's: 32
    teacher = load_file(trained_ar / "model.safetensors")
    model = Trainer(cfg).model
    for k in ("enc_pos.weight", "dec_pos.weight"):
        assert teacher[k].shape[0] == 32 and torch.equal(model.state_dict()[k], teacher[k][:20]), k
    record = [json.loads(line) for line in (tmp_path / "warm" / "log.jsonl").read_text().splitlines()]
    assert not {"enc_pos.weight", "dec_pos.weight"} & set(next(r for r in record if "init_from" in r)["not_copied"])


@pytest.mark.parametrize("change", ["norm_first", "n_heads"])
def test_init_from_refuses_layers_that_would_compute_another_function(trained_ar, tiny_data, tmp_path, change):
    cfg = tiny_config(tiny_data, tmp_path / "warm", init_from=str(trained_ar))
    setattr(cfg.model, change, {"norm_first": not cfg.model.norm_first, "n_heads": 2}[change])
    with pytest.raises(DifformerError, match=rf"config.json has model.{change} .* \(ours .*\): its layers would"):
        Trainer(cfg)
    assert not (tmp_path / "warm").exists()


@pytest.mark.parametrize("e", [16, 64])
def test_init_from_a_teacher_factors_its_source_embedding_into_e_and_enc_in(trained_ar, tiny_data, tmp_path, e):
    """The copied encoder layers see the teacher's inputs as closely as e of d = 64 dimensions allow (the
    residual is that of the best rank-e approximation: none when e = d, where E alone matches the teacher's
    table by name and enc_in would otherwise stay random), and z0 = sqrt(e) E keeps a fresh E's statistics:
    orthogonal dimensions at unit mean square."""
    cfg = tiny_config(tiny_data, tmp_path / "warm", init_from=str(trained_ar))
    cfg.model.embed_dim = e
    model = Trainer(cfg).model
    table = load_file(trained_ar / "model.safetensors")["embed.weight"].double()
    inputs = table * table.shape[1] ** 0.5  # what the teacher's encoder adds its positions to
    with torch.no_grad():
        z = model.embed.weight.double() * model.embed_scale
        ours = z @ model.enc_in.weight.double().t() + model.enc_in.bias.double()
    assert model.embed.embedding_dim == e
    best = torch.linalg.svdvals(inputs)[e:].pow(2).sum().sqrt()
    if e < 64:
        assert torch.allclose((ours - inputs).norm(), best, rtol=1e-4)
        assert best < 0.9 * inputs.norm()  # the test shows something: rank 16 keeps part of the teacher's inputs
    else:
        torch.testing.assert_close(ours, inputs, atol=1e-4 * inputs.abs().max().item(), rtol=0)
    torch.testing.assert_close(z.t() @ z / z.shape[0], torch.eye(e, dtype=z.dtype), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory):
    """An (untrained) autoregressive model directory whose tokenizer differs from tiny_data's."""
    root = tmp_path_factory.mktemp("other")
    corpus = write_reversal_corpus(root / "corpus", seed=1)
    data = root / "data"
    prepare(source_lang="src", target_lang="tgt", trainpref=str(corpus / "train"), destdir=str(data), vocab_size=290)
    from difformer.config import Config
    from difformer.data.tokenizer import Tokenizer

    tok = Tokenizer(data / "tokenizer.model")
    cfg = Config(model=ModelConfig(arch="transformer", vocab_size=tok.vocab_size, d_model=32, n_heads=2, ffn_dim=64,
                                   enc_layers=1, dec_layers=1, max_positions=32)).validate()
    hub.save_pretrained(ARTransformer(cfg.model), cfg, data / "tokenizer.model", None, root / "model")
    return root / "model"


def test_a_teacher_with_another_tokenizer_is_refused(trained_model, tiny_data, other_teacher, tmp_path):
    from difformer.distill import distill

    with pytest.raises(DifformerError, match="tokenizer differs"):
        distill(other_teacher, tiny_data, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    with pytest.raises(DifformerError, match="tokenizer differs"):
        load(trained_model, reranker=other_teacher)
    with pytest.raises(DifformerError, match="differs from the data's tokenizer"):
        Trainer(tiny_config(tiny_data, tmp_path / "warm", init_from=str(other_teacher)))
    assert not (tmp_path / "warm").exists()


def test_decoding_options_of_the_other_kind_are_errors(trained_model, trained_ar):
    with pytest.raises(DifformerError, match="beam do not apply to a Difformer"):
        load(trained_model).generate(["red"], beam=2)
    with pytest.raises(DifformerError, match="steps do not apply to an autoregressive model"):
        load(trained_ar).generate(["red"], steps=2)
    with pytest.raises(DifformerError, match="needs an autoregressive reranker"):
        load(trained_model).generate(["red"], selection="ar", length_beam=2)
    with pytest.raises(DifformerError, match="must be an autoregressive model"):
        load(trained_model, reranker=trained_model)


def test_autoregressive_training_resumes_exactly(tiny_data, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(tiny_config(tiny_data, straight, arch="transformer", max_updates=20))
    train(tiny_config(tiny_data, halves, arch="transformer", max_updates=10))
    train(tiny_config(tiny_data, halves, arch="transformer", max_updates=20), resume=True)
    for name in ("model.safetensors", "trainer.safetensors"):
        a = load_file(straight / "checkpoints" / "update_0000020" / name)
        b = load_file(halves / "checkpoints" / "update_0000020" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_command_line_decodes_both_kinds_and_reranks(trained_model, trained_ar, tmp_path):
    import subprocess
    import sys

    src = tmp_path / "in.txt"
    src.write_text("red green blue\n\ncat dog\n")

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "difformer.cli", *args], capture_output=True, text=True)
        return r.returncode, r.stdout, r.stderr

    rc, out, err = cli("generate", "--model", str(trained_ar), "-i", str(src), "--beam", "2")
    assert rc == 0 and len(out.splitlines()) == 3 and out.splitlines()[1] == "", (out, err)
    assert "autoregressive beam=2" in err
    rc, out, err = cli("generate", "--model", str(trained_model), "-i", str(src), "--selection", "ar",
                       "--reranker", str(trained_ar), "--length-beam", "3", "--noise-beam", "2")
    assert rc == 0 and len(out.splitlines()) == 3 and "selection=ar" in err and "reranker=" in err, err
    rc, out, err = cli("generate", "--model", str(trained_ar), "-i", str(src), "--steps", "3")
    assert rc == 2 and "do not apply to an autoregressive model" in err and err.count("\n") == 1
    rc, out, err = cli("evaluate", "--model", str(trained_ar), "--split", "test", "--beam", "1")
    assert rc == 0 and out.startswith("BLEU = ") and "autoregressive greedy" in err


def test_the_package_level_load_takes_a_reranker(trained_model, trained_ar):
    import difformer

    pipe = difformer.load(trained_model, device="cpu", precision="fp32", reranker=trained_ar)
    assert pipe.reranker is not None and pipe.device == torch.device("cpu")
    assert len(pipe.generate(["red cat", "sun"], length_beam=2, noise_beam=2, selection="ar")) == 2


def reference_continuations(logits, scores, banned, eos, at_limit):
    """The first implementation: log_softmax over the vocabulary and a top-2k of the (n, k*V) sums; at the
    length limit only EOS may follow, with its own log-probability (fairseq's rule)."""
    n, k = scores.shape
    V = logits.shape[1]
    logp = torch.log_softmax(logits, dim=-1)
    logp[:, list(banned)] = float("-inf")
    if any(at_limit):
        rows = torch.tensor(at_limit).repeat_interleave(k)
        logp[rows] = torch.where(torch.arange(V) == eos, logp[rows], float("-inf"))
    top, idx = (scores[:, :, None] + logp.view(n, k, V)).view(n, k * V).topk(min(2 * k, k * V), dim=1)
    return top, idx // V, idx % V


@pytest.mark.parametrize("k, V", [(1, 50), (4, 50), (5, 7), (3, 4)])
def test_best_continuations_equal_the_full_log_softmax_search(k, V):
    g = torch.Generator().manual_seed(k * 100 + V)
    for trial in range(20):
        n = 3
        logits = torch.randn(n * k, V, generator=g) * 3
        scores = -torch.rand(n, k, generator=g) * 5
        if trial % 2:
            scores[:, 1:] = float("-inf")  # the first step: one live beam
        at_limit = [bool(b) for b in torch.randint(0, 2, (n,), generator=g)]
        top, beam, word = best_continuations(logits.clone(), scores, (0, 1), 2, at_limit)
        ref_top, ref_beam, ref_word = reference_continuations(logits.clone(), scores, (0, 1), 2, at_limit)
        assert torch.allclose(top, ref_top, atol=1e-5)
        finite = ref_top > float("-inf")  # below that, the order of -inf fillers is arbitrary
        assert torch.equal(beam[finite], ref_beam[finite]) and torch.equal(word[finite], ref_word[finite])
        assert not torch.isin(word[finite], torch.tensor([0, 1])).any()
        logp_eos = torch.log_softmax(logits, dim=-1)[:, 2].view(n, k)
        for i, limited in enumerate(at_limit):
            if limited:  # a hypothesis cut at the limit pays for its EOS like any other: no free ending
                kept = finite[i]
                assert (word[i][kept] == 2).all()
                assert torch.allclose(top[i][kept], scores[i][beam[i][kept]] + logp_eos[i][beam[i][kept]])
