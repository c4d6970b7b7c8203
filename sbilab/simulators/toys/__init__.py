"""Toy simulators with exact likelihoods, for validation and benchmarks."""

from .gaussian import GaussianLatent
from .lifetime import Lifetime
from .morphing import Morphing
from .resonance import Resonance
from .resonance_bkg import ResonanceBackground

__all__ = ["GaussianLatent", "Resonance", "Morphing", "ResonanceBackground", "Lifetime"]
