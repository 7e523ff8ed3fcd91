"""predict_split: a model's pyfunc predictions on the pinned test split, with the task's ground truth."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cv_pipeline.evaluation.predictions import coco_ground_truth, predict_split
from cv_pipeline.models.tasks import get_task, save_model_artifact
from cv_pipeline.training.coco_dataset import load_image_records


def _artifact(tmp_path, task: str, arch: str, manifest, **options):
    torch.manual_seed(0)
    spec = get_task(task)
    model = spec.build_model(arch, len(manifest.labels), **options)
    labels = [{k: label[k] for k in ("index", "category_id", "name")} for label in manifest.labels]
    return save_model_artifact(tmp_path / f"{task}.pt", model, task=task, arch=arch, labels=labels, options=options,
                               config=spec.defaults)


def test_ground_truth_document_loads_in_pycocotools_with_crowd_regions(ingested_lake):
    from pycocotools.coco import COCO

    records = load_image_records(ingested_lake.manifest, "test")
    document = coco_ground_truth(records, ingested_lake.manifest.labels)
    coco = COCO()
    coco.dataset = copy.deepcopy(document)
    coco.createIndex()
    assert len(coco.imgs) == len(records)
    assert len(coco.anns) == sum(len(r.annotation_ids) for r in records)
    assert {c["id"] for c in document["categories"]} == {label["category_id"] for label in ingested_lake.manifest.labels}
    for annotation in coco.anns.values():  # every segmentation (polygon or crowd RLE) rasterises at its area
        assert coco.annToMask(annotation).sum() == pytest.approx(annotation["area"], rel=0.05, abs=16)


def test_detector_predictions_are_coco_results_in_image_pixels(ingested_lake, tmp_path):
    path = _artifact(tmp_path, "instance_segmentation", "maskrcnn_resnet18_fpn", ingested_lake.manifest)
    predictions = predict_split(path, ingested_lake.manifest, "test", max_images=10)
    assert predictions.task == "instance_segmentation"
    images = {image["id"]: image for image in predictions.ground_truth["images"]}
    records = load_image_records(ingested_lake.manifest, "test")[:10]  # images without objects included
    assert len(images) == len(predictions.image_keys) == len(records)
    assert predictions.image_keys == [(r.batch_id, r.image_id) for r in records]
    categories = {c["id"] for c in predictions.ground_truth["categories"]}
    assert predictions.results, "an untrained Mask R-CNN still proposes boxes"
    for result in predictions.results:
        image = images[result["image_id"]]
        x, y, w, h = result["bbox"]
        assert result["category_id"] in categories and 0 <= result["score"] <= 1
        assert -1 <= x and x + w <= image["width"] + 1 and -1 <= y and y + h <= image["height"] + 1
        assert result["segmentation"]["size"] == [image["height"], image["width"]]


def test_semantic_predictions_are_full_resolution_label_masks(ingested_lake, tmp_path):
    path = _artifact(tmp_path, "semantic_segmentation", "fpn_resnet18", ingested_lake.manifest)
    predictions = predict_split(path, ingested_lake.manifest, "test", max_images=10)
    records = load_image_records(ingested_lake.manifest, "test")[:10]
    assert len(predictions.pred_masks) == len(predictions.gt_masks) == len(records)
    for record, pred, truth in zip(records, predictions.pred_masks, predictions.gt_masks):
        assert pred.shape == truth.shape == (record.height, record.width)
        assert pred.max() <= len(ingested_lake.manifest.labels)
        assert set(np.unique(truth)) <= set(range(len(ingested_lake.manifest.labels) + 1)) | {255}
    assert predictions.class_names == [label["name"] for label in
                                       sorted(ingested_lake.manifest.labels, key=lambda label: label["index"])]


def test_a_classifier_is_asked_every_object_crop_of_the_split(ingested_lake, tmp_path):
    from cv_pipeline.training.dataset import load_split

    manifest = ingested_lake.manifest
    path = _artifact(tmp_path, "classification", "resnet18", manifest)
    predictions = predict_split(path, manifest, "test", max_images=5)
    rows = [r for r in load_split(manifest.table_path, manifest.version, "test")
            if (r["batch_id"], r["image_id"]) in set(predictions.image_keys)]
    assert len({*predictions.image_keys}) == 5 and len(predictions.outputs) == len(rows) == len(predictions.ground_truth)
    assert predictions.extra["annotation_ids"] == [int(r["annotation_id"]) for r in rows]
    assert {o["category_id"] for o in predictions.outputs} <= {label["category_id"] for label in manifest.labels}
    assert predictions.ground_truth == [int(r["label"]) for r in rows]
