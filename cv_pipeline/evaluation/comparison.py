"""Champion/challenger statistics: a paired bootstrap over test images and the promotion rule.

Both models are scored on the same pinned test set, so the honest uncertainty of their difference
comes from resampling *images* once per round and scoring both models on that same resample (a
paired bootstrap). Per-image noise the models share cancels, which is what makes a small but
consistent improvement visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

Statistic = Callable[[np.ndarray], float]
"""Maps a weight vector (how often each test image occurs in a resample) to the metric's value."""

_CHUNK_ELEMENTS = 4_000_000  # weights drawn per block: bounds memory at ~32 MB for any n_images


@dataclass(frozen=True)
class BootstrapResult:
    """The observed challenger - champion difference and its percentile bootstrap interval."""

    observed_difference: float
    challenger_value: float
    champion_value: float
    interval: tuple[float, float]
    mean_difference: float
    std_difference: float
    n_images: int
    n_resamples: int
    confidence: float
    seed: int

    def as_dict(self) -> dict:
        """Plain floats and ints, for asset metadata and MLflow params."""
        return {
            "observed_difference": self.observed_difference,
            "challenger_value": self.challenger_value,
            "champion_value": self.champion_value,
            "interval_low": self.interval[0],
            "interval_high": self.interval[1],
            "mean_difference": self.mean_difference,
            "std_difference": self.std_difference,
            "n_images": self.n_images,
            "n_resamples": self.n_resamples,
            "confidence": self.confidence,
            "seed": self.seed,
        }


class _WeightedStatistic:
    """A statistic that also scores a (resamples, n_images) block of weights in one call."""

    accepts_batches = True

    def __init__(self, n_images: int, score: Callable[[np.ndarray], np.ndarray], description: str):
        self.n_images = n_images
        self._score = score
        self._description = description

    def __call__(self, weights: np.ndarray) -> float | np.ndarray:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape[-1] != self.n_images or weights.ndim not in (1, 2):
            raise ValueError(
                f"weights must have shape ({self.n_images},) or (k, {self.n_images}), got {weights.shape}"
            )
        values = self._score(np.atleast_2d(weights))
        return float(values[0]) if weights.ndim == 1 else values

    def __repr__(self) -> str:
        return f"<{self._description} over {self.n_images} images>"


def _finite_array(values, argument: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{argument} cannot be read as a numeric array: {error}") from error
    if not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{argument} holds a non-finite value at index {index}")
    return array


def mean_statistic(per_image_values) -> Statistic:
    """The weighted mean of one value per image, e.g. accuracy from per-image correctness (0/1)."""
    values = _finite_array(per_image_values, "per_image_values")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per_image_values must be a non-empty 1-D array, got shape {values.shape}")

    def score(weights: np.ndarray) -> np.ndarray:
        return (weights @ values) / weights.sum(axis=1)

    return _WeightedStatistic(values.size, score, "weighted mean")


def ratio_statistic(numerators, denominators) -> Statistic:
    """Sum numerators and denominators over the weighted images, divide per class, average classes.

    With (n_images, n_classes) arrays of per-image intersections and unions this is mIoU over the
    classes whose union is nonzero in the resample; with 1-D arrays it is one pooled ratio (pixel
    accuracy from correct and labelled pixels). A resample where every denominator is zero has no
    value and gives NaN, which `paired_bootstrap` refuses.
    """
    num = _finite_array(numerators, "numerators")
    den = _finite_array(denominators, "denominators")
    if num.shape != den.shape:
        raise ValueError(f"numerators has shape {num.shape} but denominators has shape {den.shape}")
    if num.ndim not in (1, 2) or num.shape[0] == 0:
        raise ValueError(
            f"numerators must be (n_images,) or (n_images, n_classes) with n_images > 0, got {num.shape}"
        )
    if (den < 0).any():
        raise ValueError("denominators must not be negative")
    num2 = num.reshape(num.shape[0], -1)
    den2 = den.reshape(den.shape[0], -1)

    def score(weights: np.ndarray) -> np.ndarray:
        totals_num = weights @ num2
        totals_den = weights @ den2
        present = totals_den > 0
        ratios = np.divide(totals_num, totals_den, out=np.zeros_like(totals_num), where=present)
        counted = present.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counted > 0, ratios.sum(axis=1) / counted, np.nan)

    return _WeightedStatistic(num.shape[0], score, "ratio of weighted sums")


