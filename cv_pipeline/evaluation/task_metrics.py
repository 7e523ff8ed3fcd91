"""Score a trained model artifact of any task on one split of a pinned training_dataset, with the
task's own metrics (COCO mAP through pycocotools for detection and instance segmentation, mIoU for
semantic segmentation, accuracy for classification)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_trained_model(model_path: str | Path):
    """(model in eval mode, TaskSpec, artifact info) from a classifier or generic model artifact."""
    from cv_pipeline.models.tasks import get_task, load_model_artifact

    payload = torch.load(model_path, map_location="cpu", weights_only=False)
    if payload.get("format") == "cv_pipeline.classifier/1":
        from cv_pipeline.models.classification import load_classifier_artifact

        model, spec = load_classifier_artifact(model_path)
        return model, get_task("classification"), {"task": "classification", "arch": spec.arch, "labels": spec.labels,
                                                   "options": {"image_size": spec.image_size}}
    model, info = load_model_artifact(model_path)
    return model, get_task(info["task"]), info


@torch.no_grad()
def evaluate_model(model_path: str | Path, manifest, split: str = "test", *, batch_size: int = 8,
                   device: str = "cpu", config: dict | None = None) -> dict:
    """The task's metrics of `model_path` on `split` of `manifest` (a DatasetManifest), as floats."""
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader

    from cv_pipeline.training.coco_dataset import CocoDeltaDataset, load_image_records

    model, spec, info = load_trained_model(model_path)
    model.to(device)
    config = {**spec.defaults, **info.get("options", {}), **(config or {})}
    if spec.name == "classification" and config.get("classification_input", "crops") == "crops":
        from cv_pipeline.training.crops import CropDataset, load_crops
        from cv_pipeline.training.dataset import load_split

        dataset = CropDataset(*load_crops(load_split(manifest.table_path, manifest.version, split),
                                          int(config["image_size"])))
    else:
        records = load_image_records(manifest, split)
        if spec.keep_record is not None:
            records = [record for record in records if spec.keep_record(record)]
        dataset = CocoDeltaDataset(records, spec.target_builder, spec.transforms(False, config) if spec.transforms else None)
    if len(dataset) == 0:
        raise ValueError(f"{manifest.table_path}@v{manifest.version} has no {split} samples to evaluate on")
    metric = spec.metrics(spec.model_classes(len(info["labels"]))).to(device)
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=spec.collate):
        spec.update_metrics(metric, model, move_data_to_device(batch, device))
    values = metric.compute()
    values = values if isinstance(values, dict) else {spec.monitor: values}
    return {k: float(v) for k, v in values.items() if isinstance(v, torch.Tensor) and v.numel() == 1}

