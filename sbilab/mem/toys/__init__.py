"""Exact-answer toys of the matrix-element method: processes, proposals and simulators."""

from .resonance import CauchyLine, learned_resonance_model, peak_channel, resonance_likelihood, resonance_model, resonance_proposal
from .w_lnu import WAnchor, WDecay, WGenerator, WToLeptonNeutrino, w_model, w_proposal
from .two_body import TwoBody, TwoBodyDecay, TwoBodyPrior, quadrature_fiducial, quadrature_integral, two_body_model, two_body_proposal, two_body_sampler

__all__ = [
    "CauchyLine", "resonance_model", "resonance_proposal", "resonance_likelihood", "peak_channel", "learned_resonance_model",
    "TwoBodyDecay", "TwoBody", "TwoBodyPrior", "two_body_model", "two_body_proposal", "two_body_sampler", "quadrature_integral", "quadrature_fiducial",
    "WAnchor", "WDecay", "WGenerator", "WToLeptonNeutrino", "w_model", "w_proposal",
]
