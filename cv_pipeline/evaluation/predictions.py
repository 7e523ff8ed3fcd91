"""Run a trained model over one split of a pinned training_dataset and keep what evaluation needs:
the split's ground truth as a COCO document and the predictions as a COCO results list (detection,
instance segmentation), or predicted and true label masks at each image's own size (semantic).

Images get evaluation ids 1..N in the split's (batch_id, image_id) order, since source image ids
are unique only within a batch; `image_keys[i]` maps id i + 1 back to its (batch_id, image_id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DETECTOR_TASKS = ("detection", "instance_segmentation")


@dataclass
class SplitPredictions:
    """A model's outputs on one split, with the ground truth to score them against."""

    task: str
    arch: str
    split: str
    labels: list[dict]  # manifest labels: index, category_id, name
    image_keys: list[tuple[str, int]]  # evaluation image id - 1 -> (batch_id, image_id)
    file_paths: list[str | None]
    ground_truth: dict | None = None  # COCO document (detector tasks)
    results: list[dict] = field(default_factory=list)  # COCO results (detector tasks)
    pred_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) uint8 class ids (semantic)
    gt_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) uint8, 255 = ignore (semantic)
    records: list = field(default_factory=list, repr=False)  # the split's ImageRecords (images for overlays)

    @property
    def class_names(self) -> list[str]:
        return [label["name"] for label in sorted(self.labels, key=lambda label: label["index"])]


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


def _mask_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detector_results(outputs: list[dict], image_ids: list[int], labels: list[dict], *,
                     with_masks: bool, score_threshold: float = 0.0) -> list[dict]:
    """COCO results from torchvision detector outputs (labels are index + 1; boxes xyxy in pixels)."""
    category_of = {int(label["index"]) + 1: int(label["category_id"]) for label in labels}
    results = []
    for output, image_id in zip(outputs, image_ids):
        keep = output["scores"] >= score_threshold
        boxes = output["boxes"][keep].float().cpu().numpy()
        scores = output["scores"][keep].float().cpu().numpy()
        classes = output["labels"][keep].cpu().numpy()
        masks = (output["masks"][keep][:, 0] > 0.5).cpu().numpy() if with_masks else None
        for i in range(len(boxes)):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            result = {"image_id": int(image_id), "category_id": category_of[int(classes[i])],
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[i])}
            if masks is not None:
                result["segmentation"] = _mask_rle(masks[i])
            results.append(result)
    return results


@torch.no_grad()
def predict_split(model_path: str | Path, manifest, split: str = "test", *, device: str = "cpu",
                  batch_size: int = 4, score_threshold: float = 0.0, config: dict | None = None,
                  max_images: int | None = None) -> SplitPredictions:
    """Predictions of the model artifact at `model_path` on `split` of `manifest` (a DatasetManifest).

    Detector outputs are in each image's pixels already (torchvision resizes internally and maps
    back); semantic logits are resized to the image's own size before the argmax, so masks are
    scored at full resolution against the full-resolution ground truth. `max_images` keeps the
    split's first N images (smoke runs)."""
    import torch.nn.functional as F
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader

    from cv_pipeline.evaluation.task_metrics import load_trained_model
    from cv_pipeline.training.coco_dataset import CocoDeltaDataset, load_image_records, semantic_target

    model, spec, info = load_trained_model(model_path)
    if spec.name not in (*DETECTOR_TASKS, "semantic_segmentation"):
        raise ValueError(f"predict_split handles detection, instance_segmentation and semantic_segmentation "
                         f"models; {model_path} is a {spec.name!r} model")
    model.to(device)
    config = {**spec.defaults, **info.get("options", {}), **(config or {})}
    records = load_image_records(manifest, split)[:max_images]
    if not records:
        raise ValueError(f"{manifest.table_path}@v{manifest.version} has no {split} images to evaluate on")
    labels = sorted(manifest.labels, key=lambda label: label["index"])
    out = SplitPredictions(task=spec.name, arch=info.get("arch", ""), split=split, labels=labels,
                           image_keys=[(r.batch_id, r.image_id) for r in records],
                           file_paths=[r.file_path for r in records], records=records)
    detector = spec.name in DETECTOR_TASKS
    dataset = CocoDeltaDataset(records, spec.target_builder, spec.transforms(False, config) if spec.transforms else None)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=lambda batch: batch)
    if detector:
        out.ground_truth = coco_ground_truth(records, labels)
    start = 0
    for batch in loader:
        images = [move_data_to_device(image, device) for image, _ in batch]
        batch_records = records[start:start + len(batch)]
        ids = list(range(start + 1, start + len(batch) + 1))
        start += len(batch)
        if detector:
            out.results += detector_results(model(images), ids, labels, with_masks=spec.name != "detection",
                                            score_threshold=score_threshold)
            continue
        logits = model(torch.stack(images))["out"]
        for record, logit in zip(batch_records, logits):
            full = F.interpolate(logit[None].float(), size=(record.height, record.width), mode="bilinear",
                                 align_corners=False)
            out.pred_masks.append(full[0].argmax(0).to(torch.uint8).cpu().numpy())
            mask = semantic_target(record, record.height, record.width)["mask"]
            out.gt_masks.append(mask.as_subclass(torch.Tensor).to(torch.uint8).numpy())
    return out
