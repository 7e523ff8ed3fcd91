"""Multiclass classification metrics, computed with numpy.

Label metrics come from one confusion matrix (one `np.bincount`, fast for millions of samples) and
agree with `torchmetrics.functional` multiclass metrics and scikit-learn (`zero_division=0`), so a
report computed here matches what training logged. Ranking metrics (top-k accuracy, ROC AUC,
average precision) follow scikit-learn's definitions, ties included. Integer sample weights make
a paired bootstrap cheap: weight k means "drawn k times".
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


def _as_counts(values: Any, argument: str, length: int, length_of: str) -> np.ndarray:
    """Validated int64 non-negative whole-number weights (how many times each item was drawn)."""
    weights = _to_numpy(values, argument)
    if weights.ndim != 1:
        raise ValueError(f"{argument} must be 1-D, got shape {weights.shape}")
    if len(weights) != length:
        raise ValueError(f"{argument} has {len(weights)} entries but {length_of} has {length}")
    if np.issubdtype(weights.dtype, np.integer):
        counts = weights.astype(np.int64, copy=False)
    elif np.issubdtype(weights.dtype, np.floating):
        whole = np.isfinite(weights) & (weights == np.round(weights))
        if not whole.all():
            index = int(np.argmin(whole))
            raise ValueError(
                f"{argument} must hold whole-number counts; "
                f"found {weights[index].item()!r} at position {index}"
            )
        counts = weights.astype(np.int64)
    else:
        raise ValueError(f"{argument} must hold whole-number counts, got dtype {weights.dtype}")
    if (counts < 0).any():
        index = int(np.argmax(counts < 0))
        raise ValueError(f"{argument} holds a negative count {int(counts[index])} at position {index}")
    if counts.sum() == 0:
        raise ValueError(f"{argument} is all zeros; need at least one item with a positive count")
    return counts


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator`, with 0 where the denominator is 0 (scikit-learn's `zero_division=0`)."""
    numerator = numerator.astype(np.float64)
    denominator = denominator.astype(np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _binary_ranking_scores(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray
) -> tuple[float | None, float | None]:
    """(ROC AUC, average precision) of one one-vs-rest column, as scikit-learn computes them.

    Samples are sorted by descending score and cumulated only at distinct score values, so tied
    scores form one operating point: ROC AUC is the trapezoid area through those points (ties count
    one half), average precision the step sum `sum((R_i - R_{i-1}) * P_i)`. ROC AUC is None without
    both positives and negatives, average precision None without positives.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    positive_weight = np.where(positive[order], weights[order], 0).astype(np.float64)
    negative_weight = weights[order].astype(np.float64) - positive_weight
    ends = np.append(np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1)
    true_positives = np.cumsum(positive_weight)[ends]
    false_positives = np.cumsum(negative_weight)[ends]
    total_positive, total_negative = true_positives[-1], false_positives[-1]
    if total_positive == 0:
        return None, None
    recall = true_positives / total_positive
    precision = true_positives / (true_positives + false_positives)  # every kept sample has weight > 0
    average_precision = max(0.0, float(np.sum(np.diff(recall, prepend=0.0) * precision)))
    if total_negative == 0:
        return None, average_precision
    tpr = np.concatenate([[0.0], recall])
    fpr = np.concatenate([[0.0], false_positives / total_negative])
    roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return roc_auc, average_precision


class ClassificationMetrics:
    """Accuracy, top-k accuracy, averaged and per-class precision / recall / F1, ROC AUC, average
    precision and the confusion matrix of a multiclass classifier.

    Conventions (label metrics are those of `torchmetrics.functional` multiclass metrics and of
    scikit-learn's `precision_recall_fscore_support(..., zero_division=0)`):

    - A ratio whose denominator is 0 is 0 (`zero_division=0`): precision of a class never
      predicted, recall of a class with no support.
    - `accuracy` is the fraction of samples predicted correctly; with one label per sample it
      equals `precision_micro`, `recall_micro` and `f1_micro`.
    - Macro averages are the unweighted mean over the classes that appear at all, in the ground
      truth or in the predictions (scikit-learn's default `labels`). A class with no support and no
      predictions is left out of the mean; a class with no support that was predicted counts with
      precision, recall and F1 of 0. Weighted averages weight each class by its support.
    - Scores (2-D predictions): the prediction is the row's argmax (the first on ties). Top-k
      accuracy ranks classes as scikit-learn's `top_k_accuracy_score` does: by descending score,
      a tie going to the higher class index. ROC AUC and average precision are one-vs-rest per
      class on that class's score column; rows need not sum to 1 (scikit-learn's ROC AUC insists
      they do, but the numbers only depend on the order within a column). `roc_auc_macro`
      averages the classes that have both positives and negatives in the ground truth (for the
      others ROC AUC is undefined: scikit-learn returns NaN); `pr_auc_macro` averages the classes
      with at least one positive. Either is None when no class qualifies.
    - Class indices alone (1-D predictions) carry no ranking: the score-only keys are left out.
    - `sample_weight` holds whole-number counts, weight k meaning the sample was drawn k times,
      so every number equals the unweighted one on the sample repeated k times (a sample of
      weight 0 is absent, also when deciding which classes are present).
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, top_k: int = 5):
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
        if int(top_k) != top_k or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        # Beyond num_classes every sample is a hit; cap so the reported k is the one used.
        self.top_k = min(int(top_k), self.num_classes)

    def _scores_or_labels(self, predictions: Any) -> tuple[np.ndarray | None, np.ndarray]:
        """(N x num_classes float64 scores or None, predicted class indices)."""
        array = _to_numpy(predictions, "predictions")
        if array.ndim == 2:
            if array.shape[1] != self.num_classes:
                raise ValueError(
                    f"predictions has {array.shape[1]} score columns but num_classes={self.num_classes} "
                    f"(shape {array.shape}); expected N x {self.num_classes}"
                )
            dtype = array.dtype
            if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
                raise ValueError(f"predictions scores must be real numbers, got dtype {array.dtype}")
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                row = int(np.argmin(np.isfinite(array).all(axis=1)))
                raise ValueError(f"predictions holds a non-finite score in row {row}")
            return array.astype(np.float64), array.argmax(axis=1).astype(np.int64)
        if array.ndim == 1:
            return None, _as_labels(array, "predictions", self.num_classes)
        raise ValueError(
            f"predictions must be 1-D class indices or 2-D N x {self.num_classes} scores, "
            f"got shape {array.shape}"
        )

    def confusion_matrix(self, predictions: Any, ground_truth: Any, sample_weight: Any = None) -> np.ndarray:
        """`num_classes x num_classes` int64 counts; rows are ground truth, columns predictions."""
        _, predicted, actual, weights = self._validated(predictions, ground_truth, sample_weight)
        return self._confusion(predicted, actual, weights)

    def _validated(
        self, predictions: Any, ground_truth: Any, sample_weight: Any
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
        actual = _to_numpy(ground_truth, "ground_truth")
        if actual.ndim != 1:
            raise ValueError(f"ground_truth must be 1-D class indices, got shape {actual.shape}")
        scores, predicted = self._scores_or_labels(predictions)
        if len(predicted) != len(actual):
            raise ValueError(
                f"predictions has {len(predicted)} samples but ground_truth has {len(actual)}"
            )
        if len(actual) == 0:
            raise ValueError("predictions and ground_truth are empty; need at least one sample")
        actual = _as_labels(actual, "ground_truth", self.num_classes)
        weights = None
        if sample_weight is not None:
            weights = _as_counts(sample_weight, "sample_weight", len(actual), "ground_truth")
        return scores, predicted, actual, weights

    def _confusion(
        self, predicted: np.ndarray, actual: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        n = self.num_classes
        if weights is None:
            counts = np.bincount(actual * n + predicted, minlength=n * n)
        else:  # float64 sums of whole numbers, exact below 2**53
            counts = np.bincount(actual * n + predicted, weights=weights, minlength=n * n).astype(np.int64)
        return counts.reshape(n, n)

    def compute_metrics(
        self, predictions: Any, ground_truth: Any, sample_weight: Any = None
    ) -> dict[str, Any]:
        """Metrics for one evaluation, as a JSON-serialisable dict.

        Args:
            predictions: 1-D predicted class indices, or 2-D `N x num_classes` scores or
                probabilities (the argmax of each row is the prediction). A list, numpy array or
                torch tensor.
            ground_truth: 1-D true class indices, same length.
            sample_weight: optional 1-D whole-number count per sample (a bootstrap resample as
                draw counts); None counts each sample once.

        Returns:
            `accuracy`; `precision_macro`, `precision_micro`, `precision_weighted` and the same for
            `recall_` and `f1_`; `num_samples` (the sum of the weights); `per_class` (one
            `{"class_index", "name", "precision", "recall", "f1", "support"}` per class) and
            `confusion_matrix` (list of lists, rows = ground truth, columns = prediction).
            From scores also `top_k` (k used, at most num_classes), `top_k_accuracy`,
            `roc_auc_macro`, `pr_auc_macro` and per class `roc_auc` and `average_precision`
            (None where undefined). `macro_precision`, `macro_recall`, `macro_f1` and
            `weighted_f1` repeat the `*_macro` / `f1_weighted` values under the names existing
            callers read.

        Raises:
            ValueError: naming the argument, for mismatched lengths, empty input, class indices
                outside `[0, num_classes)`, non-integer labels, a score width other than
                `num_classes`, non-finite scores, or weights that are not non-negative whole
                numbers with a positive sum.
        """
        scores, predicted, actual, weights = self._validated(predictions, ground_truth, sample_weight)
        confusion = self._confusion(predicted, actual, weights)

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

        def weighted(values: np.ndarray) -> float:
            return float((values * support).sum() / num_samples)

        # Over all classes tp + fp = tp + fn = N, so micro precision = recall = F1 = accuracy.
        accuracy = float(true_positives.sum() / num_samples)
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
        metrics: dict[str, Any] = {
            "accuracy": accuracy,
            "precision_macro": macro(precision),
            "precision_micro": accuracy,
            "precision_weighted": weighted(precision),
            "recall_macro": macro(recall),
            "recall_micro": accuracy,
            "recall_weighted": weighted(recall),
            "f1_macro": macro(f1),
            "f1_micro": accuracy,
            "f1_weighted": weighted(f1),
            "num_samples": num_samples,
            "per_class": per_class,
            "confusion_matrix": confusion.tolist(),
        }
        metrics.update(
            macro_precision=metrics["precision_macro"],
            macro_recall=metrics["recall_macro"],
            macro_f1=metrics["f1_macro"],
            weighted_f1=metrics["f1_weighted"],
        )
        if scores is not None:
            metrics.update(self._ranking_metrics(scores, actual, weights, per_class))
        return metrics

    def _ranking_metrics(
        self, scores: np.ndarray, actual: np.ndarray, weights: np.ndarray | None, per_class: list[dict]
    ) -> dict[str, Any]:
        """Top-k accuracy, ROC AUC and average precision from scores; fills `per_class` in place."""
        if weights is None:
            weights = np.ones(len(actual), dtype=np.int64)
        true_score = scores[np.arange(len(actual)), actual][:, None]
        # The true class's rank in scikit-learn's order: higher scores first, then ties with a
        # higher class index.
        columns = np.arange(self.num_classes)
        ahead = (scores > true_score).sum(axis=1) + (
            (scores == true_score) & (columns > actual[:, None])
        ).sum(axis=1)
        top_k_accuracy = float(weights[ahead < self.top_k].sum() / weights.sum())

        kept = weights > 0  # a sample drawn 0 times is no operating point (scikit-learn drops it too)
        scores, actual, weights = scores[kept], actual[kept], weights[kept]
        roc_aucs, average_precisions = [], []
        for index in range(self.num_classes):
            roc_auc, average_precision = _binary_ranking_scores(scores[:, index], actual == index, weights)
            per_class[index]["roc_auc"] = roc_auc
            per_class[index]["average_precision"] = average_precision
            if roc_auc is not None:
                roc_aucs.append(roc_auc)
            if average_precision is not None:
                average_precisions.append(average_precision)
        return {
            "top_k": self.top_k,
            "top_k_accuracy": top_k_accuracy,
            "roc_auc_macro": float(np.mean(roc_aucs)) if roc_aucs else None,
            "pr_auc_macro": float(np.mean(average_precisions)) if average_precisions else None,
        }
