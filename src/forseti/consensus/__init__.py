"""Byzantine-robust aggregation: rules, pre-aggregators, attacks, detection and a reputation ledger.

Every rule is a callable over an ``(n, d)`` tensor (or a list of per-layer ``(n, ...)``
tensors) returning an :class:`AggResult`: the aggregate, the selected workers, per-worker
suspicion scores and weights. See ``docs/consensus.md`` for how to choose a rule.
"""

from .attacks import (
    ALIE,
    ATTACKS,
    IPM,
    Attack,
    Gaussian,
    InfNaN,
    LabelFlip,
    Mimic,
    SignFlip,
    alie_z_max,
    build_attack,
    flip_labels,
)
from .attacks_optimal import OptimalALIE, OptimalIPM
from .base import Aggregator, PreAggregator
from .coordinate import CoordinateMedian, Mean, TrimmedMean
from .detection import DetectionRates, Thresholds, detection_rates, flag_outliers
from .distances import pairwise_sq_distances, sq_distances_to
from .entities import ByzantineDetectorEntity, Detection, RecordDetectorState
from .events import AggregationCompleted, WorkerFlagged, WorkerTrustChanged
from .iterative import CenteredClipping, GeometricMedian
from .krum import Bulyan, Krum, MultiKrum, krum_scores
from .ledger import ReputationLedger, RoundReport
from .preaggregators import NNM, Bucketing, Clipping, OutlierFilter
from .result import AggResult
from .robust import PRE_AGGREGATORS, RULES, Robust, build, default_rule
from .step import RobustStep, StepOutcome, per_worker_gradients

__all__ = [
    "AggResult",
    "Aggregator",
    "PreAggregator",
    "Mean",
    "CoordinateMedian",
    "TrimmedMean",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "GeometricMedian",
    "CenteredClipping",
    "NNM",
    "Clipping",
    "Bucketing",
    "OutlierFilter",
    "Robust",
    "build",
    "default_rule",
    "RULES",
    "PRE_AGGREGATORS",
    "krum_scores",
    "pairwise_sq_distances",
    "sq_distances_to",
    "flag_outliers",
    "Thresholds",
    "detection_rates",
    "DetectionRates",
    "ReputationLedger",
    "RoundReport",
    "ByzantineDetectorEntity",
    "Detection",
    "RecordDetectorState",
    "AggregationCompleted",
    "WorkerFlagged",
    "WorkerTrustChanged",
    "RobustStep",
    "StepOutcome",
    "per_worker_gradients",
    "Attack",
    "SignFlip",
    "Gaussian",
    "InfNaN",
    "IPM",
    "ALIE",
    "Mimic",
    "LabelFlip",
    "OptimalALIE",
    "OptimalIPM",
    "flip_labels",
    "alie_z_max",
    "build_attack",
    "ATTACKS",
]
