"""Toy simulators with exact likelihoods, for validation and benchmarks."""

from .gaussian import GaussianLatent
from .morphing import Morphing
from .resonance import Resonance

__all__ = ["GaussianLatent", "Resonance", "Morphing"]
