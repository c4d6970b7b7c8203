r"""Exclusion contours in a signal model's parameter plane (e.g. two masses) from the CLs of a scan.

Interpolation: CLs is turned into the equivalent one-sided significance
:math:`Z = \Phi^{-1}(1 - \mathrm{CL}_s)` and interpolated *linearly* on a Delaunay triangulation of
the scanned points, with both axes scaled to unit range first (so that the triangles do not
depend on the axes' units); the contour is :math:`Z = \Phi^{-1}(1-\alpha)` (1.645 for
:math:`\alpha = 0.05`). Why: CLs falls roughly exponentially with the signal cross section and
hence with the masses, so linear interpolation of CLs itself bends the contour towards the
excluded side, while Z varies slowly and nearly linearly across the boundary (the same
transformation ATLAS SUSY contour tools apply before interpolating). Linear interpolation on
triangles never overshoots (no ringing of splines or radial basis functions), reproduces the
CLs exactly at every scanned point and does not extrapolate beyond the points' convex hull.
The contour of a piecewise linear field is straight within each triangle, so it is computed
exactly as segments (marching triangles) and the ±1σ band exactly as polygons (each triangle
clipped by the two linear half-planes).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.spatial import Delaunay
from scipy.stats import norm

from ..exceptions import ConfigError
from ..stats.results import ResultBase
from .results import ScanResult

__all__ = ["ExclusionContours", "exclusion_contours", "significance", "triangulate", "contour_segments", "band_polygons",
           "INTERPOLATION"]

INTERPOLATION = ("linear in Z = Phi^-1(1 - CLs) on a Delaunay triangulation of the scanned points "
                 "(axes scaled to unit range); contour at Z = Phi^-1(1 - alpha)")


def significance(cls: np.ndarray) -> np.ndarray:
    r""":math:`Z = \Phi^{-1}(1 - \mathrm{CL}_s)`, ``(N,)`` (CLs clipped to [1e-300, 1 - 1e-16] to stay finite).

    Example:
        >>> significance(np.array([0.05, 0.5])).round(4).tolist()
        [1.6449, 0.0]
    """
    return norm.isf(np.clip(np.asarray(cls, dtype=float), 1e-300, 1.0 - 1e-16))


def triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles ``(T, 3)`` of ``points`` ``(N, 2)``, both axes scaled to unit range; flat triangles dropped.

    Raises:
        ConfigError: fewer than three points, or all on one line.
    """
    points = np.asarray(points, dtype=float)
    span = np.ptp(points, axis=0) if len(points) else np.zeros(2)
    if len(points) < 3 or (span <= 0).any():
        raise ConfigError(f"an exclusion contour needs at least 3 points spanning both axes; got {len(points)} points.")
    scaled = (points - points.min(axis=0)) / span
    try:
        triangles = Delaunay(scaled).simplices
    except Exception as err:  # scipy's QhullError: all points collinear
        raise ConfigError(f"the points cannot be triangulated ({err}); are they all on one line?") from None
    a, b, c = (scaled[triangles[:, k]] for k in range(3))
    area = 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
    return triangles[area > 1e-12]


def contour_segments(points: np.ndarray, triangles: np.ndarray, values: np.ndarray, level: float) -> np.ndarray:
    """Segments ``(K, 2, 2)`` of the contour ``values = level`` of the linear interpolant on ``triangles``.

    Args:
        points: ``(N, 2)``.
        triangles: ``(T, 3)`` vertex indices.
        values: ``(N,)`` at the points.
        level: The contour level.
    """
    points, f = np.asarray(points, dtype=float), np.asarray(values, dtype=float) - level
    edges = ((0, 1), (1, 2), (2, 0))
    crossing = np.stack([(f[triangles[:, i]] >= 0) != (f[triangles[:, j]] >= 0) for i, j in edges], axis=1)  # (T, 3)
    where = np.empty((len(triangles), 3, 2))
    for e, (i, j) in enumerate(edges):
        fa, fb = f[triangles[:, i]], f[triangles[:, j]]
        t = np.divide(fa, fa - fb, out=np.zeros_like(fa), where=fa != fb)
        where[:, e] = points[triangles[:, i]] + t[:, None] * (points[triangles[:, j]] - points[triangles[:, i]])
    hit = crossing.sum(axis=1) == 2
    return where[hit][crossing[hit]].reshape(-1, 2, 2)


