import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cv_pipeline.evaluation.error_analysis import (
    ERROR_TYPES,
    analyze_detection_errors,
    object_size,
)

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]


def document(annotations, image_ids=(1,), size=(640, 480)):
    width, height = size
    for index, annotation in enumerate(annotations, start=1):
        annotation.setdefault("id", index)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    return {
        "images": [{"id": i, "width": width, "height": height, "file_name": f"{i}.jpg"} for i in image_ids],
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def outcomes(analysis):
    return [(d.category_id, d.score, d.outcome) for d in analysis.detections]


BOX = [0, 0, 100, 100]


def test_each_error_type_on_a_hand_built_image():
    gt = document([{"image_id": 1, "category_id": 1, "bbox": BOX}])
    results = [
        det(1, 1, BOX, 0.9),  # true positive
        det(1, 1, [2, 2, 98, 98], 0.8),  # IoU 0.96 with the already matched object
        det(1, 1, [0, 0, 100, 30], 0.7),  # IoU 0.3, right class
        det(1, 2, [0, 0, 100, 100], 0.6),  # IoU 1.0, wrong class
        det(1, 3, [0, 0, 100, 30], 0.5),  # IoU 0.3, wrong class
        det(1, 1, [300, 300, 20, 20], 0.4),  # nowhere near anything
    ]
    analysis = analyze_detection_errors(gt, results)
    assert outcomes(analysis) == [
        (1, 0.9, "tp"), (1, 0.8, "duplicate"), (1, 0.7, "localization"),
        (2, 0.6, "classification"), (3, 0.5, "both"), (1, 0.4, "background"),
    ]  # fmt: skip
    assert analysis.detections[0].iou == 1.0 and analysis.detections[0].annotation_id == 1
    assert analysis.detections[2].iou == pytest.approx(0.3)
    assert analysis.detections[5].iou is None
    counts = analysis.counts()
    assert counts == {
        "tp": 1, "fp": 5, "duplicate": 1, "localization": 1, "classification": 1, "both": 1,
        "background": 1, "missed": 0, "ignored": 0,
    }  # fmt: skip


def test_localization_takes_precedence_when_a_detection_also_covers_another_class():
    gt = document([
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 30]},
    ])  # fmt: skip
    analysis = analyze_detection_errors(gt, [det(1, 1, [0, 0, 100, 30], 0.9)])
    assert [d.outcome for d in analysis.detections] == ["localization"]
    assert analysis.counts()["missed"] == 2


def test_missed_objects_and_recall_by_size():
    gt = document([
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},  # small
        {"image_id": 1, "category_id": 2, "bbox": [200, 200, 50, 50]},  # medium
        {"image_id": 1, "category_id": 2, "bbox": [300, 300, 150, 150]},  # large
    ])  # fmt: skip
    analysis = analyze_detection_errors(gt, [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 2, [300, 300, 150, 150], 0.8)])
    assert [(m.annotation_id, m.size) for m in analysis.missed] == [(2, "medium")]
    breakdown = analysis.breakdown_by_size()
    assert breakdown["small"] == {"num_gt": 1, "detected": 1, "missed": 0, "recall": 1.0}
    assert breakdown["medium"] == {"num_gt": 1, "detected": 0, "missed": 1, "recall": 0.0}
    assert breakdown["large"]["recall"] == 1.0
    per_size = analysis.per_size_counts()
    assert per_size["small"]["tp"] == 1 and per_size["medium"]["missed"] == 1 and per_size["large"]["tp"] == 1
    per_class = analysis.per_class_counts()
    assert per_class[1]["num_gt"] == 1 and per_class[1]["tp"] == 1
    assert per_class[2]["num_gt"] == 2 and per_class[2]["tp"] == 1 and per_class[2]["missed"] == 1
    assert per_class[3] == {"num_gt": 0, "tp": 0, "fp": 0, **{e: 0 for e in ERROR_TYPES}, "missed": 0, "ignored": 0}
    rows = {row["class_id"]: row for row in analysis.per_class_rows()}
    assert rows[2] == {
        "class_id": 2, "class_name": "dog", "num_gt": 2, "num_pred": 1, "tp": 1, "fp": 0,
        **{f"fp_{e}": 0 for e in ERROR_TYPES}, "missed": 1, "ignored": 0,
    }  # fmt: skip


def test_object_size_bounds_follow_coco():
    assert object_size(32**2) == "small"
    assert object_size(32**2 + 1) == "medium"
    assert object_size(96**2) == "medium"
    assert object_size(96**2 + 1) == "large"


