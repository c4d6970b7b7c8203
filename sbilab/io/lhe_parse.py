r"""Text-level parsing of LHE files: opening (plain or gzip), the header lines, the ``<event>``
blocks (read in blocks of characters and split with ``str.find``, not line by line), and what
follows each particle table (``<rwgt>``, ``<weights>``, ``<scales>``, ``#pdf``, ``<mgrwt>``, comments).
Used by :mod:`sbilab.io.lhe` and :mod:`sbilab.io.lhe_stream`.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np

from ..exceptions import FileFormatError
from .lhe_header import LHEHeader, attributes, parse_header

__all__ = ["open_lhe", "read_header", "event_blocks", "parse_tail", "floats", "numbers"]

_INIT = re.compile(r"\s*<init[\s>]")
_WGT = re.compile(r"""<wgt\s+id\s*=\s*["']([^"']*)["'][^>]*>\s*([^<\s]+)\s*</wgt>""")
_WEIGHTS = re.compile(r"<weights\b[^>]*>(.*?)</weights>", re.S)
_SCALES = re.compile(r"<scales\b([^>]*?)(?:/>|>(.*?)</scales>)", re.S)
_MGRWT = re.compile(r"<mgrwt\b[^>]*>(.*?)</mgrwt>", re.S)
_SUBTAG = re.compile(r"<(\w+)\b([^>]*)>(.*?)</\1>", re.S)
_KNOWN = re.compile(r"<rwgt\b.*?</rwgt>|<weights\b.*?</weights>|<scales\b[^>]*?/>|<scales\b.*?</scales>|<mgrwt\b.*?</mgrwt>", re.S)
_TAG = re.compile(r"<(\w+)")
_KNOWN_TAGS = {"rwgt", "wgt", "weights", "mgrwt", "rscale", "asrwt", "pdfrwt", "totfact", "matchscale"}

def floats(text: str) -> list[float]:
    return [float(t.replace("D", "E").replace("d", "e")) for t in text.split()]


def numbers(tokens: Sequence[str]) -> np.ndarray:
    """Numbers (Fortran ``D`` exponents allowed) as a float array, parsed in C."""
    try:
        return np.array(tokens, dtype=float)
    except ValueError:
        return np.array([t.replace("D", "E").replace("d", "e") for t in tokens], dtype=float)


def _maybe_float(text: str) -> float:
    try:
        return float(text.replace("D", "E"))
    except ValueError:
        return float("nan")


def open_lhe(path: str | Path) -> IO[str]:
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"LHE file {str(path)!r} does not exist.")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_header(fh: IO[str], path: str, idwtup: int | None = None) -> LHEHeader:
    head: list[str] = []
    try:
        first = fh.readline()
        while first and (not first.strip() or first.lstrip().startswith("<?xml")):
            first = fh.readline()
    except (OSError, EOFError) as err:
        raise FileFormatError(f"{path}: cannot be read ({err}).") from None
    if "<LesHouchesEvents" not in first:
        raise FileFormatError(f"{path}: not a Les Houches Event file (first line lacks <LesHouchesEvents>).")
    version = attributes(first).get("version", "")
    for line in _lines(fh, path):
        if _INIT.match(line):
            init = []
            for inner in _lines(fh, path):
                if "</init>" in inner:
                    init.append(inner.split("</init>")[0])
                    return parse_header(head, init, path, version=version, idwtup=idwtup)
                init.append(inner)
            break
        head.append(line)
    raise FileFormatError(f"{path}: no complete <init> block found; the file is truncated or not LHEF.")


def _lines(fh: IO[str], path: str) -> Iterator[str]:
    try:
        for line in fh:  # not ``yield from``: closing this generator would close the file
            yield line
    except (OSError, EOFError) as err:  # a gzip stream cut short
        raise FileFormatError(f"{path}: the file is truncated or corrupt ({err}).") from None


def event_blocks(fh: IO[str], path: str, block_size: int = 1 << 20) -> Iterator[tuple[str, list[str]]]:
    """``(start tag, lines)`` of each ``<event>``, read in blocks of ``block_size`` characters (no per-line Python loop)."""
    buf = ""
    try:
        while True:
            data = fh.read(block_size)
            buf += data
            pos = 0
            while True:
                start = buf.find("<event", pos)
                while start >= 0 and buf[start + 6: start + 7] not in (" ", ">", "\t", "\n", "\r", ""):
                    start = buf.find("<event", start + 6)  # <eventgroup> and the like
                if start < 0:
                    pos = max(pos, len(buf) - 6)
                    break
                end = buf.find("</event>", start)
                tag_end = buf.find(">", start)
                if end < 0 or tag_end < 0:
                    pos = start
                    break
                yield buf[start:tag_end + 1], buf[tag_end + 1:end].split("\n")
                pos = end + 8
            buf = buf[pos:]
            if not data:
                break
    except (OSError, EOFError) as err:  # a gzip stream cut short
        raise FileFormatError(f"{path}: the file is truncated or corrupt ({err}).") from None
    if "<event" in buf:
        raise FileFormatError(f"{path}: the last event has no </event>; the file is truncated.")


def parse_tail(lines: list[str], wid: dict[str, int], named: np.ndarray) -> dict[str, Any]:
    """Everything after the particle table: weights, scales, #pdf, <mgrwt>, comments."""
    extra: dict[str, Any] = {}
    comments: list[str] = []
    text = "\n".join(lines)
    if "#" in text:
        kept = []
        for ln in lines:
            s = ln.strip()
            if s.startswith("#pdf"):
                extra["pdf"] = [_maybe_float(t) for t in s[4:].split()][:7]
            elif s.startswith("#"):
                comments.append(s)
            else:
                kept.append(ln)
        text = "\n".join(kept)
    extra["comments"] = comments
    if "<" not in text:
        return extra
    pairs = [(wid[k], v) for k, v in _WGT.findall(text) if k in wid]
    if pairs:
        index, values = zip(*pairs)
        named[list(index)] = numbers(values)
    found = _WEIGHTS.search(text)
    if found:
        extra["weights"] = floats(found.group(1))
    found = _SCALES.search(text)
    if found:
        extra["scales"] = {k: _maybe_float(v) for k, v in attributes(found.group(1)).items()}
    found = _MGRWT.search(text)
    if found:
        extra["mgrwt"] = {
            tag + (f"_beam{attributes(a)['beam']}" if "beam" in attributes(a) else ""): [_maybe_float(t) for t in body.split()]
            for tag, a, body in _SUBTAG.findall(found.group(1))
        }
    rest = _KNOWN.sub("", text).strip() if set(_TAG.findall(text)) - _KNOWN_TAGS else ""
    if rest:
        comments.append(rest)
    return extra
