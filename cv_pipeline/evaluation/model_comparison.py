"""Champion against challenger on the same pinned test set: both models' primary metric, the paired
bootstrap interval of their difference over images, and the promotion decision.

The evaluations being compared expose their metric as a function of image weights (a bootstrap
resample counts each image 0, 1, 2... times); `compare` pairs them, `decide` applies the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cv_pipeline.evaluation.comparison import BootstrapResult, Decision, decide, paired_bootstrap


@dataclass(frozen=True)
class ComparisonPolicy:
    """The promotion rule: `metric` at least `threshold`, and the bootstrap interval's lower bound of
    challenger - champion above `margin`."""

    metric: str = "accuracy"
    threshold: float = 0.6
    margin: float = 0.0
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    higher_is_better: bool = True


@dataclass(frozen=True)
class ScoredModel:
    """One model's evaluation as the comparison needs it: the metric on the whole test set, the
    metric under image weights, and the test images' keys in weight order (to check pairing)."""

    value: float
    statistic: Callable[[np.ndarray], float]
    image_keys: tuple

    @property
    def n_images(self) -> int:
        return len(self.image_keys)


@dataclass(frozen=True)
class ModelComparison:
    metric: str
    challenger_value: float
    champion_value: float | None
    bootstrap: BootstrapResult | None
    decision: Decision
    n_images: int

    @property
    def promote(self) -> bool:
        return self.decision.action == "promote"

    def as_dict(self) -> dict:
        """Plain values for asset metadata and MLflow."""
        return {"metric": self.metric, "challenger_value": self.challenger_value,
                "champion_value": self.champion_value, "n_images": self.n_images,
                "decision": self.decision.as_dict(),
                "bootstrap": None if self.bootstrap is None else self.bootstrap.as_dict()}


def compare(challenger: ScoredModel, champion: ScoredModel | None, policy: ComparisonPolicy) -> ModelComparison:
    """Score both on the same images (paired bootstrap), then decide; without a champion the
    challenger is judged on the threshold alone."""
    if champion is None:
        decision = decide(challenger.value, None, None, threshold=policy.threshold, margin=policy.margin,
                          higher_is_better=policy.higher_is_better)
        return ModelComparison(policy.metric, challenger.value, None, None, decision, challenger.n_images)
    if tuple(challenger.image_keys) != tuple(champion.image_keys):
        raise ValueError(
            f"challenger and champion were not evaluated on the same test images ({challenger.n_images} and "
            f"{champion.n_images} images); evaluate both on the same pinned dataset version")
    bootstrap = paired_bootstrap(challenger.statistic, champion.statistic, challenger.n_images,
                                 n_resamples=policy.n_resamples, confidence=policy.confidence, seed=policy.seed)
    decision = decide(challenger.value, champion.value, bootstrap, threshold=policy.threshold, margin=policy.margin,
                      higher_is_better=policy.higher_is_better)
    return ModelComparison(policy.metric, challenger.value, champion.value, bootstrap, decision, challenger.n_images)


def scored(evaluation) -> ScoredModel:
    """A task's evaluation (`TaskEvaluation`) as the comparison needs it: its primary metric, and
    that metric under image weights over `weight_keys`."""
    if evaluation.statistic is None:
        raise ValueError(f"the {evaluation.task} evaluation has no statistic under image weights to compare by")
    return ScoredModel(evaluation.primary_value, evaluation.statistic, tuple(evaluation.weight_keys))
