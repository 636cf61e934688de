"""The joint tokenizer: exact round trip, fixed special ids, the word-cache encoder, clear size errors."""
from __future__ import annotations

import io
from itertools import chain

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from difformer.data.corpus import read_lines
from difformer.data.tokenizer import Tokenizer, sample_lines
from difformer.errors import DifformerError


@pytest.fixture(scope="module")
def m30k_lines(multi30k) -> list[str]:
    return [line for split in ("train", "valid", "test") for lang in ("de", "en")
            for line in read_lines(multi30k / f"{split}.{lang}")]


@pytest.fixture(scope="module")
def m30k_tok(multi30k, tmp_path_factory) -> Tokenizer:
    """A tokenizer learnt on Multi30k's training text (both sides) like `difformer prepare` does."""
    text = [multi30k / "train.de", multi30k / "train.en"]
    return Tokenizer.train(text, tmp_path_factory.mktemp("tok") / "m30k", vocab_size=8000, seed=1)


def test_round_trip_is_exact_on_every_multi30k_line(m30k_tok, m30k_lines):
    # Multi30k has leading/trailing and double spaces, tabs and no-break spaces: all must survive
    assert m30k_tok.decode(m30k_tok.encode(m30k_lines)) == m30k_lines


def test_unseen_characters_fall_back_to_bytes_not_unk(m30k_tok):
    lines = ["🦜 ǅ 漢字 ﬁ &apos;s", "x\u2028y\u0085z"]
    ids = m30k_tok.encode(lines)
    assert m30k_tok.unk_id not in chain.from_iterable(ids)
    assert m30k_tok.decode(ids) == lines


def test_special_ids_are_fixed_and_decode_ignores_pad_bos_eos(m30k_tok):
    tok = m30k_tok
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 8000
    ids = tok.encode(["Ein Hund läuft."])[0]
    padded = np.array([tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.pad_id])
    assert tok.decode([padded]) == ["Ein Hund läuft."]


def test_loading_the_saved_model_gives_the_same_ids(m30k_tok, m30k_lines):
    again = Tokenizer(m30k_tok.path)
    assert again.encode(m30k_lines[:500]) == m30k_tok.encode(m30k_lines[:500])


def test_flat_encoding_equals_sentencepiece_on_multi30k(m30k_tok, m30k_lines):
    assert m30k_tok._words is not None  # the word cache is in use for difformer's own BPE models
    flat, lens = m30k_tok.encode_flat(m30k_lines)
    ids = m30k_tok.encode(m30k_lines)
    assert lens.tolist() == [len(x) for x in ids]
    assert flat.tolist() == list(chain.from_iterable(ids))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("ab éZ\t\u00a0\u2581&;🦜")), max_size=12), max_size=8))
def test_flat_encoding_equals_sentencepiece_on_any_text(m30k_tok, lines):
    flat, lens = m30k_tok.encode_flat(lines)
    ids = m30k_tok.encode(lines)
    assert lens.tolist() == [len(x) for x in ids]
    assert flat.tolist() == list(chain.from_iterable(ids))


@pytest.mark.parametrize("option", [{"allow_whitespace_only_pieces": True}, {"split_by_whitespace": False}])
def test_a_given_tokenizer_whose_pieces_may_span_spaces_is_not_encoded_word_by_word(tmp_path, option):
    """`prepare --tokenizer` accepts any sentencepiece model with our special ids: where pieces may be runs
    of spaces or cross a space, a line's ids are not its words' ids end to end, and sentencepiece encodes."""
    lines = ["a  b   c    d", "ab  ab   cd    cd", "a b c d"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=30,
                                   hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2, **option)
    (tmp_path / "given.model").write_bytes(model.getvalue())
    tok = Tokenizer(tmp_path / "given.model")
    assert tok._words is None
    flat, lens = tok.encode_flat(lines[:3])
    assert flat.tolist() == list(chain.from_iterable(tok.encode(lines[:3])))


def test_vocab_too_large_for_the_text_suggests_a_smaller_one(tmp_path):
    with pytest.raises(DifformerError, match=r"too large .*at most \d+ .*smaller --vocab-size"):
        Tokenizer.train(["a b c", "abc cab"] * 10, tmp_path / "t", vocab_size=8000)


def test_vocab_too_small_for_bytes_and_characters_asks_for_more(tmp_path):
    with pytest.raises(DifformerError, match=r"too small.* at least \d+"):
        Tokenizer.train(["a b c", "abc cab"] * 10, tmp_path / "t", vocab_size=100)


def test_a_model_with_other_special_ids_is_refused(tmp_path):
    model = io.BytesIO()  # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 20), model_writer=model,
                                   vocab_size=12, minloglevel=2)
    (tmp_path / "other.model").write_bytes(model.getvalue())
    with pytest.raises(DifformerError, match="special ids"):
        Tokenizer(tmp_path / "other.model")


def test_training_is_reproducible_from_the_seed(tmp_path):
    lines = [f"w{i % 97} v{i % 13} u{i % 7}" for i in range(3000)]
    a = Tokenizer.train(lines, tmp_path / "a", vocab_size=300, seed=3, max_sentences=500)
    b = Tokenizer.train(lines, tmp_path / "b", vocab_size=300, seed=3, max_sentences=500)
    assert [a.sp.id_to_piece(i) for i in range(300)] == [b.sp.id_to_piece(i) for i in range(300)]


def test_sample_is_uniform_reproducible_and_complete_when_small():
    lines = [str(i) for i in range(250_000)]
    assert sample_lines(lines[:10], 50, seed=0) == lines[:10]
    a, b = sample_lines(lines, 10_000, seed=1), sample_lines(iter(lines), 10_000, seed=1)
    assert a == b and len(set(a)) == 10_000
    thirds = np.bincount(np.array(a, dtype=int) * 3 // len(lines), minlength=3)
    assert np.all(np.abs(thirds - 10_000 / 3) < 300)  # about 6 standard deviations
