# %% [markdown]
# # Posterior of a resonance's mass and width from one dataset of many events
#
# A resonance with pole mass $M$ and width $\Gamma$ is seen through a detector of resolution
# $\sigma = 2$ inside a window: every event is $x = m + \epsilon$ with
# $m \sim \mathrm{BW}(M, \Gamma)$, $\epsilon \sim \mathcal N(0, \sigma^2)$
# (`sbilab.simulators.toys.Resonance`). One *observation* is a whole dataset: a set of
# $E$ events. We learn the posterior $p(M, \Gamma \mid \{x_e\})$ with neural posterior estimation:
# a conditional spline flow whose context is a permutation-invariant deep-set embedding of the
# events, trained by `fit()` on many simulated datasets with $\theta$ drawn from the prior. Because
# the toy's likelihood is exact, we can compare with the exact posterior on a grid,
# $\log p(\theta \mid X) = \sum_e \log p(x_e \mid \theta) + \text{const}$ (uniform prior), and with
# MCMC on the exact likelihood (`sbilab.inference`), and check calibration with SBC and
# expected coverage (`sbilab.stats.diagnostics`).
#
# Run: `python tutorials/resonance_posterior.py` (a few minutes) or `--quick` (< 1 min);
# `--json` prints the summary as one JSON object, `--plots DIR` writes PNG figures.

# %%
import argparse
import json
import sys
import time

import torch

from sbilab.estimators.losses import npe_loss
from sbilab.estimators.posterior import PosteriorEstimator
from sbilab.events import Events
from sbilab.inference import LogPosterior, sample_mcmc
from sbilab.simulators.toys.resonance import Resonance, voigt_log_pdf
from sbilab.stats.diagnostics import c2st, expected_coverage, sbc
from sbilab.training import fit

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--json", action="store_true")
parser.add_argument("--plots", default=None, help="folder for PNG figures")
args, _ = parser.parse_known_args()
torch.set_num_threads(1)
torch.manual_seed(0)  # network initialisation
log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print

EVENTS = 100 if args.quick else 200          # events per dataset (one observation)
N_TRAIN = 1500 if args.quick else 6000       # simulated datasets for training
N_CHECK = 100 if args.quick else 300         # held-out datasets for SBC / coverage
GRID = 100 if args.quick else 200            # exact-posterior grid points per axis
THETA_TRUE = torch.tensor([100.6, 4.2])
t_start = time.perf_counter()

# %% [markdown]
# ## Simulate training datasets
# Each row of `Events` is one dataset: `x` has shape `(N, E, 1)` (a set of E one-feature events),
# `theta` is `(N, 2)` drawn uniformly from the box $M \in [95, 105]$, $\Gamma \in [2, 8]$.

# %%
sim = Resonance()
gen = torch.Generator().manual_seed(1)


def datasets(n: int, theta: torch.Tensor | None = None) -> Events:
    theta = sim.space.sample(n, generator=gen) if theta is None else theta.expand(n, 2)
    events = sim.sample(theta.repeat_interleave(EVENTS, 0), generator=gen)
    return Events(x=events.x.reshape(n, EVENTS, 1), theta=theta)


train = datasets(N_TRAIN)
check = datasets(N_CHECK)
observed = datasets(1, THETA_TRUE)
log(f"training sets {tuple(train.x.shape)}, observed dataset of {EVENTS} events at θ = {THETA_TRUE.tolist()}")

# %% [markdown]
# ## Train the posterior estimator with `fit()`
# Mean pooling makes the embedding an average over events (the posterior sharpens with E through
# the flow, which sees the summary). Samples are confined to the prior box by construction.

# %%
posterior = PosteriorEstimator.from_events(
    train, sim.space, flow="nsf", transforms=3, hidden=(64, 64),
    embedding={"kind": "deepsets", "out_features": 16, "hidden": [32], "latent": 32, "pooling": "mean"},
)
result = fit(posterior, npe_loss, train, epochs=60 if args.quick else 150, batch_size=128, learning_rate=2e-3,
             patience=10, seed=0, progress=False)
log(f"trained {len(result.history['train_loss'])} epochs, best validation loss {min(result.history['val_loss']):.3f}")
npe = posterior.sample(20_000, observed.x, generator=torch.Generator().manual_seed(2))[:, 0]

# %% [markdown]
# ## The exact posterior on a grid
# $\log p(X|\theta) = \sum_e \log V(x_e - M; \sigma, \Gamma/2) - E \log A(M, \Gamma)$ with the Voigt
# profile V and the window acceptance A — the same formula as `Resonance.log_prob`, evaluated for
# all events and grid points at once.

# %%
m_axis = torch.linspace(95, 105, GRID, dtype=torch.float64)
g_axis = torch.linspace(2, 8, GRID, dtype=torch.float64)
grid = torch.stack(torch.meshgrid(m_axis, g_axis, indexing="ij"), -1).reshape(-1, 2)
x_obs = observed.x[0, :, 0].double()


def exact_log_likelihood(theta: torch.Tensor) -> torch.Tensor:
    theta = theta.double()
    out = []
    for part in theta.split(2048):
        u = x_obs[None, :] - part[:, :1]
        out.append(voigt_log_pdf(u, sim.sigma_det, part[:, 1:] / 2).sum(1) - EVENTS * torch.log(sim.acceptance(part)))
    return torch.cat(out)


