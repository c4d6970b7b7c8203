r"""A batched e⁺e⁻ → qq̄ parton shower with an exact history likelihood, its scalar reference,
event shapes, and the exact primary-emission toy (QCD splitting kernels, arXiv:2012.09873).

No hadronisation: final states and observables are partonic.
"""

from .detector import Smearing
from .engine import ShowerSettings, ShowerState, run_shower
from .history import COLUMNS, FIELDS, HISTORY_VERSION, decode, history_log_prob
from .kernels import Overestimate, RunningCoupling, qq_coefficients
from .observables import OBSERVABLES, event_observables
from .reweight import effective_sample_size, reweight
from .shower import PARTICLE_FEATURES, PartonShower
from .toy import PrimaryEmissions, emission_integrals

__all__ = [
    "PartonShower",
    "PrimaryEmissions",
    "emission_integrals",
    "reweight",
    "effective_sample_size",
    "PARTICLE_FEATURES",
    "Smearing",
    "ShowerSettings",
    "ShowerState",
    "run_shower",
    "COLUMNS",
    "FIELDS",
    "decode",
    "HISTORY_VERSION",
    "history_log_prob",
    "Overestimate",
    "RunningCoupling",
    "qq_coefficients",
    "OBSERVABLES",
    "event_observables",
]
