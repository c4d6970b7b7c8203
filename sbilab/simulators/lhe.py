r"""A small, streaming reader of Les Houches Event files (LHEF, arXiv:hep-ph/0609017, LHEF 3.0
arXiv:1405.1067), plain or gzip-compressed.

The file is read line by line (never loaded whole): :func:`read_lhe_header` parses the header
(beams, process cross sections, the named reweighting weights declared in ``<initrwgt>``),
:func:`iter_lhe_chunks` yields :class:`LHEData` blocks of events as numpy arrays, and
:func:`read_lhe` concatenates them. Per event: the particle table (PDG id, status, mothers,
colours, four-momentum :math:`(p_x, p_y, p_z, E)`, mass, lifetime, spin), the event weight
``XWGTUP`` and the named weights of ``<rwgt><wgt id=...>`` in the order of their declaration.

:meth:`LHEData.to_events` gives :class:`~sbilab.events.Events` of a padded particle set with a
mask, :meth:`LHEData.particle` the features of the k-th hardest particle of chosen PDG ids, and
:meth:`LHEData.to_weighted_events` feeds named weights at benchmark points to
:class:`~sbilab.simulators.weighted.WeightedEvents`.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np

from ..events import Events
from ..exceptions import InvalidEventsError, StoreError
from .weighted import WeightedEvents

__all__ = ["LHEHeader", "LHEData", "read_lhe_header", "iter_lhe_chunks", "read_lhe"]

FEATURES = ("px", "py", "pz", "E", "pt", "eta", "phi", "m", "pid")
_ATTR = re.compile(r"""([\w:.-]+)\s*=\s*(["'])(.*?)\2""")
_WEIGHT_DECL = re.compile(r"<weightgroup\b([^>]*)>|</weightgroup>|<weight\b([^>]*)>(.*?)</weight>", re.S)
_INIT = re.compile(r"\s*<init[\s>]")
_WGT = re.compile(r"<wgt\b([^>]*)>\s*([^<\s]+)\s*</wgt>")


@dataclass(frozen=True)
class LHEHeader:
    """What the file declares before its events.

    Attributes:
        beam_ids, beam_energies: PDG ids and energies (GeV) of the two beams.
        cross_sections: Per process: (XSECUP pb, XERRUP pb, XMAXUP, LPRUP), ``(n_proc, 4)``.
        weight_ids: Ids of the named weights, in declaration order.
        weight_info: Per id: ``{"group": ..., "text": ..., <attributes>}``.
        event_norm: ``"average"`` or ``"sum"`` if the run card says so, else ``None``.
    """

    beam_ids: tuple[int, int]
    beam_energies: tuple[float, float]
    cross_sections: np.ndarray
    weight_ids: tuple[str, ...]
    weight_info: dict[str, dict[str, str]] = field(repr=False)
    event_norm: str | None = None


@dataclass(frozen=True)
class LHEData:
    """A block of events as arrays; ``N`` events padded to ``M`` particles (``mask`` marks real ones).

    Attributes:
        pid, status: ``(N, M)`` int. mothers, colours: ``(N, M, 2)`` int (1-based as in the file).
        momenta: ``(N, M, 4)`` as (px, py, pz, E) in GeV. mass, lifetime, spin: ``(N, M)``.
        mask: ``(N, M)`` bool. weight: ``XWGTUP``, ``(N,)``. process_id, scale, alpha_qed,
        alpha_qcd: ``(N,)``. named_weights: ``(N, B)`` in ``header.weight_ids`` order (NaN if
        an event lacks one).
    """

    header: LHEHeader
    pid: np.ndarray
    status: np.ndarray
    mothers: np.ndarray
    colours: np.ndarray
    momenta: np.ndarray
    mass: np.ndarray
    lifetime: np.ndarray
    spin: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    process_id: np.ndarray
    scale: np.ndarray
    alpha_qed: np.ndarray
    alpha_qcd: np.ndarray
    named_weights: np.ndarray

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    def features(self, names: Sequence[str] = ("pt", "eta", "phi", "m")) -> np.ndarray:
        """Per-particle features ``(N, M, F)``: any of px, py, pz, E, pt, eta, phi, m (file mass), pid."""
        px, py, pz, energy = np.moveaxis(self.momenta, -1, 0)
        pt = np.hypot(px, py)
        table = {
            "px": px, "py": py, "pz": pz, "E": energy, "pt": pt, "phi": np.arctan2(py, px), "m": self.mass,
            "pid": self.pid.astype(float),
        }
        out = []
        for name in names:
            if name == "eta":
                with np.errstate(divide="ignore", invalid="ignore"):
                    out.append(np.where(self.mask, np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0)), 0.0))
            elif name in table:
                out.append(table[name])
            else:
                raise InvalidEventsError(f"LHEData.features: unknown feature {name!r}; choose from {FEATURES}.")
        return np.where(self.mask[..., None], np.stack(out, axis=-1), 0.0)

    def select(self, *, status: Sequence[int] | None = (1,), pids: Sequence[int] | None = None, by_pt: bool = True) -> "LHEData":
        """Keep particles of the given status codes (default: final state) and |PDG id|, left-aligned, hardest first."""
        keep = self.mask.copy()
        if status is not None:
            keep &= np.isin(self.status, list(status))
        if pids is not None:
            keep &= np.isin(np.abs(self.pid), np.abs(np.asarray(list(pids))))
        key = np.where(keep, -np.hypot(self.momenta[..., 0], self.momenta[..., 1]) if by_pt else 0.0, np.inf)
        order = np.argsort(key, axis=1, kind="stable")
        width = max(1, int(keep.sum(1).max(initial=0)))
        order = order[:, :width]
        take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
        fields = {n: take(getattr(self, n)) for n in ("pid", "status", "mothers", "colours", "momenta", "mass", "lifetime", "spin")}
        return LHEData(**{**self.__dict__, **fields, "mask": take(keep)})

    def particle(self, pids: Sequence[int], rank: int = 0, features: Sequence[str] = ("pt", "eta", "phi", "m")) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(N, F)`` of the ``rank``-th hardest final-state particle with |id| in ``pids``, and ``found (N,)``."""
        sel = self.select(pids=pids)
        if sel.mask.shape[1] <= rank:
            return np.zeros((len(self), len(features))), np.zeros(len(self), dtype=bool)
        return sel.features(features)[:, rank], sel.mask[:, rank].copy()

    def to_events(self, features: Sequence[str] = ("pt", "eta", "phi", "m"), *, status: Sequence[int] | None = (1,)) -> Events:
        """Observed :class:`Events` of the padded particle set ``(N, M, F)`` with mask and ``XWGTUP`` as weights."""
        sel = self.select(status=status)
        return Events.observed(sel.features(features), weights=self.weight, mask=sel.mask)

    def weights_for(self, ids: Sequence[str]) -> np.ndarray:
        """Named weights ``(N, len(ids))`` by weight id; raises if an id is not declared or missing in events."""
        index = {w: i for i, w in enumerate(self.header.weight_ids)}
        missing = [i for i in ids if str(i) not in index]
        if missing:
            raise InvalidEventsError(f"LHE weights {missing} are not declared in <initrwgt>; declared: {list(index)[:20]}...")
        out = self.named_weights[:, [index[str(i)] for i in ids]]
        if np.isnan(out).any():
            raise InvalidEventsError("Some events lack one of the requested named weights (<rwgt> incomplete).")
        return out

    def to_weighted_events(self, x: Any, benchmarks: Any, weight_ids: Sequence[str], **kwargs: Any) -> WeightedEvents:
        """:class:`WeightedEvents` from observables ``x (N, D)`` and the named weights at ``benchmarks (B, P)``.

        ``weight_ids[b]`` is the weight id of benchmark b; kwargs go to :meth:`WeightedEvents.from_arrays`
        (``event_norm`` defaults to the header's, else "average").
        """
        kwargs.setdefault("event_norm", self.header.event_norm or "average")
        return WeightedEvents.from_arrays(x, self.weights_for(weight_ids), benchmarks, **kwargs)


def _open(path: str | Path) -> IO[str]:
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"LHE file {str(path)!r} does not exist.")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _floats(text: str) -> list[float]:
    return [float(t.replace("D", "E").replace("d", "e")) for t in text.split()]


def _parse_header(lines: list[str], init: list[str], path: str) -> LHEHeader:
    text = "".join(lines)
    ids: list[str] = []
    info: dict[str, dict[str, str]] = {}
    start, stop = text.find("<initrwgt>"), text.find("</initrwgt>")
    group = ""
    if start >= 0 and stop > start:
        for match in _WEIGHT_DECL.finditer(text[start:stop]):
            if match.group(0).startswith("</weightgroup"):
                group = ""
            elif match.group(1) is not None:
                attrs = dict((k, v) for k, _, v in _ATTR.findall(match.group(1)))
                group = attrs.get("name", attrs.get("type", ""))
            else:
                attrs = dict((k, v) for k, _, v in _ATTR.findall(match.group(2)))
                if "id" in attrs:
                    ids.append(attrs["id"])
                    info[attrs["id"]] = {**attrs, "group": group, "text": match.group(3).strip()}
    norm = re.search(r"^\s*(average|sum|bias)\s*=\s*event_norm", text, re.M)
    rows = [_floats(line) for line in init if line.strip() and not line.lstrip().startswith(("<", "#"))]
    if not rows or len(rows[0]) < 10:
        raise StoreError(f"{path}: the <init> block is malformed (expected 10 numbers on its first line).")
    beam = rows[0]
    procs = np.array([r[:4] for r in rows[1:1 + int(beam[9])]], dtype=float).reshape(-1, 4)
    return LHEHeader((int(beam[0]), int(beam[1])), (beam[2], beam[3]), procs, tuple(ids), info, norm.group(1) if norm else None)


def read_lhe_header(path: str | Path) -> LHEHeader:
    """Parse the header and ``<init>`` block of an LHE file (reads only up to the first event)."""
    with _open(path) as fh:
        return _read_header(fh, str(path))


def _read_header(fh: IO[str], path: str) -> LHEHeader:
    head: list[str] = []
    first = fh.readline()
    while first and (not first.strip() or first.lstrip().startswith("<?xml")):
        first = fh.readline()
    if "<LesHouchesEvents" not in first:
        raise StoreError(f"{path}: not a Les Houches Event file (first line lacks <LesHouchesEvents>).")
    for line in fh:
        if _INIT.match(line):
            init = []
            for inner in fh:
                if "</init>" in inner:
                    return _parse_header(head, init, path)
                init.append(inner)
            break
        head.append(line)
    raise StoreError(f"{path}: no complete <init> block found; the file is truncated or not LHEF.")


def _event_blocks(fh: IO[str], path: str) -> Iterator[list[str]]:
    block: list[str] | None = None
    for line in fh:
        stripped = line.lstrip()
        if block is None:
            if stripped.startswith("<event") and (len(stripped) == 6 or stripped[6] in " >\t\n"):
                block = []
        elif stripped.startswith("</event>"):
            yield block
            block = None
        else:
            block.append(line)
    if block is not None:
        raise StoreError(f"{path}: the last event has no </event>; the file is truncated.")


def iter_lhe_chunks(path: str | Path, chunk_size: int = 10000, *, max_events: int | None = None) -> Iterator[LHEData]:
    """Stream the events of ``path`` as :class:`LHEData` blocks of at most ``chunk_size`` events."""
    with _open(path) as fh:
        header = _read_header(fh, str(path))
        wid = {w: i for i, w in enumerate(header.weight_ids)}
        events: list[tuple[list[float], np.ndarray, np.ndarray]] = []
        count = 0
        for block in _event_blocks(fh, str(path)):
            lines = [ln for ln in block if ln.strip() and not ln.lstrip().startswith("#")]
            head = _floats(lines[0])
            nup = int(head[0])
            try:
                table = np.array([_floats(ln) for ln in lines[1:1 + nup]], dtype=float)
            except ValueError as err:
                raise StoreError(f"{path}: event {count} has a malformed particle line ({err}).") from None
            if table.shape != (nup, 13):
                raise StoreError(f"{path}: event {count} declares {nup} particles but its table has shape {table.shape}.")
            named = np.full(len(wid), np.nan)
            for ln in lines[1 + nup:]:
                for attrs, value in _WGT.findall(ln):
                    key = dict((k, v) for k, _, v in _ATTR.findall(attrs)).get("id")
                    if key in wid:
                        named[wid[key]] = float(value.replace("D", "E"))
            events.append((head, table, named))
            count += 1
            if len(events) == chunk_size:
                yield _assemble(header, events)
                events = []
            if max_events is not None and count >= max_events:
                break
        if events:
            yield _assemble(header, events)


def _assemble(header: LHEHeader, events: list[tuple[list[float], np.ndarray, np.ndarray]]) -> LHEData:
    n, m = len(events), max(t.shape[0] for _, t, _ in events)
    tab = np.zeros((n, m, 13))
    mask = np.zeros((n, m), dtype=bool)
    for i, (_, t, _) in enumerate(events):
        tab[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    heads = np.array([h[:6] for h, _, _ in events], dtype=float)
    ints = tab[..., :6].astype(np.int64)
    return LHEData(
        header=header, pid=ints[..., 0], status=ints[..., 1], mothers=ints[..., 2:4], colours=ints[..., 4:6],
        momenta=tab[..., 6:10], mass=tab[..., 10], lifetime=tab[..., 11], spin=tab[..., 12], mask=mask,
        weight=heads[:, 2], process_id=heads[:, 1].astype(np.int64), scale=heads[:, 3], alpha_qed=heads[:, 4],
        alpha_qcd=heads[:, 5], named_weights=np.stack([w for _, _, w in events]),
    )


def read_lhe(path: str | Path, *, max_events: int | None = None, chunk_size: int = 10000) -> LHEData:
    """Read (up to ``max_events``) events of an LHE file into one :class:`LHEData` (padded to the largest event)."""
    chunks = list(iter_lhe_chunks(path, chunk_size, max_events=max_events))
    if not chunks:
        raise StoreError(f"{path}: the file contains no <event> blocks.")
    m = max(c.mask.shape[1] for c in chunks)

    def pad(a: np.ndarray) -> np.ndarray:
        widths = [(0, 0), (0, m - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, widths)

    per_particle = ("pid", "status", "mothers", "colours", "momenta", "mass", "lifetime", "spin", "mask")
    merged = {
        name: np.concatenate([pad(getattr(c, name)) if name in per_particle else getattr(c, name) for c in chunks])
        for name in per_particle + ("weight", "process_id", "scale", "alpha_qed", "alpha_qcd", "named_weights")
    }
    return LHEData(header=chunks[0].header, **merged)
