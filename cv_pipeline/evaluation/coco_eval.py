"""COCO detection metrics (boxes and instance masks) equal to pycocotools' `COCOeval`, computed with numpy.

`DetectionMetrics(iou_type).compute_metrics(predictions, ground_truth)` gives the twelve COCO
statistics under torchmetrics' names, per-class AP/AR and precision-recall curves.
`DetectionMetrics.evaluate(...)` matches detections to ground truths once and returns a
`DetectionEvaluation`: its `summary(image_weights)` re-accumulates the statistics for a resampled set
of images (a bootstrap draw) in milliseconds, and `per_image()` gives TP/FP/FN counts per image.

The semantics are pycocotools 2.0's `evaluate(); accumulate(); summarize()`, reproduced exactly
(the statistics agree to 1e-6; see the tests), including its less obvious rules:

- a ground truth's `ignore` field has no effect: pycocotools overwrites it with `iscrowd`; crowd
  regions are ignored, may absorb any number of detections, and their IoU is intersection over the
  detection's area;
- ground-truth area ranges use the annotation's `area` field; a detection's area is its box's
  `w * h` when the first prediction carries a non-empty `bbox` (as `COCO.loadRes` decides, also for
  `segm`: drop `bbox` from segm predictions to have mask areas), else its mask area;
- detections are ranked per image and category by a stable sort on descending score (ties keep the
  order of the predictions list), cut to the largest max-detections, and pooled over images in
  ascending image id order before a second stable sort; a ground truth with id 0 counts a detection
  matched to it as a false positive (pycocotools stores matches as ids and reads 0 as "unmatched");
- categories without ground truth (in an area range) are -1 and left out of the means.

Input pycocotools evaluates although it is almost always a mistake gets pycocotools' numbers, a
`DetectionInputWarning` naming the count and the first record, and an entry in the result's
`anomalies` (`strict=True` raises `ValueError` instead, naming the record):

- a detection whose category the ground truth lacks is left out (`unknown_category_detections`);
- ground-truth annotations that repeat an id are each evaluated as the last annotation with that id,
  in its image and category (pycocotools indexes annotations by id; `duplicate_annotation_ids`).

Deliberate differences: inputs are never modified; malformed inputs raise `ValueError` naming the
record and field instead of failing inside pycocotools or being dropped silently (detections of
unknown images, ground-truth annotations of unknown images or categories, non-finite numbers, a
polygon list whose first polygon has fewer than 3 points); `iscrowd` defaults to 0; segm
predictions may also be polygons or uncompressed RLE (converted like ground truth); empty
predictions are allowed (pycocotools' `loadRes` cannot take them) and score 0 wherever there is
ground truth, as torchmetrics does; with custom `max_detections` the `map*` statistics use the
largest value (pycocotools hard-codes 100), as torchmetrics does.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field as dataclass_field
from itertools import chain
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_IOU_TYPES = ("bbox", "segm")
_AREA_RANGES = np.array([[0.0, 1e5**2], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e5**2]])
_NUMBER_TYPES = (int, float, np.integer, np.floating)
_MISSING = object()


def _read_json(source: Any, argument: str) -> Any:
    """The decoded JSON document at `source` when it is a path, else `source` itself."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return json.loads(path.read_bytes())
        except OSError as error:
            raise ValueError(f"{argument}: cannot read {path}: {error}") from error
        except json.JSONDecodeError as error:
            raise ValueError(f"{argument}: {path} is not valid JSON: {error}") from error
    return source


