import math

import numpy as np
import pytest

from cv_pipeline.evaluation.comparison import (
    BootstrapResult,
    decide,
    mean_statistic,
    paired_bootstrap,
    ratio_statistic,
)


def test_interval_covers_the_true_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    true_difference = 0.05
    covered = []
    for repetition in range(40):
        difficulty = rng.uniform(size=300)  # shared per-image difficulty makes the models correlated
        champion = (difficulty < 0.70).astype(float)
        challenger = (difficulty < 0.75).astype(float)
        result = paired_bootstrap(
            mean_statistic(challenger), mean_statistic(champion), 300, n_resamples=400, seed=repetition
        )
        low, high = result.interval
        assert low <= result.observed_difference <= high
        covered.append(low <= true_difference <= high)
    assert np.mean(covered) >= 0.8


def test_pairing_makes_a_small_consistent_improvement_visible():
    rng = np.random.default_rng(0)
    champion_scores = rng.uniform(size=500)
    challenger_scores = champion_scores + 0.01
    champion_stat = mean_statistic(champion_scores)

    paired = paired_bootstrap(mean_statistic(challenger_scores), champion_stat, 500, seed=3)
    assert paired.observed_difference == pytest.approx(0.01)
    assert paired.interval[0] > 0.0
    assert paired.interval == pytest.approx((0.01, 0.01), abs=1e-9)

    # The same comparison with the champion scored on its own, independent resamples.
    own_rng = np.random.default_rng(99)

    def unpaired_champion(weights):
        if np.all(weights == 1):
            return champion_stat(weights)
        return champion_stat(own_rng.multinomial(500, np.full(500, 1 / 500)))

    unpaired = paired_bootstrap(mean_statistic(challenger_scores), unpaired_champion, 500, seed=3)
    assert unpaired.interval[0] < 0.0 < unpaired.interval[1]
    assert unpaired.std_difference > 50 * paired.std_difference


def test_identical_models_differ_by_exactly_zero():
    stat = ratio_statistic(np.array([[1, 0], [2, 3], [0, 1]]), np.array([[2, 0], [4, 3], [1, 1]]))
    result = paired_bootstrap(stat, stat, 3, n_resamples=200)
    assert result.observed_difference == 0.0
    assert result.interval == (0.0, 0.0)
    assert result.mean_difference == 0.0 and result.std_difference == 0.0


def test_deterministic_per_seed():
    rng = np.random.default_rng(5)
    a, b = mean_statistic(rng.uniform(size=50)), mean_statistic(rng.uniform(size=50))
    first = paired_bootstrap(a, b, 50, n_resamples=300, seed=7)
    assert paired_bootstrap(a, b, 50, n_resamples=300, seed=7) == first
    assert paired_bootstrap(a, b, 50, n_resamples=300, seed=8).interval != first.interval
    assert isinstance(first, BootstrapResult)
    assert first.as_dict()["interval_low"] == first.interval[0]
    assert (first.n_images, first.n_resamples, first.seed, first.confidence) == (50, 300, 7, 0.95)


def test_opaque_callables_give_the_same_answer_as_batched_statistics():
    rng = np.random.default_rng(2)
    a, b = mean_statistic(rng.uniform(size=40)), mean_statistic(rng.uniform(size=40))
    batched = paired_bootstrap(a, b, 40, n_resamples=250, seed=4)
    opaque = paired_bootstrap(lambda w: a(w), lambda w: b(w), 40, n_resamples=250, seed=4)
    assert opaque.interval == pytest.approx(batched.interval, abs=1e-12)
    assert opaque.mean_difference == pytest.approx(batched.mean_difference, abs=1e-12)


def test_ratio_statistic_is_the_mean_over_classes_with_a_union():
    intersections = np.array([[1, 0, 0], [3, 2, 0]])
    unions = np.array([[2, 0, 0], [4, 4, 0]])
    stat = ratio_statistic(intersections, unions)
    # class 0: 4/6, class 1: 2/4, class 2 has no union and is left out
    assert stat(np.ones(2)) == pytest.approx((4 / 6 + 2 / 4) / 2)
    # image 1 counted twice, image 0 not at all
    assert stat(np.array([0, 2])) == pytest.approx((6 / 8 + 4 / 8) / 2)
    assert stat(np.array([[1, 1], [0, 2]])) == pytest.approx([(4 / 6 + 2 / 4) / 2, (6 / 8 + 4 / 8) / 2])
    pooled = ratio_statistic([90, 10], [100, 100])
    assert pooled(np.ones(2)) == pytest.approx(0.5)
    assert math.isnan(ratio_statistic([[0]], [[0]])(np.ones(1)))


def test_mean_statistic_is_accuracy():
    correct = np.array([1, 1, 0, 1])
    assert mean_statistic(correct)(np.ones(4)) == pytest.approx(0.75)
    assert mean_statistic(correct)(np.array([0, 0, 4, 0])) == 0.0


