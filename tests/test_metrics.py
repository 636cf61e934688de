"""Tests for difformer.metrics: agreement with sacreBLEU / rouge-score, MBR selection, edge cases."""

import random

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from difformer.errors import DifformerError
from difformer.metrics import (
    Score,
    corpus_bleu,
    format_score,
    mbr_scores,
    mbr_select,
    rouge,
    self_bleu,
    sentence_bleu_matrix,
    tokenized_bleu,
)

HYPS = ["The cat sat on the mat.", "It's raining, isn't it?", "A quick brown fox jumps."]
REFS = ["The cat is sitting on the mat.", "It is raining, isn't it?", "The quick brown fox jumped."]


def test_identical_hypotheses_and_references_score_100():
    assert corpus_bleu(HYPS, HYPS).score == pytest.approx(100.0)
    assert tokenized_bleu(HYPS, HYPS).score == pytest.approx(100.0)


def test_corpus_bleu_matches_sacrebleu_and_carries_its_signature():
    s = corpus_bleu(HYPS, REFS)
    assert s.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert s.signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    lc = corpus_bleu(HYPS, REFS, lowercase=True, tokenize="intl")
    assert lc.score == pytest.approx(BLEU(lowercase=True, tokenize="intl").corpus_score(HYPS, [REFS]).score)
    assert "case:lc" in lc.signature and "tok:intl" in lc.signature


def test_multiple_reference_streams_match_sacrebleu():
    refs2 = ["A cat sat on the mat.", "It rains, doesn't it?", "A quick brown fox jumps."]
    s = corpus_bleu(HYPS, [REFS, refs2])
    assert s.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, refs2]).score, abs=1e-9)
    assert "nrefs:2" in s.signature
    assert s.score > corpus_bleu(HYPS, REFS).score


def test_misaligned_reference_stream_is_a_user_error():
    with pytest.raises(DifformerError, match="reference stream 0"):
        corpus_bleu(HYPS, REFS[:2])
    with pytest.raises(DifformerError):
        corpus_bleu([], [])
    with pytest.raises(DifformerError, match="unknown BLEU tokenizer"):
        corpus_bleu(HYPS, REFS, tokenize="no-such-tokenizer")


def test_tokenized_bleu_splits_at_whitespace_only():
    hyps = ["do n't stop , please ."]
    refs = ["don't stop, please."]
    tok = tokenized_bleu(hyps, refs)
    assert tok.score == pytest.approx(BLEU(tokenize="none").corpus_score(hyps, [refs]).score)
    assert tok.score != pytest.approx(corpus_bleu(hyps, refs).score)
    assert "tok:none" in tok.signature
    lc = tokenized_bleu(["The Cat sat down ."], ["the cat sat down ."], lowercase=True)
    assert lc.score == pytest.approx(100.0) and "case:lc" in lc.signature


def test_empty_hypotheses_do_not_crash():
    assert corpus_bleu(["", ""], ["a b c", "d e f"]).score == 0.0
    assert tokenized_bleu(["", HYPS[0]], ["x", HYPS[0]]).score >= 0.0
    r = rouge(["", "the cat"], ["the cat", "the cat"])
    assert r["rouge1"].score == pytest.approx(50.0)
    assert np.all(np.isfinite(sentence_bleu_matrix(["", "a b", ""])))
    assert mbr_select([["", "", ""], ["", "a b c d", "a b c d"]]) == [0, 1]
    assert self_bleu(["", "a b c"]) == 0.0


def test_rouge_identical_is_100_and_disjoint_is_0():
    same = rouge(REFS, REFS)
    assert set(same) == {"rouge1", "rouge2", "rougeL"}
    assert all(s.score == pytest.approx(100.0) for s in same.values())
    assert same["rougeL"].name == "ROUGE-L" and "stem:porter" in same["rougeL"].signature
    assert all(s.score == 0.0 for s in rouge(["alpha beta gamma"], ["delta epsilon zeta"]).values())


