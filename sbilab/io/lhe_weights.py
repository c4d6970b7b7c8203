r"""Normalising LHE event weights to a cross section, and turning weight groups into systematics.

**Normalisation.** :func:`normalisation` returns, per event, the factor :math:`f_j` such that
:math:`w_j = f_j\,\mathrm{XWGTUP}_j` is the event's cross section in pb and
:math:`\sum_j w_j = \sigma` (a histogram filled with :math:`w_j` is :math:`d\sigma` per bin;
times a luminosity in pb⁻¹ it is the expected count). The same factor applies to the event's
named weights, which share XWGTUP's units. Per weighting strategy IDWTUP of the Les Houches
Accord (arXiv:hep-ph/0109068, sec. 2; LHEF arXiv:hep-ph/0609017; LHEF 3 arXiv:1405.1067):

========  ==============================================================  ==========================================
IDWTUP    meaning of XWGTUP (and XSECUP)                                   :math:`f_j` for an event of process i
========  ==============================================================  ==========================================
+1, −1    weight in pb; the mean weight of process i's events is its      :math:`1/N_i` (``event_norm="sum"``: 1)
          cross section (the shower generator picks processes by XMAXUP
          and accepts with XWGTUP/XMAXUP); −1: signed; XSECUP not needed
+2, −2    relative weight within process i, whose cross section is         :math:`\mathrm{XSECUP}_i / \sum_{k\in i}\mathrm{XWGTUP}_k`
          XSECUP_i (−2: signed weights, XSECUP_i the net cross section)
+3, −3    unit weight +1 (−3: ±1); process i has cross section XSECUP_i    :math:`\mathrm{XSECUP}_i / \sum_{k\in i}\mathrm{XWGTUP}_k`
+4, −4    weight in pb, used as given, whose mean is σ (−4: signed);       :math:`1/N` (``event_norm="sum"``: 1)
          XSECUP informative only
========  ==============================================================  ==========================================

``N`` is the number of events read, :math:`N_i` those of process i (LPRUP = IDPRUP). MadGraph's run card ``event_norm`` (kept in the header)
says whether its weights average (``"average"``, ``"bias"``) or sum (``"sum"``) to σ; it is
honoured for ±1 and ±4. So a Pythia file with IDWTUP = 3, XWGTUP = 1 and XSECUP = 48.77 pb gives
weights that sum to 48.77 pb, not to the number of events.

**Systematics.** :func:`weight_sets` finds the scale-variation envelope and the PDF error sets
among the declared weights (:class:`WeightSet`), and :func:`combine_variations` turns the
members' yields into down/up variations, element by element (per bin of a histogram, or per
event):

- ``envelope`` (μR, μF variations): down/up = min/max over the members and the nominal;
- ``replicas`` (NNPDF Monte Carlo sets): nominal ∓ the standard deviation of the replicas
  (ddof = 1; arXiv:1412.7420, eq. 2.5 of the PDF4LHC recommendations arXiv:1510.03865);
- ``hessian`` (asymmetric eigenvector pairs, e.g. CT): nominal − :math:`\sqrt{\sum_k \max(w_0 - w_{2k-1}, w_0 - w_{2k}, 0)^2}`
  and nominal + :math:`\sqrt{\sum_k \max(w_{2k-1} - w_0, w_{2k} - w_0, 0)^2}` (arXiv:1510.03865, eq. 2.2);
- ``symmhessian`` (one member per eigenvector, e.g. PDF4LHC15_30): nominal ∓ :math:`\sqrt{\sum_k (w_k - w_0)^2}`.

Take the envelope, standard deviation or quadrature sum of the *histograms* (bin by bin): the
variation that is largest differs between bins, so combining per event first overestimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..exceptions import FileFormatError, InvalidEventsError
from .lhe_header import LHEHeader, LHEWeight

__all__ = ["Normalisation", "normalisation", "WeightSet", "weight_sets", "combine_variations", "COMBINE_KINDS"]

COMBINE_KINDS = ("envelope", "replicas", "hessian", "symmhessian")
Combine = Literal["envelope", "replicas", "hessian", "symmhessian"]


@dataclass(frozen=True)
class Normalisation:
    """Per-process factors turning XWGTUP (and named weights) into cross sections in pb.

    Attributes:
        idwtup: The weighting strategy used.
        event_norm: ``"average"`` or ``"sum"`` (the convention applied for IDWTUP ±1, ±4).
        n_events: Number of events it was computed from.
        factors: LPRUP -> factor :math:`f` (weight in pb = f · XWGTUP).
        cross_section: :math:`\\sigma = \\sum_j f_j\\,\\mathrm{XWGTUP}_j` in pb.
    """

    idwtup: int
    event_norm: str
    n_events: int
    factors: dict[int, float]
    cross_section: float

    def factor(self, process_id: np.ndarray) -> np.ndarray:
        """Factors ``(N,)`` for the events' process ids ``(N,)``.

        Raises:
            FileFormatError: an event's process was not seen when the normalisation was computed.
        """
        ids = np.asarray(process_id, dtype=np.int64)
        unknown = sorted(set(np.unique(ids).tolist()) - set(self.factors))
        if unknown:
            raise FileFormatError(f"events of processes {unknown} have no normalisation; it was computed for {sorted(self.factors)}.")
        keys = np.array(sorted(self.factors), dtype=np.int64)
        values = np.array([self.factors[k] for k in keys.tolist()], dtype=float)
        return values[np.searchsorted(keys, ids)]


def normalisation(header: LHEHeader, process_id: np.ndarray, weight: np.ndarray, *, event_norm: str | None = None) -> Normalisation:
    """The :class:`Normalisation` of a whole sample: ``process_id (N,)`` (IDPRUP) and ``weight (N,)`` (XWGTUP).

    Args:
        header: The file's header (IDWTUP, per-process XSECUP).
        event_norm: ``"average"`` or ``"sum"`` for IDWTUP ±1, ±4 (default: the header's, else ``"average"``;
            MadGraph's ``"bias"`` counts as ``"average"``).

    Raises:
        FileFormatError: no events; an event's process is not declared in ``<init>`` (IDWTUP ±2, ±3);
            the weights of a process sum to zero; an unknown ``event_norm``.
    """
    ids = np.asarray(process_id, dtype=np.int64)
    w = np.asarray(weight, dtype=float)
    n = int(ids.shape[0])
    if n == 0:
        raise FileFormatError("normalisation: no events; read at least one event first.")
    norm = event_norm or header.event_norm or "average"
    norm = "average" if norm == "bias" else norm
    if norm not in ("average", "sum"):
        raise FileFormatError(f"event_norm must be 'average' or 'sum', got {norm!r}.")
    present = np.unique(ids)
    if abs(header.idwtup) == 4:
        f = 1.0 / n if norm == "average" else 1.0
        return Normalisation(header.idwtup, norm, n, {int(p): f for p in present}, float(w.sum() * f))
    if abs(header.idwtup) == 1:  # per process: sigma_i = mean weight of its events
        per = {int(p): (1.0 / int((ids == p).sum()) if norm == "average" else 1.0) for p in present}
        return Normalisation(header.idwtup, norm, n, per, float(sum(w[ids == p].sum() * f for p, f in per.items())))
    xsec = {int(p): float(x) for x, p in zip(header.cross_sections[:, 0], header.process_ids)}
    factors: dict[int, float] = {}
    for p in present.tolist():
        if p not in xsec:
            raise FileFormatError(
                f"events have process id IDPRUP = {p}, which the <init> block does not declare (LPRUP: {sorted(xsec)}); "
                f"IDWTUP = {header.idwtup} needs its XSECUP."
            )
        total = float(w[ids == p].sum())
        if total == 0.0:
            raise FileFormatError(f"the XWGTUP of process {p} sum to 0, so IDWTUP = {header.idwtup} cannot normalise them to XSECUP.")
        factors[p] = xsec[p] / total
    return Normalisation(header.idwtup, norm, n, factors, float(sum(xsec[p] for p in factors)))


@dataclass(frozen=True)
class WeightSet:
    """A systematic built from named weights.

    Attributes:
        name: The weight group's name (the nuisance parameter's name).
        kind: One of :data:`COMBINE_KINDS`.
        nominal: Id of the nominal member, or ``None`` for the event weight XWGTUP.
        members: Ids of the variations (Hessian: eigenvector pairs in order, (+, −) each).
    """

    name: str
    kind: Combine
    nominal: str | None
    members: tuple[str, ...]


def _scale_set(name: str, weights: list[LHEWeight], points: int) -> WeightSet | None:
    scaled = [w for w in weights if w.mur is not None and w.muf is not None and w.dyn_scale in (None, "-1")]
    if not scaled:
        return None
    pdfs = [w.pdf for w in scaled]
    pdf = max(set(pdfs), key=pdfs.count)
    factors = (0.5, 1.0, 2.0)
    keep = [w for w in scaled if w.pdf == pdf and w.mur in factors and w.muf in factors]
    if points == 7:
        keep = [w for w in keep if {w.mur, w.muf} != {0.5, 2.0}]
    nominal = next((w.id for w in keep if w.mur == 1.0 and w.muf == 1.0), None)
    members = tuple(w.id for w in keep if not (w.mur == 1.0 and w.muf == 1.0))
    return WeightSet(name, "envelope", nominal, members) if members else None


def weight_sets(header: LHEHeader, *, scale_points: Literal[7, 9] = 7) -> tuple[WeightSet, ...]:
    """The systematics the file's weight groups define.

    A group with ``combine="envelope"`` — or, in older files without ``combine``, a group whose
    every weight states μR and μF factors — gives the scale envelope over the points with
    factors in {1/2, 1, 2} of the default dynamical scale and the most common PDF (7-point:
    without the opposite pairs (1/2, 2) and (2, 1/2); 9-point: all). A group with
    ``combine`` ``replicas``, ``hessian`` or ``symmhessian`` gives a PDF set whose nominal is
    its member 0 (the lowest LHAPDF id, or ``MemberID=0``). Groups without a usable
    ``combine`` (e.g. a single alternative PDF) give nothing.
    """
    by_id = {w.id: w for w in header.weights}
    sets: list[WeightSet] = []
    for group in header.weight_groups:
        weights = [by_id[i] for i in group.ids if i in by_id]
        combine = (group.combine or "").lower()
        if combine == "envelope" or (not combine and weights and all(w.mur is not None for w in weights)):
            found = _scale_set(group.name, weights, scale_points)
            if found is not None:
                sets.append(found)
        elif combine in ("replicas", "hessian", "symmhessian") and len(weights) > 1:
            zero = [w for w in weights if w.member == 0]
            if not zero:
                with_pdf = [w for w in weights if w.pdf is not None]
                zero = [min(with_pdf, key=lambda w: w.pdf)] if with_pdf else [weights[0]]  # type: ignore[arg-type,return-value]
            nominal = zero[0].id
            sets.append(WeightSet(group.name, combine, nominal, tuple(w.id for w in weights if w.id != nominal)))  # type: ignore[arg-type]
    return tuple(sets)


def combine_variations(nominal: np.ndarray, members: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Down and up variations from the members of a weight set, element by element.

    Args:
        nominal: Nominal yields, any shape ``S`` (a histogram ``(B,)``, or per-event weights ``(N,)``).
        members: The members' yields, ``(K,) + S``.
        kind: One of :data:`COMBINE_KINDS` (see the module docstring for each formula).

    Returns:
        ``(down, up)``, each of shape ``S``.

    Raises:
        InvalidEventsError: unknown kind, shapes that do not match, or an odd number of Hessian members.

    Example:
        >>> down, up = combine_variations(np.array([10.0]), np.array([[12.0], [9.0], [11.0], [10.5]]), "hessian")
        >>> down.round(6).tolist(), up.round(6).tolist()  # pairs (12, 9) and (11, 10.5)
        ([9.0], [12.236068])
    """
    w0 = np.asarray(nominal, dtype=float)
    m = np.asarray(members, dtype=float)
    if m.ndim != w0.ndim + 1 or m.shape[1:] != w0.shape or m.shape[0] == 0:
        raise InvalidEventsError(f"members has shape {m.shape}; expected (K,) + {w0.shape} with K >= 1 (one row per member).")
    if kind == "envelope":
        return np.minimum(w0, m.min(0)), np.maximum(w0, m.max(0))
    if kind == "replicas":
        if m.shape[0] < 2:
            raise InvalidEventsError("replicas: need at least 2 replicas for a standard deviation.")
        sd = m.std(axis=0, ddof=1)
        return w0 - sd, w0 + sd
    if kind == "hessian":
        if m.shape[0] % 2:
            raise InvalidEventsError(f"hessian: {m.shape[0]} members; asymmetric Hessian sets come in (+, -) pairs per eigenvector.")
        d = m - w0
        plus, minus = d[0::2], d[1::2]
        up = np.sqrt((np.maximum(np.maximum(plus, minus), 0.0) ** 2).sum(0))
        down = np.sqrt((np.maximum(np.maximum(-plus, -minus), 0.0) ** 2).sum(0))
        return w0 - down, w0 + up
    if kind == "symmhessian":
        sd = np.sqrt(((m - w0) ** 2).sum(0))
        return w0 - sd, w0 + sd
    raise InvalidEventsError(f"combine kind {kind!r} is not known; choose one of {COMBINE_KINDS}.")

