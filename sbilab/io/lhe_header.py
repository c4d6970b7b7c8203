r"""The header of a Les Houches Event file: beams, weighting strategy, processes, generators and
the declared event weights (LHEF, arXiv:hep-ph/0609017; LHEF 3.0, arXiv:1405.1067).

The ``<init>`` block's first line is the HEPRUP common block of the Les Houches Accord
(arXiv:hep-ph/0109068): ``IDBMUP(2) EBMUP(2) PDFGUP(2) PDFSUP(2) IDWTUP NPRUP``, followed by one
line ``XSECUP XERRUP XMAXUP LPRUP`` per process; LHEF 3 adds ``<generator>`` tags there.
``<initrwgt>`` declares the named weights each event carries in ``<rwgt>``, grouped in
``<weightgroup>`` with a ``combine`` attribute (``envelope`` for scale variations, ``replicas``,
``hessian`` or ``symmhessian`` for PDF error sets); LHEF 3 also allows ``<weightinfo>``
declarations for the positional ``<weights>`` tag. Scale factors are read from the attributes
(``MUR``/``MUF``, any case) or, in older files, from the free-text label
(``muR=0.20000E+01 muF=0.10000E+01``); PDF members from a ``PDF`` attribute or ``PDF=… MemberID=…`` text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..exceptions import FileFormatError

__all__ = ["IDWTUP_VALUES", "LHEWeight", "WeightGroup", "LHEHeader", "parse_header"]

IDWTUP_VALUES = (1, -1, 2, -2, 3, -3, 4, -4)
"""Weighting strategies of the Les Houches Accord (see :func:`sbilab.io.lhe_weights.normalisation`)."""

_ATTR = re.compile(r"""([\w:.-]+)\s*=\s*(["'])(.*?)\2""")
_DECL = re.compile(
    r"<weightgroup\b([^>]*)>|</weightgroup>|<weight\b([^>]*?)(?:/>|>(.*?)</weight>)|<weightinfo\b([^>]*?)(?:/>|>(.*?)</weightinfo>)",
    re.S,
)
_GENERATOR = re.compile(r"<generator\b([^>]*)>(.*?)</generator>", re.S)
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?)"
_TEXT_MUR = re.compile(r"(?i)\bmu_?r\s*=\s*" + _NUMBER)
_TEXT_MUF = re.compile(r"(?i)\bmu_?f\s*=\s*" + _NUMBER)
_TEXT_PDF = re.compile(r"(?i)\b(?:pdf|lhapdf|pdfset)\s*=\s*(\d+)")
_TEXT_MEMBER = re.compile(r"(?i)\bmemberid\s*=\s*(\d+)")


def attributes(text: str) -> dict[str, str]:
    """``key="value"`` pairs of an XML start tag's attribute text."""
    return {k: v for k, _, v in _ATTR.findall(text)}


def _number(text: str) -> float:
    return float(text.replace("D", "E").replace("d", "e"))


@dataclass(frozen=True)
class LHEWeight:
    """One declared named weight.

    Attributes:
        id: Its id in ``<rwgt><wgt id=...>`` (or its name for ``<weightinfo>``).
        group: Name of its ``<weightgroup>`` ("" outside a group).
        text: The free-text label.
        attributes: All XML attributes of the declaration.
        mur, muf: Renormalisation and factorisation scale factors (``None`` if not stated).
        pdf: LHAPDF id of the PDF member (``None`` if not stated).
        member: PDF member index from a ``MemberID=`` label (``None`` if not stated).
        dyn_scale: Dynamical scale choice of MadGraph's ``DYN_SCALE`` (``None`` = the run's default).
    """

    id: str
    group: str
    text: str
    attributes: dict[str, str] = field(repr=False)
    mur: float | None = None
    muf: float | None = None
    pdf: int | None = None
    member: int | None = None
    dyn_scale: str | None = None


