import json
import time

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from cv_pipeline.evaluation.metrics import ClassificationMetrics

SCORE_ONLY_KEYS = {"top_k", "top_k_accuracy", "roc_auc_macro", "pr_auc_macro"}


def _label_metrics(metrics: dict) -> dict:
    """The metrics that class indices alone also give (scores add ranking metrics)."""
    label_only = {key: value for key, value in metrics.items() if key not in SCORE_ONLY_KEYS}
    label_only["per_class"] = [
        {key: value for key, value in entry.items() if key not in ("roc_auc", "average_precision")}
        for entry in metrics["per_class"]
    ]
    return label_only


def test_hand_computed_three_classes():
    # ground truth: 0 0 0 1 1 2 ; predictions: 0 0 1 1 2 2
    metrics = ClassificationMetrics(3, ["circle", "square", "triangle"]).compute_metrics(
        [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2]
    )
    assert metrics["num_samples"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    per_class = metrics["per_class"]
    assert [c["name"] for c in per_class] == ["circle", "square", "triangle"]
    assert [c["class_index"] for c in per_class] == [0, 1, 2]
    assert [c["support"] for c in per_class] == [3, 2, 1]
    assert [c["precision"] for c in per_class] == pytest.approx([1.0, 0.5, 0.5])
    assert [c["recall"] for c in per_class] == pytest.approx([2 / 3, 0.5, 1.0])
    assert [c["f1"] for c in per_class] == pytest.approx([0.8, 0.5, 2 / 3])
    assert metrics["macro_precision"] == pytest.approx(2 / 3)
    assert metrics["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    json.dumps(metrics)  # JSON-serialisable


def test_zero_division_and_absent_classes_follow_torchmetrics():
    # class 2 is never predicted and never true -> left out of macro; class 3 is predicted but has no
    # support -> precision/recall/f1 0 and counted in macro; class 1 has support but is never predicted.
    metrics = ClassificationMetrics(4).compute_metrics([0, 0, 3, 0], [0, 1, 0, 0])
    per_class = {c["class_index"]: c for c in metrics["per_class"]}
    assert per_class[1]["precision"] == 0.0 and per_class[1]["recall"] == 0.0
    assert per_class[2] == {
        "class_index": 2, "name": "2", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0
    }
    assert per_class[3]["support"] == 0 and per_class[3]["precision"] == 0.0
    # present classes: 0, 1, 3
    assert metrics["macro_precision"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert metrics["macro_recall"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    preds, target = torch.tensor([0, 0, 3, 0]), torch.tensor([0, 1, 0, 0])
    assert metrics["macro_precision"] == pytest.approx(float(multiclass_precision(preds, target, 4)))
    assert metrics["macro_f1"] == pytest.approx(float(multiclass_f1_score(preds, target, 4)))


@pytest.mark.parametrize("seed,num_classes", [(0, 2), (1, 5), (2, 12)])
def test_agrees_with_torchmetrics_on_random_data(seed, num_classes):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (2000,), generator=generator)
    # biased predictions, and one class that is never predicted, so averages differ from accuracy
    noise = torch.randint(0, num_classes, (2000,), generator=generator)
    preds = torch.where(torch.rand(2000, generator=generator) < 0.6, target, noise)
    preds[preds == num_classes - 1] = 0
    metrics = ClassificationMetrics(num_classes).compute_metrics(preds, target)

    kwargs = {"num_classes": num_classes, "average": "macro"}
    accuracy = multiclass_accuracy(preds, target, num_classes, average="micro")
    assert metrics["accuracy"] == pytest.approx(float(accuracy))
    assert metrics["macro_precision"] == pytest.approx(float(multiclass_precision(preds, target, **kwargs)))
    assert metrics["macro_recall"] == pytest.approx(float(multiclass_recall(preds, target, **kwargs)))
    assert metrics["macro_f1"] == pytest.approx(float(multiclass_f1_score(preds, target, **kwargs)))
    assert metrics["weighted_f1"] == pytest.approx(
        float(multiclass_f1_score(preds, target, num_classes, average="weighted"))
    )
    per_class_f1 = multiclass_f1_score(preds, target, num_classes, average="none").tolist()
    assert [c["f1"] for c in metrics["per_class"]] == pytest.approx(per_class_f1)
    assert metrics["confusion_matrix"] == multiclass_confusion_matrix(preds, target, num_classes).tolist()


def test_probability_input_takes_argmax_and_accepts_numpy_and_tensors():
    probabilities = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=np.float32
    )
    truth = np.array([0, 1, 1, 0])
    computer = ClassificationMetrics(3)
    from_probabilities = computer.compute_metrics(probabilities, truth)
    from_indices = computer.compute_metrics(np.array([0, 1, 2, 0]), truth)
    from_tensors = computer.compute_metrics(torch.from_numpy(probabilities), torch.from_numpy(truth))
    assert from_probabilities == from_tensors
    assert _label_metrics(from_probabilities) == from_indices
    assert from_probabilities["accuracy"] == pytest.approx(0.75)
    # integral floats are accepted as labels
    assert computer.compute_metrics([0.0, 1.0, 2.0, 0.0], truth.astype(float)) == from_indices


@pytest.mark.parametrize(
    "predictions,ground_truth,message",
    [
        ([0, 1, 2], [0, 1], "predictions has 3 samples but ground_truth has 2"),
        ([], [], "empty"),
        ([0, 1, 3], [0, 1, 2], "predictions holds class index 3 at position 2"),
        ([0, 1, 2], [0, -1, 2], "ground_truth holds class index -1 at position 1"),
        (np.ones((2, 4)), [0, 1], "predictions has 4 score columns but num_classes=3"),
        ([0, 1, 2], [0, 1.5, 2], "ground_truth must hold integer class indices; found 1.5 at position 1"),
        ([0.5, 1, 2], [0, 1, 2], "predictions must hold integer class indices"),
        (["a", "b"], [0, 1], "predictions must hold integer class indices"),
        ([0, 1], [True, False], "ground_truth must hold integer class indices"),
        ([0, 1], [[0], [1]], "ground_truth must be 1-D"),
        (np.zeros((2, 3, 1)), [0, 1], "predictions must be 1-D class indices or 2-D"),
        (np.array([[np.nan, 0, 0], [1, 0, 0]]), [0, 1], "predictions holds a non-finite score in row 0"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_argument(predictions, ground_truth, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ClassificationMetrics(3).compute_metrics(predictions, ground_truth)


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="class_names has 2 entries but num_classes=3"):
        ClassificationMetrics(3, ["a", "b"])
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationMetrics(0)


def test_a_million_samples_is_fast():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 20, 1_000_000)
    predictions = rng.integers(0, 20, 1_000_000)
    started = time.perf_counter()
    metrics = ClassificationMetrics(20).compute_metrics(predictions, truth)
    assert time.perf_counter() - started < 2.0
    assert metrics["num_samples"] == 1_000_000
    assert sum(map(sum, metrics["confusion_matrix"])) == 1_000_000


# --- agreement with scikit-learn to 1e-9 -----------------------------------------------------------

TOLERANCE = 1e-9


def _random_case(seed: int, num_samples: int, num_classes: int, *, tie_levels: int | None = None,
                 absent: tuple[int, ...] = ()):
    """Ground truth, softmax-like scores (optionally quantised to force ties) and their argmax."""
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(num_classes), absent)
    truth = rng.choice(allowed, num_samples)
    logits = rng.normal(size=(num_samples, num_classes))
    logits[np.arange(num_samples), truth] += 1.0  # informative, not perfect
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if tie_levels is not None:
        scores = np.round(scores * tie_levels) / tie_levels
    return truth, scores


def _assert_label_metrics_match_sklearn(metrics, truth, predicted, weight=None):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    num_classes = len(metrics["per_class"])
    expected = accuracy_score(truth, predicted, sample_weight=weight)
    assert metrics["accuracy"] == pytest.approx(expected, abs=TOLERANCE)
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, predicted, average=average, sample_weight=weight, zero_division=0
        )
        assert metrics[f"precision_{average}"] == pytest.approx(precision, abs=TOLERANCE)
        assert metrics[f"recall_{average}"] == pytest.approx(recall, abs=TOLERANCE)
        assert metrics[f"f1_{average}"] == pytest.approx(f1, abs=TOLERANCE)
    labels = np.arange(num_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, average=None, sample_weight=weight, zero_division=0
    )
    assert [c["precision"] for c in metrics["per_class"]] == pytest.approx(precision, abs=TOLERANCE)
    assert [c["recall"] for c in metrics["per_class"]] == pytest.approx(recall, abs=TOLERANCE)
    assert [c["f1"] for c in metrics["per_class"]] == pytest.approx(f1, abs=TOLERANCE)
    assert [c["support"] for c in metrics["per_class"]] == support.tolist()
    expected = confusion_matrix(truth, predicted, labels=labels, sample_weight=weight)
    assert np.array_equal(np.asarray(metrics["confusion_matrix"]), expected)


def _assert_ranking_metrics_match_sklearn(metrics, truth, scores, weight=None, k=None):
    from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score

    num_classes = scores.shape[1]
    labels = np.arange(num_classes)
    k = k if k is not None else min(5, num_classes)
    assert metrics["top_k"] == k
    if k >= num_classes:
        assert metrics["top_k_accuracy"] == 1.0
    else:
        expected = top_k_accuracy_score(truth, scores, k=k, labels=labels, sample_weight=weight)
        assert metrics["top_k_accuracy"] == pytest.approx(expected, abs=TOLERANCE)
    roc_aucs, average_precisions = [], []
    for index in labels:
        positive = truth == index
        has_positive = positive[weight > 0].any() if weight is not None else positive.any()
        has_negative = (~positive)[weight > 0].any() if weight is not None else (~positive).any()
        entry = metrics["per_class"][index]
        if has_positive and has_negative:
            roc_aucs.append(roc_auc_score(positive, scores[:, index], sample_weight=weight))
            assert entry["roc_auc"] == pytest.approx(roc_aucs[-1], abs=TOLERANCE)
        else:
            assert entry["roc_auc"] is None
        if has_positive:
            average_precisions.append(
                average_precision_score(positive, scores[:, index], sample_weight=weight))
            assert entry["average_precision"] == pytest.approx(average_precisions[-1], abs=TOLERANCE)
        else:
            assert entry["average_precision"] is None
    assert metrics["roc_auc_macro"] == pytest.approx(np.mean(roc_aucs), abs=TOLERANCE)
    assert metrics["pr_auc_macro"] == pytest.approx(np.mean(average_precisions), abs=TOLERANCE)
    if num_classes > 2 and len(roc_aucs) == num_classes and np.allclose(scores.sum(axis=1), 1):
        # every class present, rows are probabilities: exactly scikit-learn's multiclass calls
        expected = roc_auc_score(truth, scores, multi_class="ovr", average="macro", labels=labels,
                                 sample_weight=weight)
        assert metrics["roc_auc_macro"] == pytest.approx(expected, abs=TOLERANCE)
        expected = average_precision_score(truth, scores, average="macro", sample_weight=weight)
        assert metrics["pr_auc_macro"] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    "seed,num_samples,num_classes,tie_levels,absent",
    [
        (0, 500, 3, None, ()),
        (1, 800, 7, None, ()),
        (2, 600, 6, 4, ()),  # heavy ties: scores on a grid of quarters
        (3, 300, 10, 10, (2, 7)),  # ties and classes absent from the ground truth
        (4, 400, 2, 20, ()),
        (5, 50, 12, None, (0, 1, 2, 3)),
    ],
)
def test_matches_sklearn_on_random_scores(seed, num_samples, num_classes, tie_levels, absent):
    truth, scores = _random_case(seed, num_samples, num_classes, tie_levels=tie_levels, absent=absent)
    metrics = ClassificationMetrics(num_classes).compute_metrics(scores, truth)
    predicted = scores.argmax(axis=1)
    _assert_label_metrics_match_sklearn(metrics, truth, predicted)
    _assert_ranking_metrics_match_sklearn(metrics, truth, scores)
    json.dumps(metrics)


def test_label_metrics_match_sklearn_on_random_indices():
    rng = np.random.default_rng(11)
    truth = rng.integers(0, 9, 700)
    predicted = np.where(rng.random(700) < 0.5, truth, rng.integers(0, 9, 700))
    predicted[predicted == 4] = 5  # class 4 never predicted
    truth[truth == 6] = 0  # class 6 never true
    metrics = ClassificationMetrics(9).compute_metrics(predicted, truth)
    _assert_label_metrics_match_sklearn(metrics, truth, predicted)
    assert SCORE_ONLY_KEYS.isdisjoint(metrics)
    assert "roc_auc" not in metrics["per_class"][0]


@pytest.mark.parametrize("top_k", [1, 2, 3, 8])
def test_top_k_breaks_ties_like_sklearn(top_k):
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(top_k)
    truth = rng.integers(0, 6, 400)
    scores = rng.integers(0, 3, (400, 6)).astype(float)  # many exact ties at every rank
    metrics = ClassificationMetrics(6, top_k=top_k).compute_metrics(scores, truth)
    k = min(top_k, 6)
    assert metrics["top_k"] == k
    expected = top_k_accuracy_score(truth, scores, k=k, labels=np.arange(6)) if k < 6 else 1.0
    assert metrics["top_k_accuracy"] == pytest.approx(expected, abs=TOLERANCE)


def test_roc_auc_and_average_precision_on_hand_computed_ties():
    # class 1 scores: positives 0.8, 0.5; negatives 0.5, 0.2 -> pairs (0.8>0.5, 0.8>0.2, 0.5=0.5, 0.5>0.2)
    scores = np.array([[0.2, 0.8], [0.5, 0.5], [0.5, 0.5], [0.8, 0.2]])
    truth = np.array([1, 1, 0, 0])
    metrics = ClassificationMetrics(2).compute_metrics(scores, truth)
    assert metrics["per_class"][1]["roc_auc"] == pytest.approx(3.5 / 4)
    # thresholds 0.8 (P=1, R=1/2), 0.5 (P=2/3, R=1): AP = 1/2 * 1 + 1/2 * 2/3
    assert metrics["per_class"][1]["average_precision"] == pytest.approx(0.5 + 1 / 3)
    assert metrics["top_k"] == 2 and metrics["top_k_accuracy"] == 1.0


def test_single_class_ground_truth_leaves_roc_auc_undefined():
    scores = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    metrics = ClassificationMetrics(3).compute_metrics(scores, [0, 0, 0])
    assert metrics["roc_auc_macro"] is None
    assert [c["roc_auc"] for c in metrics["per_class"]] == [None, None, None]
    assert metrics["pr_auc_macro"] == 1.0  # class 0: every sample positive
    assert [c["average_precision"] for c in metrics["per_class"]] == [1.0, None, None]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    json.dumps(metrics)


def test_one_sample():
    metrics = ClassificationMetrics(3).compute_metrics(np.array([[0.1, 0.7, 0.2]]), [1])
    assert metrics["accuracy"] == 1.0 and metrics["f1_macro"] == 1.0 and metrics["roc_auc_macro"] is None


@pytest.mark.parametrize("seed,num_classes,tie_levels", [(20, 5, None), (21, 8, 5), (22, 3, 3)])
def test_integer_sample_weights_equal_sklearn_weights_and_repetition(seed, num_classes, tie_levels):
    truth, scores = _random_case(seed, 300, num_classes, tie_levels=tie_levels)
    rng = np.random.default_rng(seed)
    weight = np.bincount(rng.integers(0, 300, 300), minlength=300)  # a bootstrap draw: many zeros
    computer = ClassificationMetrics(num_classes, top_k=2)
    weighted = computer.compute_metrics(scores, truth, sample_weight=weight)
    repeated = computer.compute_metrics(np.repeat(scores, weight, axis=0), np.repeat(truth, weight))
    for key in ("accuracy", "f1_macro", "precision_weighted", "top_k_accuracy", "roc_auc_macro",
                "pr_auc_macro"):
        assert weighted[key] == pytest.approx(repeated[key], abs=TOLERANCE)
    assert weighted["confusion_matrix"] == repeated["confusion_matrix"]
    assert weighted["num_samples"] == 300

    drawn = weight > 0  # scikit-learn would count a class seen only in undrawn samples as present
    predicted = scores.argmax(axis=1)
    _assert_label_metrics_match_sklearn(weighted, truth[drawn], predicted[drawn], weight[drawn])
    _assert_ranking_metrics_match_sklearn(weighted, truth, scores, weight, k=2)


def test_sample_weight_on_labels_and_float_whole_numbers():
    computer = ClassificationMetrics(3)
    plain = computer.compute_metrics([0, 0, 1, 2, 2, 1], [0, 0, 1, 2, 2, 2])
    weighted = computer.compute_metrics([0, 1, 2, 1], [0, 1, 2, 2], sample_weight=[2.0, 1.0, 2.0, 1.0])
    assert weighted == plain
    confusion = computer.confusion_matrix([0, 1], [0, 0], sample_weight=[3, 0])
    assert confusion.tolist() == [[3, 0, 0], [0, 0, 0], [0, 0, 0]]
    # class 2 occurs only in an undrawn sample, so it is absent from the macro averages
    assert computer.compute_metrics([0, 1, 2], [0, 1, 1], sample_weight=[1, 1, 0])["f1_macro"] == 1.0


@pytest.mark.parametrize(
    "sample_weight,message",
    [
        ([1, 1], "sample_weight has 2 entries but ground_truth has 3"),
        ([1, -1, 1], "sample_weight holds a negative count -1 at position 1"),
        ([1, 0.5, 1], "sample_weight must hold whole-number counts; found 0.5 at position 1"),
        ([1, np.nan, 1], "sample_weight must hold whole-number counts; found nan at position 1"),
        ([0, 0, 0], "sample_weight is all zeros"),
        ([[1, 1, 1]], "sample_weight must be 1-D"),
        ([True, False, True], "sample_weight must hold whole-number counts, got dtype bool"),
    ],
)
def test_invalid_sample_weight(sample_weight, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ClassificationMetrics(3).compute_metrics([0, 1, 2], [0, 1, 2], sample_weight=sample_weight)


@pytest.mark.parametrize(
    "predictions,message",
    [
        (np.array([[0.5, np.inf, 0.0], [0.2, 0.3, 0.5]]), "predictions holds a non-finite score in row 0"),
        (np.array([[0.5, 0.5, 0.0], [0.2, -np.inf, 0.5]]), "predictions holds a non-finite score in row 1"),
        (np.ones((2, 2)), "predictions has 2 score columns but num_classes=3 (shape (2, 2)); expected N x 3"),
        (np.ones((2, 3), dtype=bool), "predictions scores must be real numbers, got dtype bool"),
    ],
)
def test_invalid_scores(predictions, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ClassificationMetrics(3).compute_metrics(predictions, [0, 1])


def test_invalid_top_k():
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ClassificationMetrics(3, top_k=0)
    assert ClassificationMetrics(3, top_k=10).top_k == 3
