"""Reading aligned plain-text parallel files: line N of the source file goes with line N of the target file.

Text is kept verbatim (no whitespace clean-up, no unescaping of Moses `&apos;`) so that decoded output can be
compared with the references exactly. Only the line ending (LF or CRLF), a UTF-8 byte order mark and, on
request, letter case are touched. A file whose name ends in .gz is read through gzip.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import BinaryIO, Iterator

from difformer.errors import DifformerError

BLOCK_BYTES = 1 << 24  # decoding 16 MiB at once is several times faster than decoding line by line
BOM = b"\xef\xbb\xbf"


def find_file(prefix: str | Path, lang: str) -> Path:
    """PREFIX.LANG, or PREFIX.LANG.gz when only the compressed file exists."""
    path = Path(f"{prefix}.{lang}")
    if path.is_file():
        return path
    gz = Path(f"{path}.gz")
    if gz.is_file():
        return gz
    raise DifformerError(f"missing file: {path} (nor {gz.name})")


def _open(path: Path) -> BinaryIO:
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise DifformerError(f"cannot read {path}: {e.strerror or e}") from None


def _decode(path: Path, data: bytes, lines_before: int, lowercase: bool) -> list[str]:
    """Split a block of whole lines; the line number of a bad byte is found only when there is one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lines_before + data.count(b"\n", 0, e.start) + 1
        raise DifformerError(f"{path}: line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
    if lowercase:
        text = text.lower()
    lines = text.replace("\r\n", "\n").split("\n")  # not splitlines(): it also splits on U+2028, U+0085, ...
    if lines[-1] == "":
        lines.pop()  # the empty string after the final newline is not a line
    return lines


def read_lines(path: str | Path, lowercase: bool = False) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their line ending; a missing final newline is fine."""
    path = Path(path)
    with _open(path) as f:
        try:
            rest, done, first = b"", 0, True
            while block := f.read(BLOCK_BYTES):
                if first and block.startswith(BOM):
                    block = block[len(BOM):]
                first = False
                data = rest + block
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
                if data:
                    lines = _decode(path, data, done, lowercase)
                    done += len(lines)
                    yield from lines
            if rest:
                yield from _decode(path, rest.removesuffix(b"\r"), done, lowercase)
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz file
            raise DifformerError(f"cannot read {path}: {e}") from None


@dataclass
class ParallelCorpus:
    """Aligned source and target files, read in chunks of pairs; the counters are filled in by `chunks`."""

    src: Path
    tgt: Path
    lowercase: bool = False
    lines: int = 0  # lines per side
    dropped_empty: int = 0  # pairs with an empty (or whitespace-only) line on either side

    @classmethod
    def from_prefix(cls, prefix: str | Path, source_lang: str, target_lang: str,
                    lowercase: bool = False) -> ParallelCorpus:
        return cls(find_file(prefix, source_lang), find_file(prefix, target_lang), lowercase)

    def chunks(self, size: int = 50_000) -> Iterator[tuple[list[str], list[str]]]:
        """Yield (source lines, target lines) of up to `size` non-empty pairs at a time.

        Raises DifformerError as soon as one file ends before the other, naming both files and counts.
        """
        self.lines = self.dropped_empty = 0
        end = object()
        pairs = zip_longest(read_lines(self.src, self.lowercase), read_lines(self.tgt, self.lowercase),
                            fillvalue=end)
        while batch := list(islice(pairs, size)):
            if batch[-1][0] is end or batch[-1][1] is end:
                self._raise_mismatch(batch, pairs, end)
            self.lines += len(batch)
            kept = [(s, t) for s, t in batch if s and t and not s.isspace() and not t.isspace()]
            self.dropped_empty += len(batch) - len(kept)
            if kept:
                src, tgt = zip(*kept)
                yield list(src), list(tgt)

    def _raise_mismatch(self, batch: list, rest: Iterator, end: object) -> None:
        short = 0 if batch[-1][0] is end else 1
        n_short = self.lines + next(i for i, pair in enumerate(batch) if pair[short] is end)
        n_long = self.lines + len(batch) + sum(1 for _ in rest)
        counts = (n_short, n_long) if short == 0 else (n_long, n_short)
        raise DifformerError(f"line counts differ: {self.src} has {counts[0]} lines but {self.tgt} has "
                             f"{counts[1]}; line N of one file must translate line N of the other")