check_point = THETA_TRUE.double()[None]
assert torch.allclose(exact_log_likelihood(check_point), sim.log_prob(observed.x[0].double(), check_point[0]).sum()[None])
log_post = exact_log_likelihood(grid)
weights = torch.softmax(log_post, 0)
exact_mean = (weights[:, None] * grid).sum(0)
exact_std = ((weights[:, None] * (grid - exact_mean) ** 2).sum(0)).sqrt()
cell = torch.tensor([m_axis[1] - m_axis[0], g_axis[1] - g_axis[0]], dtype=torch.float64)
idx = torch.multinomial(weights, 20_000, replacement=True, generator=gen)
exact_samples = grid[idx] + (torch.rand(20_000, 2, generator=gen, dtype=torch.float64) - 0.5) * cell

# %% [markdown]
# ## MCMC on the exact likelihood (`sbilab.inference`)
# The same posterior from a likelihood plus a prior — what a trained `RatioEstimator` would give
# through `sample_posterior(estimator, x, n)`.

# %%
mcmc = sample_mcmc(LogPosterior(exact_log_likelihood, sim.space), 4000, chains=32, warmup=200,
                   generator=torch.Generator().manual_seed(3), progress=False)

# %% [markdown]
# ## Compare
# Posterior means and standard deviations, and a classifier two-sample test between NPE samples
# and samples from the exact grid posterior (0.5 = indistinguishable).

# %%
npe_mean, npe_std = npe.double().mean(0), npe.double().std(0)
two_sample = c2st(exact_samples[:5000], npe[:5000], seed=0, max_epochs=200)
summary = {
    "events_per_dataset": EVENTS,
    "training_datasets": N_TRAIN,
    "theta_true": THETA_TRUE.tolist(),
    "exact": {"mean": exact_mean.tolist(), "std": exact_std.tolist()},
    "npe": {"mean": npe_mean.tolist(), "std": npe_std.tolist()},
    "mcmc_exact_likelihood": {"mean": mcmc.samples.double().mean(0).tolist(), "std": mcmc.samples.double().std(0).tolist(),
                              "rhat": mcmc.rhat.tolist()},
    "mean_error_in_std": ((npe_mean - exact_mean) / exact_std).tolist(),
    "std_ratio": (npe_std / exact_std).tolist(),
    "c2st_npe_vs_exact": two_sample.accuracy,
}
for name, i in (("M", 0), ("Gamma", 1)):
    log(f"{name:6s} exact {exact_mean[i]:.3f} ± {exact_std[i]:.3f}   NPE {npe_mean[i]:.3f} ± {npe_std[i]:.3f}   "
        f"MCMC {summary['mcmc_exact_likelihood']['mean'][i]:.3f} ± {summary['mcmc_exact_likelihood']['std'][i]:.3f}")
log(f"C2ST(NPE vs exact) = {two_sample.accuracy:.3f}")

# %% [markdown]
# ## Calibration over many datasets: SBC and expected coverage
# For held-out datasets simulated at θ from the prior, the rank of the true θ among posterior
# samples must be uniform (SBC), and highest-density regions of credibility c must contain the
# true θ in a fraction c of the datasets (expected coverage).

# %%
with torch.no_grad():
    draws = posterior.sample(300, check.x, generator=torch.Generator().manual_seed(4))  # (S, N, 2)
    ranks = sbc(draws, check.theta)
    coverage = expected_coverage(posterior.log_prob(draws, check.x), posterior.log_prob(check.theta, check.x))
summary["sbc"] = {"D": ranks.statistic, "tolerance": ranks.tolerance, "passed": ranks.passed}
summary["coverage"] = {"D": coverage.statistic, "tolerance": coverage.tolerance, "passed": coverage.passed,
                       "at_68": float(coverage.curve[68]), "at_95": float(coverage.curve[95])}
summary["seconds"] = time.perf_counter() - t_start
log(f"SBC: D = {ranks.statistic:.3f} (tolerance {ranks.tolerance:.3f}) {'pass' if ranks.passed else 'FAIL'}; "
    f"coverage: D = {coverage.statistic:.3f} {'pass' if coverage.passed else 'FAIL'} "
    f"(68 % → {coverage.curve[68]:.2f}, 95 % → {coverage.curve[95]:.2f})")

# %% [markdown]
# ## Figures (optional)

# %%
if args.plots:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.plots)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    dens = weights.reshape(GRID, GRID).T
    ax.scatter(npe[:3000, 0], npe[:3000, 1], s=1, alpha=0.3, color="tab:orange", label="NPE samples")
    levels = (dens.max() * torch.exp(-0.5 * torch.tensor([9.0, 4.0, 1.0], dtype=dens.dtype))).tolist()  # ~1, 2, 3 σ
    ax.contour(m_axis, g_axis, dens, levels=levels, colors="k")
    ax.plot(*THETA_TRUE.tolist(), "r*", ms=12, label="true θ")
    ax.set_xlabel("M")
    ax.set_ylabel("Γ")
    ax.set_xlim(exact_mean[0] - 5 * exact_std[0], exact_mean[0] + 5 * exact_std[0])
    ax.set_ylim(exact_mean[1] - 5 * exact_std[1], exact_mean[1] + 5 * exact_std[1])
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("NPE samples vs exact posterior (contours)")
    fig.tight_layout()
    fig.savefig(out / "resonance_posterior.png", dpi=110)
    ranks.plot(out / "resonance_sbc.png", labels=["M", "Γ"])
    coverage.plot(out / "resonance_coverage.png")
    log(f"figures in {out}")

# %%
if args.json:
    print(json.dumps(summary))
