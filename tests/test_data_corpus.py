"""Reading parallel text: line endings, BOM, case, escapes, empty lines, gzip, and one-line errors."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difformer.data import corpus
from difformer.data.corpus import ParallelCorpus, find_file, read_lines
from difformer.errors import DifformerError

from conftest import SHARED_DATA, write_pair


def read_all(prefix: Path, lowercase: bool = False) -> tuple[list[str], list[str], ParallelCorpus]:
    c = ParallelCorpus.from_prefix(prefix, "fr", "en", lowercase)
    src, tgt = [], []
    for s, t in c.chunks(size=2):  # tiny chunks exercise the chunk boundaries
        src += s
        tgt += t
    return src, tgt, c


def test_crlf_bom_and_missing_final_newline_are_handled(tmp_path):
    p = write_pair(tmp_path / "d", b"\xef\xbb\xbfun\r\ndeux\r\ntrois", b"one\ntwo\nthree\n")
    src, tgt, c = read_all(p)
    assert src == ["un", "deux", "trois"]
    assert tgt == ["one", "two", "three"]
    assert c.lines == 3


def test_text_is_kept_verbatim_including_moses_escapes_and_inner_whitespace(tmp_path):
    line = " l&apos;homme  &quot;a&quot; &amp; b\u00a0c\t "
    p = write_pair(tmp_path / "d", line + "\n", "x\n")
    assert read_all(p)[0] == [line]


def test_lowercase_applies_to_both_sides(tmp_path):
    p = write_pair(tmp_path / "d", "Ça VA\n", "It GOES\n")
    src, tgt, _ = read_all(p, lowercase=True)
    assert (src, tgt) == (["ça va"], ["it goes"])


def test_empty_and_blank_lines_drop_the_pair_and_are_counted(tmp_path):
    p = write_pair(tmp_path / "d", "a\n\nc\n  \ne\n", "A\nB\n\nD\nE\n")
    src, tgt, c = read_all(p)
    assert (src, tgt) == (["a", "e"], ["A", "E"])
    assert (c.lines, c.dropped_empty) == (5, 3)


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    p = write_pair(tmp_path / "d", "a\nb\nc\n", "A\nB\n")
    with pytest.raises(DifformerError) as e:
        read_all(p)
    msg = str(e.value)
    assert f"{p}.fr has 3 lines" in msg and f"{p}.en has 2" in msg and "\n" not in msg


def test_mismatch_found_after_many_lines(tmp_path):
    p = write_pair(tmp_path / "d", "x\n" * 10, "y\n" * 13)
    with pytest.raises(DifformerError, match=r"d\.fr has 10 lines but .*d\.en has 13"):
        read_all(p)


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = write_pair(tmp_path / "d", "ok\nfine\n", b"ok\nfine\nbad \xff byte\n")
    with pytest.raises(DifformerError, match=r"d\.en: line 3 is not valid UTF-8") as e:
        read_all(p)
    assert "\n" not in str(e.value)


def test_line_numbers_and_crlf_survive_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 5)  # blocks end inside lines and between \r and \n
    path = tmp_path / "f.txt"
    path.write_bytes("\ufeffabcdéfgh\r\nij\r\n\r\nklmnöpqrstu\r\nv€".encode())  # é, ö, € span blocks
    assert list(read_lines(path)) == ["abcdéfgh", "ij", "", "klmnöpqrstu", "v€"]
    path.write_bytes(b"abcdefgh\nij\nkl\nmnop\xc3qrstu\n")
    with pytest.raises(DifformerError, match="line 4 "):
        list(read_lines(path))


def test_gzip_file_is_found_and_read(tmp_path):
    with gzip.open(tmp_path / "train.src.gz", "wb") as f:
        f.write("é\nb\n".encode())
    (tmp_path / "train.tgt").write_text("E\nB\n")
    c = ParallelCorpus.from_prefix(tmp_path / "train", "src", "tgt")
    assert c.src.name == "train.src.gz"
    assert list(c.chunks()) == [(["é", "b"], ["E", "B"])]


def test_aeslc_gzipped_training_source_is_found():
    if not (SHARED_DATA / "aeslc" / "train.src.gz").is_file():
        pytest.skip(f"AESLC not found under {SHARED_DATA}")
    assert find_file(SHARED_DATA / "aeslc" / "train", "src").name == "train.src.gz"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DifformerError, match=r"missing file: .*nope\.fr"):
        find_file(tmp_path / "nope", "fr")


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=8),
                      max_size=12),
       crlf=st.booleans(), bom=st.booleans(), final_newline=st.booleans())
def test_any_text_round_trips_through_the_reader(tmp_path_factory, lines, crlf, bom, final_newline):
    path = tmp_path_factory.mktemp("h") / "f.txt"
    eol = "\r\n" if crlf else "\n"
    text = eol.join(lines) + (eol if final_newline and lines else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    # without a final newline, a last empty line cannot be told from no line at all
    expected = lines[:-1] if lines and lines[-1] == "" and not final_newline else lines
    assert list(read_lines(path)) == expected