def _records(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list of JSON objects, got {type(value).__name__}")
    return value if isinstance(value, list) else list(value)


def _column(records: list, field: str, where: str, default: Any = _MISSING) -> list:
    """`record[field]` for every record; a missing field or a non-object record raises, naming it."""
    try:
        if default is _MISSING:
            return [record[field] for record in records]
        return [record.get(field, default) for record in records]
    except (KeyError, TypeError, AttributeError):
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise ValueError(
                    f"{where}[{index}] must be a JSON object, got {type(record).__name__}") from None
            if default is _MISSING and field not in record:
                raise ValueError(f"{where}[{index}] has no {field!r} field") from None
        raise


def _numbers(values: list, where: str, field: str) -> np.ndarray:
    """Finite float64 values of a numeric column; anything else raises, naming the record."""
    if not all(isinstance(value, _NUMBER_TYPES) for value in values):
        index = next(i for i, value in enumerate(values) if not isinstance(value, _NUMBER_TYPES))
        raise ValueError(f"{where}[{index}].{field} must be a number, got {values[index]!r}")
    array = np.array(values, dtype=np.float64).reshape(len(values))
    finite = np.isfinite(array)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueError(f"{where}[{index}].{field} is not finite: {values[index]!r}")
    return array


def _boxes(values: list, where: str) -> np.ndarray:
    """Finite (n, 4) float64 `[x, y, w, h]` boxes; a malformed one raises, naming the record."""
    if not values:
        return np.zeros((0, 4))
    try:
        array = np.array(values, dtype=np.float64)
        well_formed = array.shape == (len(values), 4)
    except (TypeError, ValueError):
        well_formed = False
    if not well_formed:
        for index, box in enumerate(values):
            if not (isinstance(box, (list, tuple)) and len(box) == 4
                    and all(isinstance(v, _NUMBER_TYPES) for v in box)):
                raise ValueError(f"{where}[{index}].bbox must be [x, y, width, height], got {box!r}")
        raise ValueError(f"{where}: bbox values must be numbers")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueError(f"{where}[{index}].bbox is not finite: {values[index]!r}")
    return array.reshape(len(values), 4)


def _indices(values: list, lookup: dict, where: str, field: str, known_as: str,
             unknown_ok: bool = False) -> np.ndarray:
    """Positions of `values` in `lookup`; an unknown value raises, naming the record (or is -1 with
    `unknown_ok`)."""
    try:
        positions = [lookup.get(value, -1) for value in values]
    except TypeError:
        positions = [lookup.get(value, -1) if isinstance(value, (int, float, str)) else -1
                     for value in values]
    array = np.array(positions, dtype=np.int64).reshape(len(values))
    unknown = array < 0
    if not unknown_ok and unknown.any():
        raise ValueError(_unknown_message(values, unknown, where, field, known_as))
    return array


def _unknown_message(values: list, unknown: np.ndarray, where: str, field: str, known_as: str) -> str:
    index = int(np.argmax(unknown))
    return f"{where}[{index}].{field} {values[index]!r} is not among {known_as}"


_ANOMALY_MESSAGES = {
    "unknown_category_detections":
        "predictions: {count} detection(s) have a category_id not among the ground truth's categories "
        "({category_ids}); left out of the evaluation, as pycocotools does (first: predictions[{first_index}] "
        "= {first_record!r:.200}); strict=True raises instead",
    "duplicate_annotation_ids":
        "ground_truth annotations: {count} annotation(s) repeat an earlier id ({ids}); as pycocotools does, "
        "each annotation with a repeated id is evaluated as the last annotation with that id (first repeat: "
        "ground_truth annotations[{first_index}] = {first_record!r:.200}); strict=True raises instead",
}


class DetectionInputWarning(UserWarning):
    """Input pycocotools evaluates without a word (and so do we, with the same numbers), but which is
    almost always a mistake: detections of categories the ground truth does not have, repeated
    ground-truth annotation ids."""


def _anomaly(count: int, index: int, record: Any, **details: Any) -> dict:
    """What an evaluation reports about one kind of anomaly: how many records, and the first one
    (its segmentation, possibly large, left out)."""
    if isinstance(record, dict):
        record = {key: value for key, value in record.items() if key != "segmentation"}
    return {"count": int(count), "first_index": int(index), "first_record": record, **details}


def _mask_api():
    from pycocotools import mask

    return mask


_COMPRESSED, _UNCOMPRESSED, _POLYGONS = 0, 1, 2


def _segmentation_kinds(segmentations: list, image_index: np.ndarray, sizes: list, where: str,
                        labels: Sequence[int]) -> np.ndarray:
    """Validate segmentations and classify them the way `COCO.annToRLE` branches; `labels[i]` is
    segmentation i's record number in error messages."""
    kinds = np.zeros(len(segmentations), dtype=np.int8)
    for position, segmentation in enumerate(segmentations):
        if type(segmentation) is dict:
            counts, size = segmentation.get("counts"), segmentation.get("size")
            if type(counts) is str or type(counts) is bytes:
                kind = _COMPRESSED
            elif type(counts) is list:
                kind = _UNCOMPRESSED
            else:
                raise ValueError(f"{where}[{labels[position]}].segmentation must be an RLE with 'counts' "
                                 "(a string or a list of integers) and 'size' [h, w]")
            if not (isinstance(size, (list, tuple)) and len(size) == 2):
                raise ValueError(f"{where}[{labels[position]}].segmentation RLE must have 'size' [h, w]")
        elif type(segmentation) is list and segmentation and type(segmentation[0]) is list:
            if len(segmentation[0]) <= 4:  # pycocotools' frPyObjects fails on (or reads as boxes) such lists
                raise ValueError(f"{where}[{labels[position]}].segmentation: its first polygon has fewer "
                                 "than 3 points")
            kind = _POLYGONS
        else:
            raise ValueError(f"{where}[{labels[position]}].segmentation must be a list of polygons or an "
                             f"RLE, got {segmentation!r:.80}")
        kinds[position] = kind
    polygons = np.flatnonzero(kinds == _POLYGONS).tolist()
    if polygons:
        _check_polygons([segmentations[i] for i in polygons], where, [labels[i] for i in polygons])
    needs_size = np.flatnonzero(kinds != _COMPRESSED)
    if needs_size.size:
        sized = np.array([size is not None for size in sizes], dtype=bool)
        unsized = needs_size[~sized[image_index[needs_size]]]
        if unsized.size:
            raise ValueError(f"{where}[{labels[int(unsized[0])]}] has a polygon or uncompressed RLE "
                             "segmentation, but its image has no height/width")
    return kinds


def _check_polygons(segmentations: list, where: str, labels: Sequence[int]) -> None:
    """Every polygon is a list of finite numbers; else raise, naming the record."""
    try:
        coordinates = np.fromiter(chain.from_iterable(chain.from_iterable(segmentations)), dtype=np.float64)
        valid = bool(np.isfinite(coordinates).all())
    except (TypeError, ValueError):
        valid = False
    if valid:
        return
    for segmentation, label in zip(segmentations, labels):
        for polygon in segmentation:
            if not (type(polygon) is list
                    and all(isinstance(v, _NUMBER_TYPES) and math.isfinite(v) for v in polygon)):
                raise ValueError(f"{where}[{label}].segmentation polygon must be a list of finite numbers")


def _to_rles(segmentations: list, kinds: np.ndarray, image_index: np.ndarray, sizes: list) -> list:
    """Validated segmentations as compressed RLEs, converted exactly as `COCO.annToRLE` does:
    polygons -> `frPyObjects` + `merge` (batched per image), uncompressed RLE -> `frPyObjects`,
    compressed RLE as given."""
    mask = _mask_api()
    result = list(segmentations)
    for position in np.flatnonzero(kinds == _UNCOMPRESSED).tolist():
        height, width = sizes[image_index[position]]
        result[position] = mask.frPyObjects(segmentations[position], height, width)
    polygons = np.flatnonzero(kinds == _POLYGONS)
    if polygons.size == 0:
        return result
    images = image_index[polygons]
    order = np.argsort(images, kind="stable")
    polygons, images = polygons[order].tolist(), images[order]
    bounds = np.flatnonzero(np.r_[True, images[1:] != images[:-1], True]).tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        height, width = sizes[images[start]]
        members = polygons[start:end]
        parts = [len(segmentations[position]) for position in members]
        if max(parts) == 1:
            flat = [segmentations[position][0] for position in members]
            result_members = mask.frPyObjects(flat, height, width)
        else:
            flat = [polygon for position in members for polygon in segmentations[position]]
            converted = mask.frPyObjects(flat, height, width)
            offsets = np.cumsum([0] + parts).tolist()
            result_members = [converted[offsets[i]] if parts[i] == 1 else
                              mask.merge(converted[offsets[i]:offsets[i + 1]]) for i in range(len(members))]
        for position, rle in zip(members, result_members):
            result[position] = rle
    return result


@dataclass
class _GroundTruth:
    image_ids: list
    category_ids: list
    sizes: list  # (height, width) per image, or None
    image: np.ndarray
    category: np.ndarray
    nonzero_id: np.ndarray  # pycocotools reads a match to annotation id 0 as no match
    area: np.ndarray
    crowd: np.ndarray
    boxes: np.ndarray | None
    segmentations: list | None  # as given; converted to RLE only where a detection needs them
    kinds: np.ndarray | None
    anomalies: dict = dataclass_field(default_factory=dict)


def _parse_ground_truth(document: Any, iou_type: str, strict: bool) -> _GroundTruth:
    if not isinstance(document, dict):
        raise ValueError(
            f"ground_truth must be a COCO document (a JSON object), got {type(document).__name__}")
    images = _records(document.get("images", []), "ground_truth images")
    categories = _records(document.get("categories", []), "ground_truth categories")
    annotations = _records(document.get("annotations", []), "ground_truth annotations")

    raw_image_ids = _column(images, "id", "ground_truth images")
    try:
        image_ids = sorted(set(raw_image_ids))
    except TypeError as error:
        raise ValueError(
            f"ground_truth image ids must be comparable (all numbers or all strings): {error}") from error
    if len(image_ids) != len(raw_image_ids):
        raise ValueError("ground_truth images hold duplicate ids")
    image_lookup = {image_id: position for position, image_id in enumerate(image_ids)}
    sizes: list = [None] * len(image_ids)
    for record in images:
        height, width = record.get("height"), record.get("width")
        if isinstance(height, _NUMBER_TYPES) and isinstance(width, _NUMBER_TYPES):
            sizes[image_lookup[record["id"]]] = (int(height), int(width))

    raw_category_ids = _column(categories, "id", "ground_truth categories")
    try:
        category_ids = sorted(set(raw_category_ids))
    except TypeError as error:
        raise ValueError(f"ground_truth category ids must be comparable: {error}") from error
    if len(category_ids) != len(raw_category_ids):
        raise ValueError("ground_truth categories hold duplicate ids")
    category_lookup = {category_id: position for position, category_id in enumerate(category_ids)}

    where = "ground_truth annotations"
    annotation_ids = _column(annotations, "id", where)
    duplicates = None
    if len(set(annotation_ids)) != len(annotation_ids):
        seen: set = set()
        repeated = []
        for index, annotation_id in enumerate(annotation_ids):
            if annotation_id in seen:
                if strict:
                    raise ValueError(f"{where}[{index}].id {annotation_id!r} is a duplicate annotation id")
                repeated.append(index)
            seen.add(annotation_id)
        duplicates = _anomaly(len(repeated), repeated[0], annotations[repeated[0]],
                              ids=list(dict.fromkeys(annotation_ids[i] for i in repeated))[:20])
    image = _indices(_column(annotations, "image_id", where), image_lookup, where, "image_id",
                     "ground_truth image ids")
    category = _indices(_column(annotations, "category_id", where), category_lookup, where, "category_id",
                        "ground_truth category ids")
    area = _numbers(_column(annotations, "area", where), where, "area")
    crowd = np.array([bool(value) for value in _column(annotations, "iscrowd", where, default=0)], dtype=bool)
    crowd = crowd.reshape(len(annotations))
    identifiers = np.array([value != 0 for value in annotation_ids], dtype=bool).reshape(len(annotations))
    boxes = segmentations = kinds = None
    if iou_type == "bbox":
        boxes = _boxes(_column(annotations, "bbox", where), where)
    else:
        segmentations = _column(annotations, "segmentation", where)
        kinds = _segmentation_kinds(segmentations, image, sizes, where, range(len(annotations)))
    if duplicates is None:
        return _GroundTruth(image_ids, category_ids, sizes, image, category, identifiers, area, crowd, boxes,
                            segmentations, kinds)
    # pycocotools indexes annotations by id (the last one with an id wins) and `COCOeval._prepare`
    # collects them per image, in image id order then document order, and loads each by its id:
    # every annotation whose id repeats is evaluated as the last annotation with that id, in its
    # image and category.
    last = {annotation_id: index for index, annotation_id in enumerate(annotation_ids)}
    source = np.array([last[annotation_ids[i]] for i in np.argsort(image, kind="stable").tolist()],
                      dtype=np.int64).reshape(len(annotations))
    return _GroundTruth(
        image_ids, category_ids, sizes, image[source], category[source], identifiers[source], area[source],
        crowd[source], None if boxes is None else boxes[source],
        None if segmentations is None else [segmentations[i] for i in source.tolist()],
        None if kinds is None else kinds[source], {"duplicate_annotation_ids": duplicates})


@dataclass
class _Detections:
    image: np.ndarray
    category: np.ndarray
    score: np.ndarray
    area: np.ndarray
    rank: np.ndarray
    boxes: np.ndarray | None
    rles: list | None
    anomalies: dict = dataclass_field(default_factory=dict)


def _parse_predictions(predictions: Any, truth: _GroundTruth, iou_type: str,
                       max_detections: int, strict: bool) -> _Detections:
    """Detections ranked per (image, category) by descending score, cut to `max_detections` each.

    A detection whose category the ground truth lacks raises with `strict`; else it is left out, as
    pycocotools' `COCOeval` does (it only loads detections of the ground truth's categories)."""
    where = "predictions"
    records = _records(predictions, where)
    count = len(records)
    image = _indices(_column(records, "image_id", where), {i: p for p, i in enumerate(truth.image_ids)},
                     where, "image_id", "ground_truth image ids")
    category_ids = _column(records, "category_id", where)
    category = _indices(category_ids, {c: p for p, c in enumerate(truth.category_ids)}, where, "category_id",
                        "ground_truth category ids", unknown_ok=True)
    unknown = category < 0
    anomalies = {}
    if unknown.any():
        if strict:
            raise ValueError(_unknown_message(category_ids, unknown, where, "category_id",
                                              "ground_truth category ids"))
        first = int(np.argmax(unknown))
        anomalies["unknown_category_detections"] = _anomaly(
            int(unknown.sum()), first, records[first],
            category_ids=list(dict.fromkeys(category_ids[i] for i in np.flatnonzero(unknown).tolist()))[:20])
    score = _numbers(_column(records, "score", where), where, "score")
    first_box = records[0].get("bbox") if count else None
    empty_box = type(first_box) is list and not first_box
    box_areas = iou_type == "bbox" or (first_box is not None and not empty_box)
    boxes = None
    if box_areas:
        try:
            boxes = _boxes(_column(records, "bbox", where), where)
        except ValueError as error:
            if iou_type == "segm":
                raise ValueError(f"{error} (predictions[0] has a bbox, so pycocotools takes every "
                                 "detection's area from its box; give every prediction a bbox, "
                                 "or none)") from None
            raise
    if iou_type == "segm":
        segmentations = _column(records, "segmentation", where)
        kinds = _segmentation_kinds(segmentations, image, truth.sizes, where, range(count))
    if anomalies:
        # every record was validated; only the detections of known categories are ranked and matched
        known = np.flatnonzero(~unknown)
        image, category, score, count = image[known], category[known], score[known], known.size
        if boxes is not None:
            boxes = boxes[known]
        if iou_type == "segm":
            segmentations, kinds = [segmentations[i] for i in known.tolist()], kinds[known]

    group = image * max(len(truth.category_ids), 1) + category
    order = np.lexsort((np.arange(count), -score, group))
    group_sorted = group[order]
    starts = (np.flatnonzero(np.r_[True, group_sorted[1:] != group_sorted[:-1]]) if count
              else np.zeros(0, np.int64))
    rank = np.arange(count) - np.repeat(starts, np.diff(np.r_[starts, count]))
    keep = rank < max_detections
    order, rank = order[keep], rank[keep]

    rles = None
    if iou_type == "segm":
        rles = _to_rles([segmentations[i] for i in order.tolist()], kinds[order], image[order], truth.sizes)
    if box_areas:
        area = boxes[order, 2] * boxes[order, 3]
    else:
        area = _mask_areas(rles)
    return _Detections(image[order], category[order], score[order], area, rank,
                       boxes[order] if iou_type == "bbox" else None, rles, anomalies)


def _mask_areas(rles: list) -> np.ndarray:
    """`pycocotools.mask.area` of each RLE (in chunks: under numpy 2 it fails on lists of more than 255)."""
    area = _mask_api().area
    chunks = [np.asarray(area(rles[i:i + 255]), dtype=np.float64) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks) if chunks else np.zeros(0)


def _pairs_by_group(det_group: np.ndarray, gt_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, ground truth) index pairs sharing a group, ground truths in document order."""
    gt_order = np.argsort(gt_group, kind="stable")
    gt_sorted = gt_group[gt_order]
    low = np.searchsorted(gt_sorted, det_group, side="left")
    counts = np.searchsorted(gt_sorted, det_group, side="right") - low
    total = int(counts.sum())
    pair_det = np.repeat(np.arange(det_group.size), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_gt = gt_order[np.repeat(low, counts) + offsets]
    return pair_det, pair_gt


def _box_iou(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of `det` and `gt` boxes with the operation order of pycocotools' C `bbIou`."""
    det_area = det[:, 2] * det[:, 3]
    gt_area = gt[:, 2] * gt[:, 3]
    width = np.minimum(det[:, 2] + det[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(det[:, 0], gt[:, 0])
    height = np.minimum(det[:, 3] + det[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(det[:, 1], gt[:, 1])
    intersection = width * height
    union = np.where(crowd, det_area, det_area + gt_area - intersection)
    overlapping = (width > 0) & (height > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlapping, intersection / np.where(overlapping, union, 1.0), 0.0)


def _mask_pairs(dets: _Detections, truth: _GroundTruth, n_categories: int, minimum: float):
    """(detection, ground truth, IoU) for every same-group pair with IoU >= `minimum`.

    One `pycocotools.mask.iou` call per image, over the detections and ground truths whose
    (image, category) has both (only those ground truths are converted to RLE); cross-category
    pairs are dropped afterwards.
    """
    iou = _mask_api().iou
    det_group = dets.image * n_categories + dets.category
    gt_group = truth.image * n_categories + truth.category
    gt_order = np.argsort(gt_group, kind="stable")
    gt_sorted = gt_group[gt_order]
    det_sorted = np.sort(det_group)
    candidates = np.flatnonzero(np.searchsorted(gt_sorted, det_group, "right")
                                > np.searchsorted(gt_sorted, det_group, "left"))
    partners = gt_order[np.searchsorted(det_sorted, gt_sorted, "right")
                        > np.searchsorted(det_sorted, gt_sorted, "left")]
    if candidates.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    det_rles = [dets.rles[d] for d in candidates.tolist()]
    gt_rles = _to_rles([truth.segmentations[g] for g in partners.tolist()], truth.kinds[partners],
                       truth.image[partners], truth.sizes)
    crowd = truth.crowd[partners].astype(np.uint8).tolist()
    det_images, gt_images = dets.image[candidates], truth.image[partners]
    det_bounds = np.flatnonzero(np.r_[True, det_images[1:] != det_images[:-1], True])
    gt_bounds = np.flatnonzero(np.r_[True, gt_images[1:] != gt_images[:-1], True])
    blocks = [np.asarray(iou(det_rles[d0:d1], gt_rles[g0:g1], crowd[g0:g1]), dtype=np.float64).ravel()
              for d0, d1, g0, g1 in zip(det_bounds[:-1].tolist(), det_bounds[1:].tolist(),
                                        gt_bounds[:-1].tolist(), gt_bounds[1:].tolist())]
    det_counts, gt_counts = np.diff(det_bounds), np.diff(gt_bounds)
    sizes = det_counts * gt_counts
    block = np.repeat(np.arange(sizes.size), sizes)
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    pair_det = candidates[det_bounds[block] + within // gt_counts[block]]
    pair_gt = partners[gt_bounds[block] + within % gt_counts[block]]
    pair_iou = np.concatenate(blocks)
    keep = (dets.category[pair_det] == truth.category[pair_gt]) & (pair_iou >= minimum)
    return pair_det[keep], pair_gt[keep], pair_iou[keep]


def _match(pair_det, pair_gt, pair_iou, det_rank, gt_regular, gt_crowd, thresholds, n_det,
           n_gt) -> np.ndarray:
    """Greedy COCO matching of every group at once: (T, n_det) index of the matched ground truth, or -1.

    Detections are visited in rank order (step j handles the j-th detection of every group; groups
    share no ground truth, so they do not interact). Each takes, among ground truths not yet taken
    (crowds never are) with IoU >= threshold, a regular one over an ignored one, then the highest IoU,
    then the later in document order: what pycocotools' loop with its `break` picks.
    """
    matched = np.full((thresholds.size, n_det), -1, dtype=np.int64)
    if pair_det.size == 0:
        return matched
    taken = np.zeros((thresholds.size, n_gt), dtype=bool)
    order = np.lexsort((pair_gt, pair_iou, gt_regular[pair_gt], pair_det, det_rank[pair_det]))
    det, gt, iou = pair_det[order], pair_gt[order], pair_iou[order]
    crowd = gt_crowd[gt]
    meets = iou[None, :] >= thresholds[:, None]
    first_of_det = np.r_[True, det[1:] != det[:-1]]
    rank = det_rank[det]
    bounds = np.r_[0, np.flatnonzero(rank[1:] != rank[:-1]) + 1, det.size]
    positions = np.arange(det.size)
    for start, end in zip(bounds[:-1], bounds[1:]):
        gts = gt[start:end]
        valid = meets[:, start:end] & (crowd[start:end] | ~taken[:, gts])
        segments = np.flatnonzero(first_of_det[start:end])
        best = np.maximum.reduceat(np.where(valid, positions[start:end], -1), segments, axis=1)
        t_index, segment = np.nonzero(best >= 0)
        chosen = best[t_index, segment]
        matched[t_index, det[chosen]] = gt[chosen]
        taken[t_index, gt[chosen]] = True
    return matched


def _mean_defined(values: np.ndarray) -> float:
    """pycocotools' summary mean: over entries > -1, or -1 when there are none."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _class_means(values: np.ndarray) -> list[float]:
    """Per column (class), the mean of the entries > -1, or -1 when there are none."""
    defined = values > -1
    counts = defined.sum(axis=0)
    sums = np.where(defined, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), -1.0).tolist()


class DetectionEvaluation:
    """Matches of one evaluation; `summary(image_weights)` re-accumulates for any image weighting.

    `image_ids` (ascending, as pycocotools orders them) and `category_ids` give the order of weights
    and of per-class results.
    """

    def __init__(self, truth: _GroundTruth, dets: _Detections, true_positive: np.ndarray,
                 false_positive: np.ndarray, gt_regular: np.ndarray, iou_thresholds: np.ndarray,
                 recall_thresholds: np.ndarray, max_detections: tuple[int, ...], anomalies: dict | None = None):
        self.image_ids = list(truth.image_ids)
        self.anomalies = dict(anomalies or {})
        self.category_ids = list(truth.category_ids)
        self.iou_thresholds = iou_thresholds
        self.recall_thresholds = recall_thresholds
        self.max_detections = max_detections
        self._threshold_indices: dict[float, np.ndarray] = {}
        self._det_image, self._det_category = dets.image, dets.category
        self._gt_image, self._gt_category = truth.image, truth.category
        self._true_positive = true_positive  # (A, T, n_det) bool: matched and not ignored
        self._false_positive = false_positive  # (A, T, n_det) bool: unmatched and not ignored
        self._gt_regular = gt_regular  # (A, n_gt) bool: not ignored in that area range
        A, M, K = len(_AREA_RANGES), len(max_detections), len(self.category_ids)
        self._gt_cell = (np.arange(A)[:, None] * K + truth.category[None, :]).ravel()

        # One pool of every (area range, max-detections, category) curve, each in pycocotools'
        # accumulation order (descending score, then image, then rank), keeping the detections that
        # count as a true or false positive at some threshold (the rest add no point to a curve).
        # A max-detections that cuts nothing shares the curves of the smaller one.
        order = np.lexsort((dets.rank, dets.image, -dets.score, dets.category))
        index, segment, cell, pool_tp, pool_fp = [], [], [], [], []
        self._curve_set = np.zeros(A * M, dtype=np.int64)
        for a in range(A):
            previous = -1
            for m, limit in enumerate(max_detections):
                ordered = order[dets.rank[order] < limit]
                if ordered.size == previous:
                    self._curve_set[a * M + m] = self._curve_set[a * M + m - 1]
                    continue
                previous = ordered.size
                self._curve_set[a * M + m] = len(index)
                counted = (true_positive[a][:, ordered] | false_positive[a][:, ordered]).any(axis=0)
                ordered = ordered[counted]
                segment.append(len(index) * K + dets.category[ordered])
                index.append(ordered)
                cell.append(a * K + dets.category[ordered])
                pool_tp.append(true_positive[a][:, ordered])
                pool_fp.append(false_positive[a][:, ordered])
        self._curve_sets = len(index)
        self._pool_index = np.concatenate(index)
        self._pool_segment = np.concatenate(segment)
        self._pool_cell = np.concatenate(cell)
        self._pool_tp = np.concatenate(pool_tp, axis=1)
        self._pool_fp = np.concatenate(pool_fp, axis=1)
        counts = np.bincount(self._pool_segment, minlength=self._curve_sets * K)
        self._present = np.flatnonzero(counts)
        self._lengths = counts[self._present]
        self._last = np.cumsum(self._lengths) - 1
        self._first = self._last - self._lengths + 1

    def _threshold_index(self, threshold: float) -> np.ndarray:
        """Indices of `threshold` in `iou_thresholds` (pycocotools' `np.where(iouThr == p.iouThrs)`)."""
        if threshold not in self._threshold_indices:
            self._threshold_indices[threshold] = np.flatnonzero(
                np.isclose(self.iou_thresholds, threshold, rtol=0, atol=1e-12))
        return self._threshold_indices[threshold]

    def _weights(self, image_weights) -> np.ndarray:
        weights = np.asarray(image_weights, dtype=np.float64)
        if weights.shape != (len(self.image_ids),):
            raise ValueError(f"image_weights must have shape ({len(self.image_ids)},) aligned with "
                             f"image_ids, got {weights.shape}")
        if not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("image_weights must be finite and non-negative")
        return weights

    def _cumulative(self, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per-curve cumulative (weighted) true and false positive counts, (T, pool size) each."""
        if weights is None:
            tp = np.cumsum(self._pool_tp, axis=1, dtype=np.float64)
            fp = np.cumsum(self._pool_fp, axis=1, dtype=np.float64)
        else:
            weight = weights[self._det_image[self._pool_index]]
            tp = np.cumsum(self._pool_tp * weight, axis=1)
            fp = np.cumsum(self._pool_fp * weight, axis=1)
        starts = self._first > 0
        for total in (tp, fp):
            before = np.zeros((total.shape[0], self._first.size))
            before[:, starts] = total[:, self._first[starts] - 1]
            total -= np.repeat(before, self._lengths, axis=1)
        return tp, fp

    def accumulate(self, image_weights=None) -> tuple[np.ndarray, np.ndarray]:
        """pycocotools' `eval["precision"]` (T, R, K, A, M) and `eval["recall"]` (T, K, A, M).

        An image with weight k counts as k copies of it (its ground truths and detections).
        """
        weights = None if image_weights is None else self._weights(image_weights)
        recall_thresholds = self.recall_thresholds
        T, R, K, A, M = (self.iou_thresholds.size, recall_thresholds.size, len(self.category_ids),
                         len(_AREA_RANGES), len(self.max_detections))
        S = self._curve_sets * K
        regular = self._gt_regular.ravel()
        if weights is not None:
            regular = regular * np.tile(weights[self._gt_image], A)
        positives = np.bincount(self._gt_cell, weights=regular, minlength=A * K).astype(np.float64)
        undefined = (positives == 0).reshape(A, K).T  # (K, A): no ground truth, -1 as in pycocotools
        best = np.zeros((T, S, R + 1))
        recall = np.zeros((T, S))
        if self._pool_index.size:
            tp, fp = self._cumulative(weights)
            rc = tp / np.where(positives > 0, positives, 1.0)[self._pool_cell]
            pr = tp / (fp + tp + np.spacing(1))
            covered = np.searchsorted(recall_thresholds, rc.ravel(), side="right").reshape(rc.shape)
            key = ((np.arange(T)[:, None] * S + self._pool_segment[None, :]) * (R + 1) + covered).ravel()
            runs = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            best.reshape(-1)[key[runs]] = np.maximum.reduceat(pr.ravel(), runs)
            recall[:, self._present] = rc[:, self._last]
        # precision at recall threshold r: the best precision at any recall >= r (pycocotools' envelope)
        interpolated = np.maximum.accumulate(best[:, :, ::-1], axis=2)[:, :, -2::-1]
        interpolated = interpolated.reshape(T, self._curve_sets, K, R)[:, self._curve_set]
        precision = interpolated.reshape(T, A, M, K, R).transpose(0, 4, 3, 1, 2).copy()
        recall = recall.reshape(T, self._curve_sets, K)[:, self._curve_set]
        recall = recall.reshape(T, A, M, K).transpose(0, 3, 1, 2).copy()
        precision[:, :, undefined] = -1.0
        recall[:, undefined] = -1.0
        return precision, recall

    def summary(self, image_weights=None, *, curves: bool = True) -> dict:
        """The COCO statistics (torchmetrics' names), per-class AP/AR, and precision-recall curves.

        `image_weights` (aligned with `image_ids`, non-negative; default all 1) weights each image:
        integer k counts the image k times, as a bootstrap resample drawn with replacement does.
        """
        precision, recall = self.accumulate(image_weights)
        limits = self.max_detections
        last = len(limits) - 1

        def average_precision(threshold=None, area=0):
            values = precision if threshold is None else precision[self._threshold_index(threshold)]
            return _mean_defined(values[:, :, :, area, last])

        def average_recall(limit_index, area=0):
            return _mean_defined(recall[:, :, area, limit_index])

        result: dict[str, Any] = {
            "map": average_precision(),
            "map_50": average_precision(0.5),
            "map_75": average_precision(0.75),
            "map_small": average_precision(area=1),
            "map_medium": average_precision(area=2),
            "map_large": average_precision(area=3),
        }
        for index, limit in enumerate(limits):
            result[f"mar_{limit}"] = average_recall(index)
        result["mar_small"] = average_recall(last, 1)
        result["mar_medium"] = average_recall(last, 2)
        result["mar_large"] = average_recall(last, 3)
        K = len(self.category_ids)
        result["map_per_class"] = _class_means(precision[:, :, :, 0, last].reshape(-1, K))
        result[f"mar_{limits[last]}_per_class"] = _class_means(recall[:, :, 0, last])
        result["classes"] = list(self.category_ids)
        result["anomalies"] = {kind: dict(anomaly) for kind, anomaly in self.anomalies.items()}
        result["precision"] = precision
        result["recall"] = recall
        if curves:
            result["pr_curves"] = self._pr_curves(precision)
        return result

    def _pr_curves(self, precision: np.ndarray) -> list[dict]:
        """Per class at IoU 0.5 and 0.75 (those present), area all, the largest max-detections."""
        recall_points = self.recall_thresholds.tolist()
        curves = []
        for threshold in (0.5, 0.75):
            hits = self._threshold_index(threshold)
            if hits.size == 0:
                continue
            table = precision[hits[0], :, :, 0, -1].T.tolist()
            curves.extend({"category_id": category_id, "iou_threshold": threshold, "recall": recall_points,
                           "precision": values} for category_id, values in zip(self.category_ids, table))
        return curves

    def per_image(self, iou_threshold: float = 0.5) -> list[dict]:
        """TP/FP/FN per image and per image-and-class at `iou_threshold`, area all, largest max-detections.

        Detections matched to crowd regions and crowd ground truths are ignored, as in the metrics;
        `fn` counts the regular ground truths no detection matched.
        """
        hits = self._threshold_index(iou_threshold)
        if hits.size == 0:
            raise ValueError(f"iou_threshold {iou_threshold} is not among iou_thresholds "
                             f"{self.iou_thresholds.tolist()}")
        t = int(hits[0])
        I, K = len(self.image_ids), len(self.category_ids)
        det_cell = self._det_image * K + self._det_category
        gt_cell = self._gt_image * K + self._gt_category
        tp = np.bincount(det_cell, weights=self._true_positive[0][t], minlength=I * K).astype(np.int64)
        fp = np.bincount(det_cell, weights=self._false_positive[0][t], minlength=I * K).astype(np.int64)
        positives = np.bincount(gt_cell, weights=self._gt_regular[0], minlength=I * K).astype(np.int64)
        fn = positives - tp
        present = (np.bincount(det_cell, minlength=I * K) + np.bincount(gt_cell, minlength=I * K)) > 0
        per_class: list[list[dict]] = [[] for _ in range(I)]
        for cell in np.flatnonzero(present).tolist():
            image, k = divmod(cell, K)
            per_class[image].append({"category_id": self.category_ids[k], "tp": int(tp[cell]),
                                     "fp": int(fp[cell]), "fn": int(fn[cell])})
        totals = ([counts.reshape(I, K).sum(axis=1).tolist() for counts in (tp, fp, fn)] if K
                  else [[0] * I] * 3)
        return [{"image_id": image_id, "tp": totals[0][i], "fp": totals[1][i], "fn": totals[2][i],
                 "per_class": per_class[i]} for i, image_id in enumerate(self.image_ids)]


class DetectionMetrics:
    """COCO mAP/mAR of detections against a COCO ground-truth document, equal to pycocotools' COCOeval.

    `iou_type` is "bbox" (predictions carry `bbox`) or "segm" (predictions carry `segmentation`,
    an RLE or polygons). Empty predictions give 0 wherever there is ground truth (torchmetrics'
    choice; pycocotools cannot load them) and -1 where there is none. Detections of categories the
    ground truth lacks and repeated ground-truth annotation ids are evaluated as pycocotools does and
    reported (a `DetectionInputWarning`, the result's `anomalies`); `strict=True` refuses them.
    """

    def __init__(self, iou_type: str = "bbox", max_detections: Sequence[int] = (1, 10, 100),
                 iou_thresholds: Sequence[float] | None = None,
                 recall_thresholds: Sequence[float] | None = None, *, strict: bool = False):
        if iou_type not in _IOU_TYPES:
            raise ValueError(f"iou_type must be one of {list(_IOU_TYPES)}, got {iou_type!r}")
        self.iou_type = iou_type
        self.strict = bool(strict)
        limits = tuple(max_detections)
        if len(limits) != 3 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in limits):
            raise ValueError(f"max_detections must be three positive integers, got {max_detections!r}")
        self.max_detections = tuple(sorted(int(v) for v in limits))
        self.iou_thresholds = self._thresholds(
            iou_thresholds, np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True),
            "iou_thresholds")
        self.recall_thresholds = self._thresholds(
            recall_thresholds, np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1, endpoint=True),
            "recall_thresholds")

    @staticmethod
    def _thresholds(values, default: np.ndarray, argument: str) -> np.ndarray:
        if values is None:
            return default
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.size == 0 or not np.isfinite(array).all() or (array < 0).any() or (array > 1).any() \
                or (np.diff(array) <= 0).any():
            raise ValueError(f"{argument} must be increasing values in [0, 1], got {values!r}")
        return array

    def evaluate(self, predictions, ground_truth) -> DetectionEvaluation:
        """Match `predictions` (a COCO results list or a path to one) to `ground_truth` (a COCO
        document or a path to one) once, for `summary()`, bootstrap re-weighting and `per_image()`."""
        truth = _parse_ground_truth(_read_json(ground_truth, "ground_truth"), self.iou_type, self.strict)
        dets = _parse_predictions(_read_json(predictions, "predictions"), truth, self.iou_type,
                                  self.max_detections[-1], self.strict)
        anomalies = {**truth.anomalies, **dets.anomalies}
        for kind, anomaly in anomalies.items():
            warnings.warn(_ANOMALY_MESSAGES[kind].format(**anomaly), DetectionInputWarning, stacklevel=2)
        K = len(truth.category_ids)
        thresholds = np.minimum(self.iou_thresholds, 1 - 1e-10)
        minimum = float(thresholds.min())
        if self.iou_type == "bbox":
            pair_det, pair_gt = _pairs_by_group(dets.image * K + dets.category,
                                                truth.image * K + truth.category)
            pair_iou = _box_iou(dets.boxes[pair_det], truth.boxes[pair_gt], truth.crowd[pair_gt])
            close = pair_iou >= minimum
            pair_det, pair_gt, pair_iou = pair_det[close], pair_gt[close], pair_iou[close]
        else:
            pair_det, pair_gt, pair_iou = _mask_pairs(dets, truth, K, minimum)

        n_det, n_gt = dets.score.size, truth.area.size
        A, T = len(_AREA_RANGES), thresholds.size
        true_positive = np.zeros((A, T, n_det), dtype=bool)
        false_positive = np.zeros((A, T, n_det), dtype=bool)
        gt_regular = np.zeros((A, n_gt), dtype=bool)
        for a, (low, high) in enumerate(_AREA_RANGES):
            gt_ignored = truth.crowd | (truth.area < low) | (truth.area > high)
            gt_regular[a] = ~gt_ignored
            matched = _match(pair_det, pair_gt, pair_iou, dets.rank, gt_regular[a], truth.crowd, thresholds,
                             n_det, n_gt)
            recorded = np.r_[truth.nonzero_id, False][matched]  # index -1 (no match) reads the False pad
            det_outside = (dets.area < low) | (dets.area > high)
            ignored = np.r_[gt_ignored, False][matched] | (~recorded & det_outside[None, :])
            true_positive[a] = recorded & ~ignored
            false_positive[a] = ~recorded & ~ignored
        return DetectionEvaluation(truth, dets, true_positive, false_positive, gt_regular,
                                   self.iou_thresholds, self.recall_thresholds, self.max_detections, anomalies)

    def compute_metrics(self, predictions, ground_truth) -> dict:
        """`evaluate(predictions, ground_truth).summary()`: the twelve COCO statistics (`map`, `map_50`,
        `map_75`, `map_small|medium|large`, `mar_1|10|100`, `mar_small|medium|large`; -1 where
        pycocotools gives -1), `map_per_class` and `mar_100_per_class` aligned with `classes`,
        `anomalies` (empty unless the input had some; see the class), `precision` (T, R, K, A, M) and
        `recall` (T, K, A, M) arrays, and `pr_curves`."""
        return self.evaluate(predictions, ground_truth).summary()
