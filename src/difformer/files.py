"""Files and directories that appear whole or not at all: atomic single-file writes, and finished
directories moved into place (model directories, prepared and distilled data), so that a killed run never
leaves half a file where a whole one is expected."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from difformer.errors import DifformerError


def write_atomic(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temporary file in the same directory, fsync, then rename.

    The directory is fsynced after the rename too: without it a power cut can undo the rename even though
    the file's data reached the disk.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # a plain open's permissions; mkstemp's are the owner's alone
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entries: new names, renames); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows, for directories) cannot fsync a directory
        pass
    finally:
        os.close(fd)


def check_writable(path: str | Path) -> Path:
    """Fail now, not after hours of decoding, when `path` (a file to write) cannot be created."""
    path = Path(path)
    if path.is_dir():
        raise DifformerError(f"{path}: is a directory; give a file name to write to")
    parent = path.parent
    if not parent.is_dir():
        raise DifformerError(f"{path}: cannot write there ({parent} is not an existing directory)")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DifformerError(f"{path}: cannot write there ({e.strerror or e})") from None
    return path


def write_json(path: Path, obj) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def sibling(dest: Path, tag: str) -> Path:
    """A new hidden directory next to dest: same file system, so the final rename is atomic."""
    path = dest.parent / f".{dest.name}.{tag}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def umask() -> int:
    """The process's file-mode mask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def install(tmp: Path, dest: Path) -> None:
    """Move a finished directory into place with a plain mkdir's permissions (a temporary directory's are the
    owner's alone); an old one is removed only after the new one is there."""
    os.chmod(tmp, 0o777 & ~umask())
    if not dest.exists():
        tmp.rename(dest)
        return
    old = sibling(dest, "old")
    dest.rename(old / dest.name)
    tmp.rename(dest)
    shutil.rmtree(old)
