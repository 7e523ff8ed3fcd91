"""Run a model's pyfunc (what is served) over one split of a pinned training_dataset and keep what
evaluation needs: the samples' keys, the model's answers, and the ground truth to score them.

A task says what its samples are (`TaskSpec.evaluation_samples`): object crops for the classifier,
whole images with a COCO ground-truth document for detectors, whole images with label masks for
semantic segmentation. Images get evaluation ids 1..N in the split's (batch_id, image_id) order,
since source image ids are unique only within a batch; `image_keys[i]` maps sample i back to its
(batch_id, image_id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class EvaluationSamples:
    """What a model is asked on a split, in order, and the task's ground truth for it."""

    images: list  # PIL images
    image_keys: list[tuple[str, int]]  # per sample: (batch_id, image_id)
    file_paths: list[str | None]
    ground_truth: Any  # COCO document (detectors), (H, W) uint8 masks (semantic), label indices (classification)
    records: list = field(default_factory=list, repr=False)  # ImageRecords (images for overlays)
    extra: dict = field(default_factory=dict)  # per-sample extras, e.g. annotation ids of crops


@dataclass
class SplitPredictions:
    """A model's answers on one split, with the ground truth to score them against."""

    task: str
    arch: str
    split: str
    labels: list[dict]  # manifest labels: index, category_id, name
    image_keys: list[tuple[str, int]]
    file_paths: list[str | None]
    outputs: list[dict]  # the pyfunc's predictions, one per sample
    ground_truth: Any = None
    records: list = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)
    model_uri: str = ""

    @property
    def class_names(self) -> list[str]:
        return [label["name"] for label in sorted(self.labels, key=lambda label: label["index"])]

    @cached_property
    def results(self) -> list[dict]:
        """Detector answers as a COCO results list (evaluation image ids 1..N)."""
        return coco_results(self.outputs)

    @cached_property
    def pred_masks(self) -> list[np.ndarray]:
        """Semantic answers as (H, W) uint8 masks of label index + 1 (0: background)."""
        return class_masks(self.outputs, self.labels)

    @property
    def gt_masks(self) -> list[np.ndarray]:
        return list(self.ground_truth)


def coco_ground_truth(records, labels: list[dict]) -> dict:
    """A COCO instances document of `records` (evaluation ids 1..N), crowd regions included."""
    category_of = {int(label["index"]): int(label["category_id"]) for label in labels}
    images, annotations = [], []
    for number, record in enumerate(records, start=1):
        images.append({"id": number, "width": int(record.width), "height": int(record.height),
                       "file_name": record.file_path or f"{record.batch_id}/{record.image_id}"})
        for k in range(len(record.annotation_ids)):
            text = record.segmentations[k] if k < len(record.segmentations) else None
            annotation = {"id": len(annotations) + 1, "image_id": number,
                          "category_id": category_of[int(record.labels[k])],
                          "bbox": [float(v) for v in record.boxes_xywh[k]], "area": float(record.area[k]),
                          "iscrowd": int(record.iscrowd[k]), "source_annotation_id": int(record.annotation_ids[k])}
            if text:
                annotation["segmentation"] = json.loads(text)
            annotations.append(annotation)
    categories = [{"id": int(label["category_id"]), "name": label["name"],
                   "supercategory": label.get("supercategory") or ""} for label in labels]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(outputs: list[dict]) -> list[dict]:
    """COCO results from detector predictions (`{"detections": [...]}` per image, image ids 1..N)."""
    results = []
    for image_id, output in enumerate(outputs, start=1):
        for detection in output.get("detections", []):
            result = {"image_id": image_id, "category_id": int(detection["category_id"]),
                      "bbox": [float(v) for v in detection["bbox"]], "score": float(detection["score"])}
            if "segmentation" in detection:
                result["segmentation"] = detection["segmentation"]
            results.append(result)
    return results


def class_masks(outputs: list[dict], labels: list[dict]) -> list[np.ndarray]:
    """(H, W) uint8 masks of label index + 1 from semantic predictions (per-class RLE masks)."""
    from cv_pipeline.models.builtin_tasks import decode_rle

    index_of = {int(label["category_id"]): int(label["index"]) + 1 for label in labels}
    masks = []
    for output in outputs:
        mask = np.zeros((int(output["height"]), int(output["width"])), np.uint8)
        for entry in output.get("classes", []):
            mask[decode_rle(entry["mask"]).astype(bool)] = index_of[int(entry["category_id"])]
        masks.append(mask)
    return masks


