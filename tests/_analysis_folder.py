"""An analysis folder written from a TOML text, as the analysis tests build them."""

from __future__ import annotations

from pathlib import Path


def write(tmp_path: Path, text: str) -> Path:
    """``tmp_path/analysis/analysis.toml`` holding ``text``; returns the folder."""
    folder = tmp_path / "analysis"
    folder.mkdir(exist_ok=True)
    (folder / "analysis.toml").write_text(text)
    return folder
