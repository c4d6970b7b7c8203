"""Crash-safe file writes: write to a temporary name in the same folder, fsync, rename.

``os.replace`` is atomic on POSIX, so a reader sees either the old file or the complete new
one, never a half-written file — whether the writer fails, is killed (SIGKILL) or the machine
loses power (the file and its folder are fsync'd). Used by the simulation store, published
files and training checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir", "fsync_and_hash"]


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a completed rename) to disk; no-op off POSIX."""
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_and_hash(path: Path, *, fsync: bool) -> tuple[int, str]:
    """Flush ``path`` to disk (if ``fsync``) and return its size in bytes and SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
        if fsync:
            os.fsync(fh.fileno())
        return fh.tell(), digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, fsync: bool = True) -> Path:
    """Create ``path`` by ``write(tmp)`` on a temporary sibling, then rename it into place.

    The temporary file is removed if ``write`` raises; the previous ``path`` (if any) is then
    left untouched. Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)
