r"""Closure of a fitted likelihood on independent data sets at a known truth, judging only what the data constrain.

:func:`closure` fits K data sets drawn at the truth with :class:`~sbilab.stats.UnbinnedLikelihood`
and asks whether the pulls :math:`(\hat\theta - \theta)/\sigma` look like N(0, 1) (each within
``pull_limit``, their mean within ``pull_limit / sqrt(K)``). A bounded parameter the data cannot
constrain wanders to its limits whatever the estimator, so its pulls say nothing about a bias:
:func:`judged_parameters` leaves out parameters whose *expected* width (from an information that
is not the estimator's own, e.g. the simulator's joint Fisher information through
:func:`~sbilab.stats.cramer_rao`) exceeds a fraction of their range; a closure that can judge
nothing fails. :func:`hessian_widths` gives the width of an unbounded fit at a point.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..events import Events
from .model import UnbinnedModel, as_float64
from .unbinned import UnbinnedLikelihood

__all__ = ["closure", "judged_parameters", "hessian_widths"]


def hessian_widths(log_ratio: Callable[..., Tensor], space: Any, x: Tensor, theta: Tensor, *, mask: Tensor | None = None) -> Tensor:
    r""":math:`\sqrt{\mathrm{diag}\,(-\nabla^2_\theta \sum_i\log\hat r(x_i|\theta))^{-1}}` at ``theta (P,)``, ``(P,)``; NaN where not positive definite.

    The width of an unbounded fit at θ (a bounded fit of a weakly constrained parameter stops at a limit).
    """
    model = UnbinnedModel(as_float64(log_ratio), space)
    _, _, hess = model.derivatives(torch.as_tensor(theta, dtype=torch.float64).reshape(1, -1), x.unsqueeze(0).double(),
                                   mask=None if mask is None else mask.unsqueeze(0))
    information = hess[0] / 2.0  # the Hessian of -2 log L
    if not bool((torch.linalg.eigvalsh(information) > 0).all()):
        return torch.full((information.shape[0],), math.nan, dtype=torch.float64)
    return torch.sqrt(torch.diagonal(torch.linalg.inv(information)))


def judged_parameters(space: Any, expected_widths: Tensor | None, max_width_fraction: float) -> dict[str, str]:
    r"""The parameters a closure test cannot judge at this N: ``{name: why}``.

    A parameter whose expected 1σ width :math:`\sigma_p` (e.g. Cramér–Rao,
    :func:`~sbilab.stats.cramer_rao`) exceeds ``max_width_fraction`` of its range
    :math:`h_p - l_p` is not constrained by the data: its fits wander to the limits of the box
    whatever the estimator, so limits and pulls of it say nothing about a bias. A non-finite
    width counts as unconstrained. ``expected_widths=None`` judges every parameter.
    """
    if expected_widths is None:
        return {}
    out = {}
    for i, name in enumerate(space.names):
        width, span = float(expected_widths[i]), float(space.high[i] - space.low[i])
        if not width <= max_width_fraction * span:
            out[name] = (f"not constrained at this N: expected width {width:.3g} > {max_width_fraction:g} x range {span:g} "
                         f"= {max_width_fraction * span:.3g}; profiled, not judged")
    return out


def closure(log_ratio: Callable[..., Tensor], space: Any, datasets: list[Events], truth: Tensor, *, pull_limit: float = 3.0,
            expected_widths: Tensor | None = None, max_width_fraction: float = 0.25) -> dict[str, Any]:
    r"""Fit every data set drawn at ``truth (P,)``; pulls :math:`(\hat\theta - \theta)/\sigma` must look like N(0, 1).

    Fails when a fit is invalid or stops at a limit, a pull exceeds ``pull_limit``, or a
    parameter's mean pull exceeds ``pull_limit / sqrt(K)`` (a bias common to the K data sets).
    Only *judged* parameters count: with ``expected_widths (P,)`` (the expected 1σ widths of a fit
    of one data set), a parameter wider than ``max_width_fraction`` of its range is floated
    (profiled) in every fit but reported as not constrained (:func:`judged_parameters`): its
    limits and pulls are recorded, never a failure. A fit made not valid only by such a
    parameter at a limit is not a failure either; the judged parameters' pulls still are.
    """
    names = list(space.names)
    unjudged = judged_parameters(space, expected_widths, max_width_fraction)
    pulls, fits, problems = [], [], []
    for k, data in enumerate(datasets):
        result = UnbinnedLikelihood(log_ratio, Events.observed(data.x, mask=data.mask), space, tolerance=0.01).fit()
        at_limit = [n for i, n in enumerate(names) if min(result.best[n] - float(space.low[i]), float(space.high[i]) - result.best[n]) < 1e-4]
        free_at_limit = set(result.at_bound) | set(at_limit)
        judged_at_limit = [n for n in at_limit if n not in unjudged]
        explained = bool(free_at_limit) and free_at_limit <= set(unjudged)  # invalid only through an unjudged parameter at a limit
        accepted = (result.valid or explained) and not judged_at_limit
        fits.append({"best": result.best, "errors": result.errors, "valid": result.valid, "accepted": accepted, "reason": result.reason,
                     "notes": list(result.notes) + ([f"not judged: {', '.join(sorted(free_at_limit))} at a limit ({result.reason})"]
                                                    if explained and not result.valid else [])})
        if judged_at_limit:
            problems.append(f"data set {k}: fit at the limit of {', '.join(judged_at_limit)}")
        elif not accepted:
            problems.append(f"data set {k}: fit invalid")
        pulls.append([(result.best[n] - float(truth[i])) / result.errors[n] if result.errors[n] > 0 else math.inf for i, n in enumerate(names)])
    p = torch.tensor(pulls, dtype=torch.float64)
    mean = p.mean(0)
    limit = pull_limit / math.sqrt(len(datasets))
    problems += [f"{n}: pull {v:+.2f} in data set {k}" for k, row in enumerate(pulls) for n, v in zip(names, row)
                 if n not in unjudged and not abs(v) <= pull_limit]
    problems += [f"{n}: mean pull {m:+.2f} over {len(datasets)} data sets (limit {limit:.2f})" for n, m in zip(names, mean.tolist())
                 if n not in unjudged and not abs(m) <= limit]
    if len(unjudged) == len(names):
        problems.append("no parameter is constrained at this N: the closure test cannot judge the estimator (more events per data set)")
    return {"fits": fits, "pulls": pulls, "mean_pull": dict(zip(names, mean.tolist())), "passed": not problems, "problems": problems,
            "judged": [n for n in names if n not in unjudged], "not_judged": unjudged,
            "expected_widths": None if expected_widths is None else [float(w) for w in expected_widths],
            "max_width_fraction": max_width_fraction}
