# %% [markdown]
# # Reinterpret a published ATLAS likelihood: reproduce a signal point, then test your own signal
#
# ATLAS published the full likelihood of its search for bottom squarks decaying via Higgs bosons
# (139 fb⁻¹, HEPData ins1748602): per signal region a background-only HistFactory workspace and
# one JSON Patch per signal mass point. This tutorial
#
# 1. computes the CLs of a published point (and checks it against pyhf's own reference value),
# 2. rebuilds that point's patch from its yields by channel *name* and gets the same CLs,
# 3. shows why the published patches' conventions matter (validation region dropped, signal also
#    in the control region),
# 4. tests a new signal model of your own: CLs at μ = 1 and the 95% CL upper limit on μ.
#
# It needs the shared likelihood at `../shared/data/pyhf/` (beside the project's folder) and
# stops with a message without it. Run: `python tutorials/reinterpret_atlas.py` (about a minute).
# A whole region's scan with a contour plot is one command:
# `sbilab reinterpret RegionA/BkgOnly.json ins1748602-....tar.gz --labels m_sb,m_chi2,m_chi1`.

# %%
import sys
import warnings
from pathlib import Path

import torch

from sbilab.reinterpret import ScanSettings, evaluate_patch, read_background, read_patches, signal_patch

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning)  # jsonschema's, raised inside pyhf
ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "pyhf" / "ins1748602-sbottom-multib-probability-models.tar.gz"
if not ARCHIVE.is_file():
    print(f"skipped: the published ATLAS likelihood {ARCHIVE} is absent (it ships in ../shared/data for developers)")
    sys.exit(0)

# %% [markdown]
# ## 1. A published signal point
# The background-only workspace and the patches are read straight from the HEPData tarball.
# Each patch's masses (m_sbottom, m_chi2, m_chi1) come from its file name.

# %%
background = dict(read_background("RegionA/BkgOnly.json", archive=ARCHIVE))
patches = read_patches(ARCHIVE, region="RegionA", labels=("m_sb", "m_chi2", "m_chi1"))
print(f"RegionA: channels {[c['name'] for c in background['channels']]}, {len(patches)} signal patches")
published = patches.select(["sbottom_1300_205_60"]).patches[0]
settings = ScanSettings()  # CLs at mu = 1, q~_mu, scipy SLSQP with autodiff gradients (as pyhf's defaults)
point, _ = evaluate_patch(background, published, settings)
print(f"{published.name}: CLs_obs = {point.cls_obs:.6f} (pyhf's reference 0.2444363), CLs_exp = {point.cls_expected[2]:.6f}")

# %% [markdown]
# ## 2. The same signal, given by channel name
# The patch adds the signal sample to the signal region `SR_meff` and the control region
# `CRtt_meff` and removes the validation region `VRtt_meff`. `signal_patch` writes that patch
# from the yields: the POI's normfactor, the luminosity and the Monte Carlo statistical
# uncertainty (joining the channel's `staterror`) are added for you; here the published sample's
# own systematic modifiers are passed too, so the result must agree exactly.

# %%
added = {op["path"].split("/")[2]: op["value"] for op in published.operations if op["op"] == "add"}
sr, cr = added["0"], added["2"]


def staterror(sample):
    return next(m["data"] for m in sample["modifiers"] if m["type"] == "staterror")


def systematics(sample):
    return [m for m in sample["modifiers"] if m["type"] not in ("normfactor", "lumi", "staterror")]


yields = {"SR_meff": sr["data"], "CRtt_meff": cr["data"]}
errors = {"SR_meff": staterror(sr), "CRtt_meff": staterror(cr)}
rebuilt = signal_patch(background, yields, uncertainties=errors, drop=["VR*"], poi_bounds=(0.0, 10.0),
                       modifiers={"SR_meff": systematics(sr), "CRtt_meff": systematics(cr)})
again, _ = evaluate_patch(background, rebuilt, settings)
print(f"rebuilt from its yields:           CLs_obs = {again.cls_obs:.6f}, CLs_exp = {again.cls_expected[2]:.6f}")

# %% [markdown]
# ## 3. Conventions matter
# With only the yields, their statistical uncertainty and one overall signal systematic (the
# usual situation of a reinterpretation) the CLs moves a little. Keeping the validation region
# in the fit moves the expected CLs much more: the published fit does not use it.

# %%
simple = signal_patch(background, yields, uncertainties=errors, systematic=(1.0366, 0.9975), systematic_name="SigRad", drop=["VR*"])
approx, _ = evaluate_patch(background, simple, settings)
with_vr = signal_patch(background, yields, uncertainties=errors, systematic=(1.0366, 0.9975), systematic_name="SigRad")
kept, _ = evaluate_patch(background, with_vr, settings)
print(f"yields + stat + one systematic:    CLs_obs = {approx.cls_obs:.6f}, CLs_exp = {approx.cls_expected[2]:.6f}")
print(f"... with the validation region:    CLs_obs = {kept.cls_obs:.6f}, CLs_exp = {kept.cls_expected[2]:.6f}")

# %% [markdown]
# ## 4. Your own signal
# A model with a softer spectrum: fewer events in the highest m_eff bin, some signal leaking into
# the control region, a 15% theory uncertainty. The POI's bounds are widened automatically
# (a weak signal's limit lies far above the published bound μ ≤ 10).

# %%
mine = signal_patch(background, {"SR_meff": [0.4, 0.9, 0.8], "CRtt_meff": [0.1, 0.3, 0.2]},
                    uncertainties={"SR_meff": [0.05, 0.08, 0.08]}, systematic=(1.15, 0.85), systematic_name="theory",
                    drop=["VR*"], name="my_model")
bounds = mine.operations[-1]["value"]
result, _ = evaluate_patch(background, mine, ScanSettings(upper_limits=True))
print(f"my_model: CLs_obs = {result.cls_obs:.4f}, CLs_exp = {result.cls_expected[2]:.4f}, POI bounds {bounds}")
print(f"my_model: 95% CL upper limit on mu: observed {result.upper_limit:.3f}, expected {result.upper_limits_expected[2]:.3f} "
      f"(+-1 sigma {result.upper_limits_expected[1]:.3f} .. {result.upper_limits_expected[3]:.3f})")
