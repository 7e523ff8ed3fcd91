"""`DetectionMetrics` against pycocotools' COCOeval on randomized COCO documents, bootstrap weights,
per-image counts and input validation."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cv_pipeline.evaluation.coco_eval import DetectionInputWarning, DetectionMetrics

STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def _polygon(rng, x, y, w, h):
    vertices = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radius = rng.uniform(0.6, 1.0, vertices)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return np.round(np.stack([xs, ys], axis=1).ravel(), 1).tolist()


def _uncompressed(rle):
    binary = mask_utils.decode(rle).ravel(order="F")
    bounds = np.r_[0, np.flatnonzero(np.diff(binary)) + 1, binary.size]
    counts = np.diff(bounds).tolist()
    return {"size": list(rle["size"]), "counts": ([0] + counts) if binary[0] else counts}


def random_case(seed, n_images=30, n_categories=8, score_decimals=2, crowded_image=False):
    """(ground truth, bbox results, segm results): crowds (uncompressed and compressed RLE), empty
    images, images without predictions, a category without ground truth, multi-part polygons,
    score ties (`score_decimals`), all three area ranges; `crowded_image` adds 130 detections of
    one class to one image (past maxDets 100)."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1, 10 * n_images), size=n_images, replace=False).tolist()
    category_ids = sorted(rng.choice(np.arange(1, 5 * n_categories), size=n_categories,
                                     replace=False).tolist())
    images, annotations, bbox_results, segm_results = [], [], [], []
    annotation_id = 1
    for position, image_id in enumerate(image_ids):
        width, height = int(rng.integers(120, 260)), int(rng.integers(120, 260))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.png"})
        objects = 0 if position % 7 == 3 else int(rng.poisson(4))
        detections = []
        for _ in range(objects):
            side = float(rng.choice([rng.uniform(4, 30), rng.uniform(34, 90),
                                     rng.uniform(100, 0.9 * min(width, height))]))
            w = min(side * rng.uniform(0.6, 1.5), width - 2.0)
            h = min(side * rng.uniform(0.6, 1.5), height - 2.0)
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            category = int(rng.choice(category_ids[:-1]))  # the last category never has ground truth
            parts = [_polygon(rng, x, y, w, h)]
            if rng.random() < 0.15:
                parts.append(_polygon(rng, x + w * 0.1, y + h * 0.1, w * 0.4, h * 0.4))
            crowd = rng.random() < 0.08
            rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
            if crowd:
                segmentation = (_uncompressed(rle) if annotation_id % 2 else
                                {"size": rle["size"], "counts": rle["counts"].decode()})
            else:
                segmentation = parts
            area = float(mask_utils.area(rle)) if rng.random() < 0.5 else round(w * h * 0.8, 2)
            annotations.append({"id": annotation_id, "image_id": image_id, "category_id": category,
                                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": area,
                                "iscrowd": int(crowd), "segmentation": segmentation})
            annotation_id += 1
            for _copy in range(int(rng.random() < 0.75) + int(rng.random() < 0.15)):
                found = category if rng.random() > 0.1 else int(rng.choice(category_ids))
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                detections.append((found, x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0),
                                   max(h + jitter[3], 1.0), None))
        for _ in range(int(rng.poisson(1.5))):
            w, h = float(rng.uniform(5, width / 2)), float(rng.uniform(5, height / 2))
            detections.append((int(rng.choice(category_ids)), float(rng.uniform(0, width - w)),
                               float(rng.uniform(0, height - h)), w, h, None))
        if crowded_image and position == 1:
            for _ in range(130):
                w, h = float(rng.uniform(5, 60)), float(rng.uniform(5, 60))
                detections.append((category_ids[0], float(rng.uniform(0, width - w)),
                                   float(rng.uniform(0, height - h)), w, h,
                                   round(0.05 + 0.9 * float(rng.random()), 2)))
            annotations.append({"id": annotation_id, "image_id": image_id, "category_id": category_ids[0],
                                "bbox": [10.0, 10.0, 50.0, 40.0], "area": 2000.0, "iscrowd": 0,
                                "segmentation": [[10.0, 10.0, 60.0, 10.0, 60.0, 50.0, 10.0, 50.0]]})
            annotation_id += 1
            detections.append((category_ids[0], 10.0, 10.0, 50.0, 40.0, 0.01))  # ranked past 100: dropped
        if position % 5 == 2:
            continue  # an image without predictions
        for category, x, y, w, h, score in detections:
            if score is None:
                score = round(float(rng.random()), score_decimals) if score_decimals else float(rng.random())
            bbox_results.append({"image_id": image_id, "category_id": category,
                                 "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                 "score": score})
            rle = mask_utils.frPyObjects([_polygon(rng, x, y, w, h)], height, width)[0]
            segm_results.append({"image_id": image_id, "category_id": category,
                                 "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                                 "score": score})
    order = rng.permutation(len(bbox_results))
    bbox_results = [bbox_results[i] for i in order]
    segm_results = [segm_results[i] for i in order]
    categories = [{"id": c, "name": f"c{c}"} for c in rng.permutation(category_ids).tolist()]
    truth = {"images": images, "annotations": annotations, "categories": categories}
    return truth, bbox_results, segm_results


def pycocotools_eval(ground_truth, results, iou_type):
    """pycocotools' COCOeval after evaluate/accumulate/summarize, on copies of the inputs."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_equal_to_pycocotools(ours, evaluator):
    for name, expected in zip(STAT_NAMES, evaluator.stats):
        assert ours[name] == pytest.approx(float(expected), abs=1e-6), name
    np.testing.assert_allclose(ours["precision"], evaluator.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], evaluator.eval["recall"], rtol=0, atol=1e-12)
    precision = evaluator.eval["precision"]
    for k, category_id in enumerate(ours["classes"]):
        values = precision[:, :, k, 0, -1]
        expected = float(np.mean(values[values > -1])) if (values > -1).any() else -1.0
        assert ours["map_per_class"][k] == pytest.approx(expected, abs=1e-9), category_id


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_randomized_documents_equal_pycocotools(seed, iou_type):
    truth, bbox_results, segm_results = random_case(seed, n_categories=6 + 4 * seed, crowded_image=seed == 1)
    results = bbox_results if iou_type == "bbox" else segm_results
    ours = DetectionMetrics(iou_type).compute_metrics(results, truth)
    reference = pycocotools_eval(truth, results, iou_type)
    assert ours["classes"] == sorted(c["id"] for c in truth["categories"])
    assert ours["map_per_class"][-1] == -1
    assert_equal_to_pycocotools(ours, reference)


def test_many_categories_and_unrounded_scores():
    truth, bbox_results, _ = random_case(11, n_images=40, n_categories=90, score_decimals=None)
    assert_equal_to_pycocotools(DetectionMetrics("bbox").compute_metrics(bbox_results, truth),
                                pycocotools_eval(truth, bbox_results, "bbox"))


def test_all_scores_tied():
    truth, bbox_results, segm_results = random_case(5, score_decimals=0)
    for result in bbox_results + segm_results:
        result["score"] = 0.5
    for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
        assert_equal_to_pycocotools(DetectionMetrics(iou_type).compute_metrics(results, truth),
                                    pycocotools_eval(truth, results, iou_type))


def test_segm_results_with_boxes_take_box_areas_like_pycocotools():
    truth, bbox_results, segm_results = random_case(6)
    with_boxes = [dict(segm, bbox=box["bbox"]) for segm, box in zip(segm_results, bbox_results)]
    ours = DetectionMetrics("segm").compute_metrics(with_boxes, truth)
    assert_equal_to_pycocotools(ours, pycocotools_eval(truth, with_boxes, "segm"))
    with pytest.raises(ValueError, match=r"predictions\[3\].*bbox"):
        DetectionMetrics("segm").compute_metrics(with_boxes[:3] + segm_results[3:], truth)


def test_polygon_and_uncompressed_detections_equal_their_compressed_rle():
    truth, _, segm_results = random_case(7)
    sizes = {image["id"]: (image["height"], image["width"]) for image in truth["images"]}
    rng = np.random.default_rng(0)
    polygons, mixed = [], []
    for index, result in enumerate(segm_results):
        height, width = sizes[result["image_id"]]
        box = mask_utils.toBbox(result["segmentation"])
        polygon = [_polygon(rng, *box)]
        polygons.append(dict(result, segmentation=polygon))
        rle = mask_utils.merge(mask_utils.frPyObjects(polygon, height, width))
        compressed = {"size": rle["size"], "counts": rle["counts"].decode()}
        mixed.append(dict(result, segmentation=_uncompressed(rle) if index % 2 else compressed))
    metrics = DetectionMetrics("segm")
    from_polygons = metrics.compute_metrics(polygons, truth)
    from_rles = metrics.compute_metrics(mixed, truth)
    np.testing.assert_array_equal(from_polygons["precision"], from_rles["precision"])
    compressed_only = [dict(r, segmentation=mask_utils.merge(mask_utils.frPyObjects(
        p["segmentation"], *sizes[r["image_id"]]))) for r, p in zip(segm_results, polygons)]
    for result in compressed_only:
        segmentation = result["segmentation"]
        result["segmentation"] = dict(segmentation, counts=segmentation["counts"].decode())
    assert_equal_to_pycocotools(from_polygons, pycocotools_eval(truth, compressed_only, "segm"))


def test_annotation_id_zero_and_crowd_ignore_field_follow_pycocotools():
    truth, bbox_results, _ = random_case(8)
    truth["annotations"][0]["id"] = 0  # pycocotools reads a match to id 0 as no match
    for annotation in truth["annotations"][1::3]:
        annotation["ignore"] = 1  # overwritten by iscrowd in pycocotools: no effect
    assert_equal_to_pycocotools(DetectionMetrics("bbox").compute_metrics(bbox_results, truth),
                                pycocotools_eval(truth, bbox_results, "bbox"))


def test_equal_iou_with_two_ground_truths_takes_the_later_one():
    # det 1 overlaps gts 1 and 2 equally (0.905); det 2 overlaps only gt 1 enough (0.538 vs 0.43).
    # pycocotools keeps the later of equal-IoU ground truths, so both detections are true positives.
    truth = {"images": [{"id": 1, "width": 50, "height": 50}], "categories": [{"id": 1}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0,
                              "iscrowd": 0},
                             {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "area": 100.0,
                              "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [0.5, 0, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [-3, 0, 10, 10], "score": 0.8}]
    evaluation = DetectionMetrics().evaluate(results, truth)
    assert evaluation.per_image()[0]["tp"] == 2
    assert_equal_to_pycocotools(evaluation.summary(), pycocotools_eval(truth, results, "bbox"))


def test_segmentation_whose_first_polygon_has_two_points_is_refused():
    # pycocotools' frPyObjects takes such a list for boxes and fails inside the C extension
    truth, _, segm_results = random_case(10)
    regular = next(i for i, a in enumerate(truth["annotations"]) if not a["iscrowd"])
    truth["annotations"][regular]["segmentation"] = [[10.0, 10.0, 30.0, 40.0]]
    message = rf"ground_truth annotations\[{regular}\]\.segmentation: its first polygon"
    with pytest.raises(ValueError, match=message):
        DetectionMetrics("segm").compute_metrics(segm_results, truth)


def test_custom_thresholds_equal_pycocotools_params():
    truth, bbox_results, _ = random_case(9, crowded_image=True)
    metrics = DetectionMetrics("bbox", max_detections=(1, 5, 100), iou_thresholds=[0.3, 0.5, 0.75])
    ours = metrics.compute_metrics(bbox_results, truth)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(truth)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(bbox_results)), "bbox")
        evaluator.params.maxDets = [1, 5, 100]
        evaluator.params.iouThrs = np.array([0.3, 0.5, 0.75])
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert "mar_5" in ours
    assert_equal_to_pycocotools({**ours, "mar_10": ours["mar_5"]}, evaluator)


def _duplicated_document(truth, results, weights, image_ids):
    """The document and results in which image i appears weights[i] times (copies under new ids)."""
    images = {image["id"]: image for image in truth["images"]}
    next_image, next_annotation = max(images) + 1, max(a["id"] for a in truth["annotations"]) + 1
    new_truth = {"categories": truth["categories"], "images": [], "annotations": []}
    new_results = []
    for image_id, weight in zip(image_ids, weights):
        for copy_index in range(int(weight)):
            new_id = image_id if copy_index == 0 else next_image
            next_image += copy_index > 0
            new_truth["images"].append(dict(images[image_id], id=new_id))
            for annotation in truth["annotations"]:
                if annotation["image_id"] == image_id:
                    new_truth["annotations"].append(dict(annotation, id=next_annotation, image_id=new_id))
                    next_annotation += 1
            new_results.extend(dict(r, image_id=new_id) for r in results if r["image_id"] == image_id)
    return new_truth, new_results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_bootstrap_weights_equal_pycocotools_on_duplicated_images(iou_type):
    truth, bbox_results, segm_results = random_case(21, score_decimals=None)
    results = bbox_results if iou_type == "bbox" else segm_results
    evaluation = DetectionMetrics(iou_type).evaluate(results, truth)
    n_images = len(evaluation.image_ids)

    weights = np.ones(n_images, dtype=int)
    weights[4] = 2
    duplicated = _duplicated_document(truth, results, weights, evaluation.image_ids)
    assert_equal_to_pycocotools(evaluation.summary(weights), pycocotools_eval(*duplicated, iou_type))

    resample = np.bincount(np.random.default_rng(3).integers(0, n_images, n_images), minlength=n_images)
    assert (resample == 0).any() and (resample > 1).any()
    duplicated = _duplicated_document(truth, results, resample, evaluation.image_ids)
    assert_equal_to_pycocotools(evaluation.summary(resample), pycocotools_eval(*duplicated, iou_type))


def test_summary_without_weights_is_compute_metrics_and_rejects_bad_weights():
    truth, bbox_results, _ = random_case(4)
    metrics = DetectionMetrics("bbox")
    evaluation = metrics.evaluate(bbox_results, truth)
    ours = evaluation.summary(np.ones(len(evaluation.image_ids)))
    direct = metrics.compute_metrics(bbox_results, truth)
    assert all(ours[name] == direct[name] for name in STAT_NAMES)
    with pytest.raises(ValueError, match="image_weights"):
        evaluation.summary(np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        evaluation.summary(-np.ones(len(evaluation.image_ids)))


def pycocotools_per_image_cells(evaluator):
    """(image id, category id) -> (tp, fp, fn) from pycocotools' evalImgs: IoU 0.5, area all, largest
    max-detections."""
    expected = {}
    for record in evaluator.evalImgs:
        if record is None or record["aRng"] != [0, 1e10]:
            continue
        dt_ignored = record["dtIgnore"][0].astype(bool)
        matched = record["dtMatches"][0] > 0
        tp = int((matched & ~dt_ignored).sum())
        fp = int((~matched & ~dt_ignored).sum())
        fn = int((record["gtIgnore"] == 0).sum()) - tp
        expected[record["image_id"], record["category_id"]] = (tp, fp, fn)
    return expected


def assert_per_image_equal_to_pycocotools(evaluation, evaluator):
    expected = pycocotools_per_image_cells(evaluator)
    rows = evaluation.per_image()
    assert [row["image_id"] for row in rows] == evaluation.image_ids
    for row in rows:
        cells = {(row["image_id"], c["category_id"]): (c["tp"], c["fp"], c["fn"]) for c in row["per_class"]}
        assert cells == {key: value for key, value in expected.items() if key[0] == row["image_id"]}
        totals = np.array(list(cells.values()) or [(0, 0, 0)]).sum(axis=0).tolist()
        assert [row["tp"], row["fp"], row["fn"]] == totals
    return rows


def test_per_image_counts_match_pycocotools_eval_images():
    truth, bbox_results, _ = random_case(12)
    evaluation = DetectionMetrics("bbox").evaluate(bbox_results, truth)
    json.dumps(assert_per_image_equal_to_pycocotools(evaluation, pycocotools_eval(truth, bbox_results, "bbox")))


def test_result_is_json_friendly_and_reads_paths(tmp_path):
    truth, bbox_results, _ = random_case(13)
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "dt.json").write_text(json.dumps(bbox_results))
    ours = DetectionMetrics().compute_metrics(tmp_path / "dt.json", str(tmp_path / "gt.json"))
    assert_equal_to_pycocotools(ours, pycocotools_eval(truth, bbox_results, "bbox"))
    plain = {key: value for key, value in ours.items() if key not in ("precision", "recall")}
    json.dumps(plain)
    assert ours["precision"].shape == (10, 101, len(truth["categories"]), 4, 3)
    curves = [c for c in ours["pr_curves"] if c["iou_threshold"] == 0.5]
    assert [c["category_id"] for c in curves] == ours["classes"]
    assert curves[0]["precision"] == ours["precision"][0, :, 0, 0, 2].tolist()
    assert len(curves[0]["recall"]) == 101


def test_inputs_are_not_modified():
    truth, _, segm_results = random_case(14)
    before = json.dumps([truth, segm_results])
    DetectionMetrics("segm").compute_metrics(segm_results, truth)
    assert json.dumps([truth, segm_results]) == before


def test_empty_predictions_score_zero_where_there_is_ground_truth():
    truth, _, _ = random_case(15)
    for iou_type in ("bbox", "segm"):
        ours = DetectionMetrics(iou_type).compute_metrics([], truth)
        assert all(ours[name] == 0.0 for name in STAT_NAMES)
        assert ours["map_per_class"][-1] == -1 and ours["map_per_class"][0] == 0.0
    no_small = dict(truth, annotations=[a for a in truth["annotations"] if a["area"] > 32**2])
    ours = DetectionMetrics().compute_metrics([], no_small)
    assert ours["map_small"] == -1 and ours["map"] == 0.0
    ours = DetectionMetrics().compute_metrics([], dict(truth, annotations=[]))
    assert all(ours[name] == -1 for name in STAT_NAMES)


def test_predictions_without_any_ground_truth_give_minus_one():
    truth, bbox_results, segm_results = random_case(15)
    empty = dict(truth, annotations=[])
    for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
        evaluation = DetectionMetrics(iou_type).evaluate(results, empty)
        assert all(evaluation.summary()[name] == -1 for name in STAT_NAMES)
        assert sum(row["fp"] for row in evaluation.per_image()) == len(results)


def test_images_without_ground_truth_only_add_false_positives():
    truth, bbox_results, _ = random_case(16)
    empty = [image["id"] for image in truth["images"] if not any(a["image_id"] == image["id"]
                                                                  for a in truth["annotations"])]
    assert empty and any(r["image_id"] in empty for r in bbox_results)
    assert_equal_to_pycocotools(DetectionMetrics().compute_metrics(bbox_results, truth),
                                pycocotools_eval(truth, bbox_results, "bbox"))


@pytest.mark.parametrize("change, message", [
    (lambda r: r[3].update(image_id=999_999), r"predictions\[3\]\.image_id 999999"),
    (lambda r: r[2].update(category_id=777), r"predictions\[2\]\.category_id 777"),
    (lambda r: r[1].update(score=float("nan")), r"predictions\[1\]\.score is not finite"),
    (lambda r: r[4].update(bbox=[1.0, 2.0, float("inf"), 3.0]), r"predictions\[4\]\.bbox is not finite"),
    (lambda r: r[0].update(bbox=[1.0, 2.0, 3.0]), r"predictions\[0\]\.bbox must be"),
    (lambda r: r[5].pop("score"), r"predictions\[5\] has no 'score'"),
    (lambda r: r[6].update(score="high"), r"predictions\[6\]\.score must be a number"),
])
def test_bad_predictions_name_the_record(change, message):
    truth, bbox_results, _ = random_case(17)
    change(bbox_results)
    with pytest.raises(ValueError, match=message):
        DetectionMetrics("bbox", strict=True).compute_metrics(bbox_results, truth)


def test_iou_type_must_fit_the_predictions_and_be_known():
    truth, bbox_results, segm_results = random_case(18)
    with pytest.raises(ValueError, match=r"predictions\[0\] has no 'bbox'"):
        DetectionMetrics("bbox").compute_metrics(segm_results, truth)
    with pytest.raises(ValueError, match=r"predictions\[0\] has no 'segmentation'"):
        boxes_only = [{k: v for k, v in r.items() if k != "bbox"} for r in bbox_results]
        DetectionMetrics("segm").compute_metrics(boxes_only + segm_results, truth)
    with pytest.raises(ValueError, match=r"\['bbox', 'segm'\]"):
        DetectionMetrics("keypoints")
    with pytest.raises(ValueError, match="max_detections"):
        DetectionMetrics(max_detections=(1, 10))


def test_bad_ground_truth_names_the_annotation():
    truth, bbox_results, _ = random_case(19)
    broken = copy.deepcopy(truth)
    broken["annotations"][2]["image_id"] = -5
    with pytest.raises(ValueError, match=r"ground_truth annotations\[2\]\.image_id -5"):
        DetectionMetrics().compute_metrics(bbox_results, broken)
    broken = copy.deepcopy(truth)
    broken["annotations"][3]["id"] = broken["annotations"][1]["id"]
    with pytest.raises(ValueError, match=r"ground_truth annotations\[3\]\.id .* duplicate"):
        DetectionMetrics(strict=True).compute_metrics(bbox_results, broken)
    broken = copy.deepcopy(truth)
    del broken["annotations"][0]["area"]
    with pytest.raises(ValueError, match=r"ground_truth annotations\[0\] has no 'area'"):
        DetectionMetrics().compute_metrics(bbox_results, broken)
    broken = copy.deepcopy(truth)
    broken["annotations"][1]["segmentation"] = [[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]]
    broken["annotations"][1]["iscrowd"] = 0
    with pytest.raises(ValueError, match=r"ground_truth annotations\[1\]\.segmentation"):
        DetectionMetrics("segm").compute_metrics([], broken)


def _with_unknown_categories(results, positions, category_id=9_999):
    changed = copy.deepcopy(results)
    for position in positions:
        changed[position]["category_id"] = category_id
    return changed


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_detections_of_categories_without_ground_truth_are_left_out_like_pycocotools(iou_type):
    truth, bbox_results, segm_results = random_case(20, crowded_image=True)
    results = _with_unknown_categories(bbox_results if iou_type == "bbox" else segm_results, [0, 5, 17])
    results[9]["category_id"] = 8_888
    with pytest.warns(DetectionInputWarning, match=r"4 detection\(s\) have a category_id .*predictions\[0\]"):
        ours = DetectionMetrics(iou_type).compute_metrics(results, truth)
    assert_equal_to_pycocotools(ours, pycocotools_eval(truth, results, iou_type))
    anomaly = ours["anomalies"]["unknown_category_detections"]
    assert (anomaly["count"], anomaly["first_index"], anomaly["category_ids"]) == (4, 0, [9_999, 8_888])
    assert anomaly["first_record"]["category_id"] == 9_999 and "segmentation" not in anomaly["first_record"]
    assert list(ours["anomalies"]) == ["unknown_category_detections"]
    with pytest.raises(ValueError, match=r"predictions\[0\]\.category_id 9999 is not among"):
        DetectionMetrics(iou_type, strict=True).compute_metrics(results, truth)


def test_only_detections_of_unknown_categories_score_like_pycocotools():
    truth, bbox_results, _ = random_case(21)
    results = _with_unknown_categories(bbox_results, range(len(bbox_results)))
    with pytest.warns(DetectionInputWarning):
        evaluation = DetectionMetrics().evaluate(results, truth)
    assert_equal_to_pycocotools(evaluation.summary(), pycocotools_eval(truth, results, "bbox"))
    assert sum(row["fp"] for row in evaluation.per_image()) == 0


def _with_repeated_ids(truth, pairs):
    """`truth` where annotation `later` takes the id of annotation `earlier`, for each pair."""
    changed = copy.deepcopy(truth)
    for earlier, later in pairs:
        changed["annotations"][later]["id"] = changed["annotations"][earlier]["id"]
    return changed


@pytest.mark.parametrize("seed", [22, 23])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_repeated_annotation_ids_evaluate_like_pycocotools(seed, iou_type):
    truth, bbox_results, segm_results = random_case(seed, crowded_image=True)
    annotations = truth["annotations"]
    image_of = [a["image_id"] for a in annotations]
    # an id repeated within one image, one repeated across images (the later one sits in an image of
    # lower id, so pycocotools meets it first), and an id used three times
    same_image = next(i for i in range(1, len(annotations)) if image_of[i] == image_of[i - 1])
    across = next((i, j) for i in range(len(annotations)) for j in range(i + 1, len(annotations))
                  if image_of[j] < image_of[i] and annotations[j]["category_id"] != annotations[i]["category_id"])
    third = len(annotations) - 1
    pairs = [(same_image - 1, same_image), across, (across[0], third)]
    broken = _with_repeated_ids(truth, pairs)
    results = bbox_results if iou_type == "bbox" else segm_results
    with pytest.warns(DetectionInputWarning, match=r"3 annotation\(s\) repeat an earlier id"):
        evaluation = DetectionMetrics(iou_type).evaluate(results, broken)
    ours = evaluation.summary()
    assert_equal_to_pycocotools(ours, pycocotools_eval(broken, results, iou_type))
    anomaly = ours["anomalies"]["duplicate_annotation_ids"]
    assert anomaly["count"] == 3 and anomaly["first_index"] == min(later for _, later in pairs)
    assert anomaly["ids"] == list(dict.fromkeys(broken["annotations"][later]["id"]
                                                for _, later in sorted(pairs, key=lambda p: p[1])))
    with pytest.raises(ValueError, match=r"is a duplicate annotation id"):
        DetectionMetrics(iou_type, strict=True).evaluate(results, broken)


def test_repeated_ids_and_unknown_categories_together_per_image_like_pycocotools():
    truth, bbox_results, _ = random_case(24)
    broken = _with_repeated_ids(truth, [(0, 4)])
    results = _with_unknown_categories(bbox_results, [3])
    with pytest.warns(DetectionInputWarning) as caught:
        evaluation = DetectionMetrics().evaluate(results, broken)
    assert len(caught) == 2
    assert set(evaluation.anomalies) == {"duplicate_annotation_ids", "unknown_category_detections"}
    reference = pycocotools_eval(broken, results, "bbox")
    assert_equal_to_pycocotools(evaluation.summary(), reference)
    assert_per_image_equal_to_pycocotools(evaluation, reference)


def test_clean_input_reports_no_anomalies_and_no_warning(recwarn):
    truth, bbox_results, _ = random_case(25)
    assert DetectionMetrics().compute_metrics(bbox_results, truth)["anomalies"] == {}
    assert not [w for w in recwarn if issubclass(w.category, DetectionInputWarning)]
