"""The built-in tasks' evaluations of a model on a split: accuracy and F1 (classification), COCO
metrics and error analysis (detection, instance segmentation), mIoU (semantic segmentation), with
per-image and per-class rows (for the Delta tables), plots and an HTML report.

Each task names its function as `TaskSpec.evaluate`; `evaluate_predictions` calls the task's.
`TaskEvaluation.statistic(weights)` re-scores the primary metric for any weighting of the images
`weight_keys` lists, which the paired bootstrap of a champion/challenger comparison needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cv_pipeline.evaluation.predictions import SplitPredictions

COCO_STATISTICS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                   "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


@dataclass
class TaskEvaluation:
    """What one evaluation produced; `metrics` are floats, the rows fit `report.PER_*_SCHEMA`."""

    task: str
    split: str
    primary_metric: str
    metrics: dict[str, float]
    per_class: list[dict]
    per_image: list[dict]
    plots: dict[str, bytes]
    details: dict = field(default_factory=dict)  # JSON-friendly extras: error counts, size breakdown
    statistic: Callable[[np.ndarray], float] | None = field(default=None, repr=False)
    weight_keys: tuple = ()  # the (batch_id, image_id) each weight of `statistic` counts, in order

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    @property
    def primary_value(self) -> float:
        return float(self.metrics[self.primary_metric])

    def html(self, title: str, notes: list[str] | None = None) -> str:
        """The self-contained HTML report: headline metrics, per-class table, breakdowns, plots."""
        from cv_pipeline.evaluation.report import (ImagesSection, MetricsSection, NotesSection, TableSection,
                                                   html_report)

        sections = [MetricsSection("Metrics", {k: v for k, v in self.metrics.items()})]
        columns = [key for key in ("class_name", "num_gt", "num_pred", "ap", "ap50", "ap75", "recall", "iou",
                                   "tp", "fp", "missed") if any(row.get(key) is not None for row in self.per_class)]
        sections.append(TableSection("Per class", [{k: row.get(k) for k in columns} for row in self.per_class]))
        for name, value in self.details.items():
            if isinstance(value, dict) and value:
                sections.append(TableSection(name.replace("_", " ").capitalize(), value))
        worst = sorted(self.per_image, key=_badness)[:10]
        image_columns = [key for key in ("batch_id", "image_id", "file_name", "num_gt", "num_pred", "tp", "fp",
                                         "missed", "errors", "mean_iou", "pixel_accuracy")
                         if any(row.get(key) is not None for row in worst)]
        sections.append(TableSection("Worst images", [{k: row.get(k) for k in image_columns} for row in worst]))
        sections.append(ImagesSection("Plots", [(png, name.replace("_", " ")) for name, png in self.plots.items()]))
        if notes:
            sections.append(NotesSection("Notes", notes))
        return html_report(title, sections)


def _badness(row: dict) -> tuple:
    if row.get("mean_iou") is not None:
        return (row["mean_iou"], row["image_id"])
    return (-(row.get("errors") or 0), row["image_id"])


def evaluate_predictions(predictions: SplitPredictions, *, overlays: int = 4, error_min_score: float = 0.3
                         ) -> TaskEvaluation:
    """Score `predictions` with their task's evaluation; `overlays` worst images are drawn.

    Detection errors (TIDE-style) are analysed over detections scoring at least `error_min_score`
    (the ones a user would act on); the COCO statistics use every detection, as COCO does."""
    from cv_pipeline.models.tasks import get_task

    return get_task(predictions.task).evaluate(predictions, {"overlays": overlays, "error_min_score": error_min_score})


def _primary(predictions: SplitPredictions, options: dict) -> str:
    """The metric the statistic bootstraps: `options["metric"]` (a comparison's), else the task's."""
    from cv_pipeline.models.tasks import get_task

    return options.get("metric") or get_task(predictions.task).test_metric


def evaluate_classification(predictions: SplitPredictions, options: dict) -> TaskEvaluation:
    """Accuracy, macro/micro/weighted F1, per-class precision and recall and a confusion matrix of
    per-object predictions; the bootstrap resamples images (an image counts all its objects)."""
    from cv_pipeline.evaluation.comparison import ratio_statistic
    from cv_pipeline.evaluation.metrics import ClassificationMetrics
    from cv_pipeline.evaluation.plots import confusion_matrix_png

    names = predictions.class_names
    index_of = {int(label["category_id"]): int(label["index"]) for label in predictions.labels}
    predicted = np.asarray([index_of[int(o["category_id"])] for o in predictions.outputs], dtype=np.int64)
    truth = np.asarray(predictions.ground_truth, dtype=np.int64)
    scorer = ClassificationMetrics(num_classes=len(names), class_names=names)
    values = scorer.compute_metrics(predicted, truth)
    keys, image_index = np.unique(np.asarray([f"{b}\x1f{i}" for b, i in predictions.image_keys]), return_inverse=True)
    primary = _primary(predictions, options)
    scalar = sorted(k for k, v in values.items() if isinstance(v, float))
    if primary not in scalar:
        raise ValueError(f"unknown classification metric {primary!r}; choose one of {scalar}")
    if primary == "accuracy":
        statistic = ratio_statistic(np.bincount(image_index, weights=(predicted == truth).astype(float),
                                                minlength=len(keys)),
                                    np.bincount(image_index, minlength=len(keys)).astype(float))
    else:
        def statistic(weights: np.ndarray) -> float:
            return float(scorer.compute_metrics(predicted, truth, sample_weight=np.asarray(weights)[image_index])[primary])
    metrics = {key: float(values[key]) for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                                                    "f1_micro", "f1_weighted")}
    metrics.update({"num_objects": float(len(truth)), "num_images": float(len(keys))})
    per_class = [{"class_id": index, "class_name": row["name"], "num_gt": int(row["support"]),
                  "num_pred": int((predicted == index).sum()), "precision": float(row["precision"]),
                  "recall": float(row["recall"]), "f1": float(row["f1"])}
                 for index, row in enumerate(values["per_class"])]
    annotation_ids = predictions.extra.get("annotation_ids") or [None] * len(truth)
    per_image = [{"batch_id": batch_id, "image_id": int(image_id), "annotation_id": annotation_id,
                  "file_name": path, "label": int(label), "prediction": int(guess), "correct": bool(label == guess),
                  "confidence": float(output["score"])}
                 for (batch_id, image_id), path, annotation_id, label, guess, output in zip(
                     predictions.image_keys, predictions.file_paths, annotation_ids, truth, predicted,
                     predictions.outputs)]
    plots = {"confusion_matrix": confusion_matrix_png(values["confusion_matrix"], names,
                                                      title=f"Confusion matrix ({predictions.split}, {len(truth)} objects)")}
    counts = {name: {other: int(c) for other, c in zip(names, row)} for name, row in zip(names, values["confusion_matrix"])}
    return TaskEvaluation(task=predictions.task, split=predictions.split, primary_metric=primary, metrics=metrics,
                          per_class=per_class, per_image=per_image, plots=plots, details={"confusion_counts": counts},
                          statistic=statistic, weight_keys=tuple(tuple(k.split("\x1f")) for k in keys.tolist()))


def _image_rows(predictions: SplitPredictions) -> list[dict]:
    return [{"batch_id": batch_id, "image_id": int(image_id), "file_name": path}
            for (batch_id, image_id), path in zip(predictions.image_keys, predictions.file_paths)]


def _image_array(predictions: SplitPredictions, index: int) -> np.ndarray:
    from cv_pipeline.training.coco_dataset import decode_record_image

    return decode_record_image(predictions.records[index]).permute(1, 2, 0).numpy()


def evaluate_detection(predictions: SplitPredictions, options: dict, iou_types: tuple = ("bbox",)) -> TaskEvaluation:
    """COCO box (and with `iou_types` ("bbox", "segm"), mask) statistics exact to pycocotools,
    per-class AP and PR curves, TIDE-style errors and overlays of the worst images."""
    from cv_pipeline.evaluation.coco_eval import DetectionMetrics
    from cv_pipeline.evaluation.error_analysis import analyze_detection_errors
    from cv_pipeline.evaluation.plots import error_breakdown_png, per_class_bar_png, pr_curves_png

    overlays, error_min_score = int(options.get("overlays", 4)), float(options.get("error_min_score", 0.3))
    truth, results = predictions.ground_truth, predictions.results
    names = {c["id"]: c["name"] for c in truth["categories"]}
    metrics, summaries, evaluations = {}, {}, {}
    for iou_type in iou_types:
        prefix = "" if iou_type == "bbox" else "segm_"
        evaluations[iou_type] = DetectionMetrics(iou_type, strict=True).evaluate(results, truth)
        summaries[iou_type] = summary = evaluations[iou_type].summary()
        metrics.update({prefix + key: float(summary[key]) for key in COCO_STATISTICS})
    main = iou_types[-1]  # masks for instance segmentation
    primary = _primary(predictions, options)
    key = primary.removeprefix("segm_")
    if key not in COCO_STATISTICS:
        raise ValueError(f"unknown detection metric {primary!r}; choose one of {list(COCO_STATISTICS)} "
                         "(segm_ prefixed for masks)")
    main_evaluation = evaluations[main]

    def statistic(weights: np.ndarray) -> float:
        return float(main_evaluation.summary(weights, curves=False)[key])

    errors = analyze_detection_errors(truth, results, iou_type=main, min_score=error_min_score)
    counts = errors.counts()
    metrics.update({"num_predictions": float(len(results)), "num_images": float(len(truth["images"]))})

    precision = summaries[main]["precision"][:, :, :, 0, -1]  # (T, R, K): area all, most detections
    thresholds = main_evaluation.iou_thresholds

    def ap_at(threshold: float, k: int) -> float | None:
        hit = np.flatnonzero(np.isclose(thresholds, threshold))
        values = precision[hit[0], :, k] if hit.size else np.array([-1.0])
        return float(values.mean()) if (values > -1).all() else None

    per_class_errors = {row["class_id"]: row for row in errors.per_class_rows()}
    recalls = summaries[main][f"mar_{main_evaluation.max_detections[-1]}_per_class"]
    per_class = []
    for k, category_id in enumerate(summaries[main]["classes"]):
        ap, recall = summaries[main]["map_per_class"][k], recalls[k]
        per_class.append({**per_class_errors.get(category_id, {"class_id": category_id, "class_name": names[category_id]}),
                          "ap": None if ap < 0 else float(ap), "ap50": ap_at(0.5, k), "ap75": ap_at(0.75, k),
                          "recall": None if recall < 0 else float(recall)})

    image_rows = _image_rows(predictions)
    by_id = {row["image_id"]: row for row in errors.per_image()}  # evaluation ids 1..N
    per_image = [{**image_rows[i], **{k: v for k, v in by_id[i + 1].items() if k != "image_id"}}
                 for i in range(len(image_rows))]

    curves = {f"{names[c['category_id']]}": (c["recall"], c["precision"])
              for c in summaries[main]["pr_curves"] if c["iou_threshold"] == 0.5}
    label = "mask" if main == "segm" else "box"
    plots = {
        "pr_curves": pr_curves_png(curves, title=f"Precision-recall per class, {label} IoU 0.5"),
        "ap_per_class": per_class_bar_png({row["class_name"]: row["ap50"] if row["ap50"] is not None else float("nan")
                                           for row in per_class}, title=f"{label} AP@0.5 per class", xlabel="AP@0.5"),
        "error_breakdown": error_breakdown_png({k: v for k, v in counts.items() if k not in ("tp", "fp")},
                                               title=f"Errors of detections scoring >= {error_min_score}"),
    }
    plots.update(_detection_overlays(predictions, errors.worst_images(overlays), error_min_score,
                                     with_masks="segm" in iou_types))
    details = {"error_counts": counts, "recall_by_size": errors.breakdown_by_size()}
    return TaskEvaluation(task=predictions.task, split=predictions.split, primary_metric=primary, metrics=metrics,
                          per_class=per_class, per_image=per_image, plots=plots, details=details, statistic=statistic,
                          weight_keys=tuple(predictions.image_keys))


def _detection_overlays(predictions: SplitPredictions, worst: list[dict], min_score: float,
                        with_masks: bool) -> dict[str, bytes]:
    from pycocotools import mask as mask_utils

    from cv_pipeline.evaluation.plots import overlay_png

    if not predictions.records:
        return {}
    names = {c["id"]: c["name"] for c in predictions.ground_truth["categories"]}
    plots = {}
    for row in worst:
        image_id = row["image_id"]
        index = image_id - 1
        image = _image_array(predictions, index)
        height, width = image.shape[:2]
        gts = [a for a in predictions.ground_truth["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        dets = [r for r in predictions.results if r["image_id"] == image_id and r["score"] >= min_score]
        gt_masks = pred_masks = None
        if with_masks:
            gt_masks = np.zeros((len(gts), height, width), np.uint8)
            for i, annotation in enumerate(gts):
                if annotation.get("segmentation"):
                    rles = mask_utils.frPyObjects(annotation["segmentation"], height, width)
                    gt_masks[i] = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles)
            pred_masks = np.stack([mask_utils.decode({"size": r["segmentation"]["size"],
                                                      "counts": r["segmentation"]["counts"].encode()})
                                   for r in dets]) if dets else np.zeros((0, height, width), np.uint8)
        batch_id, source_id = predictions.image_keys[index]
        plots[f"worst_{batch_id}_{source_id}"] = overlay_png(
            image, [a["bbox"] for a in gts], [a["category_id"] for a in gts], [r["bbox"] for r in dets],
            [r["category_id"] for r in dets], [r["score"] for r in dets], gt_masks=gt_masks, pred_masks=pred_masks,
            class_names=names, box_format="xywh")
    return plots


def evaluate_semantic(predictions: SplitPredictions, options: dict) -> TaskEvaluation:
    """mIoU, Dice, pixel accuracy, per-class IoU, a pixel confusion matrix, overlays of the worst images."""
    overlays = int(options.get("overlays", 4))
    from cv_pipeline.evaluation.comparison import ratio_statistic
    from cv_pipeline.evaluation.plots import confusion_matrix_png, per_class_bar_png, semantic_overlay_png
    from cv_pipeline.evaluation.segmentation_metrics import SegmentationMetrics

    names = ["background", *predictions.class_names]
    scorer = SegmentationMetrics(len(names), ignore_index=255, class_names=names)
    counts, confusion = scorer.counts_and_confusion(predictions.pred_masks, predictions.gt_masks)
    summary = scorer.summary_from_counts(counts)
    metrics = {"miou": float(summary["miou"]), "dice": float(summary["dice"]),
               "pixel_accuracy": float(summary["pixel_accuracy"]),
               "frequency_weighted_iou": float(summary["frequency_weighted_iou"]),
               "num_images": float(len(predictions.pred_masks))}
    if _primary(predictions, options) != "miou":
        raise ValueError(f"semantic segmentation compares by miou only, not {_primary(predictions, options)!r}")
    miou = ratio_statistic(counts.intersection, counts.union)

    def statistic(weights: np.ndarray) -> float:
        return float(miou(weights))

    per_class = [{"class_id": row["class_index"], "class_name": row["name"],
                  "iou": row["iou"], "extra": {"dice": row["dice"] if row["dice"] is not None
                                                                 else float("nan"),
                                                                 "ground_truth_pixels": float(row["ground_truth_pixels"]),
                                                                 "predicted_pixels": float(row["predicted_pixels"])}}
                 for row in summary["per_class"]]
    union = counts.union
    with np.errstate(invalid="ignore", divide="ignore"):
        image_iou = np.where(union > 0, counts.intersection / np.maximum(union, 1), np.nan)
    per_image = []
    for i, row in enumerate(_image_rows(predictions)):
        present = ~np.isnan(image_iou[i])
        per_image.append({**row, "mean_iou": float(image_iou[i][present].mean()) if present.any() else None,
                          "pixel_accuracy": float(counts.correct[i] / counts.total[i]) if counts.total[i] else None})
    plots = {
        "iou_per_class": per_class_bar_png({row["class_name"]: row["iou"] if row["iou"] is not None else float("nan")
                                            for row in per_class}, title="IoU per class", xlabel="IoU"),
        "confusion_matrix": confusion_matrix_png(confusion, names, title="Pixel confusion matrix"),
    }
    if predictions.records:
        order = sorted(range(len(per_image)), key=lambda i: _badness(per_image[i]))[:overlays]
        for i in order:
            batch_id, source_id = predictions.image_keys[i]
            plots[f"worst_{batch_id}_{source_id}"] = semantic_overlay_png(
                _image_array(predictions, i), predictions.gt_masks[i], predictions.pred_masks[i], len(names),
                class_names=names)
    return TaskEvaluation(task=predictions.task, split=predictions.split, primary_metric=_primary(predictions, options),
                          metrics=metrics, per_class=per_class, per_image=per_image, plots=plots, statistic=statistic,
                          weight_keys=tuple(predictions.image_keys))
