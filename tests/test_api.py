"""The public API is locked: a change to what sbilab exports must change this test on purpose."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

import sbilab
from sbilab import exceptions

PUBLIC = {
    "sbilab": {
        "__version__", "calibration", "distributed", "exceptions", "inference", "io", "publish", "simulators", "stats",
        "Events", "PairedEvents", "ParameterSpace", "Simulator", "SimulationStore", "augment", "joint_log_ratio", "joint_score",
        "ratio_training_data", "score_training_data", "RatioEstimator", "ScoreEstimator", "LikelihoodEstimator",
        "PosteriorEstimator", "PosteriorMixture", "Classifier", "ConditionalDensity", "Ensemble", "get_loss", "fit", "TrainingResult", "TrainingConfig", "UnbinnedLikelihood",
        "SbilabError",
    },
    "sbilab.estimators": {
        "RatioEstimator", "ScoreEstimator", "LikelihoodEstimator", "PosteriorEstimator", "PosteriorMixture", "FLOWS", "ConditionalDensity", "carl_loss",
        "Classifier", "classifier_training_data", "classifier_weights", "ClassifierWeights", "WeightClippingWarning",
        "rolr_loss", "rascal_loss", "alice_loss", "alices_loss", "cascal_loss", "sally_loss", "nde_loss",
        "scandal_loss", "npe_loss", "density_loss", "disco_loss", "double_disco_loss", "distance_correlation", "distance_covariance",
        "check_spectator_not_input", "ClassifierPair", "get_loss", "LOSSES", "ensemble_log_ratio", "ensemble_score",
        "ensemble_log_prob", "member_spread", "EnsembleMean", "DensityRatio", "LossInfo", "loss_info", "register_loss",
    },
    "sbilab.training": {"fit", "TrainingResult", "TrainingConfig", "Schedule", "Loss", "learning_rate_factor", "load_checkpoint", "DataParallel",
                        "OverfittingWarning"},
    "sbilab.distributed": {
        "simulate_to_store", "FanoutResult", "SimulatorSpec", "chunk_seed", "launch", "free_port", "DataParallel",
        "train_replicas", "ReplicaResult", "TrainingTask", "join_ensembles",
    },
    "sbilab.unfolding": {
        "Response", "IBUResult", "iterative_unfold", "triangular_discriminator", "triangular_discriminator_binned",
        "wasserstein_1d", "wasserstein_1d_cdf", "Chi2Result", "chi2_ndf", "classifier_auc", "ToyData",
        "GaussianUnfoldingToy", "minimal_toy", "full_toy", "MultiObservableToy", "IdealIterations", "ideal_iterations",
        "gaussian_ideal_moments", "ideal_stat_error", "ObservableUnfolding", "unfold_each_observable", "compare_to_truth",
        "UnfoldedResult", "HistogramBand", "read_pandas_table", "weighted_moments", "distances_to_truth", "omnifold",
        "OmniFoldSettings", "OmniFoldResult", "ClassifierSettings", "StepDiagnostics", "Replicas", "ReplicaLayout",
        "generative_unfold", "GenerativeSettings", "GenerativeResult",
    },
    "sbilab.io": {
        "LHEHeader", "LHEData", "LHEWeight", "WeightGroup", "IDWTUP_VALUES", "read_lhe_header", "iter_lhe_chunks", "read_lhe",
        "Normalisation", "normalisation", "WeightSet", "weight_sets", "combine_variations", "COMBINE_KINDS",
        "BinnedSystematics", "binned_systematics", "event_systematics", "nuisance_weighted_events", "LHEScan",
        "scan_normalisation", "lhe_to_store", "read_root", "iter_root", "root_to_store", "write_root", "to_hist", "from_hist",
        "EXPORTABLE", "export_onnx", "verify_onnx", "describe_onnx",
    },
    "sbilab.mem": {
        "HardProcess", "MatrixElement", "TransferFunction", "GaussianTransfer", "check_normalisation", "Proposal", "BoxProposal",
        "MultiChannel", "VegasProposal", "adapt_vegas", "cauchy_map", "normal_map", "truncated_normal_map", "CommonNoise", "event_keys",
        "Integral", "integrate", "calls_for_precision", "variance_calls", "FiducialCrossSection", "MatrixElementLikelihood",
        "IntegrationNoise", "integration_noise", "fiducial_noise", "CoverageCheck", "CoverageWarning", "check_coverage", "AgreementCheck", "check_agreement",
        "FlowProposal", "Anchor",
        "fit_proposal", "fit_sampler", "RemappedChannels", "fit_channel_flows", "PROPOSAL_TRAINING", "SAMPLER_TRAINING", "LearnedTransfer", "LearnedAcceptance", "AcceptedProcess",
        "detector_pairs", "fit_transfer", "fit_acceptance", "TRANSFER_TRAINING", "ACCEPTANCE_TRAINING",
    },
    "sbilab.surrogates": {
        "check_pairs", "stage_context", "stage_events", "efficiency_events", "simulator_events", "stage_features",
        "paired_arrays", "to_paired_events", "TruthLevel", "Stage", "Composition", "simulate_pairs", "ResonanceTruth", "ResonanceDetector",
        "StageSurrogate", "train_stage_surrogate", "TruthRangeWarning", "SimulatorSurrogate", "train_simulator_surrogate",
        "train_refinement", "refinement_weights", "log_weight", "stage_log_ratio", "ratio_agreement", "LowEffectiveSampleSizeWarning",
        "AucResult", "HistogramComparison", "ValidationReport", "auc_error_estimate", "two_sample_auc", "compare_histograms",
        "compare_moments", "validate", "LikelihoodModel", "InferenceComparison", "compare_inference",
        "AmplificationResult", "histogram_amplification", "mean_amplification",
    },
    "sbilab.reinterpret": {
        "SignalPatch", "PatchCollection", "read_patches", "read_background", "patched_workspace", "to_patchset", "ScanSettings",
        "evaluate_patch", "poi_modifier_check", "scan_patches", "ScanJournal", "PatchResult", "ScanResult", "ExclusionContours",
        "exclusion_contours", "significance", "INTERPOLATION", "plot_exclusion", "signal_patch", "add_signal", "poi_upper_bound",
    },
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_locked(module):
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]


def test_every_all_name_exists_in_every_package():
    root = Path(sbilab.__file__).parent
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        mod = importlib.import_module(name)
        for public in getattr(mod, "__all__", ()):
            assert hasattr(mod, public), f"{name}.__all__ lists {public!r} which it does not define"


def test_exceptions_form_one_hierarchy():
    # errors derive from SbilabError, warnings from SbilabWarning (a UserWarning, never an error)
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        base = exceptions.SbilabWarning if name.endswith("Warning") else exceptions.SbilabError
        assert inspect.isclass(cls) and issubclass(cls, base)
        assert issubclass(cls, Warning) == name.endswith("Warning")
        assert cls.__doc__, f"{name} needs a docstring saying when it is raised"


def test_no_pickle_in_library_code():
    root = Path(sbilab.__file__).parent
    pattern = re.compile(r"^\s*import pickle|pickle\.load|cloudpickle|dill\.")
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not any(pattern.search(line) for line in text.splitlines()), f"pickle use in {path}"
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_no_public_name_means_two_things():
    """A user-facing name exported from two places must be the same object (else rename one)."""
    import pkgutil

    seen: dict[str, dict[str, object]] = {}
    for info in pkgutil.walk_packages(sbilab.__path__, "sbilab."):
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", ()):
            seen.setdefault(name, {})[info.name] = getattr(mod, name)
    clashes = {name: sorted(where) for name, where in seen.items() if len({id(v) for v in where.values()}) > 1}
    assert not clashes, f"one name, different objects: {clashes}"
