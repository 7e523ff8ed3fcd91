"""Detection error analysis in the manner of TIDE (Bolya et al., 2020): why each detection that is
not a true positive is wrong, and which objects were missed.

Input is a COCO ground-truth document and a COCO results list, the same pair COCOeval reads.
True positives are matched exactly as COCOeval matches them at IoU 0.5 (greedy by score within each
image and category, a crowd region absorbing the detections it covers), so the TP count agrees with
COCO's; every other detection gets one error type, checked in TIDE's order:

- ``background``: IoU below ``background_iou`` with every ground-truth object;
- ``localization``: right class, best same-class IoU in [background_iou, foreground_iou);
- ``classification``: a ground-truth object of another class at IoU >= foreground_iou;
- ``duplicate``: right class and IoU >= foreground_iou, but that object was already matched by a
  higher-scoring detection;
- ``both``: wrong class and poorly localized (other-class IoU in [background_iou, foreground_iou)).

Ground-truth objects no true positive matched are ``missed``. Sizes follow COCO: small up to 32²
pixels of area, medium up to 96², large above (an area exactly on a bound goes to the smaller size);
objects are sized by their annotated ``area``, detections by their own box or mask area.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

ERROR_TYPES = ("duplicate", "localization", "classification", "both", "background")
SIZES = ("small", "medium", "large")
SMALL_MAX_AREA = 32.0**2
MEDIUM_MAX_AREA = 96.0**2

Outcome = Literal["tp", "duplicate", "localization", "classification", "both", "background", "ignored"]


def object_size(area: float) -> str:
    """COCO's size bucket for an area in pixels: 'small', 'medium' or 'large'."""
    if area <= SMALL_MAX_AREA:
        return "small"
    return "medium" if area <= MEDIUM_MAX_AREA else "large"


@dataclass(frozen=True)
class DetectionOutcome:
    """One analysed detection: a true positive, an error type, or ignored (inside a crowd region).

    `iou` and `annotation_id` describe the ground-truth object that decided the outcome (the match
    for a TP, the best-overlapping object for an error); both are None where no object overlaps.
    """

    image_id: int
    category_id: int
    score: float
    area: float
    size: str
    outcome: Outcome
    iou: float | None
    annotation_id: int | None


@dataclass(frozen=True)
class GroundTruthObject:
    """One non-crowd ground-truth object and whether a true positive matched it."""

    annotation_id: int
    image_id: int
    category_id: int
    area: float
    size: str
    detected: bool


def _empty_counts() -> dict[str, int]:
    return {"tp": 0, "fp": 0, **{name: 0 for name in ERROR_TYPES}, "missed": 0, "ignored": 0}


