import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from cv_pipeline.evaluation.segmentation_metrics import SegmentationCounts, SegmentationMetrics

TOLERANCE = 1e-9


def _random_masks(seed: int, num_images: int, num_classes: int, size=(24, 32), *, ignore_index=255,
                  ignore_fraction=0.1, absent=()):
    """Ground truth with ignored pixels, and predictions that are right about 60% of the time."""
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(num_classes), absent)
    truth = rng.choice(allowed, (num_images, *size))
    predicted = np.where(rng.random(truth.shape) < 0.6, truth, rng.choice(allowed, truth.shape))
    if ignore_index is not None:
        truth = np.where(rng.random(truth.shape) < ignore_fraction, ignore_index, truth)
    return predicted, truth


def _valid_pixels(predicted, truth, ignore_index=255):
    predicted = np.concatenate([np.ravel(mask) for mask in predicted])
    truth = np.concatenate([np.ravel(mask) for mask in truth])
    valid = truth != ignore_index
    return predicted[valid], truth[valid], valid


def _assert_matches_sklearn(metrics, predicted, truth, num_classes, sample_weight=None):
    labels = np.arange(num_classes)
    options = {"zero_division": 0, "sample_weight": sample_weight}
    macro_iou = jaccard_score(truth, predicted, average="macro", **options)
    assert metrics["miou"] == pytest.approx(macro_iou, abs=TOLERANCE)
    weighted_iou = jaccard_score(truth, predicted, average="weighted", **options)
    assert metrics["frequency_weighted_iou"] == pytest.approx(weighted_iou, abs=TOLERANCE)
    accuracy = accuracy_score(truth, predicted, sample_weight=sample_weight)
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy, abs=TOLERANCE)
    macro_dice = f1_score(truth, predicted, average="macro", **options)
    assert metrics["dice"] == pytest.approx(macro_dice, abs=TOLERANCE)
    present = np.isin(labels, np.union1d(truth, predicted) if sample_weight is None
                      else np.union1d(truth[sample_weight > 0], predicted[sample_weight > 0]))
    iou = jaccard_score(truth, predicted, labels=labels, average=None, **options)
    dice = f1_score(truth, predicted, labels=labels, average=None, **options)
    assert [value is not None for value in metrics["per_class_iou"]] == present.tolist()
    reported_iou = [value for value in metrics["per_class_iou"] if value is not None]
    reported_dice = [value for value in metrics["per_class_dice"] if value is not None]
    assert reported_iou == pytest.approx(iou[present], abs=TOLERANCE)
    assert reported_dice == pytest.approx(dice[present], abs=TOLERANCE)
    # Dice = 2 IoU / (1 + IoU), class by class
    assert dice[present] == pytest.approx(2 * iou[present] / (1 + iou[present]), abs=TOLERANCE)
    expected = confusion_matrix(truth, predicted, labels=labels, sample_weight=sample_weight)
    assert np.array_equal(np.asarray(metrics["confusion_matrix"]), expected)


@pytest.mark.parametrize(
    "seed,num_images,num_classes,absent",
    [(0, 4, 3, ()), (1, 6, 8, ()), (2, 3, 10, (0, 4, 9)), (3, 1, 2, ())],
)
def test_matches_sklearn_and_torchmetrics_on_random_masks(seed, num_images, num_classes, absent):
    predicted, truth = _random_masks(seed, num_images, num_classes, absent=absent)
    metrics = SegmentationMetrics(num_classes).compute_metrics(predicted, truth)
    flat_predicted, flat_truth, valid = _valid_pixels(predicted, truth)
    _assert_matches_sklearn(metrics, flat_predicted, flat_truth, num_classes)

    jaccard = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=255)
    jaccard.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    assert metrics["miou"] == pytest.approx(float(jaccard.compute()), abs=1e-6)  # torchmetrics is float32
    accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=255)
    accuracy.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    assert metrics["pixel_accuracy"] == pytest.approx(float(accuracy.compute()), abs=1e-6)
    assert metrics["num_images"] == num_images and metrics["num_pixels"] == int(valid.sum())
    for index in absent:
        assert metrics["per_class_iou"][index] is None and metrics["per_class"][index]["dice"] is None
    json.dumps(metrics)


