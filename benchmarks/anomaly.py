r"""Decorrelation, ABCD and weakly supervised anomaly detection on exact toys (``sbilab.anomaly``).

In one run:

* **dCor²** of a bivariate normal with correlation ρ: the U-statistic averaged over batches
  against Székely's closed form (0.007944, 0.072362, 0.206231, 0.753733 at ρ = 0.1, 0.3, 0.5, 0.9),
  and the cost of dCor² (forward + backward) against a classifier's cross-entropy step on the
  same batch, for batch sizes 256 ... 8192;
* **DisCo λ scan** on the decorrelation toy (ρ = 0.7, signal N((1, 1), I)): ABCD closure of
  (score, m) with the score cut at 20 % background efficiency and m > 1, background rejection at
  50 % signal efficiency, mass sculpting (JSD at 50 % background efficiency) and dCor²; references:
  the exact classifier (closure by quadrature, rejection 12.71) and the best m-independent
  classifier (closure 1, rejection 6.30);
* **SIC** of the supervised, idealised, CWoLa and CATHODE classifiers at signal fractions (S/B in the
  signal region) 0.5 %, 1 %, 2 %, as fractions of the exact likelihood ratio's SIC, at background
  efficiency 10⁻³ (the floor of the curves is 10 test background events, 10⁻⁴ in the full run
  and 5·10⁻⁴ in ``--quick``), on the anomaly toy with 4 noise features;
* **ABCD likelihood**: the abcd-pyhf 0.0.7 reference (observed 10, 100, 100, 1000, signal 1 in
  A): CLs limit and expected band through pyhf and through iminuit, against 7.962507 and
  [3.979234, 5.557391, 7.962507, 11.797208, 16.974624].

CATHODE's background model is a ``ConditionalDensity`` q(x | m) trained by ``fit`` in each data
set's sidebands (:func:`sbilab.anomaly.fit_background_model`, default ``BackgroundFlow``; 10 epochs
in ``--quick``), sampled at signal-region masses drawn from the data.

Usage: ``python benchmarks/anomaly.py [--quick] [--json] [--seed S] [--threads T]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from sbilab.anomaly import AnomalyToy, BackgroundFlow, DecorrelationToy, abcd_inference, bivariate_normal_dcor2, fit_background_model
from sbilab.anomaly.studies import Training, decorrelation_scan, sic_study
from sbilab.estimators import Classifier, classifier_training_data, distance_correlation

REFERENCE_LIMIT = {"observed": 7.962507, "expected": [3.979234, 5.557391, 7.962507, 11.797208, 16.974624]}


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def dcor_accuracy(quick: bool, seed: int) -> dict[str, dict[str, float]]:
    batches, n = (4, 1000) if quick else (40, 2000)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for rho in (0.1, 0.3, 0.5, 0.9):
        values = []
        for _ in range(batches):
            z = torch.randn(n, 2, generator=g, dtype=torch.float64)
            values.append(float(distance_correlation(z[:, :1], rho * z[:, :1] + math.sqrt(1 - rho**2) * z[:, 1:], unbiased=True)))
        mean = sum(values) / len(values)
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        out[str(rho)] = {"estimate": mean, "error": spread, "exact": bivariate_normal_dcor2(rho)}
    return out


def dcor_cost(quick: bool) -> dict[str, dict[str, float]]:
    """Milliseconds per forward + backward of dCor² and of a (64, 64) classifier's cross-entropy on one batch."""
    sizes = (256, 512, 1024, 2048) if quick else (256, 512, 1024, 2048, 4096, 8192)
    out = {}
    for n in sizes:
        x = torch.randn(n, 4)
        train = classifier_training_data(x[: n // 2], x[n // 2:])
        clf = Classifier.from_events(train, hidden=(64, 64), seed=0)
        m = torch.randn(n, 1)

        def bce() -> None:
            F.binary_cross_entropy_with_logits(clf(train.x), train.label).backward()

        def dcor() -> None:
            distance_correlation(torch.sigmoid(clf(train.x)).unsqueeze(-1), m).backward()

        times = {}
        for name, step in (("bce_ms", bce), ("dcor2_plus_bce_ms", dcor)):
            step()
            repeats = max(2, int(2e6 / n**2)) if n > 1024 else 20
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            times[name] = 1e3 * (time.perf_counter() - start) / repeats
        times["ratio"] = times["dcor2_plus_bce_ms"] / times["bce_ms"]
        out[str(n)] = times
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples and short trainings (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    start = time.time()
    result: dict[str, object] = {"quick": quick, "seed": args.seed}

    log("dCor^2 of a bivariate normal ...")
    accuracy = dcor_accuracy(quick, args.seed)
    result["dcor2_bivariate_normal"] = {rho: v["estimate"] for rho, v in accuracy.items()}
    result["dcor2_bivariate_normal_detail"] = accuracy
    result["dcor2_cost_vs_batch"] = dcor_cost(quick)

    log("DisCo lambda scan ...")
    lambdas = (0.0, 3.0, 30.0) if quick else (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
    training = Training(hidden=(32, 32), epochs=8, batch_size=1024, seed=args.seed) if quick else \
        Training(hidden=(64, 64), epochs=30, batch_size=1024, seed=args.seed)
    t0 = time.time()
    scan = decorrelation_scan(DecorrelationToy(), lambdas, n_train=5_000 if quick else 30_000, n_test=20_000 if quick else 200_000,
                              training=training, seed=args.seed, progress=not args.json)
    result["abcd_closure_vs_lambda"] = {str(p.lam): p.closure for p in scan.points}
    result["abcd_closure_error_vs_lambda"] = {str(p.lam): p.closure_error for p in scan.points}
    result["rejection_vs_lambda"] = {str(p.lam): p.rejection for p in scan.points}
    result["sculpting_jsd_vs_lambda"] = {str(p.lam): p.sculpting for p in scan.points}
    result["dcor2_vs_lambda"] = {str(p.lam): p.dcor2 for p in scan.points}
    result["decorrelation_references"] = {
        "exact_classifier_closure": scan.exact.closure, "exact_classifier_closure_quadrature": scan.exact_closure,
        "exact_classifier_rejection": scan.exact.rejection, "optimal_rejection": scan.optimal_rejection,
        "decorrelated_rejection": scan.decorrelated_rejection, "exact_classifier_jsd": scan.exact.sculpting,
        "jsd_statistical_floor": scan.sculpting_floor}
    result["decorrelation_seconds"] = time.time() - t0

    log("SIC of supervised / idealised / CWoLa / CATHODE ...")
    t0 = time.time()
    fractions = (0.005, 0.01, 0.02)
    sic_training = Training(hidden=(32, 32), epochs=8, batch_size=1024, seed=args.seed) if quick else \
        Training(hidden=(64, 64), epochs=30, batch_size=1024, ensemble=3, seed=args.seed)
    flow = BackgroundFlow(epochs=10 if quick else 30, seed=args.seed)
    study = sic_study(AnomalyToy(noise_features=4), fractions, methods=("supervised", "idealised", "cwola", "cathode"),
                      background_model=lambda sidebands: fit_background_model(sidebands, flow), n_background=100_000 if quick else 1_000_000,
                      n_test_background=20_000 if quick else 100_000, n_test_signal=5_000 if quick else 20_000,
                      n_supervised=10_000 if quick else 50_000, background_efficiency=1e-3, training=sic_training,
                      seed=args.seed, progress=not args.json)
    result["sic_fraction_of_optimal"] = {m: {str(f): v for f, v in per.items()} for m, per in study.fraction_of_optimal().items()}
    result["sic_at_1e-3"] = {m: {str(f): list(v) for f, v in per.items()} for m, per in study.at().items()}
    result["sic_max"] = {m: {str(f): list(c.max()) for f, c in per.items()} for m, per in study.curves.items()}
    result["sic_max"]["optimal"] = {"0.0": list(study.optimal.max())}
    result["sic_floor"] = study.optimal.min_background_efficiency
    result["sic_signal_events_in_sr"] = {str(f): n for f, n in study.signal_events.items()}
    result["sic_seconds"] = time.time() - t0

    log("ABCD likelihood (pyhf and iminuit) ...")
    t0 = time.time()
    abcd = abcd_inference((10, 100, 100, 1000), (1, 0, 0, 0))
    result["abcd_pyhf_limit"] = {
        "observed": abcd.limit.observed, "expected": list(abcd.limit.expected),
        "observed_iminuit": abcd.limit_iminuit.observed, "expected_iminuit": list(abcd.limit_iminuit.expected),
        "mu_b": abcd.background_fit.best["mu_b"], "mu_b_error": abcd.background_fit.errors["mu_b"],
        "reference": REFERENCE_LIMIT}
    result["abcd_seconds"] = time.time() - t0
    result["seconds"] = time.time() - start
    if args.json:
        print(json.dumps(result))
    else:
        log(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
