r"""A streaming reader of Les Houches Event files (LHEF, arXiv:hep-ph/0609017, LHEF 3.0
arXiv:1405.1067), plain or gzip-compressed.

The file is read line by line (never loaded whole): :func:`read_lhe_header` parses the header
(:class:`~sbilab.io.lhe_header.LHEHeader`: beams, IDWTUP, processes, generators, weight groups),
:func:`iter_lhe_chunks` yields :class:`LHEData` blocks of events as numpy arrays, and
:func:`read_lhe` concatenates them. Per event: the particle table (PDG id, status, mothers,
colours, four-momentum :math:`(p_x, p_y, p_z, E)`, mass, lifetime, spin), the event weight
``XWGTUP``, the named weights of ``<rwgt><wgt id=...>`` in declaration order, the LHEF 3
``<weights>`` and ``<scales>`` tags, the ``<event ...>`` attributes, Pythia's ``#pdf`` line,
MadGraph's ``<mgrwt>`` block, and every other comment line as text.

:meth:`LHEData.cross_section_weights` gives per-event cross sections in pb (normalised by
IDWTUP, :mod:`sbilab.io.lhe_weights`); :meth:`LHEData.to_events` gives
:class:`~sbilab.events.Events` of a padded particle set with a mask and those weights;
:meth:`LHEData.to_weighted_events` feeds named weights at benchmark points to
:class:`~sbilab.simulators.weighted.WeightedEvents`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..events import Events
from ..exceptions import FileFormatError, InvalidEventsError
from ..simulators.weighted import WeightedEvents
from .lhe_header import LHEHeader, attributes
from .lhe_parse import event_blocks, floats, numbers, open_lhe, parse_tail, read_header
from .lhe_weights import Normalisation, normalisation

__all__ = ["LHEHeader", "LHEData", "read_lhe_header", "iter_lhe_chunks", "read_lhe"]

FEATURES = ("px", "py", "pz", "E", "pt", "eta", "phi", "m", "pid")
PDF_COLUMNS = ("id1", "id2", "x1", "x2", "scale", "xpdf1", "xpdf2")
_PER_PARTICLE = ("pid", "status", "mothers", "colours", "momenta", "mass", "lifetime", "spin", "mask")
_PER_EVENT = ("weight", "process_id", "scale", "alpha_qed", "alpha_qcd", "named_weights", "lhef3_weights", "pdf", "comments")


@dataclass(frozen=True)
class LHEData:
    """A block of events as arrays; ``N`` events padded to ``M`` particles (``mask`` marks real ones).

    Attributes:
        pid, status: ``(N, M)`` int. mothers, colours: ``(N, M, 2)`` int (1-based as in the file).
        momenta: ``(N, M, 4)`` as (px, py, pz, E) in GeV. mass, lifetime, spin: ``(N, M)``.
        mask: ``(N, M)`` bool. weight: ``XWGTUP``, ``(N,)``. process_id, scale, alpha_qed,
        alpha_qcd: ``(N,)``. named_weights: ``(N, B)`` in ``header.weight_ids`` order (NaN if
        an event lacks one).
        lhef3_weights: Values of the LHEF 3 ``<weights>`` tag, ``(N, K)`` (NaN-padded; meaning in
            ``header.weightinfo`` when declared).
        scales: ``<scales>`` attributes (``muf``, ``mur``, ``mups``, ...) -> ``(N,)`` float, NaN where absent.
        attributes: ``<event ...>`` attributes -> ``(N,)`` str arrays, "" where absent.
        pdf: Pythia's ``#pdf id1 id2 x1 x2 scalePDF xpdf1 xpdf2`` line, ``(N, 7)`` (columns
            :data:`PDF_COLUMNS`), NaN where absent.
        mgrwt: MadGraph's ``<mgrwt>`` block: sub-tag (``rscale``, ``asrwt``, ``pdfrwt_beam1``,
            ``pdfrwt_beam2``, ``totfact``, ...) -> its numbers, ``(N, L)``, NaN-padded.
        comments: Every other ``#`` line and unknown tag of the event, joined by newlines, ``(N,)`` object.
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
    lhef3_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    scales: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    attributes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    pdf: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)), repr=False)
    mgrwt: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    comments: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object), repr=False)

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    # ------------------------------------------------------------------ weights
    def normalisation(self, *, event_norm: str | None = None) -> Normalisation:
        """The IDWTUP normalisation of these events taken as the whole sample (see :mod:`sbilab.io.lhe_weights`)."""
        return normalisation(self.header, self.process_id, self.weight, event_norm=event_norm)

    def cross_section_weights(self, norm: Normalisation | None = None) -> np.ndarray:
        r"""Per-event cross sections in pb, ``(N,)``, summing to σ: :math:`f_j\,\mathrm{XWGTUP}_j`.

        ``norm`` defaults to :meth:`normalisation` of this block; pass the whole file's
        (:func:`~sbilab.io.lhe_stream.scan_normalisation`) when this is one chunk of it.
        """
        norm = self.normalisation() if norm is None else norm
        return norm.factor(self.process_id) * self.weight

    def weights_for(self, ids: Sequence[str], norm: Normalisation | None = None, *, normalise: bool = False) -> np.ndarray:
        """Named weights ``(N, len(ids))`` by weight id, raw or (``normalise=True``) in pb like :meth:`cross_section_weights`.

        Raises:
            InvalidEventsError: an id is not declared, or some events lack it.
        """
        index = {w: i for i, w in enumerate(self.header.weight_ids)}
        missing = [i for i in ids if str(i) not in index]
        if missing:
            raise InvalidEventsError(f"LHE weights {missing} are not declared in <initrwgt>; declared: {list(index)[:20]}...")
        out = self.named_weights[:, [index[str(i)] for i in ids]]
        if np.isnan(out).any():
            raise InvalidEventsError("Some events lack one of the requested named weights (<rwgt> incomplete).")
        if normalise:
            norm = self.normalisation() if norm is None else norm
            out = out * norm.factor(self.process_id)[:, None]
        return out

    # ------------------------------------------------------------------ particles
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
        fields = {n: take(getattr(self, n)) for n in _PER_PARTICLE if n != "mask"}
        return LHEData(**{**self.__dict__, **fields, "mask": take(keep)})

    def particle(self, pids: Sequence[int], rank: int = 0, features: Sequence[str] = ("pt", "eta", "phi", "m")) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(N, F)`` of the ``rank``-th hardest final-state particle with |id| in ``pids``, and ``found (N,)``."""
        sel = self.select(pids=pids)
        if sel.mask.shape[1] <= rank:
            return np.zeros((len(self), len(features))), np.zeros(len(self), dtype=bool)
        return sel.features(features)[:, rank], sel.mask[:, rank].copy()

    def to_events(self, features: Sequence[str] = ("pt", "eta", "phi", "m"), *, status: Sequence[int] | None = (1,),
                  norm: Normalisation | None = None, normalise: bool = True) -> Events:
        """Observed :class:`Events` of the padded particle set ``(N, M, F)`` with mask.

        Weights: per-event cross sections in pb (:meth:`cross_section_weights`, summing to σ),
        or the raw ``XWGTUP`` with ``normalise=False``.
        """
        sel = self.select(status=status)
        weights = self.cross_section_weights(norm) if normalise else self.weight
        return Events.observed(sel.features(features), weights=weights, mask=sel.mask)

    def to_weighted_events(self, x: Any, benchmarks: Any, weight_ids: Sequence[str], *, norm: Normalisation | None = None,
                           normalise: bool = True, **kwargs: Any) -> WeightedEvents:
        """:class:`WeightedEvents` from observables ``x (N, D)`` and the named weights at ``benchmarks (B, P)``.

        ``weight_ids[b]`` is the weight id of benchmark b. With ``normalise=True`` (default) the
        weights are in pb per event (IDWTUP normalisation) and ``event_norm="sum"``, so
        ``cross_section(θ_b)`` is the benchmark's σ in pb; with ``normalise=False`` the raw weights
        and the header's ``event_norm`` (else "average"). kwargs go to :meth:`WeightedEvents.from_arrays`.
        """
        kwargs.setdefault("event_norm", "sum" if normalise else (self.header.event_norm or "average"))
        return WeightedEvents.from_arrays(x, self.weights_for(weight_ids, norm, normalise=normalise), benchmarks, **kwargs)


def read_lhe_header(path: str | Path, *, idwtup: int | None = None) -> LHEHeader:
    """Parse the header and ``<init>`` block of an LHE file (reads only up to the first event).

    Raises:
        FileFormatError: missing file, not LHEF, no complete ``<init>``, IDWTUP not in ±1..±4
            (``idwtup=`` overrides the file's value).
    """
    with open_lhe(path) as fh:
        return read_header(fh, str(path), idwtup)


def iter_lhe_chunks(path: str | Path, chunk_size: int = 10000, *, max_events: int | None = None,
                    idwtup: int | None = None) -> Iterator[LHEData]:
    """Stream the events of ``path`` as :class:`LHEData` blocks of at most ``chunk_size`` events.

    Raises:
        FileFormatError: as :func:`read_lhe_header`; an event that is cut short or malformed.
    """
    with open_lhe(path) as fh:
        header = read_header(fh, str(path), idwtup)
        wid = {w: i for i, w in enumerate(header.weight_ids)}
        events: list[tuple[list[float], np.ndarray, np.ndarray, str, dict[str, Any]]] = []
        count = 0
        for start, block in event_blocks(fh, str(path)):
            body: list[str] = []
            rest: list[str] = []
            need = 1
            try:
                for i, ln in enumerate(block):
                    s = ln.lstrip()
                    if not s or s[0] == "#":
                        rest.append(ln)
                        continue
                    body.append(ln)
                    if len(body) == 1:
                        head = floats(ln)
                        need = 1 + int(head[0])
                    if len(body) == need:
                        rest.extend(block[i + 1:])
                        break
                tokens = " ".join(body[1:]).split()
                table = numbers(tokens).reshape(-1, 13) if len(tokens) == 13 * (need - 1) else np.zeros((len(body) - 1, 0))
            except (ValueError, IndexError) as err:
                raise FileFormatError(f"{path}: event {count} has a malformed line ({err}).") from None
            if not body or table.shape != (need - 1, 13) or len(head) < 6:
                raise FileFormatError(f"{path}: event {count} declares {need - 1} particles but its table has shape {table.shape}.")
            named = np.full(len(wid), np.nan)
            extra = parse_tail(rest, wid, named)
            events.append((head, table, named, start, extra))
            count += 1
            if len(events) == chunk_size:
                yield _assemble(header, events)
                events = []
            if max_events is not None and count >= max_events:
                break
        if events:
            yield _assemble(header, events)


def _columns(dicts: list[dict[str, Any]], fill: Any, dtype: Any) -> dict[str, np.ndarray]:
    keys = sorted({k for d in dicts for k in d})
    return {k: np.array([d.get(k, fill) for d in dicts], dtype=dtype) for k in keys}


def _ragged(rows: list[list[float] | None], width: int | None = None) -> np.ndarray:
    width = max((len(r) for r in rows if r), default=0) if width is None else width
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r:
            out[i, : min(len(r), width)] = r[:width]
    return out


def _assemble(header: LHEHeader, events: list[tuple[list[float], np.ndarray, np.ndarray, str, dict[str, Any]]]) -> LHEData:
    n, m = len(events), max(e[1].shape[0] for e in events)
    tab = np.zeros((n, m, 13))
    mask = np.zeros((n, m), dtype=bool)
    for i, e in enumerate(events):
        tab[i, : e[1].shape[0]] = e[1]
        mask[i, : e[1].shape[0]] = True
    heads = np.array([e[0][:6] for e in events], dtype=float)
    ints = tab[..., :6].astype(np.int64)
    extras = [e[4] for e in events]
    mg_keys = sorted({k for x in extras for k in x.get("mgrwt", {})})
    return LHEData(
        header=header, pid=ints[..., 0], status=ints[..., 1], mothers=ints[..., 2:4], colours=ints[..., 4:6],
        momenta=tab[..., 6:10], mass=tab[..., 10], lifetime=tab[..., 11], spin=tab[..., 12], mask=mask,
        weight=heads[:, 2], process_id=heads[:, 1].astype(np.int64), scale=heads[:, 3], alpha_qed=heads[:, 4],
        alpha_qcd=heads[:, 5], named_weights=np.stack([e[2] for e in events]),
        lhef3_weights=_ragged([x.get("weights") for x in extras]),
        scales=_columns([x.get("scales", {}) for x in extras], np.nan, float),
        attributes=_columns([attributes(e[3]) for e in events], "", object),
        pdf=_ragged([x.get("pdf") for x in extras], 7),
        mgrwt={k: _ragged([x.get("mgrwt", {}).get(k) for x in extras]) for k in mg_keys},
        comments=np.array(["\n".join(x.get("comments", [])) for x in extras], dtype=object),
    )


def _merge_columns(parts: list[dict[str, np.ndarray]], sizes: list[int], fill: Any, dtype: Any) -> dict[str, np.ndarray]:
    keys = sorted({k for p in parts for k in p})
    out = {}
    for k in keys:
        width = max((p[k].shape[1] for p in parts if k in p and p[k].ndim == 2), default=None)
        blocks = []
        for p, n in zip(parts, sizes):
            if k in p:
                a = p[k]
                blocks.append(a if width is None else np.pad(a, [(0, 0), (0, width - a.shape[1])], constant_values=fill))
            else:
                blocks.append(np.full((n,) if width is None else (n, width), fill, dtype=dtype))
        out[k] = np.concatenate(blocks)
    return out


def concatenate(chunks: Sequence[LHEData]) -> LHEData:
    """One :class:`LHEData` from blocks of the same file (padded to the largest event)."""
    m = max(c.mask.shape[1] for c in chunks)
    k = max(c.lhef3_weights.shape[1] for c in chunks)

    def pad(a: np.ndarray, width: int, value: Any = 0) -> np.ndarray:
        return np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=value)

    merged: dict[str, Any] = {name: np.concatenate([pad(getattr(c, name), m) for c in chunks]) for name in _PER_PARTICLE}
    for name in _PER_EVENT:
        merged[name] = np.concatenate([pad(getattr(c, name), k, np.nan) if name == "lhef3_weights" else getattr(c, name) for c in chunks])
    sizes = [len(c) for c in chunks]
    merged["scales"] = _merge_columns([c.scales for c in chunks], sizes, np.nan, float)
    merged["attributes"] = _merge_columns([c.attributes for c in chunks], sizes, "", object)
    merged["mgrwt"] = _merge_columns([c.mgrwt for c in chunks], sizes, np.nan, float)
    return LHEData(header=chunks[0].header, **merged)


def read_lhe(path: str | Path, *, max_events: int | None = None, chunk_size: int = 10000, idwtup: int | None = None) -> LHEData:
    """Read (up to ``max_events``) events of an LHE file into one :class:`LHEData` (padded to the largest event).

    Raises:
        FileFormatError: as :func:`iter_lhe_chunks`, or the file has no events.
    """
    chunks = list(iter_lhe_chunks(path, chunk_size, max_events=max_events, idwtup=idwtup))
    if not chunks:
        raise FileFormatError(f"{path}: the file contains no <event> blocks.")
    return chunks[0] if len(chunks) == 1 else concatenate(chunks)