def test_hand_computed_two_by_two():
    # truth 0 0 / 1 255 ; prediction 0 1 / 1 1 -> class 0: I=1 U=2 ; class 1: I=1 U=2 ; 3 valid pixels
    metrics = SegmentationMetrics(2, class_names=["background", "cat"]).compute_metrics(
        [[0, 1], [1, 1]], [[0, 0], [1, 255]]
    )
    assert metrics["per_class_iou"] == [0.5, 0.5]
    assert metrics["miou"] == 0.5
    assert metrics["per_class_dice"] == pytest.approx([2 / 3, 2 / 3])
    assert metrics["pixel_accuracy"] == pytest.approx(2 / 3)
    assert metrics["frequency_weighted_iou"] == pytest.approx(0.5)
    assert metrics["confusion_matrix"] == [[1, 1], [0, 1]]
    assert [c["name"] for c in metrics["per_class"]] == ["background", "cat"]
    assert metrics["per_class"][0]["ground_truth_pixels"] == 2
    assert metrics["per_class"][1]["predicted_pixels"] == 2


def test_list_of_varied_sizes_and_tensors_equals_pooled_pixels():
    rng = np.random.default_rng(5)
    sizes = [(10, 12), (7, 20), (31, 3)]
    truth = [rng.integers(0, 4, size) for size in sizes]
    predicted = [np.where(rng.random(t.shape) < 0.5, t, rng.integers(0, 4, t.shape)) for t in truth]
    truth[1][:3] = 255
    computer = SegmentationMetrics(4)
    metrics = computer.compute_metrics([torch.from_numpy(p) for p in predicted], truth)
    flat_predicted, flat_truth, _ = _valid_pixels(predicted, truth)
    _assert_matches_sklearn(metrics, flat_predicted, flat_truth, 4)
    # a float mask of whole numbers and a uint8 mask read the same
    as_float = [mask.astype(float) for mask in predicted]
    as_uint8 = [mask.astype(np.uint8) for mask in truth]
    assert computer.compute_metrics(as_float, as_uint8) == metrics


def test_single_mask_and_stack_of_one_agree():
    predicted, truth = _random_masks(6, 1, 5)
    computer = SegmentationMetrics(5)
    assert computer.compute_metrics(predicted[0], truth[0]) == computer.compute_metrics(predicted, truth)


def test_ignore_index_inside_the_class_range_follows_torchmetrics():
    predicted, truth = _random_masks(7, 3, 5, ignore_index=None)
    metrics = SegmentationMetrics(5, ignore_index=0).compute_metrics(predicted, truth)
    assert metrics["per_class_iou"][0] is None  # left out of the means though predicted
    jaccard = MulticlassJaccardIndex(5, average="macro", ignore_index=0)
    jaccard.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    assert metrics["miou"] == pytest.approx(float(jaccard.compute()), abs=1e-6)
    flat_predicted, flat_truth, _ = _valid_pixels(predicted, truth, ignore_index=0)
    expected = jaccard_score(flat_truth, flat_predicted, labels=[1, 2, 3, 4], average="macro",
                             zero_division=0)
    assert metrics["miou"] == pytest.approx(expected, abs=TOLERANCE)


def test_no_ignore_index():
    predicted, truth = _random_masks(8, 2, 3, ignore_index=None)
    metrics = SegmentationMetrics(3, ignore_index=None).compute_metrics(predicted, truth)
    assert metrics["num_pixels"] == truth.size
    _assert_matches_sklearn(metrics, predicted.ravel(), truth.ravel(), 3)


def test_per_image_counts():
    predicted, truth = _random_masks(9, 5, 4)
    counts = SegmentationMetrics(4).per_image_counts(predicted, truth)
    assert isinstance(counts, SegmentationCounts)
    assert counts.intersection.shape == counts.union.shape == (5, 4)
    for image in range(5):
        valid = truth[image] != 255
        p, t = predicted[image][valid], truth[image][valid]
        for index in range(4):
            assert counts.intersection[image, index] == np.sum((p == index) & (t == index))
            assert counts.union[image, index] == np.sum((p == index) | (t == index))
        assert counts.correct[image] == np.sum(p == t) and counts.total[image] == valid.sum()


