"""Toy simulators with exact likelihoods, for validation and benchmarks."""

from .gaussian import GaussianLatent

__all__ = ["GaussianLatent"]
