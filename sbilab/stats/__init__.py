"""Statistics on trained estimators: unbinned fits, asymptotics, Neyman, Fisher, pyhf."""

from .results import FitResult, HypotestResult, Profile2DResult, ProfileResult, UpperLimitResult
from .unbinned import UnbinnedLikelihood

__all__ = ["FitResult", "HypotestResult", "Profile2DResult", "ProfileResult", "UpperLimitResult", "UnbinnedLikelihood"]
