r"""Histograms as ``hist.Hist`` objects (scikit-hep), so mplhep/hist users plot them as they already do.

Every histogram sbilab produces is bin edges plus yields (and usually variances): search
templates, morphed templates (:class:`~sbilab.analysis.templates.MorphedHistogram` expected
counts), the LHE systematics of :func:`~sbilab.io.lhe_systematics.binned_systematics`, unfolded
spectra. :func:`to_hist` turns any of them into a ``hist.Hist`` with ``Weight`` storage (values
and variances) or ``Double`` storage (no variances given); :func:`from_hist` reads edges, values
and variances back. Open outer bins (edges ±inf, as :func:`~sbilab.analysis.templates.quantile_edges`
makes) become the axis' underflow/overflow bins, which is how boost-histogram represents them.

Needs the optional extra ``hist`` (``pip install 'sbilab[hist]'``).

Example:
    >>> h = to_hist([0.0, 1.0, 2.0], [3.0, 4.0], [3.0, 5.0], names="m", labels="mass [GeV]")  # doctest: +SKIP
    >>> h.values().tolist(), h.variances().tolist(), h.axes[0].label  # doctest: +SKIP
    ([3.0, 4.0], [3.0, 5.0], 'mass [GeV]')
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..exceptions import ShapeMismatchError

__all__ = ["to_hist", "from_hist", "require_hist"]


def require_hist() -> Any:
    """The ``hist`` module, or an ImportError naming the extra to install."""
    try:
        import hist
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("sbilab.io.hist needs the optional package 'hist': pip install 'sbilab[hist]'.") from err
    return hist


def _as_edges(edges: Any, ndim: int) -> list[np.ndarray]:
    if ndim == 1 and np.ndim(edges) == 1 and not isinstance(edges[0], (list, tuple, np.ndarray)):
        return [np.asarray(edges, dtype=float)]
    return [np.asarray(e, dtype=float).reshape(-1) for e in edges]


def _names(value: str | Sequence[str] | None, ndim: int, default: str) -> list[str]:
    if value is None:
        return [f"{default}{i}" if ndim > 1 else default for i in range(ndim)]
    values = [value] if isinstance(value, str) else list(value)
    if len(values) != ndim:
        raise ShapeMismatchError(f"to_hist: {len(values)} axis names/labels for {ndim} axes.")
    return values


def to_hist(edges: Any, counts: Any, variances: Any = None, *, names: str | Sequence[str] | None = None,
            labels: str | Sequence[str] | None = None, label: str | None = None) -> Any:
    """A ``hist.Hist`` from bin edges, yields and variances.

    Args:
        edges: Bin edges ``(B + 1,)`` for one axis, or one array per axis for ``counts`` of
            shape ``(B1, B2, ...)``; increasing; the outermost may be ±inf (open bins -> flow bins).
        counts: Yields, ``(B,)`` or ``(B1, B2, ...)`` (numpy or torch).
        variances: Variances of the yields, same shape (``None``: Double storage, whose
            ``variances()`` hist treats as Poisson).
        names: Axis names (default ``"x"``, or ``"x0", "x1", ...``).
        labels: Axis labels (default: the names).
        label: The histogram's label (e.g. the sample name).

    Raises:
        ShapeMismatchError: counts/variances do not match the edges, edges not increasing, or an
            axis with no finite bin (edges ``[-inf, inf]``).
    """
    hist = require_hist()
    values = np.asarray(counts.detach().cpu() if hasattr(counts, "detach") else counts, dtype=float)
    var = None if variances is None else np.asarray(variances.detach().cpu() if hasattr(variances, "detach") else variances, dtype=float)
    ndim = max(values.ndim, 1)
    values = values.reshape(values.shape if values.ndim else (1,))
    axes_edges = _as_edges(edges, ndim)
    expected = tuple(len(e) - 1 for e in axes_edges)
    if values.shape != expected or (var is not None and var.shape != expected):
        raise ShapeMismatchError(
            f"to_hist: counts {values.shape}" + ("" if var is None else f" and variances {var.shape}")
            + f" do not match the edges, which give bins {expected}."
        )
    names_, labels_ = _names(names, ndim, "x"), None
    labels_ = names_ if labels is None else _names(labels, ndim, "x")
    axes, index = [], []
    for e, name, lab in zip(axes_edges, names_, labels_):
        if not (np.diff(e) > 0).all():
            raise ShapeMismatchError(f"to_hist: edges of axis {name!r} must increase, got {e.tolist()[:8]}.")
        lo, hi = bool(np.isneginf(e[0])), bool(np.isposinf(e[-1]))
        finite = e[int(lo): len(e) - int(hi)]
        if finite.size < 2:
            raise ShapeMismatchError(f"to_hist: axis {name!r} has no finite bin (edges {e.tolist()}); give at least one.")
        axes.append(hist.axis.Variable(finite, name=name, label=lab, underflow=True, overflow=True))
        # position of bin b in the flow view: 1 + b, shifted by one when the first bin is the underflow
        index.append(np.arange(len(e) - 1) + (0 if lo else 1))
    h = hist.Hist(*axes, storage=hist.storage.Weight() if var is not None else hist.storage.Double(), label=label)
    grid = np.ix_(*index)
    view = h.view(flow=True)
    if var is None:
        view[grid] = values
    else:
        full_v = np.zeros(view.shape)
        full_w = np.zeros(view.shape)
        full_v[grid], full_w[grid] = values, var
        view.value, view.variance = full_v, full_w
    return h


def from_hist(h: Any, *, flow: bool | None = None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """Edges (one array per axis), values and variances (``None`` for storages without them) of a ``hist.Hist``.

    ``flow``: include the underflow/overflow bins as open bins with edge ∓inf (``True``), never
    (``False``), or only where they hold something (``None``, the inverse of :func:`to_hist`).
    """
    values_f = np.asarray(h.values(flow=True), dtype=float)
    var_f = h.variances(flow=True)
    has_var = h.storage_type.__name__ in ("Weight", "Mean", "WeightedMean")
    keep, edges = [], []
    for k, axis in enumerate(h.axes):
        e = np.asarray(axis.edges, dtype=float)
        n = len(e) - 1
        under = bool(axis.traits.underflow)
        start = 1 if under else 0
        sl = [slice(None)] * values_f.ndim
        lo_bin = hi_bin = False
        if under:
            sl[k] = 0
            lo_bin = flow is True or (flow is None and bool(np.any(values_f[tuple(sl)] != 0)))
        if axis.traits.overflow:
            sl[k] = start + n
            hi_bin = flow is True or (flow is None and bool(np.any(values_f[tuple(sl)] != 0)))
        idx = np.arange(start - int(lo_bin), start + n + int(hi_bin))
        keep.append(idx)
        edges.append(np.concatenate([[-np.inf] if lo_bin else [], e, [np.inf] if hi_bin else []]))
    grid = np.ix_(*keep)
    return edges, values_f[grid], (np.asarray(var_f, dtype=float)[grid] if has_var and var_f is not None else None)
