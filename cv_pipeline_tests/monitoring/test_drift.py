"""Drift tests: quiet on samples of one distribution, loud and specific on a shift, no verdict on
too little data, clear errors on wrong shapes, JSON out."""

import json

import numpy as np
import pytest

from cv_pipeline.monitoring.drift import DriftResult, holm, input_drift, prediction_drift, representation_drift

FEATURES = ("brightness", "contrast", "saturation", "sharpness", "noise", "blockiness")
LABELS = ("circle", "square", "triangle", "hexagon", "star", "cross")


def statistics(rng: np.random.Generator, n: int, shift: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    shift = shift or {}
    return {name: rng.gamma(2.0 + i, 1.0, n) + shift.get(name, 0.0) for i, name in enumerate(FEATURES)}


def gaussian_features(rng: np.random.Generator, n: int, mixing: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """64-d correlated Gaussian features; `shift` moves the latent mean along its first 8 axes."""
    latent = rng.standard_normal((n, mixing.shape[0]))
    latent[:, :8] += shift
    return latent @ mixing


def predictions(rng: np.random.Generator, n: int, labels=LABELS) -> dict[str, list]:
    return {"label": [str(label) for label in rng.choice(labels, n)], "score": rng.beta(5, 2, n).tolist()}


def test_holm_adjusts_step_down_in_input_order():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match="p_values"):
        holm([0.1, 1.5])


def test_input_drift_false_alarm_rate_stays_near_alpha():
    alarms = [input_drift(statistics(np.random.default_rng(seed), 500),
                          statistics(np.random.default_rng(1000 + seed), 200)).drifted for seed in range(40)]
    assert None not in alarms
    assert sum(alarms) <= 4


def test_input_drift_finds_a_mean_shift_and_names_it_first():
    rng = np.random.default_rng(1)
    result = input_drift(statistics(rng, 500), statistics(rng, 200, {"sharpness": 1.5}))
    assert result.drifted is True and result.p_value < 1e-6
    assert result.top_features[0][0] == "sharpness" and len(result.top_features) <= 5
    scores = [score for _, score in result.top_features]
    assert scores == sorted(scores, reverse=True)
    assert result.statistic == result.top_features[0][1] == result.details["features"]["sharpness"]["ks"]
    assert result.message.startswith("drift: sharpness") and result.method == "ks+holm"
    assert (result.n_reference, result.n_current) == (500, 200)


def test_input_drift_skips_constants_drops_non_finite_and_lists_missing_features():
    rng = np.random.default_rng(2)
    reference, current = statistics(rng, 300), statistics(rng, 100)
    reference["width"], current["width"] = np.full(300, 224.0), np.full(100, 224.0)
    reference["noise"][:50] = np.nan
    current["noise"][:5] = np.inf
    reference["only_here"] = rng.normal(size=300)
    current["only_there"] = rng.normal(size=100)
    result = input_drift(reference, current)
    assert result.drifted is False and result.message.startswith("no drift (p=")
    assert "width" in result.details["skipped"] and "width" not in result.details["features"]
    assert result.details["missing"] == {"reference": ["only_there"], "current": ["only_here"]}
    assert "noise" in result.details["features"]


def test_too_small_windows_give_no_verdict():
    rng = np.random.default_rng(3)
    small = input_drift(statistics(rng, 500), statistics(rng, 12, {"sharpness": 5.0}))
    assert small.drifted is None and small.p_value is None and small.statistic is None
    assert small.message == "too few samples: 12 current, need 30"
    mixing = rng.standard_normal((16, 64))
    rep = representation_drift(gaussian_features(rng, 20, mixing), gaussian_features(rng, 200, mixing, 3.0))
    assert rep.drifted is None and rep.message == "too few samples: 20 reference, need 30"
    pred = prediction_drift(predictions(rng, 500), predictions(rng, 29, LABELS[:1]))
    assert pred.drifted is None and pred.message.startswith("too few samples")
    assert input_drift({}, {}).drifted is None


def test_representation_drift_detects_a_shift_and_stays_quiet_under_the_null():
    rng = np.random.default_rng(4)
    mixing = rng.standard_normal((16, 64))
    reference = gaussian_features(rng, 1000, mixing)
    shifted = representation_drift(reference, gaussian_features(rng, 200, mixing, 0.3), n_permutations=200)
    assert shifted.drifted is True and shifted.p_value < 0.01
    assert shifted.method == "mmd-permutation(pca=16)" and shifted.details["n_components"] == 16
    assert shifted.top_features[0][0].startswith("pc") and shifted.statistic > 0
    alarms = [representation_drift(reference, gaussian_features(np.random.default_rng(100 + seed), 200, mixing),
                                   n_permutations=100, seed=seed).drifted for seed in range(40)]
    assert sum(alarms) <= 4


def test_representation_drift_is_deterministic_given_the_seed_and_subsamples_the_reference():
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((64, 64))
    reference, current = gaussian_features(rng, 1500, mixing), gaussian_features(rng, 100, mixing)
    first = representation_drift(reference, current, n_permutations=100, seed=7)
    again = representation_drift(reference, current, n_permutations=100, seed=7)
    assert first == again
    assert first.n_reference == 1000 and first.details["reference_subsampled_to"] == 1000
    assert first.details["n_components"] == 32 and first.details["n_permutations"] == 100
    assert 0 < first.p_value <= 1 and (first.p_value * 101) == pytest.approx(round(first.p_value * 101))


def test_representation_drift_drops_non_finite_rows():
    rng = np.random.default_rng(6)
    mixing = rng.standard_normal((8, 32))
    reference, current = gaussian_features(rng, 300, mixing), gaussian_features(rng, 100, mixing)
    current[:3, 0] = np.nan
    result = representation_drift(reference, current, n_permutations=50)
    assert result.n_current == 97 and result.details["dropped_rows"] == {"reference": 0, "current": 3}


def test_prediction_drift_detects_a_prior_shift_and_not_a_same_prior_window():
    reference = predictions(np.random.default_rng(7), 600)
    shifted = prediction_drift(reference, predictions(np.random.default_rng(8), 200, LABELS[:3]))
    assert shifted.drifted is True and shifted.top_features[0][0] == "label"
    assert shifted.details["statistic_signal"] == "label"
    assert shifted.details["signals"]["label"]["psi"] > 0.5
    assert shifted.method == "chi2+ks+holm"
    alarms = [prediction_drift(reference, predictions(np.random.default_rng(100 + seed), 200)).drifted
              for seed in range(40)]
    assert sum(alarms) <= 4


def test_prediction_drift_skips_short_signals_and_tests_per_image_counts():
    rng = np.random.default_rng(9)
    reference = {"label": list(rng.choice(LABELS, 400)), "boxes_per_image": rng.poisson(3, 150).tolist(),
                 "rare": [0.5] * 10}
    current = {"label": list(rng.choice(LABELS, 400)), "boxes_per_image": rng.poisson(6, 150).tolist(),
               "rare": [0.7] * 10}
    result = prediction_drift(reference, current)
    assert result.drifted is True and result.top_features[0][0] == "boxes_per_image"
    assert "rare" in result.details["skipped"]
    assert result.details["signals"]["boxes_per_image"]["test"] == "ks"


def test_wrong_shapes_raise_naming_the_argument_and_shapes():
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match=r"reference has 64 features per row and current 32.*\(1000, 64\)"):
        representation_drift(rng.normal(size=(1000, 64)), rng.normal(size=(200, 32)))
    with pytest.raises(ValueError, match=r"2-D.*\(200,\)"):
        representation_drift(rng.normal(size=(1000, 64)), rng.normal(size=200))
    with pytest.raises(ValueError, match=r"current\['noise'\].*\(200, 2\)"):
        input_drift({"noise": rng.normal(size=300)}, {"noise": rng.normal(size=(200, 2))})


def test_results_are_json_serialisable():
    rng = np.random.default_rng(11)
    mixing = rng.standard_normal((8, 32))
    results = [
        input_drift(statistics(rng, 300), statistics(rng, 100, {"noise": 1.0})),
        input_drift(statistics(rng, 300), statistics(rng, 10)),
        representation_drift(gaussian_features(rng, 300, mixing), gaussian_features(rng, 100, mixing),
                             n_permutations=50),
        prediction_drift(predictions(rng, 300), predictions(rng, 100, LABELS[:2])),
    ]
    for result in results:
        assert isinstance(result, DriftResult)
        document = json.loads(json.dumps(result.to_json(), allow_nan=False))
        assert document["threshold"] == result.alpha == 0.05
        assert {"test", "statistic", "p_value", "drifted", "n_reference", "n_current", "top_features",
                "message"} <= set(document)
