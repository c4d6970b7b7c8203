"""Simulators: the protocol, parameter spaces, augmentation, toys and adapters."""

from .augment import augment, doubly_ratio_training_data, joint_log_ratio, joint_score, ratio_training_data, score_training_data
from .base import ExactLikelihood, JointLikelihood, Simulator
from .datasets import datasets_from_events, simulate_datasets
from .external import CallableSimulator, from_sbi
from .registry import TOYS, build_toy, register_toy
from .shower import PartonShower, PrimaryEmissions
from .space import ParameterSpace
from .toys import GaussianLatent, Lifetime, Morphing, Resonance, ResonanceBackground
from .weighted import MorphingBasis, WeightedEvents

__all__ = [
    "Simulator",
    "JointLikelihood",
    "ExactLikelihood",
    "ParameterSpace",
    "augment",
    "joint_log_ratio",
    "joint_score",
    "ratio_training_data",
    "score_training_data",
    "doubly_ratio_training_data",
    "simulate_datasets",
    "datasets_from_events",
    "GaussianLatent",
    "Resonance",
    "Morphing",
    "ResonanceBackground",
    "PartonShower",
    "PrimaryEmissions",
    "Lifetime",
    "MorphingBasis",
    "WeightedEvents",
    "CallableSimulator",
    "from_sbi",
    "TOYS",
    "register_toy",
    "build_toy",
]
