r"""Generative surrogates of simulators and of their stages: train, validate, refine, and measure their worth.

==================================  =====================================================================
part                                what it does
==================================  =====================================================================
:mod:`~.pairs`                      paired simulation (truth, reco, pass) as the core's training views
:mod:`~.stages`                     truth level + detector stage protocols; :class:`Composition`, a
                                    :class:`~sbilab.simulators.Simulator` with marginal likelihood
:mod:`~.resonance`                  the resonance toy as two stages (the exact reference)
:mod:`~.stage`                      :class:`StageSurrogate` (ConditionalDensity + efficiency Classifier)
:mod:`~.simulator`                  :class:`SimulatorSurrogate`, a learned :math:`q(x\mid\theta)`
:mod:`~.refine`                     DCTR refinement by classifier weights (arXiv:1907.08209)
:mod:`~.validation`                 two-sample AUC (overall, per region), histograms, moments, report
:mod:`~.inference`                  fits with surrogate vs original: widths, coverage, shifts
:mod:`~.amplification`              GANplification factor (arXiv:2008.06545)
==================================  =====================================================================

A surrogate of the detector stage of the resonance toy, end to end::

    toy = Resonance(); truth, detector = ResonanceTruth(toy), ResonanceDetector(toy)
    z, x, passed = simulate_pairs(truth, detector, toy.space.sample(100_000, generator=g), generator=g)
    stage = train_stage_surrogate(z, x, passed, truth_low=[70.0], truth_high=[130.0],
                                  reco_low=[85.0], reco_high=[115.0])
    surrogate = Composition(truth, stage)          # a Simulator: sample, log_prob, score
    sbilab.publish.save("stage.h5", stage)         # reload: Composition(truth, sbilab.publish.load("stage.h5"))
"""

from .amplification import AmplificationResult, histogram_amplification, mean_amplification
from .inference import InferenceComparison, LikelihoodModel, compare_inference
from .pairs import check_pairs, efficiency_events, paired_arrays, simulator_events, stage_context, stage_events, stage_features, to_paired_events
from .refine import LowEffectiveSampleSizeWarning, log_weight, ratio_agreement, refinement_weights, stage_log_ratio, train_refinement
from .resonance import ResonanceDetector, ResonanceTruth
from .simulator import SimulatorSurrogate, train_simulator_surrogate
from .stage import StageSurrogate, TruthRangeWarning, train_stage_surrogate
from .stages import Composition, Stage, TruthLevel, simulate_pairs
from .validation import (
    AucResult,
    HistogramComparison,
    ValidationReport,
    auc_error_estimate,
    compare_histograms,
    compare_moments,
    two_sample_auc,
    validate,
)

__all__ = [
    # paired data and stages
    "check_pairs", "stage_context", "stage_events", "efficiency_events", "simulator_events", "stage_features",
    "paired_arrays", "to_paired_events", "TruthLevel", "Stage", "Composition", "simulate_pairs", "ResonanceTruth", "ResonanceDetector",
    # surrogates
    "StageSurrogate", "train_stage_surrogate", "TruthRangeWarning", "SimulatorSurrogate", "train_simulator_surrogate",
    # refinement
    "train_refinement", "refinement_weights", "log_weight", "stage_log_ratio", "ratio_agreement", "LowEffectiveSampleSizeWarning",
    # validation and inference
    "AucResult", "HistogramComparison", "ValidationReport", "auc_error_estimate", "two_sample_auc", "compare_histograms",
    "compare_moments", "validate", "LikelihoodModel", "InferenceComparison", "compare_inference",
    # amplification
    "AmplificationResult", "histogram_amplification", "mean_amplification",
]