class DetectionErrorAnalysis:
    """Detections and ground-truth objects classified by outcome, with the usual roll-ups."""

    def __init__(
        self,
        detections: Sequence[DetectionOutcome],
        ground_truths: Sequence[GroundTruthObject],
        image_ids: Sequence[int],
        category_names: Mapping[int, str],
    ):
        self.detections = tuple(detections)
        self.ground_truths = tuple(ground_truths)
        self.image_ids = tuple(image_ids)
        self.category_names = dict(category_names)
        self.category_ids = tuple(self.category_names)

    @staticmethod
    def _add_detection(counts: dict[str, int], detection: DetectionOutcome) -> None:
        counts[detection.outcome] += 1
        if detection.outcome in ERROR_TYPES:
            counts["fp"] += 1

    def counts(self) -> dict[str, int]:
        """Totals: tp, fp (all error types together), each error type, missed, ignored."""
        counts = _empty_counts()
        for detection in self.detections:
            self._add_detection(counts, detection)
        counts["missed"] = sum(not gt.detected for gt in self.ground_truths)
        return counts

    @property
    def missed(self) -> tuple[GroundTruthObject, ...]:
        """The ground-truth objects no true positive matched."""
        return tuple(gt for gt in self.ground_truths if not gt.detected)

    def per_class_counts(self) -> dict[int, dict[str, int]]:
        """`counts()` per category id (detections by their predicted class), plus `num_gt`."""
        per_class = {category: {"num_gt": 0, **_empty_counts()} for category in self.category_ids}
        for detection in self.detections:
            self._add_detection(per_class[detection.category_id], detection)
        for gt in self.ground_truths:
            per_class[gt.category_id]["num_gt"] += 1
            per_class[gt.category_id]["missed"] += not gt.detected
        return per_class

    def per_class_rows(self) -> list[dict[str, Any]]:
        """`per_class_counts()` as table rows: class_id, class_name, num_gt, num_pred, tp, fp,
        fp_<error type>, missed, ignored (the columns of `report.PER_CLASS_SCHEMA`)."""
        rows = []
        for category, counts in self.per_class_counts().items():
            rows.append({
                "class_id": category, "class_name": self.category_names[category], "num_gt": counts["num_gt"],
                "num_pred": counts["tp"] + counts["fp"] + counts["ignored"], "tp": counts["tp"], "fp": counts["fp"],
                **{f"fp_{name}": counts[name] for name in ERROR_TYPES},
                "missed": counts["missed"], "ignored": counts["ignored"],
            })  # fmt: skip
        return rows

    def per_size_counts(self) -> dict[str, dict[str, int]]:
        """`counts()` per COCO size: detections by their own area, objects (`num_gt`, missed) by theirs."""
        per_size = {size: {"num_gt": 0, **_empty_counts()} for size in SIZES}
        for detection in self.detections:
            self._add_detection(per_size[detection.size], detection)
        for gt in self.ground_truths:
            per_size[gt.size]["num_gt"] += 1
            per_size[gt.size]["missed"] += not gt.detected
        return per_size

    def breakdown_by_size(self) -> dict[str, dict[str, Any]]:
        """Recall per COCO size at the foreground IoU: num_gt, detected, missed, recall (None without objects)."""
        breakdown = {size: {"num_gt": 0, "detected": 0, "missed": 0, "recall": None} for size in SIZES}
        for gt in self.ground_truths:
            row = breakdown[gt.size]
            row["num_gt"] += 1
            row["detected" if gt.detected else "missed"] += 1
        for row in breakdown.values():
            if row["num_gt"]:
                row["recall"] = row["detected"] / row["num_gt"]
        return breakdown

    def per_image(self) -> list[dict[str, Any]]:
        """One row per image of the ground truth, ordered by image id.

        Columns: image_id, num_gt, num_pred (analysed detections, ignored ones included), tp, fp,
        fp_<error type> for each error type, missed, ignored, errors (fp + missed) and error_score,
        errors / (tp + errors): 0 for a perfect image, 1 when nothing in it was right.
        """
        rows = {
            image_id: {
                "image_id": image_id, "num_gt": 0, "num_pred": 0, "tp": 0, "fp": 0,
                **{f"fp_{name}": 0 for name in ERROR_TYPES}, "missed": 0, "ignored": 0,
            }
            for image_id in sorted(self.image_ids)
        }  # fmt: skip
        for detection in self.detections:
            row = rows[detection.image_id]
            row["num_pred"] += 1
            if detection.outcome in ERROR_TYPES:
                row["fp"] += 1
                row[f"fp_{detection.outcome}"] += 1
            else:
                row[detection.outcome] += 1
        for gt in self.ground_truths:
            row = rows[gt.image_id]
            row["num_gt"] += 1
            row["missed"] += not gt.detected
        for row in rows.values():
            row["errors"] = row["fp"] + row["missed"]
            judged = row["tp"] + row["errors"]
            row["error_score"] = row["errors"] / judged if judged else 0.0
        return list(rows.values())

    def worst_images(self, n: int) -> list[dict[str, Any]]:
        """The `n` per-image rows with the most errors (fp + missed); ties go to the lower image id."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return sorted(self.per_image(), key=lambda row: (-row["errors"], row["image_id"]))[:n]


def _number(record: Mapping, field: str, where: str) -> float:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} field {field!r} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{where} field {field!r} must be finite, got {value!r}")
    return float(value)


def _box(record: Mapping, where: str) -> list[float]:
    box = record.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"{where} field 'bbox' must be [x, y, width, height], got {box!r}")
    values = [_number({"bbox": value}, "bbox", where) for value in box]
    if values[2] < 0 or values[3] < 0:
        raise ValueError(f"{where} field 'bbox' has a negative width or height: {box!r}")
    return values


def _ground_truth_rle(annotation: Mapping, image: Mapping, where: str):
    """The annotation's mask as one RLE, as pycocotools' COCO.annToRLE builds it."""
    segmentation = annotation.get("segmentation")
    height, width = image.get("height"), image.get("width")
    if not isinstance(height, int) or not isinstance(width, int):
        raise ValueError(f"image {image.get('id')!r} needs integer 'height' and 'width' to rasterise {where}")
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError(f"{where} field 'segmentation' is an empty polygon list")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation
    raise ValueError(f"{where} field 'segmentation' must be polygons or an RLE, got {type(segmentation).__name__}")


def _result_rle(result: Mapping, where: str):
    segmentation = result.get("segmentation")
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        raise ValueError(f"{where} field 'segmentation' must be an RLE with 'size' and 'counts'")
    if isinstance(segmentation["counts"], list):
        height, width = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _check_threshold(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def analyze_detection_errors(
    coco_gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    iou_type: Literal["bbox", "segm"] = "bbox",
    min_score: float = 0.0,
    max_detections: int = 100,
    foreground_iou: float = 0.5,
    background_iou: float = 0.1,
) -> DetectionErrorAnalysis:
    """Classify every detection and ground-truth object of a COCO evaluation (see the module doc).

    Only detections scoring at least `min_score` are analysed, and of those each image's
    `max_detections` highest-scoring ones. `iou_type="segm"` compares masks: results then need an
    RLE `segmentation`, and ground truth polygons or RLEs plus image height and width.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    foreground_iou = _check_threshold(foreground_iou, "foreground_iou")
    background_iou = _check_threshold(background_iou, "background_iou")
    if not 0.0 < background_iou <= foreground_iou:
        raise ValueError(
            f"background_iou must be above 0 and at most foreground_iou {foreground_iou}, got {background_iou}"
        )
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections must be a positive integer, got {max_detections!r}")
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not math.isfinite(min_score):
        raise ValueError(f"min_score must be a finite number, got {min_score!r}")
    if not isinstance(coco_gt, Mapping):
        raise ValueError(f"coco_gt must be a COCO document (a dict), got {type(coco_gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco_gt.get(key), list):
            raise ValueError(f"coco_gt must have a list under {key!r}")
    if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
        raise ValueError(f"results must be a list of COCO result dicts, got {type(results).__name__}")

    images = {}
    for index, image in enumerate(coco_gt["images"]):
        if not isinstance(image, Mapping) or not isinstance(image.get("id"), int):
            raise ValueError(f"coco_gt images[{index}] must be a dict with an integer 'id'")
        images[image["id"]] = image
    category_names = {}
    for index, category in enumerate(coco_gt["categories"]):
        if not isinstance(category, Mapping) or not isinstance(category.get("id"), int):
            raise ValueError(f"coco_gt categories[{index}] must be a dict with an integer 'id'")
        category_names[category["id"]] = str(category.get("name", category["id"]))
    known_categories = set(category_names)

    gts_by_image: dict[int, list[dict]] = defaultdict(list)
    for index, annotation in enumerate(coco_gt["annotations"]):
        if not isinstance(annotation, Mapping):
            raise ValueError(f"coco_gt annotations[{index}] must be a dict, got {type(annotation).__name__}")
        where = f"coco_gt annotations[{index}] (id {annotation.get('id')!r})"
        if annotation.get("image_id") not in images:
            raise ValueError(f"{where} refers to image_id {annotation.get('image_id')!r}, not among the images")
        if annotation.get("category_id") not in known_categories:
            raise ValueError(
                f"{where} refers to category_id {annotation.get('category_id')!r}, not among the categories"
            )
        if not isinstance(annotation.get("id"), int):
            raise ValueError(f"{where} needs an integer 'id'")
        geometry = (
            _box(annotation, where) if iou_type == "bbox"
            else _ground_truth_rle(annotation, images[annotation["image_id"]], where)
        )  # fmt: skip
        gts_by_image[annotation["image_id"]].append({
            "id": annotation["id"], "category_id": annotation["category_id"],
            "area": _number(annotation, "area", where), "crowd": bool(annotation.get("iscrowd", 0)),
            "geometry": geometry,
        })  # fmt: skip

    dets_by_image: dict[int, list[dict]] = defaultdict(list)
    for index, result in enumerate(results):
        where = f"results[{index}]"
        if not isinstance(result, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(result).__name__}")
        if result.get("image_id") not in images:
            raise ValueError(f"{where} refers to image_id {result.get('image_id')!r}, not among the gt images")
        if result.get("category_id") not in known_categories:
            raise ValueError(
                f"{where} refers to category_id {result.get('category_id')!r}, not among the categories"
            )
        score = _number(result, "score", where)
        if score < min_score:
            continue
        if iou_type == "bbox":
            geometry = _box(result, where)
            area = geometry[2] * geometry[3]
        else:
            geometry = _result_rle(result, where)
            area = float(mask_utils.area(geometry))
        dets_by_image[result["image_id"]].append(
            {"category_id": result["category_id"], "score": score, "area": area, "geometry": geometry}
        )

    detections: list[DetectionOutcome] = []
    ground_truths: list[GroundTruthObject] = []
    for image_id in images:
        gts = gts_by_image.get(image_id, [])
        dets = dets_by_image.get(image_id, [])
        order = np.argsort([-det["score"] for det in dets], kind="mergesort")[:max_detections]
        dets = [dets[i] for i in order]
        outcomes, matched = _analyse_image(dets, gts, foreground_iou, background_iou)
        for det, (outcome, iou, gt_index) in zip(dets, outcomes):
            detections.append(DetectionOutcome(
                image_id=image_id, category_id=det["category_id"], score=det["score"], area=det["area"],
                size=object_size(det["area"]), outcome=outcome, iou=iou,
                annotation_id=None if gt_index is None else gts[gt_index]["id"],
            ))  # fmt: skip
        for gt_index, gt in enumerate(gts):
            if not gt["crowd"]:
                ground_truths.append(GroundTruthObject(
                    annotation_id=gt["id"], image_id=image_id, category_id=gt["category_id"],
                    area=gt["area"], size=object_size(gt["area"]), detected=gt_index in matched,
                ))  # fmt: skip
    return DetectionErrorAnalysis(detections, ground_truths, list(images), category_names)


def _analyse_image(
    dets: list[dict], gts: list[dict], foreground_iou: float, background_iou: float
) -> tuple[list[tuple[Outcome, float | None, int | None]], set[int]]:
    """(outcome, iou, gt index) per detection in score order, and the indices of matched objects."""
    if dets and gts:
        ious = np.asarray(
            mask_utils.iou([d["geometry"] for d in dets], [g["geometry"] for g in gts], [int(g["crowd"]) for g in gts]),
            dtype=np.float64,
        ).reshape(len(dets), len(gts))
    else:
        ious = np.zeros((len(dets), len(gts)))
    crowd = np.array([g["crowd"] for g in gts], dtype=bool)
    gt_classes = np.array([g["category_id"] for g in gts], dtype=np.int64)

    outcomes: list[tuple[Outcome, float | None, int | None] | None] = [None] * len(dets)
    matched: set[int] = set()
    # COCOeval's greedy matching, per category: detections by descending score take the best
    # still-unmatched object at IoU >= foreground_iou, preferring real objects to crowd regions.
    for category in {d["category_id"] for d in dets}:
        candidates = sorted(np.flatnonzero(gt_classes == category), key=lambda j: crowd[j])  # stable
        for d, det in enumerate(dets):
            if det["category_id"] != category:
                continue
            best, match = min(foreground_iou, 1 - 1e-10), None
            for g in candidates:
                if g in matched and not crowd[g]:
                    continue
                if match is not None and not crowd[match] and crowd[g]:
                    break
                if ious[d, g] < best:
                    continue
                best, match = ious[d, g], g
            if match is None:
                continue
            if crowd[match]:
                outcomes[d] = ("ignored", float(ious[d, match]), int(match))
            else:
                matched.add(int(match))
                outcomes[d] = ("tp", float(ious[d, match]), int(match))

    real = np.flatnonzero(~crowd)
    for d, det in enumerate(dets):
        if outcomes[d] is not None:
            continue
        same = real[gt_classes[real] == det["category_id"]]
        other = real[gt_classes[real] != det["category_id"]]
        best_same = int(same[np.argmax(ious[d, same])]) if same.size else None
        best_other = int(other[np.argmax(ious[d, other])]) if other.size else None
        iou_same = ious[d, best_same] if best_same is not None else 0.0
        iou_other = ious[d, best_other] if best_other is not None else 0.0
        if max(iou_same, iou_other) < background_iou:
            if real.size and max(iou_same, iou_other) > 0.0:
                nearest = best_same if iou_same >= iou_other else best_other
                outcomes[d] = ("background", float(ious[d, nearest]), nearest)
            else:
                outcomes[d] = ("background", None, None)
        elif background_iou <= iou_same < foreground_iou:
            outcomes[d] = ("localization", float(iou_same), best_same)
        elif iou_other >= foreground_iou:
            outcomes[d] = ("classification", float(iou_other), best_other)
        elif iou_same >= foreground_iou:
            outcomes[d] = ("duplicate", float(iou_same), best_same)
        else:
            outcomes[d] = ("both", float(iou_other), best_other)
    return outcomes, matched
