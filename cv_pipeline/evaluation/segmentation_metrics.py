"""Semantic segmentation metrics (mIoU, Dice, pixel accuracy) from per-image pixel counts, with numpy.

Each image is reduced once to a `num_classes x num_classes` confusion (one `np.bincount` over its
pixels); every metric follows from the per-image counts, so a paired bootstrap over images
reweights those counts instead of rereading the masks. Instance masks are scored elsewhere
(`DetectionMetrics` with `iou_type="segm"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cv_pipeline.evaluation.metrics import _as_counts, _safe_divide, _to_numpy


@dataclass(frozen=True)
class SegmentationCounts:
    """Per-image pixel counts over the non-ignored pixels, each array `(num_images, num_classes)`."""

    intersection: np.ndarray  # pixels where prediction == ground truth == class
    ground_truth_area: np.ndarray  # pixels whose ground truth is the class
    predicted_area: np.ndarray  # non-ignored pixels predicted as the class

    @property
    def union(self) -> np.ndarray:
        return self.ground_truth_area + self.predicted_area - self.intersection

    @property
    def correct(self) -> np.ndarray:
        """`(num_images,)` correctly classified pixels."""
        return self.intersection.sum(axis=1)

    @property
    def total(self) -> np.ndarray:
        """`(num_images,)` non-ignored pixels."""
        return self.ground_truth_area.sum(axis=1)


class SegmentationMetrics:
    """mIoU, per-class IoU and Dice, pixel accuracy, frequency-weighted IoU and the confusion
    matrix of semantic segmentation masks.

    Conventions (those of torchmetrics `MulticlassJaccardIndex(num_classes, average="macro",
    ignore_index=...)` as logged in training, and of scikit-learn's `jaccard_score(average="macro")`
    over the non-ignored pixels):

    - Ground-truth pixels equal to `ignore_index` are dropped with their predictions. A predicted
      value is never special: it must be a class id in `[0, num_classes)`.
    - IoU and Dice of a class are computed over all images' pixels together (not averaged per
      image). `miou` and `dice` are the unweighted means over the classes present in the ground
      truth or the predictions; a class in neither has IoU and Dice None and is left out. A class
      equal to `ignore_index` (when that is a valid class id) is left out too, as torchmetrics does.
    - `pixel_accuracy` is correct pixels over non-ignored pixels; `frequency_weighted_iou` weights
      each class's IoU by its share of the ground-truth pixels.
    - Image weights are whole-number counts (a bootstrap draw: weight k = image drawn k times).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, class_names: list[str] | None = None
    ):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        if ignore_index is not None and int(ignore_index) != ignore_index:
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if class_names is None:
            class_names = [str(index) for index in range(self.num_classes)]
        class_names = [str(name) for name in class_names]
        if len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes={self.num_classes}")
        self.class_names = class_names

    def per_image_counts(self, pred_masks: Any, gt_masks: Any) -> SegmentationCounts:
        """Per-image intersections and areas of every class, for `summary_from_counts`."""
        counts, _ = self._accumulate(pred_masks, gt_masks, None)
        return counts

    def counts_and_confusion(self, pred_masks: Any, gt_masks: Any) -> tuple[SegmentationCounts, np.ndarray]:
        """`per_image_counts` and the confusion matrix from one pass over the masks."""
        return self._accumulate(pred_masks, gt_masks, None)

    def compute_metrics(self, pred_masks: Any, gt_masks: Any, image_weights: Any = None) -> dict[str, Any]:
        """Metrics of predicted against ground-truth masks, as a JSON-serialisable dict.

        Args:
            pred_masks: predicted class ids, one `(H, W)` mask, an `(N, H, W)` stack, or a list of
                `(H, W)` masks of varied sizes; numpy arrays, torch tensors or nested lists.
            gt_masks: ground-truth class ids (or `ignore_index`) in the same layout and sizes.
            image_weights: optional whole-number count per image (a bootstrap draw).

        Returns:
            What `summary_from_counts` returns, plus `confusion_matrix` (list of lists over the
            non-ignored pixels, rows = ground truth, columns = prediction).

        Raises:
            ValueError: naming the image, for differing image counts or shapes, class ids out of
                range, masks that are not whole numbers, or no non-ignored pixel.
        """
        counts, confusion = self._accumulate(pred_masks, gt_masks, image_weights)
        metrics = self.summary_from_counts(counts, image_weights)
        metrics["confusion_matrix"] = confusion.tolist()
        return metrics

    def summary_from_counts(self, counts: SegmentationCounts, image_weights: Any = None) -> dict[str, Any]:
        """Metrics from per-image counts, each image counted `image_weights[i]` times (default once).

        Returns:
            `miou`, `dice`, `pixel_accuracy`, `frequency_weighted_iou`, `per_class_iou` and
            `per_class_dice` (lists, None for a class left out of the means), `num_images` and
            `num_pixels` (weighted), and `per_class` (one `{"class_index", "name", "iou", "dice",
            "ground_truth_pixels", "predicted_pixels"}` per class).
        """
        num_images = counts.intersection.shape[0]
        if image_weights is None:
            weights = np.ones(num_images, dtype=np.int64)
        else:
            weights = _as_counts(image_weights, "image_weights", num_images, "the masks (images)")
        intersection = weights @ counts.intersection
        ground_truth_area = weights @ counts.ground_truth_area
        predicted_area = weights @ counts.predicted_area
        union = ground_truth_area + predicted_area - intersection
        num_pixels = int(ground_truth_area.sum())
        if num_pixels == 0:
            raise ValueError(
                f"no pixel to score: every ground-truth pixel of the weighted images equals "
                f"ignore_index={self.ignore_index}"
            )

        iou = _safe_divide(intersection, union)
        dice = _safe_divide(2 * intersection, ground_truth_area + predicted_area)
        present = union > 0
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            present[self.ignore_index] = False
        if not present.any():
            raise ValueError(f"no class to average: only class {self.ignore_index} (ignore_index) occurs")

        def listed(values: np.ndarray) -> list[float | None]:
            return [float(value) if keep else None for value, keep in zip(values, present)]

        per_class = [
            {
                "class_index": index,
                "name": self.class_names[index],
                "iou": float(iou[index]) if present[index] else None,
                "dice": float(dice[index]) if present[index] else None,
                "ground_truth_pixels": int(ground_truth_area[index]),
                "predicted_pixels": int(predicted_area[index]),
            }
            for index in range(self.num_classes)
        ]
        return {
            "miou": float(iou[present].mean()),
            "dice": float(dice[present].mean()),
            "pixel_accuracy": float(intersection.sum() / num_pixels),
            "frequency_weighted_iou": float((ground_truth_area * iou).sum() / num_pixels),
            "per_class_iou": listed(iou),
            "per_class_dice": listed(dice),
            "num_images": int(weights.sum()),
            "num_pixels": num_pixels,
            "per_class": per_class,
        }

    def _accumulate(
        self, pred_masks: Any, gt_masks: Any, image_weights: Any
    ) -> tuple[SegmentationCounts, np.ndarray]:
        """Per-image counts and the (image-weighted) confusion matrix, one bincount per image."""
        predictions = _as_mask_list(pred_masks, "pred_masks")
        truths = _as_mask_list(gt_masks, "gt_masks")
        if len(predictions) != len(truths):
            raise ValueError(f"pred_masks has {len(predictions)} images but gt_masks has {len(truths)}")
        if not predictions:
            raise ValueError("pred_masks and gt_masks are empty; need at least one image")
        weights = None
        if image_weights is not None:
            weights = _as_counts(image_weights, "image_weights", len(predictions), "the masks (images)")

        n = self.num_classes
        intersection = np.zeros((len(predictions), n), dtype=np.int64)
        ground_truth_area = np.zeros_like(intersection)
        predicted_area = np.zeros_like(intersection)
        confusion = np.zeros((n, n), dtype=np.int64)
        for index, (predicted, actual) in enumerate(zip(predictions, truths)):
            if predicted.shape != actual.shape:
                raise ValueError(
                    f"image {index}: pred_masks has shape {predicted.shape} but gt_masks has {actual.shape}"
                )
            predicted = _as_class_ids(predicted, "pred_masks", index)
            actual = _as_class_ids(actual, "gt_masks", index)
            _check_range(predicted, "pred_masks", index, n, None)
            _check_range(actual, "gt_masks", index, n, self.ignore_index)
            keys = actual * n + predicted
            if self.ignore_index is not None:  # ignored pixels go to one extra bin, dropped below
                keys[actual == self.ignore_index] = n * n
            image_confusion = np.bincount(keys.ravel(), minlength=n * n + 1)[: n * n].reshape(n, n)
            intersection[index] = np.diag(image_confusion)
            ground_truth_area[index] = image_confusion.sum(axis=1)
            predicted_area[index] = image_confusion.sum(axis=0)
            confusion += image_confusion if weights is None else weights[index] * image_confusion
        return SegmentationCounts(intersection, ground_truth_area, predicted_area), confusion


