"""Toy simulators with exact likelihoods, for validation and benchmarks."""

from .gaussian import GaussianLatent
from .resonance import Resonance

__all__ = ["GaussianLatent", "Resonance"]
