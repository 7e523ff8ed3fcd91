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
    assert from_probabilities == from_indices == from_tensors
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