def _clip(polygon: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Sutherland-Hodgman: the part of a convex polygon (vertices ``[x, y, g1, g2]``) where ``g_k >= 0``, fields linear."""
    out = []
    for a, b in zip(polygon, polygon[1:] + polygon[:1]):
        if a[k] >= 0:
            out.append(a)
        if (a[k] >= 0) != (b[k] >= 0):
            out.append(a + a[k] / (a[k] - b[k]) * (b - a))
    return out


def band_polygons(points: np.ndarray, triangles: np.ndarray, outer: np.ndarray, inner: np.ndarray,
                  level: float) -> list[np.ndarray]:
    """Polygons ``[(M, 2), ...]`` where ``outer >= level > inner`` for the linear interpolants of both.

    With ``outer`` the Z of the +1σ expected CLs and ``inner`` that of the −1σ one, this is the
    ±1σ band of the expected contour.
    """
    points = np.asarray(points, dtype=float)
    g1, g2 = np.asarray(outer, dtype=float) - level, level - np.asarray(inner, dtype=float)
    polygons = []
    for tri in triangles:
        if (g1[tri] < 0).all() or (g2[tri] < 0).all():
            continue
        polygon = [np.array([*points[v], g1[v], g2[v]]) for v in tri]
        for k in (2, 3):
            polygon = _clip(polygon, k)
            if len(polygon) < 3:
                break
        if len(polygon) >= 3:
            polygons.append(np.array([v[:2] for v in polygon]))
    return polygons


@dataclass(frozen=True)
class ExclusionContours(ResultBase):
    """Observed and expected exclusion contours (with the expected ±1σ band) in a parameter plane.

    Attributes:
        labels: Names of the x and y axes.
        alpha: CLs level of the contours (0.05: 95% CL).
        points: The scanned points of the plane, ``(N, 2)`` as tuples.
        cls_obs: Their observed CLs.
        observed, expected, expected_plus1, expected_minus1: Contour segments ``((x0, y0), (x1, y1))``
            of the observed, median expected and ±1σ expected CLs (+1σ: the smaller CLs, further out).
        band: Polygons of the expected ±1σ band.
        interpolation: How the contours were drawn.
    """

    labels: tuple[str, str]
    alpha: float
    points: tuple[tuple[float, float], ...]
    cls_obs: tuple[float, ...]
    observed: tuple[tuple[tuple[float, float], ...], ...]
    expected: tuple[tuple[tuple[float, float], ...], ...]
    expected_plus1: tuple[tuple[tuple[float, float], ...], ...]
    expected_minus1: tuple[tuple[tuple[float, float], ...], ...]
    band: tuple[tuple[tuple[float, float], ...], ...]
    interpolation: str = INTERPOLATION


def _axis(labels: Sequence[str], axis: int | str) -> int:
    if isinstance(axis, str):
        if axis not in labels:
            raise ConfigError(f"axis {axis!r} is not one of the scan's labels {list(labels)}.")
        return list(labels).index(axis)
    if not 0 <= axis < len(labels):
        raise ConfigError(f"axis {axis} out of range; the scan has {len(labels)} axes {list(labels)}.")
    return int(axis)


def default_plane(values: np.ndarray) -> tuple[tuple[int, int], dict[int, float]]:
    """Axes and fixed values of the plane to draw: for three axes, the third fixed at its most common value."""
    if values.shape[1] == 2:
        return (0, 1), {}
    if values.shape[1] != 3:
        raise ConfigError(f"the points have {values.shape[1]} values each; choose the plane with axes=(i, j) and fix=... .")
    best = max(range(3), key=lambda k: Counter(values[:, k].tolist()).most_common(1)[0][1])
    value = Counter(values[:, best].tolist()).most_common(1)[0][0]
    return tuple(k for k in range(3) if k != best), {best: value}  # type: ignore[return-value]


def exclusion_contours(result: ScanResult, *, axes: tuple[int | str, int | str] | None = None,
                       fix: Mapping[int | str, float] | None = None, select: Callable[[tuple[float, ...]], bool] | None = None,
                       alpha: float = 0.05) -> ExclusionContours:
    """The exclusion contours of a scan in the plane of two of its axes.

    Args:
        result: The scan.
        axes: The x and y axes (indices or labels); default: the two axes, or for three axes the
            two left when the third is fixed at its most common value (e.g. m_chi1 = 60 GeV).
        fix: ``{axis: value}`` keeps only points with that value on that axis.
        select: Further selection ``values -> bool`` (e.g. ``lambda v: v[1] - v[2] == 130``).
        alpha: CLs level of the contour.

    Raises:
        ConfigError: unknown axes, points repeated in the plane (fix the other axes), or fewer
            than three usable points.
    """
    good = [p for p in result.points if not p.error and math.isfinite(p.cls_obs)]
    values = np.array([p.values for p in good], dtype=float).reshape(len(good), -1)
    if axes is None and fix is None and select is None:
        (i, j), fixed = default_plane(values)
    else:
        i, j = (_axis(result.labels, a) for a in (axes or (0, 1)))
        fixed = {_axis(result.labels, k): float(v) for k, v in (fix or {}).items()}
    keep = [k for k, p in enumerate(good) if all(p.values[a] == v for a, v in fixed.items()) and (select is None or select(p.values))]
    chosen = [good[k] for k in keep]
    points = values[keep][:, [i, j]]
    if len({tuple(p) for p in points.tolist()}) != len(points):
        raise ConfigError(f"points repeat in the plane ({result.labels[i]}, {result.labels[j]}); fix the other axes, e.g. "
                          f"fix={{{result.labels[[k for k in range(values.shape[1]) if k not in (i, j)][0]]!r}: ...}}.")
    triangles = triangulate(points)
    level = float(norm.isf(alpha))
    z = {name: significance(np.array(cls)) for name, cls in (
        ("obs", [p.cls_obs for p in chosen]), *((str(k), [p.cls_expected[k] for p in chosen]) for k in (1, 2, 3)))}

    def segments(field: np.ndarray) -> tuple:
        return tuple(tuple(map(tuple, s)) for s in contour_segments(points, triangles, field, level).tolist())

    return ExclusionContours(
        labels=(result.labels[i], result.labels[j]), alpha=alpha, points=tuple(map(tuple, points.tolist())),
        cls_obs=tuple(p.cls_obs for p in chosen), observed=segments(z["obs"]), expected=segments(z["2"]),
        expected_plus1=segments(z["1"]), expected_minus1=segments(z["3"]),
        band=tuple(tuple(map(tuple, poly.tolist())) for poly in band_polygons(points, triangles, z["1"], z["3"], level)),
    )
