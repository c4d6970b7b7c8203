r"""``run_analysis``: dispatch a configuration to the pipeline named by ``[analysis] kind``.

===================  =========================================================================
kind                 pipeline
===================  =========================================================================
``"measurement"``    :func:`sbilab.analysis.measurement.run_measurement`: unbinned fit of the
                     parameters (nuisances profiled with constraints), learned vs exact
``"eft_limits"``     :func:`sbilab.analysis.eft.run_eft_limits`: expected and observed limits on
                     morphing couplings, learned ratio vs histograms vs SALLINO, learned vs exact
``"search"``         :func:`sbilab.analysis.search.run_search`: binned resonance search with pyhf
                     (CLs limits, significances) on raw x, a learned classifier and the exact s/b
``"surrogate"``      :func:`sbilab.analysis.surrogate.run_surrogate`: the resonance measurement
                     with its detector stage replaced by a learned surrogate, validated,
                     refined, and fitted against the original
===================  =========================================================================
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .config import KINDS, AnalysisConfig

__all__ = ["run_analysis", "PIPELINES"]

PIPELINES = {"measurement": ("sbilab.analysis.measurement", "run_measurement"),
             "eft_limits": ("sbilab.analysis.eft", "run_eft_limits"),
             "search": ("sbilab.analysis.search", "run_search"),
             "surrogate": ("sbilab.analysis.surrogate", "run_surrogate")}
assert set(PIPELINES) == set(KINDS)


def run_analysis(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the analysis described by ``config`` with its pipeline; write results to ``out``; return a printable summary.

    Args:
        config: A configuration from :func:`~sbilab.analysis.load_config`.
        out: Output directory (created).
        quick: Apply the ``[quick]`` overrides (a smoke run of seconds to a minute).
        device: Training device (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: Print progress messages and bars.
    """
    module, name = PIPELINES[config.kind]
    return getattr(importlib.import_module(module), name)(config, out=Path(out), quick=quick, device=device, progress=progress)