def _weight(attrs: dict[str, str], text: str, group: str) -> LHEWeight:
    low = {k.lower(): v for k, v in attrs.items()}

    def scale(key: str, pattern: re.Pattern[str]) -> float | None:
        if key in low:
            return _number(low[key])
        found = pattern.search(text)
        return _number(found.group(1)) if found else None

    mur, muf = scale("mur", _TEXT_MUR), scale("muf", _TEXT_MUF)
    if (mur is None) != (muf is None) and ("mur" in low or "muf" in low or _TEXT_MUR.search(text) or _TEXT_MUF.search(text)):
        # MadGraph labels state only the factors that differ from 1 ("MUR=0.5" means muF = 1)
        mur, muf = (1.0 if mur is None else mur), (1.0 if muf is None else muf)
    pdf_text = _TEXT_PDF.search(text)
    pdf = int(low["pdf"]) if low.get("pdf", "").strip().lstrip("-").isdigit() else (int(pdf_text.group(1)) if pdf_text else None)
    member = _TEXT_MEMBER.search(text)
    return LHEWeight(
        id=attrs.get("id", attrs.get("name", "")), group=group, text=text.strip(), attributes=attrs, mur=mur, muf=muf,
        pdf=pdf, member=int(member.group(1)) if member else None, dyn_scale=low.get("dyn_scale"),
    )


@dataclass(frozen=True)
class WeightGroup:
    """A ``<weightgroup>`` of ``<initrwgt>``.

    Attributes:
        name: Its ``name`` (or ``type``) attribute.
        combine: How its members combine into an uncertainty, as declared (``"envelope"``,
            ``"replicas"``, ``"hessian"``, ``"symmhessian"``, ...), ``None`` if not declared.
        ids: Ids of its weights, in order.
        attributes: All XML attributes of the group.
    """

    name: str
    combine: str | None
    ids: tuple[str, ...]
    attributes: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class LHEHeader:
    """What an LHE file declares before its events.

    Attributes:
        beam_ids, beam_energies: PDG ids and energies (GeV) of the two beams.
        cross_sections: Per process: (XSECUP pb, XERRUP pb, XMAXUP, LPRUP), ``(n_proc, 4)``.
        weight_ids: Ids of the named weights (``<rwgt>``), in declaration order.
        weight_info: Per id: ``{"group": ..., "text": ..., <attributes>}`` (as text).
        event_norm: ``"average"``, ``"sum"`` or ``"bias"`` if the (MadGraph) run card says so, else ``None``.
        idwtup: The weighting strategy IDWTUP (one of :data:`IDWTUP_VALUES`).
        pdf_groups, pdf_sets: PDFGUP and PDFSUP of the two beams.
        weights: Per named weight, its parsed :class:`LHEWeight` (scale factors, PDF member).
        weight_groups: The ``<weightgroup>`` declarations with their ``combine`` kinds.
        weightinfo: :class:`LHEWeight` of the LHEF 3 ``<weightinfo>`` declarations, the meaning of the
            positional per-event ``<weights>`` values (empty when the file has none).
        generators: ``<generator>`` tags: ``{"name":, "version":, "text":}`` each.
        version: The ``version`` attribute of ``<LesHouchesEvents>``.
        comment: The ``<!-- ... -->`` text before the header (POWHEG writes its run card there).
    """

    beam_ids: tuple[int, int]
    beam_energies: tuple[float, float]
    cross_sections: np.ndarray
    weight_ids: tuple[str, ...]
    weight_info: dict[str, dict[str, str]] = field(repr=False)
    event_norm: str | None = None
    idwtup: int = 3
    pdf_groups: tuple[int, int] = (0, 0)
    pdf_sets: tuple[int, int] = (0, 0)
    weights: tuple[LHEWeight, ...] = field(default=(), repr=False)
    weight_groups: tuple[WeightGroup, ...] = ()
    weightinfo: tuple[LHEWeight, ...] = field(default=(), repr=False)
    generators: tuple[dict[str, str], ...] = ()
    version: str = ""
    comment: str = field(default="", repr=False)

    @property
    def process_ids(self) -> np.ndarray:
        """LPRUP of the declared processes, ``(n_proc,)`` int."""
        return self.cross_sections[:, 3].astype(np.int64)

    def weight(self, weight_id: str) -> LHEWeight:
        """The declaration of one named weight; raises :class:`FileFormatError` naming the declared ids."""
        for w in self.weights:
            if w.id == str(weight_id):
                return w
        raise FileFormatError(f"LHE weight {weight_id!r} is not declared in <initrwgt>; declared: {list(self.weight_ids)[:20]}.")