def _as_mask_list(masks: Any, argument: str) -> list[np.ndarray]:
    """One 2-D array per image from an (H, W) mask, an (N, H, W) stack or a sequence of masks."""
    if isinstance(masks, (list, tuple)) and not masks:
        return []
    if isinstance(masks, (list, tuple)) and not np.isscalar(masks[0]):
        items = [_to_numpy(mask, f"{argument}[{index}]") for index, mask in enumerate(masks)]
        if all(item.ndim == 1 for item in items):  # a nested list forming one (H, W) mask
            items = [_to_numpy(masks, argument)]
    else:
        array = _to_numpy(masks, argument)
        if array.ndim == 2:
            return [array]
        if array.ndim == 3:
            return list(array)
        raise ValueError(
            f"{argument} must be class-id masks (H, W) or (N, H, W), got shape {array.shape}"
            + ("; take the argmax over the class axis first" if array.ndim == 4 else "")
        )
    for index, item in enumerate(items):
        if item.ndim != 2:
            raise ValueError(
                f"image {index}: {argument} must be an (H, W) class-id mask, got shape {item.shape}"
            )
    return items


def _as_class_ids(mask: np.ndarray, argument: str, image: int) -> np.ndarray:
    """The mask as int64, refusing fractional, non-finite, boolean and non-numeric values."""
    if np.issubdtype(mask.dtype, np.integer):
        return mask.astype(np.int64, copy=False)
    if np.issubdtype(mask.dtype, np.floating):
        whole = np.isfinite(mask) & (mask == np.round(mask))
        if not whole.all():
            row, column = np.unravel_index(int(np.argmin(whole)), mask.shape)
            raise ValueError(
                f"image {image}: {argument} must hold whole-number class ids; "
                f"found {mask[row, column].item()!r} at pixel ({row}, {column})"
            )
        return mask.astype(np.int64)
    raise ValueError(f"image {image}: {argument} must hold integer class ids, got dtype {mask.dtype}")


def _check_range(
    mask: np.ndarray, argument: str, image: int, num_classes: int, ignore_index: int | None
) -> None:
    """Raise naming the first pixel outside `[0, num_classes)` that is not `ignore_index`."""
    if mask.size == 0 or (mask.min() >= 0 and mask.max() < num_classes):
        return
    bad = (mask < 0) | (mask >= num_classes)
    if ignore_index is not None:
        bad &= mask != ignore_index
    if bad.any():
        row, column = np.unravel_index(int(np.argmax(bad)), mask.shape)
        allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(
            f"image {image}: {argument} holds class id {int(mask[row, column])} at pixel ({row}, {column}), "
            f"outside {allowed}"
        )
