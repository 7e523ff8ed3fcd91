"""A user's own task, as a user writes it in their own module: counting the objects in an image.

Importing this module registers it (`register_task`); naming the module in
`$CV_PIPELINE_TASK_MODULES` gives it the same road as the built-in tasks (model, evaluation,
registered model, comparison, champion, endpoint) without editing the project's code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cv_pipeline.models.tasks import TaskSpec, available_tasks, get_task, register_task

TASK = "object_count_test"
IMAGE_SIZE = 32


class CountNet(nn.Module):
    def __init__(self, num_outputs: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_outputs)

    def forward(self, images):
        return self.head(self.features(images)).squeeze(1)


def count_target(record, height, width):
    return {"count": torch.tensor(float((record.iscrowd == 0).sum()))}


def count_transforms(train, config):
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True),
                       v2.ToDtype(torch.float32, scale=True)])


def count_loss(model, batch, config):
    images, target = batch
    return {"loss": nn.functional.mse_loss(model(images), target["count"])}


def count_metrics(num_outputs):
    from torchmetrics import MeanAbsoluteError, MetricCollection

    return MetricCollection({"mae": MeanAbsoluteError()})


def count_update(metric, model, batch):
    images, target = batch
    metric.update(model(images), target["count"])


def count_predict(model, images, info) -> list[dict]:
    """The predicted number of objects of each image."""
    if not images:
        return []
    transform = count_transforms(False, info.get("config", {}))
    counts = model(torch.stack([transform(image.convert("RGB")) for image in images]))
    return [{"count": float(count)} for count in counts.tolist()]


def count_samples(manifest, split, max_images=None):
    """Every image of the split, and its number of (non-crowd) objects."""
    from cv_pipeline.evaluation.predictions import EvaluationSamples
    from cv_pipeline.training.coco_dataset import load_image_records, record_pil_image

    records = load_image_records(manifest, split)[:max_images]
    images = [record_pil_image(r) for r in records]
    return EvaluationSamples(images, [(r.batch_id, r.image_id) for r in records], [r.file_path for r in records],
                             [int((r.iscrowd == 0).sum()) for r in records], records)


def count_evaluate(predictions, options):
    """Mean absolute error of the counts; the bootstrap reweights images."""
    from cv_pipeline.evaluation.task_evaluation import TaskEvaluation

    errors = np.abs(np.asarray([o["count"] for o in predictions.outputs]) - np.asarray(predictions.ground_truth))

    def statistic(weights):
        weights = np.asarray(weights, dtype=float)
        return float((errors * weights).sum() / weights.sum())

    per_image = [{"batch_id": b, "image_id": int(i), "num_gt": int(t), "error_score": float(e)}
                 for (b, i), t, e in zip(predictions.image_keys, predictions.ground_truth, errors)]
    return TaskEvaluation(task=predictions.task, split=predictions.split, primary_metric="mae",
                          metrics={"mae": float(errors.mean()), "num_images": float(len(errors))},
                          per_class=[{"class_id": 0, "class_name": "objects", "num_gt": int(np.sum(predictions.ground_truth))}],
                          per_image=per_image, plots={}, statistic=statistic,
                          weight_keys=tuple(predictions.image_keys))


OBJECT_COUNT = TaskSpec(
    name=TASK, description="Regress the number of objects in an image.",
    models={"countnet": CountNet}, default_model="countnet",
    loss=count_loss, metrics=count_metrics, update_metrics=count_update, monitor="mae", mode="min",
    target_builder=count_target, transforms=count_transforms, model_classes=lambda num_classes: 1,
    loss_in_eval=True, defaults={"epochs": 2, "batch_size": 16, "lr": 1e-2},
    predict=count_predict, output_example={"count": 2.0}, evaluation_samples=count_samples,
    evaluate=count_evaluate, promotion_threshold=100.0,
)

if TASK not in available_tasks():
    register_task(OBJECT_COUNT)
TOY_TASK = get_task(TASK)
