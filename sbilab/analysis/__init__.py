"""Config-driven analyses: ``analyses/<name>/analysis.toml`` run by ``sbilab run``."""

from .config import AnalysisConfig, load_config
from .estimation import build_simulator
from .run import PIPELINES, run_analysis

__all__ = ["AnalysisConfig", "load_config", "build_simulator", "run_analysis", "PIPELINES"]
