"""Reinterpretation of published likelihoods: scans of signal patches, exclusion contours.

- :mod:`~sbilab.reinterpret.patches`: signal patches from a pyhf PatchSet, per-patch files, a
  folder or a tarball; applying one to the background-only workspace.
- :mod:`~sbilab.reinterpret.signal`: a new signal added to a background-only workspace by channel name.
- :mod:`~sbilab.reinterpret.evaluate`: one point's CLs test (and limits), warm-started.
- :mod:`~sbilab.reinterpret.scan`: every patch, in parallel single-thread processes, appended to a
  crash-safe journal so a killed scan resumes.
- :mod:`~sbilab.reinterpret.results`: the table (JSON, CSV).
- :mod:`~sbilab.reinterpret.contour`, :mod:`~sbilab.reinterpret.plots`: exclusion contours in a
  mass plane (linear interpolation of Z = Phi^-1(1 - CLs) on a triangulation) and their figure.

The statistics are :mod:`sbilab.stats` (asymptotic CLs on a :class:`~sbilab.stats.binned.PyhfModel`).
"""

from .contour import INTERPOLATION, ExclusionContours, exclusion_contours, significance
from .evaluate import ScanSettings, evaluate_patch, poi_modifier_check
from .journal import ScanJournal
from .patches import PatchCollection, SignalPatch, patched_workspace, read_background, read_patches, to_patchset
from .plots import plot_exclusion
from .results import PatchResult, ScanResult
from .scan import scan_patches
from .signal import add_signal, poi_upper_bound, signal_patch

__all__ = [
    "SignalPatch",
    "PatchCollection",
    "read_patches",
    "read_background",
    "patched_workspace",
    "to_patchset",
    "signal_patch",
    "add_signal",
    "poi_upper_bound",
    "ScanSettings",
    "evaluate_patch",
    "poi_modifier_check",
    "scan_patches",
    "ScanJournal",
    "PatchResult",
    "ScanResult",
    "ExclusionContours",
    "exclusion_contours",
    "significance",
    "INTERPOLATION",
    "plot_exclusion",
]
