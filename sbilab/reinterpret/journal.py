"""An append-only, crash-safe JSON-lines journal of a scan: one line per finished point.

The first line is a header (what was scanned and how); every later line is one finished point,
written, flushed and ``fsync``'d before the next is started, so a scan killed at any moment
(SIGKILL, power loss) loses at most the point being written. A torn last line (a write cut
short) is cut off when the journal is reopened; a journal whose header differs from the new
scan's is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..durable import fsync_dir
from ..exceptions import ConfigError

__all__ = ["ScanJournal"]


class ScanJournal:
    """Append-only JSON-lines file: a header, then one record per finished point.

    Args:
        path: The journal file (created with its folder if missing).
        header: What the scan is (workspace digest, settings); must equal the header of an
            existing journal to resume it.

    Raises:
        ConfigError: ``path`` holds a journal of a different scan (other header) or is not a journal.
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(dict(header)))
        self.records: list[dict[str, Any]] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"header": self.header}, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(self.path.parent)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a torn last line (no newline) is dropped
        lines = complete.decode("utf-8").splitlines()
        try:
            first = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            first = None
        if not isinstance(first, dict) or "header" not in first:
            raise ConfigError(f"{self.path} is not a scan journal (no header line); give another output path.")
        if first["header"] != self.header:
            changed = sorted(k for k in {*first["header"], *self.header} if first["header"].get(k) != self.header.get(k))
            raise ConfigError(f"{self.path} holds a scan with other settings ({changed} differ); resume with the same "
                              "workspace and settings, or write to another output path.")
        for number, line in enumerate(lines[1:], start=2):
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{self.path} line {number} is corrupt ({err}); remove that line to resume.") from None
        if len(complete) < len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(len(complete))
                os.fsync(fh.fileno())

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as a line and force it to disk before returning."""
        line = json.dumps(dict(record), sort_keys=True, allow_nan=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(json.loads(line))

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every name (a point recomputed after an error replaces it)."""
        return {r["name"]: r for r in self.records}