@pytest.mark.parametrize("seed", [10, 11])
def test_image_weights_equal_repetition_and_sklearn_pixel_weights(seed):
    predicted, truth = _random_masks(seed, 8, 6, absent=(5,))
    predicted[3][predicted[3] == 2] = 5  # class 5 predicted only in image 3, so a draw may drop it
    rng = np.random.default_rng(seed)
    weights = np.bincount(rng.integers(0, 8, 8), minlength=8)
    computer = SegmentationMetrics(6)
    weighted = computer.compute_metrics(predicted, truth, image_weights=weights)
    repeated = computer.compute_metrics(np.repeat(predicted, weights, axis=0),
                                        np.repeat(truth, weights, axis=0))
    assert _close(weighted, repeated)

    from_counts = computer.summary_from_counts(computer.per_image_counts(predicted, truth), weights)
    assert from_counts == {key: value for key, value in weighted.items() if key != "confusion_matrix"}

    flat_predicted, flat_truth, valid = _valid_pixels(predicted, truth)
    pixel_weights = np.repeat(weights, truth[0].size)[valid]
    drawn = pixel_weights > 0  # scikit-learn counts classes seen in undrawn images as present
    _assert_matches_sklearn(weighted, flat_predicted[drawn], flat_truth[drawn], 6, pixel_weights[drawn])


def _close(left, right):
    """Nested equality with float tolerance (pytest.approx does not recurse into lists of dicts)."""
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_close(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(_close(a, b) for a, b in zip(left, right))
    if isinstance(left, float):
        return abs(left - right) <= TOLERANCE
    return left == right


def _pattern(message: str) -> str:
    for character in "()[].":
        message = message.replace(character, "\\" + character)
    return message


@pytest.mark.parametrize(
    "pred_masks,gt_masks,message",
    [
        ([np.zeros((4, 4)), np.zeros((4, 5))], [np.zeros((4, 4)), np.zeros((5, 4))],
         "image 1: pred_masks has shape (4, 5) but gt_masks has (5, 4)"),
        ([np.zeros((2, 2), int), np.full((2, 2), 3)], np.zeros((2, 2, 2), int),
         "image 1: pred_masks holds class id 3 at pixel (0, 0), outside [0, 3)"),
        (np.zeros((2, 2), int), [[0, 255], [-1, 0]],
         "image 0: gt_masks holds class id -1 at pixel (1, 0), outside [0, 3) or ignore_index=255"),
        (np.full((2, 2), 255), np.zeros((2, 2), int),
         "image 0: pred_masks holds class id 255 at pixel (0, 0)"),
        (np.array([[0, 1.5], [0, 0]]), np.zeros((2, 2), int),
         "image 0: pred_masks must hold whole-number class ids; found 1.5 at pixel (0, 1)"),
        (np.zeros((2, 2)), np.array([[0, 0], [np.nan, 0]]),
         "image 0: gt_masks must hold whole-number class ids; found nan at pixel (1, 0)"),
        (np.zeros((2, 2), bool), np.zeros((2, 2), int),
         "image 0: pred_masks must hold integer class ids, got dtype bool"),
        (np.zeros((3, 2, 2), int), np.zeros((2, 2, 2), int), "pred_masks has 3 images but gt_masks has 2"),
        ([], [], "empty"),
        (np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 2)), "take the argmax over the class axis first"),
        (np.zeros(4, int), np.zeros(4, int),
         "pred_masks must be class-id masks (H, W) or (N, H, W), got shape (4,)"),
        (np.zeros((2, 2), int), np.full((2, 2), 255), "no pixel to score"),
    ],
)
def test_invalid_masks_raise_value_error_naming_the_image(pred_masks, gt_masks, message):
    with pytest.raises(ValueError, match=_pattern(message)):
        SegmentationMetrics(3).compute_metrics(pred_masks, gt_masks)


@pytest.mark.parametrize(
    "image_weights,message",
    [
        ([1], "image_weights has 1 entries but the masks (images) has 2"),
        ([1, 0.5], "image_weights must hold whole-number counts; found 0.5 at position 1"),
        ([0, 0], "image_weights is all zeros"),
        ([1, -2], "image_weights holds a negative count -2 at position 1"),
    ],
)
def test_invalid_image_weights(image_weights, message):
    predicted, truth = _random_masks(12, 2, 3)
    computer = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=_pattern(message)):
        computer.compute_metrics(predicted, truth, image_weights=image_weights)
    with pytest.raises(ValueError, match=_pattern(message)):
        computer.summary_from_counts(computer.per_image_counts(predicted, truth), image_weights)


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="class_names has 2 entries but num_classes=3"):
        SegmentationMetrics(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetrics(3, ignore_index=2.5)


def test_exported_from_the_package():
    import cv_pipeline

    assert cv_pipeline.SegmentationMetrics is SegmentationMetrics
