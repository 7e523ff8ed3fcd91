"""Multiclass classification metrics from one confusion matrix, computed with numpy.

The numbers agree with `torchmetrics.functional` multiclass metrics (`zero_division=0`), so a report
computed here matches what training logged; the whole computation is one `np.bincount`, fast for
millions of samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _to_numpy(values: Any, argument: str) -> np.ndarray:
    """A numpy view of a list, numpy array or torch tensor (moved to the CPU, detached)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{argument} cannot be read as an array: {error}") from error
    if array.dtype == object:
        raise ValueError(f"{argument} must be numeric, got a ragged or object array")
    return array


def _as_labels(values: np.ndarray, argument: str, num_classes: int) -> np.ndarray:
    """Validated int64 class indices in `[0, num_classes)` from a 1-D array.

    Integer arrays are taken as they are; float arrays only when every value is a whole number
    (labels that went through a float column); booleans, strings and fractions are refused.
    """
    if values.ndim != 1:
        raise ValueError(f"{argument} must be 1-D class indices, got shape {values.shape}")
    if np.issubdtype(values.dtype, np.integer):
        labels = values.astype(np.int64, copy=False)
    elif np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        whole = finite & (values == np.round(values))
        if not whole.all():
            index = int(np.argmin(whole))
            raise ValueError(
                f"{argument} must hold integer class indices; "
                f"found {values[index].item()!r} at position {index}"
            )
        labels = values.astype(np.int64)
    else:
        raise ValueError(f"{argument} must hold integer class indices, got dtype {values.dtype}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        index = int(np.argmax(out_of_range))
        raise ValueError(
            f"{argument} holds class index {int(labels[index])} at position {index}, "
            f"outside [0, {num_classes}) for num_classes={num_classes}"
        )
    return labels


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator`, with 0 where the denominator is 0 (scikit-learn's `zero_division=0`)."""
    numerator = numerator.astype(np.float64)
    denominator = denominator.astype(np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


class ClassificationMetrics:
    """Accuracy, per-class and averaged precision / recall / F1, and the confusion matrix.

    Conventions (the same as `torchmetrics.functional` multiclass metrics with their defaults):

    - A ratio whose denominator is 0 is 0 (`zero_division=0`): precision of a class never
      predicted, recall of a class with no support.
    - `accuracy` is the fraction of samples predicted correctly (torchmetrics `average="micro"`).
    - Macro averages are the unweighted mean over the classes `0 .. num_classes-1` that appear at
      all, i.e. in the ground truth or in the predictions. A class with no support and no
      predictions (true positives + false positives + false negatives = 0) is left out of the
      mean, as torchmetrics does; a class with no support that was predicted counts with
      precision, recall and F1 of 0. (scikit-learn with `labels=range(num_classes)` would instead
      average in a 0 for the absent class.)
    - `weighted_f1` weights each class's F1 by its support.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        if class_names is None:
            class_names = [str(index) for index in range(self.num_classes)]
        class_names = [str(name) for name in class_names]
        if len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes={self.num_classes}"
            )
        self.class_names = class_names

    def _predicted_labels(self, predictions: Any) -> np.ndarray:
        array = _to_numpy(predictions, "predictions")
        if array.ndim == 2:
            if array.shape[1] != self.num_classes:
                raise ValueError(
                    f"predictions has {array.shape[1]} score columns but num_classes={self.num_classes} "
                    f"(shape {array.shape})"
                )
            dtype = array.dtype
            if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
                raise ValueError(f"predictions scores must be real numbers, got dtype {array.dtype}")
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                row = int(np.argmin(np.isfinite(array).all(axis=1)))
                raise ValueError(f"predictions holds a non-finite score in row {row}")
            return array.argmax(axis=1).astype(np.int64)
        if array.ndim == 1:
            return _as_labels(array, "predictions", self.num_classes)
        raise ValueError(
            f"predictions must be 1-D class indices or 2-D N x {self.num_classes} scores, "
            f"got shape {array.shape}"
        )

    def confusion_matrix(self, predictions: Any, ground_truth: Any) -> np.ndarray:
        """`num_classes x num_classes` int64 counts; rows are ground truth, columns predictions."""
        predicted, actual = self._validated(predictions, ground_truth)
        return self._confusion(predicted, actual)

    def _validated(self, predictions: Any, ground_truth: Any) -> tuple[np.ndarray, np.ndarray]:
        actual = _to_numpy(ground_truth, "ground_truth")
        if actual.ndim != 1:
            raise ValueError(f"ground_truth must be 1-D class indices, got shape {actual.shape}")
        predicted = self._predicted_labels(predictions)
        if len(predicted) != len(actual):
            raise ValueError(
                f"predictions has {len(predicted)} samples but ground_truth has {len(actual)}"
            )
        if len(actual) == 0:
            raise ValueError("predictions and ground_truth are empty; need at least one sample")
        actual = _as_labels(actual, "ground_truth", self.num_classes)
        return predicted, actual

    def _confusion(self, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        n = self.num_classes
        return np.bincount(actual * n + predicted, minlength=n * n).reshape(n, n)

    def compute_metrics(self, predictions: Any, ground_truth: Any) -> dict[str, Any]:
        """Metrics for one evaluation, as a JSON-serialisable dict.

        Args:
            predictions: 1-D predicted class indices, or 2-D `N x num_classes` scores or
                probabilities (the argmax of each row is the prediction). A list, numpy array or
                torch tensor.
            ground_truth: 1-D true class indices, same length.

        Returns:
            `accuracy`, `macro_precision`, `macro_recall`, `macro_f1`, `weighted_f1`,
            `num_samples`, `per_class` (one `{"class_index", "name", "precision", "recall", "f1",
            "support"}` per class) and `confusion_matrix` (list of lists, rows = ground truth,
            columns = prediction).

        Raises:
            ValueError: naming the argument, for mismatched lengths, empty input, class indices
                outside `[0, num_classes)`, non-integer labels, or a score width other than
                `num_classes`.
        """
        predicted, actual = self._validated(predictions, ground_truth)
        confusion = self._confusion(predicted, actual)

        true_positives = np.diag(confusion)
        support = confusion.sum(axis=1)  # tp + fn
        predicted_count = confusion.sum(axis=0)  # tp + fp
        precision = _safe_divide(true_positives, predicted_count)
        recall = _safe_divide(true_positives, support)
        # 2tp / (2tp + fp + fn): the harmonic mean of precision and recall, 0 when tp is 0.
        f1 = _safe_divide(2 * true_positives, support + predicted_count)

        present = (support + predicted_count) > 0  # tp + fp + fn > 0
        num_present = int(present.sum())
        num_samples = int(support.sum())

        def macro(values: np.ndarray) -> float:
            return float(values[present].sum() / num_present)

        per_class = [
            {
                "class_index": index,
                "name": self.class_names[index],
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index in range(self.num_classes)
        ]
        return {
            "accuracy": float(true_positives.sum() / num_samples),
            "macro_precision": macro(precision),
            "macro_recall": macro(recall),
            "macro_f1": macro(f1),
            "weighted_f1": float((f1 * support).sum() / num_samples),
            "num_samples": num_samples,
            "per_class": per_class,
            "confusion_matrix": confusion.tolist(),
        }
