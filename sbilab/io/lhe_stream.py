r"""Streaming LHE files larger than memory: one cheap pass for the normalisation, then chunks into a store.

:func:`scan_normalisation` reads only each event's first line (and the status column of its
particle lines) to get the number of events, the per-process sums of XWGTUP the IDWTUP
normalisation needs (:mod:`sbilab.io.lhe_weights`) and the largest number of selected particles.
:func:`lhe_to_store` then streams :class:`~sbilab.io.lhe.LHEData` chunks into a
:class:`~sbilab.store.SimulationStore` (each chunk committed before the next is read), as
observed :class:`~sbilab.events.Events` of padded particle sets with a mask and weights in pb
that sum to σ over the whole file. Memory stays at one chunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import FileFormatError
from ..store import SimulationStore
from .lhe import iter_lhe_chunks
from .lhe_parse import event_blocks, floats, open_lhe, read_header
from .lhe_header import LHEHeader
from .lhe_weights import Normalisation, normalisation

__all__ = ["LHEScan", "scan_normalisation", "lhe_to_store"]


@dataclass(frozen=True)
class LHEScan:
    """What one pass over an LHE file found.

    Attributes:
        header: The file's header.
        normalisation: The IDWTUP normalisation of the whole file.
        n_events: Number of events.
        max_selected: Largest number of particles with the scanned status codes in one event.
    """

    header: LHEHeader
    normalisation: Normalisation
    n_events: int
    max_selected: int


def scan_normalisation(path: str | os.PathLike, *, status: Sequence[int] | None = (1,), idwtup: int | None = None,
                       event_norm: str | None = None, progress: bool = False) -> LHEScan:
    """One pass over ``path`` reading only event heads and particle status codes.

    Raises:
        FileFormatError: as :func:`~sbilab.io.lhe.read_lhe` (truncated file, bad IDWTUP, no events).
    """
    keep = None if status is None else {int(s) for s in status}
    ids: list[int] = []
    weights: list[float] = []
    widest = 0
    with open_lhe(path) as fh:
        header = read_header(fh, str(path), idwtup)
        bar = tqdm(desc=f"scanning {Path(path).name}", unit=" events", disable=not progress)
        for _, block in event_blocks(fh, str(path)):
            lines: list[str] = []
            need = 1
            try:
                for ln in block:
                    if ln.strip() and not ln.lstrip().startswith(("#", "<")):
                        lines.append(ln)
                        if len(lines) == 1:
                            head = floats(ln)
                            need = 1 + int(head[0])
                        if len(lines) == need:
                            break
                particles = lines[1:need]
                count = len(particles) if keep is None else sum(int(ln.split()[1]) in keep for ln in particles)
            except (ValueError, IndexError) as err:
                raise FileFormatError(f"{path}: event {len(ids)} has a malformed line ({err}).") from None
            ids.append(int(head[1]))
            weights.append(head[2])
            widest = max(widest, count)
            bar.update()
        bar.close()
    if not ids:
        raise FileFormatError(f"{path}: the file contains no <event> blocks.")
    norm = normalisation(header, np.array(ids), np.array(weights), event_norm=event_norm)
    return LHEScan(header, norm, len(ids), widest)


def lhe_to_store(
    path: str | os.PathLike,
    store: str | os.PathLike,
    *,
    features: Sequence[str] = ("pt", "eta", "phi", "m"),
    status: Sequence[int] | None = (1,),
    chunk_size: int = 10000,
    idwtup: int | None = None,
    event_norm: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SimulationStore:
    """Stream the events of an LHE file into a new :class:`~sbilab.store.SimulationStore`.

    Each event becomes a padded set ``x (M, F)`` of its particles with the given status codes
    (hardest first; ``M`` the file's largest such count, found by :func:`scan_normalisation`), a
    mask ``(M,)`` and its cross section in pb as weight. The store's metadata ``extra["lhe"]``
    records the source file, IDWTUP, σ, the features and the header's generators and weight ids.

    Args:
        path: The LHE file (plain or gzip).
        store: Directory of the new store.
        features: Per-particle features (see :meth:`~sbilab.io.lhe.LHEData.features`).
        status: Status codes of the particles kept (``None``: all).
        chunk_size: Events per chunk (the memory bound).
        idwtup, event_norm: Overrides of the file's weighting strategy and event_norm.
        overwrite: Replace an existing store.
        progress: Show a progress bar.

    Returns:
        The store, open for reading.

    Raises:
        FileFormatError: as :func:`~sbilab.io.lhe.read_lhe`. StoreError: ``store`` exists.
    """
    scan = scan_normalisation(path, status=status, idwtup=idwtup, event_norm=event_norm, progress=False)
    width = max(1, scan.max_selected)
    header = scan.header
    extra = {"lhe": {
        "file": str(path), "idwtup": header.idwtup, "cross_section_pb": scan.normalisation.cross_section,
        "event_norm": scan.normalisation.event_norm, "n_events": scan.n_events, "features": list(features),
        "status": None if status is None else [int(s) for s in status], "generators": list(header.generators),
        "weight_ids": list(header.weight_ids),
    }}
    out = SimulationStore.create(store, observable_names=list(features), parameter_names=[], extra=extra,
                                 max_chunk_rows=max(chunk_size, 1), overwrite=overwrite)
    bar = tqdm(total=scan.n_events, desc=f"{Path(path).name} -> store", unit=" events", disable=not progress)
    try:
        for chunk in iter_lhe_chunks(path, chunk_size, idwtup=idwtup):
            sel = chunk.select(status=status)
            grow = [(0, 0), (0, width - sel.mask.shape[1])]
            x = np.pad(sel.features(features), grow + [(0, 0)])
            events = Events.observed(x, weights=chunk.cross_section_weights(scan.normalisation), mask=np.pad(sel.mask, grow))
            out.append(events)
            bar.update(len(chunk))
    finally:
        bar.close()
        out.close()
    return SimulationStore.open(store)

