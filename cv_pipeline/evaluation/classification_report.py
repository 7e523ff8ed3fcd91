"""Evaluate a logged classifier on the pinned test split: metrics and a confusion-matrix plot."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClassificationEvaluation:
    metrics: dict
    confusion_png: bytes
    class_names: list[str]
    num_images: int
    predictions: list[int]
    ground_truth: list[int]
    objects: list[dict]  # per test object, in prediction order: batch_id, image_id, annotation_id, score

    @property
    def image_keys(self) -> list[tuple[str, int]]:
        return [(o["batch_id"], o["image_id"]) for o in self.objects]


def evaluate_classifier(model_uri: str, dataset_path: str, dataset_version: int, split: str = "test",
                        batch_size: int = 128, tracking_uri: str | None = None) -> ClassificationEvaluation:
    """Score the pyfunc model (exactly what is served) on one split of a training_dataset version."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    from cv_pipeline.deployment.pyfunc import encode_image
    from cv_pipeline.evaluation.metrics import ClassificationMetrics
    from cv_pipeline.evaluation.plots import confusion_matrix_png
    from cv_pipeline.training.crops import iter_row_crops
    from cv_pipeline.training.dataset import load_manifest, load_split

    manifest = load_manifest(dataset_path, dataset_version)
    rows = load_split(dataset_path, dataset_version, split)
    if not rows:
        raise ValueError(f"{dataset_path}@v{dataset_version} has no {split} rows to evaluate on")
    index_of = {label["category_id"]: label["index"] for label in manifest.labels}
    names = [label["name"] for label in manifest.labels]
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs resolve through the global tracking store
    model = mlflow.pyfunc.load_model(model_uri)

    encoded = [""] * len(rows)
    for index, crop in iter_row_crops(rows):
        encoded[index] = encode_image(crop)
    predicted, scores = [], []
    for start in range(0, len(encoded), batch_size):
        frame = model.predict(pd.DataFrame({"image": encoded[start:start + batch_size]}))
        predicted.extend(index_of[int(c)] for c in frame["category_id"])
        scores.extend(float(s) for s in frame["score"])
    truth = [int(row["label"]) for row in rows]
    metrics = ClassificationMetrics(num_classes=len(names), class_names=names).compute_metrics(
        np.asarray(predicted), np.asarray(truth))
    png = confusion_matrix_png(metrics["confusion_matrix"], names, title=f"Confusion matrix ({split}, {len(rows)} objects)")
    return ClassificationEvaluation(metrics=metrics, confusion_png=png, class_names=names,
                                    num_images=len({(r["batch_id"], r["image_id"]) for r in rows}),
                                    predictions=predicted, ground_truth=truth,
                                    objects=[{"batch_id": r["batch_id"], "image_id": int(r["image_id"]),
                                              "annotation_id": int(r["annotation_id"]), "score": score}
                                             for r, score in zip(rows, scores)])