def test_decide_promotes_when_threshold_and_margin_clear():
    decision = decide(0.82, 0.78, (0.01, 0.07), threshold=0.75, margin=0.0)
    assert decision.action == "promote"
    assert decision.passes_threshold and decision.passes_margin
    assert "0.82" in decision.reason and "0.78" in decision.reason


def test_decide_keeps_when_the_threshold_fails():
    decision = decide(0.70, 0.60, (0.05, 0.15), threshold=0.75, margin=0.0)
    assert decision.action == "keep"
    assert not decision.passes_threshold and decision.passes_margin
    assert "not at least the threshold 0.75" in decision.reason


def test_decide_keeps_when_the_margin_fails():
    decision = decide(0.82, 0.80, (-0.01, 0.05), threshold=0.75, margin=0.0)
    assert decision.action == "keep"
    assert decision.passes_threshold and not decision.passes_margin
    assert "not above the margin" in decision.reason
    assert decide(0.82, 0.80, (0.01, 0.05), threshold=0.75, margin=0.02).action == "keep"
    assert decide(0.82, 0.80, (-0.01, 0.05), threshold=0.75, margin=-0.02).action == "promote"


def test_decide_without_a_champion_uses_the_threshold_alone():
    promote = decide(0.8, None, None, threshold=0.75, margin=0.05)
    assert promote.action == "promote" and promote.passes_margin is None
    assert "No champion" in promote.reason
    keep = decide(0.7, None, None, threshold=0.75, margin=0.05)
    assert keep.action == "keep"
    assert keep.as_dict()["interval_low"] is None


def test_decide_for_a_loss_flips_the_sign():
    # challenger - champion in [-0.3, -0.1]: the loss dropped by at least 0.1
    assert decide(1.2, 1.4, (-0.3, -0.1), threshold=1.5, margin=0.05, higher_is_better=False).action == "promote"
    assert decide(1.2, 1.4, (-0.3, -0.1), threshold=1.5, margin=0.2, higher_is_better=False).action == "keep"
    assert decide(1.6, 1.9, (-0.4, -0.2), threshold=1.5, margin=0.0, higher_is_better=False).action == "keep"
    bootstrap = BootstrapResult(-0.2, 1.2, 1.4, (-0.3, -0.1), -0.2, 0.05, 10, 100, 0.95, 0)
    assert decide(1.2, 1.4, bootstrap, threshold=1.5, margin=0.0, higher_is_better=False).action == "promote"


def test_decide_rejects_invalid_inputs():
    with pytest.raises(ValueError, match="challenger_metric"):
        decide(float("nan"), 0.5, (0.0, 0.1), threshold=0.5, margin=0.0)
    with pytest.raises(ValueError, match="champion_metric"):
        decide(0.5, float("nan"), (0.0, 0.1), threshold=0.5, margin=0.0)
    with pytest.raises(ValueError, match="threshold"):
        decide(0.5, 0.4, (0.0, 0.1), threshold=float("inf"), margin=0.0)
    with pytest.raises(ValueError, match="margin"):
        decide(0.5, 0.4, (0.0, 0.1), threshold=0.5, margin=None)
    with pytest.raises(ValueError, match="interval low bound"):
        decide(0.5, 0.4, (float("nan"), 0.1), threshold=0.5, margin=0.0)
    with pytest.raises(ValueError, match="above its high bound"):
        decide(0.5, 0.4, (0.2, 0.1), threshold=0.5, margin=0.0)
    with pytest.raises(ValueError, match="without an interval"):
        decide(0.5, 0.4, None, threshold=0.5, margin=0.0)
    with pytest.raises(ValueError, match="champion_metric is None"):
        decide(0.5, None, (0.0, 0.1), threshold=0.5, margin=0.0)


def test_bootstrap_rejects_invalid_inputs():
    stat = mean_statistic([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="n_images"):
        paired_bootstrap(stat, stat, 0)
    with pytest.raises(ValueError, match="challenger_stat was built over 3 images"):
        paired_bootstrap(stat, stat, 4)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(stat, stat, 3, confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(stat, stat, 3, n_resamples=0)
    with pytest.raises(ValueError, match="champion_stat is nan"):
        paired_bootstrap(stat, lambda w: float("nan"), 3)
    with pytest.raises(ValueError, match="non-finite difference"):
        # image 0 alone has no union: some resamples have no value
        only_first_has_union = ratio_statistic([[1], [0], [0]], [[1], [0], [0]])
        paired_bootstrap(only_first_has_union, only_first_has_union, 3, n_resamples=200)
    with pytest.raises(ValueError, match="per_image_values holds a non-finite value"):
        mean_statistic([0.0, float("nan")])
    with pytest.raises(ValueError, match="denominators has shape"):
        ratio_statistic([[1, 2]], [[1, 2, 3]])
    with pytest.raises(ValueError, match="weights must have shape"):
        stat(np.ones(5))
