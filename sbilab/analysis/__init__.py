"""Config-driven analyses: ``analyses/<name>/analysis.toml`` run by ``sbilab run``.

Importing the package registers the built-in pipelines (``measurement``, ``eft_limits``,
``search``, ``qcd_splittings``, ``mem_resonance``, ``anomaly``, ``surrogate``, ``unfolding``) with
:func:`~sbilab.analysis.run.register_pipeline`.
"""

from . import anomaly, eft, measurement, mem_resonance, search, splittings, surrogate, unfolding  # noqa: F401 - the pipelines register where they are defined
from .config import AnalysisConfig, load_config
from .estimation import build_simulator
from .run import PIPELINES, register_pipeline, run_analysis

__all__ = ["AnalysisConfig", "load_config", "build_simulator", "run_analysis", "register_pipeline", "PIPELINES"]
