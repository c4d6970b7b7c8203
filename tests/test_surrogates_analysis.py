"""The surrogate analysis folder: its configuration is read, checked, and dispatched to the surrogate pipeline."""

from pathlib import Path

import pytest

from sbilab.analysis import PIPELINES, load_config
from sbilab.analysis.surrogate import SurrogateSection, run_surrogate
from sbilab.exceptions import ConfigError

FOLDER = Path(__file__).resolve().parents[1] / "analyses" / "surrogate_resonance"


def test_the_shipped_analysis_reads_and_its_quick_version_is_small():
    cfg = load_config(FOLDER)
    assert cfg.kind == "surrogate" and PIPELINES["surrogate"].run is run_surrogate
    assert PIPELINES["surrogate"].section == ("surrogate", SurrogateSection)
    assert cfg.surrogate.pairs == 100_000 and cfg.surrogate.flow_hidden == (64, 64)
    quick = cfg.quick_version()
    assert quick.surrogate.pairs == 8000 and quick.surrogate.auc_regions == 0 and quick.surrogate.toys == 20
    assert (FOLDER / "README.md").is_file()


def test_bad_surrogate_configurations_are_refused(tmp_path):
    text = (FOLDER / "analysis.toml").read_text()
    (tmp_path / "analysis.toml").write_text(text.replace('toy = "resonance"', 'toy = "gaussian"'))
    with pytest.raises(ConfigError, match="toy = 'resonance'"):
        load_config(tmp_path)
    (tmp_path / "analysis.toml").write_text(text.replace("pairs = 100000", "pairs = -5"))
    with pytest.raises(ConfigError, match=r"\[surrogate\] pairs = -5 must be positive"):
        load_config(tmp_path)
    (tmp_path / "analysis.toml").write_text(text.replace("toys = 200", "toys = 200\nwidth = 3"))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(tmp_path)
    (tmp_path / "analysis.toml").write_text(text.replace("auc_resolution = 0.01", "auc_resolution = 0.7"))
    with pytest.raises(ConfigError, match=r"auc_resolution = 0.7 must lie in \(0, 0.5\)"):
        load_config(tmp_path)
    (tmp_path / "analysis.toml").write_text(text.replace("auc_regions = 2", "auc_regions = 1"))
    with pytest.raises(ConfigError, match="auc_regions = 1"):
        load_config(tmp_path)
    assert SurrogateSection().auc_resolution == 0.01
