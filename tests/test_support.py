"""Training supports: every estimator records the range of its training x, publishes it, and warns outside it."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import pytest
import torch

from sbilab import Classifier, ConditionalDensity, Events, LikelihoodEstimator, PosteriorEstimator, RatioEstimator, ScoreEstimator
from sbilab.estimators import EnsembleMean
from sbilab.estimators.classifier import classifier_training_data
from sbilab.estimators.support import TrainingSupport, training_support
from sbilab.exceptions import ExtrapolationWarning
from sbilab.nets import Ensemble
from sbilab.publish import load, save
from sbilab.simulators import GaussianLatent, ratio_training_data, score_training_data
from sbilab.stats import UnbinnedLikelihood

import sys

sys.path.insert(0, str(Path(__file__).parent))
from _hdf5_attacks import rewrite_publish_spec  # noqa: E402

SIM = GaussianLatent()
PAIRS = ratio_training_data(SIM, 100, generator=torch.Generator().manual_seed(0))
FAR = torch.tensor([[1e6]])


@functools.lru_cache(maxsize=1)
def estimators() -> dict[str, tuple[torch.nn.Module, callable]]:
    """Each estimator kind built from training events, with its validated evaluation at x."""
    clf_data = classifier_training_data(torch.randn(50, 1, generator=torch.Generator().manual_seed(1)),
                                        torch.randn(50, 1, generator=torch.Generator().manual_seed(2)) + 1)
    ratio = RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,))
    nde = LikelihoodEstimator.from_events(PAIRS, SIM.space, hidden=(8,), transforms=1)
    npe = PosteriorEstimator.from_events(PAIRS, SIM.space, hidden=(8,), transforms=1)
    density = ConditionalDensity.from_events(PAIRS, target="latent")
    sally = ScoreEstimator.from_events(score_training_data(SIM, 50, generator=torch.Generator().manual_seed(3)), SIM.space, hidden=(8,))
    clf = Classifier.from_events(clf_data, hidden=(8,), seed=0)
    return {
        "RatioEstimator": (ratio, lambda x: ratio.log_ratio(x, [0.5]), PAIRS.x),
        "LikelihoodEstimator": (nde, lambda x: nde.log_prob(x, [0.5]), PAIRS.x),
        "PosteriorEstimator": (npe, lambda x: npe.log_prob(torch.tensor([[0.5]]), x), PAIRS.x),
        "ConditionalDensity": (density, lambda x: density.log_prob(torch.zeros(1, 1), x), PAIRS.x),
        "ScoreEstimator": (sally, lambda x: sally.score(x), None),
        "Classifier": (clf, lambda x: clf.logit(x), clf_data.x),
    }


@pytest.mark.parametrize("kind", ["RatioEstimator", "LikelihoodEstimator", "PosteriorEstimator", "ConditionalDensity", "ScoreEstimator", "Classifier"])
def test_support_recorded_published_and_warned(kind: str, tmp_path: Path) -> None:
    est, evaluate, train_x = estimators()[kind]
    support = est.training_support
    if train_x is not None:  # exactly the per-feature extremes of the training x
        assert support.low == (float(train_x.double().min()),) and support.high == (float(train_x.double().max()),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(torch.tensor([[support.low[0]], [support.high[0]]]))  # inside: silent
    with pytest.warns(ExtrapolationWarning, match=rf"{kind}.*1 of 1 events, first at row 0: feature 0 = 1e\+06 outside the training range"):
        evaluate(FAR)
    back = load(save(tmp_path / "est.h5", est))
    assert training_support(back) == support


def test_x_far_outside_extrapolates_and_warns() -> None:
    """The measured failure: a learned ratio at x = 1e6 returns a huge number silently."""
    est = RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,))
    with pytest.warns(ExtrapolationWarning, match="the network extrapolates there"):
        value = est.log_ratio(FAR, [0.5])
    assert abs(float(value.detach())) > 100  # an unconstrained extrapolation, hence the warning


def test_margin_sets_and_zero_weights() -> None:
    s = TrainingSupport.from_data(torch.tensor([[0.0, 10.0], [1.0, 20.0], [5.0, 0.0]]), weights=torch.tensor([1.0, 1.0, 0.0]))
    assert s.low == (0.0, 10.0) and s.high == (1.0, 20.0) and s.n_events == 3  # the zero-weight row is not support
    assert s.outside(torch.tensor([[1.05, 10.0], [1.06, 10.0], [0.5, 9.4], [0.5, 9.6]])).tolist() == [False, True, True, False]
    x = torch.tensor([[[0.0], [1.0], [float("nan")]], [[4.0], [0.5], [0.5]]])  # padded sets: masked and all-NaN entries are padding
    sets = TrainingSupport.from_data(x, mask=torch.tensor([[True, True, False], [False, True, True]]))
    assert (sets.low, sets.high) == ((0.0,), (1.0,))
    assert sets.outside(x, torch.tensor([[True, True, False], [True, True, True]])).tolist() == [False, True]
    assert sets.fraction_outside(x, None, torch.tensor([3.0, 1.0])) == pytest.approx(0.25)


def test_ensembles_and_bound_methods_carry_the_support(tmp_path: Path) -> None:
    est = RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,))
    mean = EnsembleMean(Ensemble(est, 2, generator=torch.Generator().manual_seed(0)))
    assert training_support(mean) == est.training_support == training_support(est.log_ratio)
    assert training_support(load(save(tmp_path / "mean.h5", mean))) == est.training_support
    assert training_support(lambda x, t: x[:, 0]) is None


def test_old_file_without_support_loads_with_the_check_unavailable(tmp_path: Path) -> None:
    est = RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,))
    path = save(tmp_path / "old.h5", est)
    rewrite_publish_spec(path, lambda h: h["spec"].pop("training_support"))  # as written before supports were recorded
    old = load(path)
    assert old.training_support is None and training_support(old) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old.log_ratio(FAR, [0.5])  # nothing to warn about: the range is unknown
    res = UnbinnedLikelihood(old, Events.observed(torch.cat([PAIRS.x[:20], FAR])), SIM.space).fit()
    assert math.isnan(res.outside_support) and "training-support check unavailable" in res.notes[0]


def test_pyhf_torch_backend_leaves_torch_default_dtype_as_it_was() -> None:
    """pyhf's torch backend sets torch's global default dtype to float64; leaving it so made later float32 code silently float64."""
    from sbilab.stats.histfactory import pyhf_backend

    assert torch.get_default_dtype() == torch.float32
    with pyhf_backend("torch"):
        pass
    assert torch.get_default_dtype() == torch.float32
