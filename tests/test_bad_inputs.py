"""Bad input is refused early, by a named SbilabError subclass whose message says what was wrong.

One table, one row per bad input: ``(description, call, error type, phrase of the message)``.
``call`` takes no arguments and must raise; the phrase is searched (case-insensitive regex) in
the message. To add a case, append a row (build any data it needs at module level, small and
seeded). Rows that must fail before any training step use :func:`counting`, whose loss records
training-mode calls, and ``before_training`` checks that none happened.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch
from torch import nn

from sbilab import Events
from sbilab.estimators import RatioEstimator, alices_loss, carl_loss, get_loss
from sbilab.exceptions import (
    ConfigError,
    InvalidEventsError,
    MissingAugmentedDataError,
    SbilabError,
    ShapeMismatchError,
)
from sbilab.nets import MLP, Ensemble
from sbilab.simulators import GaussianLatent, ratio_training_data
from sbilab.training import fit


class Row(NamedTuple):
    description: str
    call: Callable[[], Any]
    error: type[SbilabError]
    phrase: str


# ---------------------------------------------------------------------------- small, seeded data
SIM = GaussianLatent()
PAIRS = ratio_training_data(SIM, 40, generator=torch.Generator().manual_seed(0))  # x (80, 1), theta (80, 1), augmented
EST = RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,))
QUIET = dict(epochs=1, progress=False)
TRAINED: list[int] = []  # training-mode loss calls of the last `counting` loss


def counting(loss: Callable) -> Callable:
    """``loss`` that records its training-mode calls in TRAINED (cleared on creation)."""
    TRAINED.clear()

    def wrapped(model: nn.Module, batch: Events) -> torch.Tensor:
        if model.training:
            TRAINED.append(1)
        return loss(model, batch)

    return wrapped


def fit_pairs(events: Events, loss: Callable = alices_loss, estimator: nn.Module | None = None, **options: Any) -> Any:
    return fit(estimator if estimator is not None else RatioEstimator.from_events(PAIRS, SIM.space, hidden=(8,)),
               counting(loss), events, **{**QUIET, **options})


def _labels(value: float) -> Events:
    label = PAIRS.label.clone()
    label[3] = value
    return PAIRS.replace(label=label)


def _weights(w: torch.Tensor) -> Events:
    return PAIRS.replace(weights=w)


CANCELLING = torch.tensor([1.0, -1.0]).repeat(40)  # sums to exactly 0
NEGATIVE = -torch.ones(80)
TWO_OBSERVABLES = Events(x=torch.randn(80, 2, generator=torch.Generator().manual_seed(1)), theta=PAIRS.theta,
                         label=PAIRS.label, log_r_joint=PAIRS.log_r_joint, score_joint=PAIRS.score_joint)
TWO_PARAMETERS = PAIRS.replace(theta=PAIRS.theta.repeat(1, 2), score_joint=PAIRS.score_joint.repeat(1, 2))
NO_AUGMENTATION = Events(x=PAIRS.x, theta=PAIRS.theta, label=PAIRS.label)
NOT_A_FOLDER = Path(__file__) / "checkpoint.pt"  # this test file is a regular file: nothing can be created below it


ROWS: list[Row] = [
    # ---------------------------------------------------------------- fit: events
    Row("fit: label 2 (labels are 0/1)", lambda: fit_pairs(_labels(2.0), carl_loss), InvalidEventsError,
        r"label holds values other than 0 and 1"),
    Row("fit: label 0.5 (soft label in the label field)", lambda: fit_pairs(_labels(0.5), carl_loss), InvalidEventsError,
        r"values other than 0 and 1.*row"),
    Row("fit: validation label -1", lambda: fit_pairs(PAIRS, carl_loss, validation=_labels(-1.0)), InvalidEventsError,
        r"validation\.label"),
    Row("fit: event weights summing to 0", lambda: fit_pairs(_weights(CANCELLING), validation_fraction=0.0),
        InvalidEventsError, r"weights of data sum to 0 "),
    Row("fit: validation weights summing to < 0", lambda: fit_pairs(PAIRS, validation=_weights(CANCELLING - 0.1)),
        InvalidEventsError, r"weights of validation sum to -8"),
    Row("fit: all event weights negative", lambda: fit_pairs(_weights(NEGATIVE)), InvalidEventsError,
        r"sum to -\d+ .*clearly positive"),
    # ---------------------------------------------------------------- fit: estimator vs events
    Row("fit: estimator built for D = 1 fed D = 2", lambda: fit_pairs(TWO_OBSERVABLES), ShapeMismatchError,
        r"x of shape \(\d+, 2\) but the estimator was built for \(N, 1\)"),
    Row("fit: plain module with 1 input fed D = 2", lambda: fit(nn.Linear(1, 1), counting(lambda m, b: m(b.x)[:, 0]),
        TWO_OBSERVABLES, **QUIET), ShapeMismatchError, r"first layer takes 1 input features"),
    Row("fit: estimator for 1 parameter fed 2", lambda: fit_pairs(TWO_PARAMETERS),
        ShapeMismatchError, r"theta with 2 columns, expected 1"),
    Row("fit: ALICES without augmented data", lambda: fit_pairs(NO_AUGMENTATION), MissingAugmentedDataError,
        r"needs Events\.log_r_joint"),
    # ---------------------------------------------------------------- fit: options
    Row("fit: ensemble=2 with a single estimator", lambda: fit_pairs(PAIRS, ensemble=2), ConfigError,
        r"ensemble=2 with a single RatioEstimator.*untrained.*Ensemble\(estimator, 2\)"),
    Row("fit: ensemble=3 with an Ensemble of 2", lambda: fit_pairs(PAIRS, estimator=Ensemble(EST, 2), ensemble=3),
        ConfigError, r"has 2 members"),
    Row("fit: init='random'", lambda: fit_pairs(PAIRS, init="random"), ConfigError, r"init must be one of"),
    Row("fit: checkpoint below a regular file", lambda: fit_pairs(PAIRS, checkpoint=NOT_A_FOLDER), ConfigError,
        r"cannot write the checkpoint"),
    Row("fit: checkpoint is a folder", lambda: fit_pairs(PAIRS, checkpoint=Path(__file__).parent), ConfigError,
        r"is a folder; give a file name"),
    Row("fit: alpha < 0 bound without get_loss", lambda: fit_pairs(PAIRS, functools.partial(alices_loss, alpha=-1.0)),
        ConfigError, r"alpha .* must be a finite number >= 0, got -1"),
    # ---------------------------------------------------------------- losses
    Row("get_loss: misspelt option alhpa", lambda: get_loss("alices", alhpa=0.1), ConfigError, r"no option\(s\) \['alhpa'\]"),
    Row("get_loss: alpha < 0", lambda: get_loss("alices", alpha=-0.1), ConfigError, r"alpha .*>= 0, got -0\.1"),
    Row("get_loss: alpha NaN", lambda: get_loss("rascal", alpha=float("nan")), ConfigError, r"alpha .*finite"),
    Row("get_loss: alpha a string", lambda: get_loss("cascal", alpha="0.1"), ConfigError, r"alpha .*got '0\.1'"),
    Row("get_loss: clip 0", lambda: get_loss("rolr", clip=0.0), ConfigError, r"clip must be a positive"),
    Row("get_loss: density target 'x'", lambda: get_loss("density", target="x"), ConfigError, r"target must be one of"),
    # ---------------------------------------------------------------- estimators and networks
    Row("RatioEstimator: hidden=(0,)", lambda: RatioEstimator(SIM.space, 1, hidden=(0,)), ConfigError,
        r"hidden=\[0\].*constant"),
    Row("RatioEstimator: hidden=(16, -4)", lambda: RatioEstimator(SIM.space, 1, hidden=(16, -4)), ConfigError,
        r"integer >= 1"),
    Row("RatioEstimator: hidden=(8.5,)", lambda: RatioEstimator(SIM.space, 1, hidden=(8.5,)), ConfigError, r"hidden=\[8\.5\]"),
    Row("MLP: hidden=(0,)", lambda: MLP(2, 1, hidden=(0,)), ConfigError, r"MLP: hidden=\[0\]"),
    # complex Events fields: rows of tests/test_bad_inputs_io.py (one description, one table)
    Row("RatioEstimator.log_ratio: complex x", lambda: EST.log_ratio(torch.ones(3, 1, dtype=torch.complex64), [0.5]),
        ShapeMismatchError, r"x is complex.*imaginary part"),
    Row("RatioEstimator.log_ratio: complex theta", lambda: EST.log_ratio(torch.ones(3, 1), torch.ones(1, dtype=torch.complex64)),
        ShapeMismatchError, r"theta is complex"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.description for r in ROWS])
def test_bad_input_raises_named_error(row: Row) -> None:
    with pytest.raises(row.error) as info:
        row.call()
    assert issubclass(row.error, SbilabError)
    assert re.search(row.phrase, str(info.value), re.IGNORECASE | re.DOTALL), str(info.value)


@pytest.mark.parametrize("row", [r for r in ROWS if r.description.startswith("fit:")],
                         ids=[r.description for r in ROWS if r.description.startswith("fit:")])
def test_fit_refuses_before_the_first_training_step(row: Row) -> None:
    with pytest.raises(row.error):
        row.call()
    assert not TRAINED  # no batch was trained on: nothing is lost, nothing half-trained


def test_table_rows_are_well_formed() -> None:
    assert len({r.description for r in ROWS}) == len(ROWS)
    for row in ROWS:
        assert callable(row.call) and issubclass(row.error, SbilabError) and re.compile(row.phrase)
