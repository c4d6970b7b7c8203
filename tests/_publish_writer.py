"""Subprocess of tests/test_io_onnx.py: the "analysis team" trains and publishes a ratio estimator.

Usage: python tests/_publish_writer.py OUT_DIR. Writes OUT_DIR/ratio.h5 (sbilab.publish) and
OUT_DIR/reference.json (log r on fixed new events and the unbinned fit of observed events, as the
writer computed them), so that a third party can check what it gets from the file alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sbilab import publish
from sbilab.estimators import RatioEstimator, get_loss
from sbilab.events import Events
from sbilab.simulators import GaussianLatent, ratio_training_data
from sbilab.stats import UnbinnedLikelihood
from sbilab.training import fit


def main(out: Path) -> None:
    torch.set_num_threads(1)
    sim = GaussianLatent()
    train = ratio_training_data(sim, 600, generator=torch.Generator().manual_seed(0))
    est = RatioEstimator.from_events(train, sim.space, hidden=(16, 16))
    fit(est, get_loss("carl"), train, epochs=2, batch_size=200, seed=0, progress=False, device="cpu")
    publish.save(out / "ratio.h5", est, metadata={"analysis": "gaussian toy", "observable": "x"})
    theta_true = sim.space.reference + 0.3 * (sim.space.high - sim.space.reference)
    observed = sim.sample(theta_true.repeat(400, 1).to(torch.get_default_dtype()), generator=torch.Generator().manual_seed(1))
    new_x = torch.linspace(-2, 2, 11).reshape(-1, 1).to(torch.get_default_dtype()).expand(-1, observed.x.shape[1])
    with torch.no_grad():
        log_r = est.log_ratio(new_x, theta_true.to(new_x.dtype)).tolist()
    best = UnbinnedLikelihood(est, Events.observed(observed.x), sim.space).fit()
    reference = {"new_x": new_x.tolist(), "theta": theta_true.tolist(), "log_r": log_r, "observed_x": observed.x.tolist(),
                 "best": [float(best.best[n]) for n in sim.space.names], "nll_min": float(best.nll_min), "names": list(sim.space.names)}
    (out / "reference.json").write_text(json.dumps(reference))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
