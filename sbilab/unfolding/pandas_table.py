r"""Read a pandas ``DataFrame.to_hdf`` table in the ATLAS per-event layout, without pandas or pickle.

ATLAS's unbinned Z+jets result (arXiv:2405.20041) is a pandas data frame saved to HDF5 under
the key ``df``: one column per observable and the weight columns ``weights_nominal``,
``weights_ensemble_<i>``, ``weights_bootstrap_mc_<i>``, ``weights_bootstrap_data_<i>`` and one per
systematic. pandas' *fixed* format stores the column names as byte strings (``axis0``,
``block<k>_items``) and the values as plain numeric blocks (``block<k>_values``, rows × columns),
which h5py reads directly: no pandas, no PyTables, no pickle. pandas' *table* format keeps its
column names in pickled attributes and is refused (re-save it with ``format="fixed"``).

Example:
    >>> import h5py, numpy as np, tempfile
    >>> path = tempfile.mkdtemp() + "/df.h5"
    >>> with h5py.File(path, "w") as f:
    ...     g = f.create_group("df"); g.attrs["pandas_type"] = b"frame"; g.attrs["nblocks"] = 1
    ...     g["axis0"] = np.array([b"pt", b"weights_nominal"]); g["block0_items"] = g["axis0"][()]
    ...     g["block0_values"] = np.array([[10.0, 1.0], [20.0, 2.0]])
    >>> res = read_pandas_table(path, units={"pt": "GeV"})
    >>> res.observables, res.weights_nominal.tolist()
    (('pt',), [1.0, 2.0])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from ..exceptions import PublishError
from .result import UnfoldedResult

__all__ = ["read_pandas_table"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_pandas_table(path: str | os.PathLike, *, key: str = "df", units: Mapping[str, str] | None = None,
                      iterations: int = 0, settings: Mapping[str, Any] | None = None) -> UnfoldedResult:
    """Read a pandas fixed-format HDF5 frame of the ATLAS layout into an :class:`UnfoldedResult`.

    Columns named ``weights_*`` are weight columns; every other numeric column is an observable.

    Args:
        path: The ``.h5`` file written by ``DataFrame.to_hdf(path, key=key)``.
        key: The frame's key.
        units: Units by observable name (default ``""``).
        iterations, settings: Recorded in the result (the table does not carry them).

    Raises:
        PublishError: not a pandas frame, table format, non-numeric columns, or a layout that
            cannot be read; the result's own errors for inconsistent weights.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise PublishError(f"{path} is not a readable HDF5 file: {err}") from err
    with f:
        if key not in f or not isinstance(f[key], h5py.Group):
            raise PublishError(f"{path} has no pandas frame under key {key!r}; keys: {list(f.keys())}.")
        group = f[key]
        kind = _text(group.attrs.get("pandas_type", b""))
        if kind == "frame_table":
            raise PublishError(f"{path}: pandas 'table' format keeps its column names pickled; re-save with "
                               "df.to_hdf(path, key=..., format='fixed') or build UnfoldedResult.from_columns yourself.")
        if kind != "frame":
            raise PublishError(f"{path}/{key} is not a pandas data frame (pandas_type {kind!r}).")
        columns: dict[str, np.ndarray] = {}
        for b in range(int(group.attrs.get("nblocks", 0))):
            names = [_text(n) for n in group[f"block{b}_items"][()]]
            values = group[f"block{b}_values"][()]
            if values.dtype.kind not in "biuf":
                raise PublishError(f"{path}: columns {names[:5]} are not numeric ({values.dtype}); only numbers are read.")
            for i, name in enumerate(names):
                columns[name] = values[:, i]
        order = [_text(n) for n in group["axis0"][()]] if "axis0" in group else list(columns)
    if set(order) != set(columns):
        raise PublishError(f"{path}: the frame's column list and its blocks disagree.")
    observables = [c for c in order if not c.startswith("weights_")]
    if not observables:
        raise PublishError(f"{path}: the frame has no observable columns (only weights_* columns).")
    units = dict(units or {})
    events = torch.from_numpy(np.stack([columns[c].astype(np.float64, copy=False) for c in observables], 1))
    weights = {c: torch.from_numpy(np.ascontiguousarray(columns[c])) for c in order if c.startswith("weights_")}
    return UnfoldedResult.from_columns(events, observables, [units.get(o, "") for o in observables], weights,
                                       iterations=iterations, settings=settings)
