"""Networks: MLPs, standardisation, set embeddings, flows."""

from .mlp import MLP, ResidualMLP, Standardize, activation

__all__ = ["MLP", "ResidualMLP", "Standardize", "activation"]