def test_detections_inside_a_crowd_region_are_ignored():
    gt = document([
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 200, 200], "iscrowd": 1},
        {"image_id": 1, "category_id": 1, "bbox": [300, 300, 50, 50]},
    ])  # fmt: skip
    results = [
        det(1, 1, [10, 10, 50, 50], 0.9),  # wholly inside the crowd: intersection / own area = 1
        det(1, 1, [20, 20, 50, 50], 0.8),  # a crowd absorbs any number of detections
        det(1, 1, [150, 150, 100, 100], 0.7),  # a quarter inside: not absorbed
        det(1, 1, [300, 300, 50, 50], 0.6),
    ]
    analysis = analyze_detection_errors(gt, results)
    assert [d.outcome for d in analysis.detections] == ["ignored", "ignored", "background", "tp"]
    counts = analysis.counts()
    assert counts["ignored"] == 2 and counts["fp"] == 1 and counts["missed"] == 0
    assert analysis.per_class_counts()[1]["num_gt"] == 1  # the crowd is not an object to find


def test_empty_images_and_no_predictions():
    gt = document([{"image_id": 2, "category_id": 1, "bbox": BOX}], image_ids=(1, 2, 3))
    analysis = analyze_detection_errors(gt, [])
    assert analysis.counts() == {
        "tp": 0, "fp": 0, **{e: 0 for e in ERROR_TYPES}, "missed": 1, "ignored": 0,
    }  # fmt: skip
    rows = analysis.per_image()
    assert [row["image_id"] for row in rows] == [1, 2, 3]
    assert rows[0] == {
        "image_id": 1, "num_gt": 0, "num_pred": 0, "tp": 0, "fp": 0, **{f"fp_{e}": 0 for e in ERROR_TYPES},
        "missed": 0, "ignored": 0, "errors": 0, "error_score": 0.0,
    }  # fmt: skip
    assert rows[1]["missed"] == 1 and rows[1]["error_score"] == 1.0

    with_background = analyze_detection_errors(gt, [det(3, 2, BOX, 0.5)])
    assert [d.outcome for d in with_background.detections] == ["background"]
    assert with_background.per_image()[2]["fp_background"] == 1

    nothing = analyze_detection_errors({"images": [], "annotations": [], "categories": CATEGORIES}, [])
    assert nothing.counts()["tp"] == 0 and nothing.per_image() == [] and nothing.worst_images(3) == []


def test_per_image_rows_and_worst_images():
    gt = document(
        [
            {"image_id": 1, "category_id": 1, "bbox": BOX},
            {"image_id": 2, "category_id": 1, "bbox": BOX},
            {"image_id": 2, "category_id": 2, "bbox": [200, 200, 40, 40]},
            {"image_id": 3, "category_id": 1, "bbox": BOX},
        ],
        image_ids=(1, 2, 3, 4),
    )
    results = [
        det(1, 1, BOX, 0.9),
        det(2, 1, [0, 0, 100, 30], 0.9),  # localization; both objects of image 2 missed
        det(3, 1, BOX, 0.9),
        det(3, 1, BOX, 0.8),  # duplicate
        det(4, 1, BOX, 0.5),  # background
        det(4, 2, BOX, 0.4),  # background
    ]
    analysis = analyze_detection_errors(gt, results)
    rows = {row["image_id"]: row for row in analysis.per_image()}
    assert rows[2]["fp_localization"] == 1 and rows[2]["missed"] == 2 and rows[2]["errors"] == 3
    assert rows[3]["tp"] == 1 and rows[3]["fp_duplicate"] == 1 and rows[3]["error_score"] == 0.5
    assert rows[4]["fp_background"] == 2 and rows[4]["error_score"] == 1.0
    assert [row["image_id"] for row in analysis.worst_images(3)] == [2, 4, 3]
    assert [row["image_id"] for row in analysis.worst_images(10)] == [2, 4, 3, 1]
    with pytest.raises(ValueError, match="n must be"):
        analysis.worst_images(-1)


def test_min_score_and_the_top_detections_per_image():
    gt = document([{"image_id": 1, "category_id": 1, "bbox": BOX}])
    many = [det(1, 1, [300 + i, 300, 10, 10], 0.5 + i / 1000) for i in range(105)]
    analysis = analyze_detection_errors(gt, many + [det(1, 1, BOX, 0.01)])
    assert len(analysis.detections) == 100
    assert min(d.score for d in analysis.detections) == pytest.approx(0.505)
    assert analysis.counts()["missed"] == 1  # the true positive scored too low to make the top 100

    filtered = analyze_detection_errors(gt, [det(1, 1, BOX, 0.2), det(1, 1, [300, 300, 5, 5], 0.1)], min_score=0.15)
    assert [d.outcome for d in filtered.detections] == ["tp"]
    assert len(analyze_detection_errors(gt, many, max_detections=5).detections) == 5


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def test_masks_are_compared_for_segm():
    square = [[10, 10, 60, 10, 60, 60, 10, 60]]
    gt = {
        "images": [{"id": 1, "width": 80, "height": 80}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
             "segmentation": square, "iscrowd": 0},
        ],
        "categories": CATEGORIES,
    }  # fmt: skip
    mask = np.zeros((80, 80), dtype=bool)
    mask[10:60, 10:60] = True
    half = np.zeros_like(mask)
    half[10:60, 10:25] = True
    results = [
        {"image_id": 1, "category_id": 1, "segmentation": rle(mask), "score": 0.9},
        {"image_id": 1, "category_id": 2, "segmentation": rle(mask), "score": 0.8},
        {"image_id": 1, "category_id": 1, "segmentation": rle(half), "score": 0.7},
    ]
    analysis = analyze_detection_errors(gt, results, iou_type="segm")
    assert [d.outcome for d in analysis.detections] == ["tp", "classification", "localization"]
    assert analysis.detections[0].iou > 0.9
    assert analysis.detections[2].area == 50 * 15