def test_rouge_with_several_references_takes_the_best_per_sentence():
    from rouge_score import rouge_scorer

    hyps = ["the cat sat on the mat", "a dog barked loudly"]
    good = ["the cat sat on the mat", "birds sing"]
    bad = ["birds sing", "a dog barked loudly"]
    multi = rouge(hyps, [good, bad])
    assert multi["rouge1"].score == pytest.approx(100.0)
    assert "nrefs:2" in multi["rouge1"].signature
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    expected = np.mean([scorer.score(r, h)["rouge2"].fmeasure for h, r in zip(hyps, good)]) * 100
    assert rouge(hyps, good)["rouge2"].score == pytest.approx(expected)


def _random_sentences(rng: random.Random, count: int) -> list[str]:
    vocab = [f"w{i}" for i in range(rng.randint(2, 25))]
    return [" ".join(rng.choices(vocab, k=rng.randint(0, 14))) for _ in range(count)]


def test_fast_sentence_bleu_matrix_agrees_with_sacrebleu():
    rng = random.Random(0)
    ref = BLEU(tokenize="none", smooth_method="exp", effective_order=True)
    for _ in range(60):
        cands = _random_sentences(rng, rng.randint(1, 6))
        mat = sentence_bleu_matrix(cands)
        for i, hyp in enumerate(cands):
            for j, other in enumerate(cands):
                assert mat[i, j] == pytest.approx(ref.sentence_score(hyp, [other]).score, abs=1e-6)


def test_fast_sentence_bleu_matrix_agrees_with_sacrebleu_13a_tokenization():
    cands = ["Hello, world! Don't go.", "hello world don't go", "Hello, World!", "Go."]
    ref = BLEU(tokenize="13a", lowercase=True, smooth_method="exp", effective_order=True)
    mat = sentence_bleu_matrix(cands, tokenize="13a", lowercase=True)
    for i, hyp in enumerate(cands):
        for j, other in enumerate(cands):
            assert mat[i, j] == pytest.approx(ref.sentence_score(hyp, [other]).score, abs=1e-6)


def test_mbr_select_never_picks_the_outlier():
    consensus = [
        "the cat sat on the mat today",
        "the cat sat on a mat today",
        "the cat sat on the mat",
    ]
    outlier = "completely unrelated words appear here instead"
    for pos in range(4):
        group = consensus[:]
        group.insert(pos, outlier)
        chosen = mbr_select([group])[0]
        assert group[chosen] != outlier
        assert chosen == int(np.argmax(mbr_scores(group)))
    assert mbr_select([["only one"]]) == [0]


def test_mbr_scores_are_mean_sentence_bleu_against_the_others():
    cands = ["a b c d e", "a b c d f", "a b x d e", "q r s"]
    ref = BLEU(tokenize="none", smooth_method="exp", effective_order=True)
    for i, hyp in enumerate(cands):
        expected = np.mean([ref.sentence_score(hyp, [o]).score for j, o in enumerate(cands) if j != i])
        assert mbr_scores(cands)[i] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(DifformerError):
        mbr_scores([])


def test_self_bleu_is_higher_for_repetitive_samples():
    same = ["the cat sat on the mat"] * 3
    varied = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"]
    assert self_bleu(same) == pytest.approx(100.0)
    assert self_bleu(varied) < 20.0
    ref = BLEU(smooth_method="exp", effective_order=True)
    others = [varied[:i] + varied[i + 1 :] for i in range(len(varied))]
    expected = np.mean([ref.sentence_score(t, o).score for t, o in zip(varied, others)])
    assert self_bleu(varied) == pytest.approx(expected)
    with pytest.raises(DifformerError):
        self_bleu(["alone"])


def test_format_score_is_one_sacrebleu_style_line():
    s = Score(34.2111, "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0", "BLEU")
    assert format_score(s) == "BLEU = 34.21  nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    assert str(s) == format_score(s)
