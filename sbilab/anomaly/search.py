r"""A weakly supervised bump hunt: anomaly classifier, cut, background estimate in the signal region, significance.

:func:`bump_hunt` splits the data in two halves by a seeded permutation; a classifier
(CWoLa: SR against sidebands; CATHODE: SR against samples of a flow q(x | m) trained in the
training half's sidebands; idealised: SR against a simulated background sample) is trained on one half and scores the other, so no event is
judged by a classifier that saw it. The cut keeps a fraction ``selection_efficiency`` of the
signal-region events of the scored half. The background under the passing SR events is estimated
(i) by the exponential sideband fit of the passing events' masses and (ii) by ABCD with (score,
window) (:mod:`sbilab.anomaly.background`); each estimate's excess is turned into a pyhf
discovery significance. When the events carry the truth (``latent[:, 0] = 1`` for signal, as the
toys do), the true background and signal counts that pass are reported next to the estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..events import Events
from ..exceptions import ConfigError
from .results import NestedResult
from .abcd import AbcdEstimate, threshold_at_efficiency
from .background import SidebandFit, Significance, abcd_after_cut, excess_significance, sideband_fit
from .regions import MassWindow
from .training import classifier_score, train_classifier
from .cathode import BackgroundFlow, fit_background_model
from .weak import cathode_training_data, cwola_training_data, idealised_training_data, sideband_events

__all__ = ["BumpHunt", "bump_hunt"]


@dataclass(frozen=True)
class BumpHunt(NestedResult):
    """Outcome of :func:`bump_hunt` (counts refer to the scored half of the data).

    Attributes:
        method: ``"cwola"`` or ``"idealised"``.
        cut: The score threshold.
        observed: Events in the SR passing the cut.
        sideband: The exponential sideband fit and its SR prediction.
        abcd: The ABCD estimate with (score, window).
        significance: pyhf significance of ``observed`` over the sideband-fit prediction.
        significance_abcd: The same over the ABCD prediction.
        true_background, true_signal: Passing SR events by truth (-1 without truth).
        mass_edges, mass_passing: Histogram of the passing events' masses over the window (for plots).
    """

    method: str
    cut: float
    observed: int
    sideband: SidebandFit
    abcd: AbcdEstimate
    significance: Significance
    significance_abcd: Significance
    true_background: int
    true_signal: int
    mass_edges: tuple[float, ...]
    mass_passing: tuple[float, ...]


def bump_hunt(data: Events, window: MassWindow, *, method: Literal["cwola", "cathode", "idealised"] = "cwola",
              background: Events | None = None, selection_efficiency: float = 0.01, training: dict[str, Any] | None = None,
              background_flow: BackgroundFlow | None = None, seed: int = 0, bins: int = 24) -> BumpHunt:
    r"""Train on one half, cut on the other, estimate the SR background, test the excess (see the module docstring).

    Args:
        data: Events with the mass as spectator; ``latent[:, 0]`` the truth if known.
        window: Signal region and sidebands (``sideband_width`` must be set).
        method: ``"cwola"``, ``"cathode"`` (a background flow trained on the training half's sidebands,
            :func:`~sbilab.anomaly.cathode.fit_background_model`) or ``"idealised"`` (then give
            ``background``, simulated background events).
        background: Background simulation for the idealised classifier.
        selection_efficiency: Fraction of the scored half's SR events the cut keeps.
        training: Keyword options of :func:`~sbilab.anomaly.training.train_classifier`.
        background_flow: CATHODE's flow options (default ``BackgroundFlow(seed=seed)``).
        seed: Seed of the split (and of CATHODE's samples).

    Raises:
        ConfigError: an unknown method, idealised without background, no sideband width, or an
            efficiency outside (0, 1).
        RegionError: the window lies outside the data, or a region is empty after the cut.
    """
    if method not in ("cwola", "cathode", "idealised") or (method == "idealised" and background is None):
        raise ConfigError(f"bump_hunt: method = {method!r}; use 'cwola', 'cathode', or 'idealised' with background=simulated "
                          "background events.")
    if window.sideband_width is None:
        raise ConfigError("bump_hunt: the window needs a sideband_width (the sideband fit is done in two finite sidebands).")
    if not 0.0 < selection_efficiency < 1.0:
        raise ConfigError(f"bump_hunt: selection_efficiency = {selection_efficiency} must lie in (0, 1).")
    window.check(data)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    half = len(data) // 2
    train_half, test_half = data[perm[:half]], data[perm[half:]]
    if method == "cwola":
        train = cwola_training_data(train_half, window)
    elif method == "cathode":
        flow = fit_background_model(sideband_events(train_half, window), background_flow or BackgroundFlow(seed=seed))
        train = cathode_training_data(train_half, window, flow, generator=torch.Generator().manual_seed(seed + 1))
    else:
        train = idealised_training_data(train_half, background, window)
    model = train_classifier(train, **(training or {}))
    score = classifier_score(model, test_half.x).numpy()
    m = window.mass(test_half).double().numpy()
    in_sr = (m >= window.lo) & (m < window.hi)
    cut = threshold_at_efficiency(score[in_sr], selection_efficiency)
    passing = score > cut
    sidebands = ((window.lo - window.sideband_width, window.lo), (window.hi, window.hi + window.sideband_width))
    fit = sideband_fit(m[passing], window, sidebands)
    abcd = abcd_after_cut(score, m, window, sidebands, cut=cut)
    observed = int((passing & in_sr).sum())
    truth = test_half.latent[:, 0].numpy() > 0.5 if test_half.latent is not None else None
    true_b = int((passing & in_sr & ~truth).sum()) if truth is not None else -1
    true_s = int((passing & in_sr & truth).sum()) if truth is not None else -1
    edges = np.linspace(sidebands[0][0], sidebands[1][1], bins + 1)
    return BumpHunt(
        method=method, cut=float(cut), observed=observed, sideband=fit, abcd=abcd,
        significance=excess_significance(observed, fit.predicted, max(fit.predicted_error, 1e-9)),
        significance_abcd=excess_significance(observed, abcd.predicted, max(abcd.predicted_error, 1e-9)),
        true_background=true_b, true_signal=true_s, mass_edges=tuple(edges.tolist()),
        mass_passing=tuple(float(v) for v in np.histogram(m[passing], edges)[0]),
    )