def _evaluate(statistic: Statistic, weights: np.ndarray, name: str) -> np.ndarray:
    """Values of `statistic` for each row of `weights`, batched when the statistic supports it."""
    if getattr(statistic, "accepts_batches", False):
        values = np.asarray(statistic(weights), dtype=np.float64)
        if values.shape != (weights.shape[0],):
            raise ValueError(f"{name} returned shape {values.shape} for {weights.shape[0]} resamples")
    else:
        values = np.empty(weights.shape[0], dtype=np.float64)
        for row, row_weights in enumerate(weights):
            value = statistic(row_weights)
            try:
                values[row] = float(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{name} must return a number, got {value!r}") from error
    return values


def paired_bootstrap(
    challenger_stat: Statistic,
    champion_stat: Statistic,
    n_images: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile interval of challenger - champion by resampling the same images for both models.

    Each round draws image counts from a multinomial (`n_images` draws, equal probabilities), i.e.
    images resampled with replacement, and both statistics see that same weight vector. The
    observed difference uses weight 1 for every image. Deterministic for a given `seed`.
    """
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    for name, statistic in (("challenger_stat", challenger_stat), ("champion_stat", champion_stat)):
        if not callable(statistic):
            raise ValueError(f"{name} must be callable, got {type(statistic).__name__}")
        declared = getattr(statistic, "n_images", n_images)
        if declared != n_images:
            raise ValueError(f"{name} was built over {declared} images but n_images is {n_images}")
    n_images = int(n_images)
    n_resamples = int(n_resamples)

    ones = np.ones((1, n_images), dtype=np.int64)
    challenger_value = float(_evaluate(challenger_stat, ones, "challenger_stat")[0])
    champion_value = float(_evaluate(champion_stat, ones, "champion_stat")[0])
    for name, value in (("challenger_stat", challenger_value), ("champion_stat", champion_value)):
        if not math.isfinite(value):
            raise ValueError(f"{name} is {value} on the full test set")

    rng = np.random.default_rng(seed)
    probabilities = np.full(n_images, 1.0 / n_images)
    chunk = max(1, _CHUNK_ELEMENTS // n_images)
    differences = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        weights = rng.multinomial(n_images, probabilities, size=stop - start)
        differences[start:stop] = _evaluate(challenger_stat, weights, "challenger_stat") - _evaluate(
            champion_stat, weights, "champion_stat"
        )
    if not np.isfinite(differences).all():
        bad = int(np.count_nonzero(~np.isfinite(differences)))
        raise ValueError(
            f"{bad} of {n_resamples} resamples gave a non-finite difference; "
            "the statistics must be defined on every resample of the test set"
        )

    alpha = 1.0 - confidence
    low, high = np.quantile(differences, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(
        observed_difference=challenger_value - champion_value,
        challenger_value=challenger_value,
        champion_value=champion_value,
        interval=(float(low), float(high)),
        mean_difference=float(differences.mean()),
        std_difference=float(differences.std(ddof=1)) if n_resamples > 1 else 0.0,
        n_images=n_images,
        n_resamples=n_resamples,
        confidence=float(confidence),
        seed=int(seed),
    )


@dataclass(frozen=True)
class Decision:
    """Whether to promote the challenger, why in plain words, and the numbers the rule used."""

    action: Literal["promote", "keep"]
    reason: str
    challenger_metric: float
    champion_metric: float | None
    interval: tuple[float, float] | None
    threshold: float
    margin: float
    higher_is_better: bool
    passes_threshold: bool
    passes_margin: bool | None

    def as_dict(self) -> dict:
        """Plain values, for asset metadata and registry tags."""
        return {
            "action": self.action,
            "reason": self.reason,
            "challenger_metric": self.challenger_metric,
            "champion_metric": self.champion_metric,
            "interval_low": None if self.interval is None else self.interval[0],
            "interval_high": None if self.interval is None else self.interval[1],
            "threshold": self.threshold,
            "margin": self.margin,
            "higher_is_better": self.higher_is_better,
            "passes_threshold": self.passes_threshold,
            "passes_margin": self.passes_margin,
        }


def _finite_number(value, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{argument} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{argument} must be finite, got {value!r}")
    return float(value)


def decide(
    challenger_metric: float,
    champion_metric: float | None,
    interval: tuple[float, float] | BootstrapResult | None,
    *,
    threshold: float,
    margin: float,
    higher_is_better: bool = True,
) -> Decision:
    """Promote when the challenger clears `threshold` and is better than the champion by more than
    `margin` at the interval's pessimistic end; otherwise keep the champion.

    `interval` is the bootstrap interval of challenger - champion (or the `BootstrapResult`).
    "Clears the threshold" means at least `threshold` (at most, for a loss). `margin` is in the
    metric's units, counted in the better direction: 0 asks for an interval that excludes no
    improvement, a negative margin allows a bounded loss (non-inferiority). With no champion
    (`champion_metric` and `interval` both None) the threshold alone decides.
    """
    challenger = _finite_number(challenger_metric, "challenger_metric")
    threshold = _finite_number(threshold, "threshold")
    margin = _finite_number(margin, "margin")
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better must be a bool, got {higher_is_better!r}")
    if isinstance(interval, BootstrapResult):
        interval = interval.interval
    if champion_metric is None:
        if interval is not None:
            raise ValueError("interval was given but champion_metric is None; pass both or neither")
        champion = None
    else:
        champion = _finite_number(champion_metric, "champion_metric")
        if interval is None:
            raise ValueError("champion_metric was given without an interval of challenger - champion")
        try:
            low, high = interval
        except (TypeError, ValueError) as error:
            raise ValueError(f"interval must be a (low, high) pair, got {interval!r}") from error
        low = _finite_number(low, "interval low bound")
        high = _finite_number(high, "interval high bound")
        if low > high:
            raise ValueError(f"interval low bound {low} is above its high bound {high}")
        interval = (low, high)

    direction = "at least" if higher_is_better else "at most"
    passes_threshold = challenger >= threshold if higher_is_better else challenger <= threshold
    threshold_text = (
        f"the challenger's metric {challenger:.4g} is {'' if passes_threshold else 'not '}"
        f"{direction} the threshold {threshold:.4g}"
    )

    passes_margin = None
    if champion is None:
        reason = f"No champion to compare with; {threshold_text}."
    else:
        low, high = interval
        # The improvement is challenger - champion for a score, champion - challenger for a loss;
        # its pessimistic bound is the interval end nearest to "worse".
        worst_improvement = low if higher_is_better else -high
        passes_margin = worst_improvement > margin
        margin_text = (
            f"the improvement over the champion ({champion:.4g}) is at worst {worst_improvement:.4g} "
            f"within the interval [{low:.4g}, {high:.4g}] of challenger - champion, which is "
            f"{'above' if passes_margin else 'not above'} the margin {margin:.4g}"
        )
        reason = f"{threshold_text[0].upper()}{threshold_text[1:]}; {margin_text}."

    promote = passes_threshold and passes_margin is not False
    return Decision(
        action="promote" if promote else "keep",
        reason=("Promote: " if promote else "Keep the champion: " if champion is not None else "Do not promote: ")
        + reason,
        challenger_metric=challenger,
        champion_metric=champion,
        interval=interval,
        threshold=threshold,
        margin=margin,
        higher_is_better=higher_is_better,
        passes_threshold=passes_threshold,
        passes_margin=passes_margin,
    )