def _record_images(records) -> list:
    from cv_pipeline.training.coco_dataset import record_pil_image

    return [record_pil_image(record) for record in records]


def _records(manifest, split: str, max_images: int | None):
    from cv_pipeline.training.coco_dataset import load_image_records

    records = load_image_records(manifest, split)[:max_images]
    if not records:
        raise ValueError(f"{manifest.table_path}@v{manifest.version} has no {split} images to evaluate on")
    return records


def detection_samples(manifest, split: str = "test", max_images: int | None = None) -> EvaluationSamples:
    """Every image of the split (those without objects too) and its COCO ground truth."""
    records = _records(manifest, split, max_images)
    labels = sorted(manifest.labels, key=lambda label: label["index"])
    return EvaluationSamples(_record_images(records), [(r.batch_id, r.image_id) for r in records],
                             [r.file_path for r in records], coco_ground_truth(records, labels), records)


def semantic_samples(manifest, split: str = "test", max_images: int | None = None) -> EvaluationSamples:
    """Every image of the split and its full-resolution label mask (255: crowd, ignored)."""
    import torch

    from cv_pipeline.training.coco_dataset import semantic_target

    records = _records(manifest, split, max_images)
    masks = [semantic_target(r, r.height, r.width)["mask"].as_subclass(torch.Tensor).numpy().astype(np.uint8)
             for r in records]
    return EvaluationSamples(_record_images(records), [(r.batch_id, r.image_id) for r in records],
                             [r.file_path for r in records], masks, records)


def crop_samples(manifest, split: str = "test", max_images: int | None = None) -> EvaluationSamples:
    """The crop of every object of the split (of its first `max_images` images) and its label index."""
    from cv_pipeline.training.crops import iter_row_crops
    from cv_pipeline.training.dataset import load_split

    rows = load_split(manifest.table_path, manifest.version, split)
    if max_images is not None:
        keep = list(dict.fromkeys((r["batch_id"], r["image_id"]) for r in rows))[:max_images]
        rows = [r for r in rows if (r["batch_id"], r["image_id"]) in set(keep)]
    if not rows:
        raise ValueError(f"{manifest.table_path}@v{manifest.version} has no {split} objects to evaluate on")
    crops = [None] * len(rows)
    for index, crop in iter_row_crops(rows):
        crops[index] = crop
    return EvaluationSamples(crops, [(r["batch_id"], int(r["image_id"])) for r in rows],
                             [r["file_path"] for r in rows], [int(r["label"]) for r in rows],
                             extra={"annotation_ids": [int(r["annotation_id"]) for r in rows]})


def predict_split(model: str | Path, manifest, split: str = "test", *, batch_size: int = 8,
                  max_images: int | None = None, tracking_uri: str | None = None,
                  registry_uri: str | None = None) -> SplitPredictions:
    """The answers of `model` (a pyfunc URI or a model artifact file) on `split` of `manifest`.

    Each sample goes through the pyfunc's `predict` as a served request does: encoded as PNG,
    base64, decoded by the model. `max_images` keeps the split's first N images (smoke runs).
    A `models:/` URI is resolved through `registry_uri` (default: the tracking URI)."""
    import pandas as pd

    from cv_pipeline.models.pyfunc import IMAGE_COLUMN, encode_image, load_vision_model

    python_model = load_vision_model(model, tracking_uri=tracking_uri, registry_uri=registry_uri)
    spec = python_model.spec
    samples = spec.evaluation_samples(manifest, split, max_images)
    outputs: list[dict] = []
    for start in range(0, len(samples.images), batch_size):
        frame = pd.DataFrame({IMAGE_COLUMN: [encode_image(image) for image in samples.images[start:start + batch_size]]})
        outputs.extend(python_model.predict(None, frame))
    return SplitPredictions(task=spec.name, arch=python_model.info.get("arch", ""), split=split,
                            labels=sorted(manifest.labels, key=lambda label: label["index"]),
                            image_keys=samples.image_keys, file_paths=samples.file_paths, outputs=outputs,
                            ground_truth=samples.ground_truth, records=samples.records, extra=samples.extra,
                            model_uri=str(model))


def evaluate(model: str | Path, manifest, split: str = "test", *, options: dict | None = None,
             max_images: int | None = None, tracking_uri: str | None = None):
    """`predict_split`, then the task's own evaluation: a `TaskEvaluation`."""
    from cv_pipeline.models.tasks import get_task

    predictions = predict_split(model, manifest, split, max_images=max_images, tracking_uri=tracking_uri)
    return get_task(predictions.task).evaluate(predictions, dict(options or {}))
