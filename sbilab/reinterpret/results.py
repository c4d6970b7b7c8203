"""Results of a patch scan: one :class:`PatchResult` per signal point, a :class:`ScanResult` table (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..durable import atomic_write_text
from ..stats.results import ResultBase

__all__ = ["PatchResult", "ScanResult", "EXPECTED_COLUMNS"]

# pyhf's order of the expected CLs: (+2, +1, 0, -1, -2) sigma of the background-only test
# statistic, i.e. from the smallest CLs (most exclusion) to the largest
EXPECTED_COLUMNS = ("cls_exp_p2", "cls_exp_p1", "cls_exp", "cls_exp_m1", "cls_exp_m2")


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class PatchResult(ResultBase):
    r"""The asymptotic CLs test of one signal point (:math:`\tilde q_\mu`, arXiv:1007.1727).

    Attributes:
        name: Patch name.
        values: The signal model's parameters (e.g. masses), ``(K,)``.
        poi: Tested signal strength μ.
        cls_obs: Observed CLs at ``poi``.
        cls_expected: Expected CLs at (+2, +1, 0, -1, -2)σ (pyhf's order: smallest first).
        mu_hat: Best-fit signal strength (within the POI bounds).
        valid: Whether every fit converged.
        upper_limit: Observed CLs upper limit on μ (nan unless limits were asked for).
        upper_limits_expected: Expected limits at (+2, +1, 0, -1, -2)σ (empty unless asked for).
        cpu_s: CPU seconds of the worker for this point (reading the patch, building, fitting).
        wall_s: Wall-clock seconds of the worker for this point.
        threads: Threads torch ran with in the worker (1: no oversubscription).
        error: Why the point could not be computed (a patch that does not match the workspace);
            empty when it was.
    """

    name: str
    values: tuple[float, ...]
    poi: float
    cls_obs: float
    cls_expected: tuple[float, ...]
    mu_hat: float
    valid: bool
    upper_limit: float = math.nan
    upper_limits_expected: tuple[float, ...] = ()
    cpu_s: float = 0.0
    wall_s: float = 0.0
    threads: int = 0
    error: str = ""

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PatchResult:
        """The result from its ``to_dict()`` form (``None`` read back as nan)."""
        return cls(
            name=str(record["name"]), values=tuple(_float(v) for v in record["values"]), poi=_float(record["poi"]),
            cls_obs=_float(record["cls_obs"]), cls_expected=tuple(_float(v) for v in record["cls_expected"]),
            mu_hat=_float(record["mu_hat"]), valid=bool(record["valid"]), upper_limit=_float(record.get("upper_limit")),
            upper_limits_expected=tuple(_float(v) for v in record.get("upper_limits_expected", ())),
            cpu_s=float(record.get("cpu_s", 0.0)), wall_s=float(record.get("wall_s", 0.0)), threads=int(record.get("threads", 0)),
            error=str(record.get("error", "")),
        )

    @classmethod
    def failed(cls, name: str, values: tuple[float, ...], poi: float, error: str, cpu_s: float, wall_s: float, threads: int) -> PatchResult:
        """A point that could not be computed, with the reason."""
        return cls(name, values, poi, math.nan, (math.nan,) * 5, math.nan, False, cpu_s=cpu_s, wall_s=wall_s, threads=threads,
                   error=error)


@dataclass(frozen=True)
class ScanResult(ResultBase):
    """The CLs of every patch of a scan, as a table.

    Attributes:
        points: One result per patch, in the patches' order.
        labels: Names of the ``values`` axes.
        settings: The scan's settings (optimizer, tolerance, backend, ...).
        workspace_sha256: Digest of the background-only workspace.
        wall_s: Wall-clock seconds of this run (resumed points not included).
        cpu_s: CPU seconds of all points (the workers' sum, resumed points included).
        resumed: Points read back from the journal instead of computed.
    """

    points: tuple[PatchResult, ...]
    labels: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    workspace_sha256: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    resumed: int = 0

    def __getitem__(self, name: str) -> PatchResult:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-serialisable Python objects (points as dicts, nan as ``None``)."""
        out = super().to_dict() | {"points": [p.to_dict() for p in self.points]}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScanResult:
        """The scan from :meth:`to_dict` (e.g. ``results.json`` read back)."""
        return cls(tuple(PatchResult.from_dict(p) for p in data["points"]), tuple(data["labels"]), dict(data.get("settings", {})),
                   str(data.get("workspace_sha256", "")), float(data.get("wall_s") or 0.0), float(data.get("cpu_s") or 0.0),
                   int(data.get("resumed", 0)))

    @property
    def errors(self) -> dict[str, str]:
        """``{name: reason}`` of the points that could not be computed."""
        return {p.name: p.error for p in self.points if p.error}

    def rows(self) -> list[dict[str, Any]]:
        """The table: one flat dict per point (values under their labels, expected CLs as columns)."""
        out = []
        for p in self.points:
            row: dict[str, Any] = {"name": p.name}
            row.update({label: v for label, v in zip(self.labels, p.values)})
            row.update({"cls_obs": p.cls_obs, **dict(zip(EXPECTED_COLUMNS, p.cls_expected)), "mu_hat": p.mu_hat, "valid": p.valid})
            if p.upper_limits_expected:
                row["upper_limit"] = p.upper_limit
                row.update({f"upper_limit_{c.removeprefix('cls_')}": v for c, v in zip(EXPECTED_COLUMNS, p.upper_limits_expected)})
            row.update({"cpu_s": p.cpu_s, "wall_s": p.wall_s, "error": p.error})
            out.append(row)
        return out

    def to_csv(self) -> str:
        """The table as CSV text (nan written as an empty field)."""
        rows = self.rows()
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
        return buffer.getvalue()

    def write(self, folder: str | Path, *, stem: str = "results") -> tuple[Path, Path]:
        """Write ``<stem>.json`` (everything, nan as null) and ``<stem>.csv`` (the table) atomically; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path = atomic_write_text(folder / f"{stem}.json", json.dumps(self.to_dict(), indent=1, sort_keys=True))
        csv_path = atomic_write_text(folder / f"{stem}.csv", self.to_csv())
        return json_path, csv_path
