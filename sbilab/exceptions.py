r"""Named exceptions for user mistakes.

Every error a user can provoke with bad input derives from :class:`SbilabError`; the
message says which argument was wrong, what was wrong with it and how to fix it. Internal
invariants use ``assert``. Most classes also derive from the matching builtin
(``ValueError``, ``KeyError``, ...) so that generic handlers keep working. Warnings (a result
that may be wrong but is still returned) derive from :class:`SbilabWarning`.
"""

from __future__ import annotations

__all__ = [
    "SbilabError",
    "InvalidEventsError",
    "ParameterSpaceError",
    "OutOfSupportError",
    "ShapeMismatchError",
    "MissingAugmentedDataError",
    "MorphingError",
    "StoreError",
    "TrainingDivergedError",
    "NonFiniteOutputError",
    "ConfigError",
    "FitError",
    "WorkspaceError",
    "PublishError",
    "SamplingError",
    "InsufficientEventsError",
    "FileFormatError",
    "ExportError",
    "OverestimateError",
    "NegativeKernelError",
    "HistoryVersionError",
    "IntegrandError",
    "RegionError",
    "IdentityCheckError",
    "DistributedError",
    "WorkerError",
    "SchedulerTimeoutError",
    "SbilabWarning",
    "IdentityCheckWarning",
    "ExtrapolationWarning",
    "OneSidedIntervalWarning",
    "IntegrationNoiseWarning",
]


class SbilabError(Exception):
    """Base class of every error sbilab raises for a user mistake."""


class InvalidEventsError(SbilabError, ValueError):
    """An :class:`~sbilab.events.Events` field is malformed (shape, length, non-finite values)."""


class ParameterSpaceError(SbilabError, ValueError):
    """A parameter space is ill-defined (names, bounds, reference point, proposal)."""


class OutOfSupportError(SbilabError, ValueError):
    """Parameter values lie outside the parameter space they must belong to."""


class ShapeMismatchError(SbilabError, ValueError):
    """Inputs do not have the shape an estimator or function was built or trained for."""


class MissingAugmentedDataError(SbilabError, ValueError):
    """A loss needs an augmented field (joint log-ratio, joint score, label) the events lack."""


class MorphingError(SbilabError, ValueError):
    """Benchmark points cannot span the morphing polynomial, or weights do not match them."""


class StoreError(SbilabError, OSError):
    """A simulation store is missing, truncated, foreign or used inconsistently."""


class TrainingDivergedError(SbilabError, FloatingPointError):
    """The training loss became NaN or infinite; the best weights so far are kept."""


class NonFiniteOutputError(SbilabError, FloatingPointError):
    """A network produced NaN or infinite outputs at evaluation time."""


class ConfigError(SbilabError, ValueError):
    """An analysis configuration or option is missing, malformed or inconsistent."""


class FitError(SbilabError, ValueError):
    """A statistical fit was set up wrongly (unknown parameters, missing bounds, no data)."""


class WorkspaceError(SbilabError, ValueError):
    """A pyhf workspace or patch fails validation or does not fit the model."""


class PublishError(SbilabError, OSError):
    """A published file fails its schema or checksum, or cannot be written safely."""


class SamplingError(SbilabError, RuntimeError):
    """Sampling could not produce the requested draws within its time or count bound."""


class InsufficientEventsError(SbilabError, ValueError):
    """Too few events for the statistical precision a test needs (e.g. a two-sample AUC whose
    error would exceed the requested resolution); the message says how many are needed."""
class FileFormatError(StoreError, ValueError):
    """An external file (LHE, ROOT, ONNX) is truncated, malformed, or lacks what was asked of it
    (an unknown weighting strategy, a branch that does not exist)."""


class ExportError(SbilabError, TypeError):
    """An object cannot be exported to the requested external format (e.g. an estimator kind ONNX cannot express)."""


class OverestimateError(OutOfSupportError):
    """A parameter point lies outside the region where a veto algorithm's overestimate holds."""


class NegativeKernelError(OutOfSupportError):
    """A splitting kernel would be negative somewhere in phase space at the requested parameters."""


class HistoryVersionError(InvalidEventsError):
    """Stored simulation histories come from a different simulator version or layout."""


class IntegrandError(SbilabError, ValueError):
    """A per-event integral is ill-posed: a cross section that is negative or NaN, a transfer
    function that does not normalise, a proposal that misses the integrand, zero acceptance."""


class RegionError(SbilabError, ValueError):
    """An analysis region (ABCD region, signal region, sideband) is empty, too small or outside the data's range."""


class IdentityCheckError(SbilabError, ValueError):
    """An identity every correct simulator satisfies fails its statistical test: the mean joint
    score is not zero or the mean joint ratio not one (see :mod:`sbilab.simulators.checks`), which
    means ``joint_log_prob`` misses a θ-dependent term such as an acceptance."""


class DistributedError(SbilabError, RuntimeError):
    """A run spread over processes or machines failed (see the subclasses); what was committed is kept."""


class WorkerError(DistributedError):
    """A worker process raised, died more often than allowed, or did not finish in time.

    Attributes:
        chunk: Index of the simulation chunk (fan-out) or ``None``.
        rank: Rank of the training process (data-parallel launch) or ``None``.
    """

    chunk: int | None = None
    rank: int | None = None


class SchedulerTimeoutError(DistributedError, TimeoutError):
    """A Dask scheduler address did not answer within the timeout."""


class SbilabWarning(UserWarning):
    """Base class of the warnings sbilab issues about results that may be wrong (they are still returned)."""


class IdentityCheckWarning(SbilabWarning):
    """An identity check failed (augmented data, or the normalisation of a learned ratio,
    :func:`sbilab.stats.ratio_normalisation`) and the caller asked for a warning instead of an error."""


class ExtrapolationWarning(SbilabWarning):
    """A learned estimator was evaluated on inputs outside the range of its training data
    (see :mod:`sbilab.estimators.support`); its output there is an unconstrained extrapolation."""


class OneSidedIntervalWarning(SbilabWarning):
    """A profile-likelihood interval runs into a bound of the parameter range: one end is the
    bound, not a crossing, so the interval is one-sided (quote a limit, or widen the range)."""


class IntegrationNoiseWarning(SbilabWarning):
    """A Monte Carlo integral inside a likelihood is too noisy for the data it fits: e.g. the MEM's
    fiducial cross-section sample is estimated to move the best fit by more than the stated fraction
    of its statistical error (:func:`sbilab.mem.fiducial_spread`); enlarge that sample."""