def _declarations(text: str) -> tuple[list[LHEWeight], list[WeightGroup], list[LHEWeight]]:
    weights: list[LHEWeight] = []
    infos: list[LHEWeight] = []
    groups: list[WeightGroup] = []
    start, stop = text.find("<initrwgt>"), text.find("</initrwgt>")
    if start < 0 or stop < start:
        return weights, groups, infos
    group_attrs: dict[str, str] | None = None
    members: list[str] = []
    for match in _DECL.finditer(text[start:stop]):
        whole = match.group(0)
        if whole.startswith("</weightgroup"):
            if group_attrs is not None:
                name = group_attrs.get("name", group_attrs.get("type", ""))
                groups.append(WeightGroup(name, group_attrs.get("combine"), tuple(members), group_attrs))
            group_attrs, members = None, []
        elif match.group(1) is not None:
            group_attrs, members = attributes(match.group(1)), []
        else:
            is_info = match.group(4) is not None
            attrs = attributes(match.group(4) if is_info else match.group(2))
            group = "" if group_attrs is None else group_attrs.get("name", group_attrs.get("type", ""))
            w = _weight(attrs, (match.group(5) if is_info else match.group(3)) or "", group)
            if is_info:
                infos.append(w)
            elif "id" in attrs:
                weights.append(w)
                members.append(w.id)
    return weights, groups, infos


def parse_header(head: list[str], init: list[str], path: str, *, version: str = "", idwtup: int | None = None) -> LHEHeader:
    """Build the :class:`LHEHeader` from the lines before ``<init>`` and inside it.

    ``idwtup`` replaces the file's IDWTUP (for files that declare a wrong one).

    Raises:
        FileFormatError: the ``<init>`` block is malformed, or IDWTUP is 0 or not one of ±1..±4.
    """
    text = "".join(head)
    weights, groups, infos = _declarations(text)
    norm = re.search(r"^\s*(average|sum|bias)\s*=\s*event_norm", text, re.M)
    comment = re.search(r"<!--(.*?)-->", text, re.S)
    init_text = "".join(init)
    rows = []
    for line in init_text.split("\n"):
        if line.strip() and not line.lstrip().startswith(("<", "#")):
            try:
                rows.append([_number(t) for t in line.split()])
            except ValueError:
                break  # the text of a tag spanning lines (e.g. a <generator> comment): numbers end here
    if not rows or len(rows[0]) < 10:
        raise FileFormatError(f"{path}: the <init> block is malformed (expected 10 numbers on its first line).")
    beam = rows[0]
    n_proc = int(beam[9])
    procs = [r[:4] for r in rows[1:1 + n_proc]]
    if len(procs) != n_proc or any(len(p) < 4 for p in procs):
        raise FileFormatError(f"{path}: the <init> block declares NPRUP = {n_proc} processes but has {len(procs)} process lines.")
    idwtup = int(beam[8]) if idwtup is None else int(idwtup)
    if idwtup not in IDWTUP_VALUES:
        raise FileFormatError(
            f"{path}: IDWTUP = {idwtup} in the <init> block is not a Les Houches weighting strategy; it must be one of "
            f"{IDWTUP_VALUES} (hep-ph/0109068). Pass idwtup= (e.g. read_lhe(path, idwtup=3) for unit-weight events) if you know the right one."
        )
    gens = tuple({**attributes(a), "text": t.strip()} for a, t in _GENERATOR.findall(init_text + text))
    return LHEHeader(
        beam_ids=(int(beam[0]), int(beam[1])), beam_energies=(beam[2], beam[3]),
        cross_sections=np.array(procs, dtype=float).reshape(-1, 4),
        weight_ids=tuple(w.id for w in weights),
        weight_info={w.id: {**w.attributes, "group": w.group, "text": w.text} for w in weights},
        event_norm=norm.group(1) if norm else None, idwtup=idwtup,
        pdf_groups=(int(beam[4]), int(beam[5])), pdf_sets=(int(beam[6]), int(beam[7])),
        weights=tuple(weights), weight_groups=tuple(groups), weightinfo=tuple(infos), generators=gens,
        version=version, comment=comment.group(1).strip() if comment else "",
    )