def random_case(seed, num_images=25):
    rng = np.random.default_rng(seed)
    annotations, results = [], []
    for image_id in range(1, num_images + 1):
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(4, 140, 2)
            crowd = int(rng.uniform() < 0.1)
            category = int(rng.integers(1, 4))
            annotations.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                                "iscrowd": crowd, "area": w * h})  # fmt: skip
            for _ in range(rng.integers(0, 4)):
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
                label = category if rng.uniform() < 0.8 else int(rng.integers(1, 4))
                results.append(det(image_id, label, box, float(rng.uniform())))
        for _ in range(rng.integers(0, 5)):
            results.append(det(image_id, int(rng.integers(1, 4)), [*rng.uniform(0, 500, 2), *rng.uniform(4, 100, 2)],
                               float(rng.uniform())))  # fmt: skip
    return document(annotations, image_ids=range(1, num_images + 1)), results


def cocoeval_matches(gt_doc, results):
    """(true-positive count, ignored count, matched annotation ids) from COCOeval at IoU 0.5, all areas, 100 dets."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt_doc)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.evaluate()
    assert evaluation.params.iouThrs[0] == 0.5 and evaluation.params.maxDets[-1] == 100
    all_areas = evaluation.params.areaRng[0]
    tp = ignored = 0
    matched = set()
    for image in evaluation.evalImgs:
        if image is None or image["aRng"] != all_areas or image["maxDet"] != 100:
            continue
        dt_matches, dt_ignore = image["dtMatches"][0], image["dtIgnore"][0].astype(bool)
        tp += int(((dt_matches > 0) & ~dt_ignore).sum())
        ignored += int(dt_ignore.sum())
        gt_ignore = np.asarray(image["gtIgnore"], dtype=bool)
        matched |= {g for g, m in zip(image["gtIds"], image["gtMatches"][0]) if m > 0} - {
            g for g, ig in zip(image["gtIds"], gt_ignore) if ig
        }
    return tp, ignored, matched


@pytest.mark.parametrize("seed", [0, 1])
def test_true_positives_agree_with_cocoeval(seed):
    gt_doc, results = random_case(seed)
    analysis = analyze_detection_errors(gt_doc, results)
    tp, ignored, matched = cocoeval_matches(gt_doc, results)
    counts = analysis.counts()
    assert counts["tp"] > 10 and counts["fp"] > 10 and counts["ignored"] > 0
    assert counts["tp"] == tp
    assert counts["ignored"] == ignored
    assert {gt.annotation_id for gt in analysis.ground_truths if gt.detected} == matched
    assert counts["tp"] + counts["fp"] + counts["ignored"] == len(results)


def test_invalid_inputs_name_the_record():
    gt = document([{"image_id": 1, "category_id": 1, "bbox": BOX}])
    with pytest.raises(ValueError, match=r"results\[0\] refers to image_id 9"):
        analyze_detection_errors(gt, [det(9, 1, BOX, 0.5)])
    with pytest.raises(ValueError, match=r"results\[0\] refers to category_id 7"):
        analyze_detection_errors(gt, [det(1, 7, BOX, 0.5)])
    with pytest.raises(ValueError, match=r"results\[0\] field 'score'"):
        analyze_detection_errors(gt, [det(1, 1, BOX, float("nan"))])
    with pytest.raises(ValueError, match=r"results\[0\] field 'bbox'"):
        analyze_detection_errors(gt, [det(1, 1, [0, 0, 10], 0.5)])
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1\) field 'area'"):
        analyze_detection_errors(document([{"image_id": 1, "category_id": 1, "bbox": BOX, "area": None}]), [])
    with pytest.raises(ValueError, match="iou_type"):
        analyze_detection_errors(gt, [], iou_type="keypoints")
    with pytest.raises(ValueError, match="background_iou"):
        analyze_detection_errors(gt, [], background_iou=0.6)
    with pytest.raises(ValueError, match="'images'"):
        analyze_detection_errors({"annotations": [], "categories": []}, [])
    with pytest.raises(ValueError, match="segmentation"):
        analyze_detection_errors(gt, [det(1, 1, BOX, 0.5)], iou_type="segm")
