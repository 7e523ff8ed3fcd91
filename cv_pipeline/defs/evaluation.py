"""Evaluation reports of the trained models on the pinned test split: metrics, error analysis and
plots in metadata, per-image and per-class rows in Delta, an HTML report, all logged to MLflow."""


import math
from datetime import datetime, timezone

import dagster as dg

from cv_pipeline.defs.metadata import latest_metadata, markdown_table
from cv_pipeline.defs.resources import LakeResource, MLflowResource
from cv_pipeline.defs.training import (classifier_model, detection_model, instance_segmentation_model,
                                       semantic_segmentation_model)

PER_IMAGE_TABLE = "evaluation_per_image"
PER_CLASS_TABLE = "evaluation_per_class"


class EvaluationConfig(dg.Config):
    split: str = "test"
    max_images: int | None = None  # score only the first N images of the split (smoke runs)
    overlays: int = 4  # worst images drawn with ground truth against predictions
    error_min_score: float = 0.3  # detections below this score are left out of the error analysis


def publish_evaluation(context, lake: LakeResource, mlflow: MLflowResource, *, task: str, mlflow_run_id: str,
                       model_name: str, dataset_version: int, split: str, metrics: dict, per_image: list[dict],
                       per_class: list[dict], plots: dict[str, bytes], html: str) -> dict:
    """Append the rows to the evaluation Delta tables (one commit each), write the HTML report, log
    metrics, plots and report to the model's MLflow run; returns the metadata saying where."""
    import tempfile
    from pathlib import Path

    import mlflow as mlflow_client

    from cv_pipeline import settings
    from cv_pipeline.data.delta_io import append_rows
    from cv_pipeline.evaluation.report import per_class_table, per_image_table, write_report

    run_columns = {"model_name": model_name, "model_version": None, "run_id": mlflow_run_id, "task": task,
                   "split": split, "dataset_version": str(dataset_version),
                   "evaluated_at": datetime.now(timezone.utc)}
    image_version = append_rows(per_image_table(per_image, run_columns), lake.table_path(PER_IMAGE_TABLE),
                                partition_by=("task",))
    class_version = append_rows(per_class_table(per_class, run_columns), lake.table_path(PER_CLASS_TABLE),
                                partition_by=("task",))
    report = write_report(settings.reports_dir() / f"{context.asset_key.to_python_identifier()}-"
                                                   f"{context.run_id[:8]}.html", html)
    mlflow_client.set_tracking_uri(mlflow.tracking_uri)
    with mlflow_client.start_run(run_id=mlflow_run_id), tempfile.TemporaryDirectory() as tmp:
        mlflow_client.log_metrics({f"{split}_{k}": float(v) for k, v in metrics.items() if v is not None})
        for name, png in plots.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
        (Path(tmp) / "report.html").write_text(html, encoding="utf-8")
        mlflow_client.log_artifacts(tmp, f"evaluation/{split}")
    return {"report_path": dg.MetadataValue.path(str(report)),
            "per_image_table": dg.MetadataValue.path(lake.table_path(PER_IMAGE_TABLE)),
            "per_image_table_version": image_version,
            "per_class_table": dg.MetadataValue.path(lake.table_path(PER_CLASS_TABLE)),
            "per_class_table_version": class_version}


def _plot_metadata(plots: dict[str, bytes], names: list[str], split: str) -> dict:
    """Plots as inline images (the UI opens each from a "[Show Markdown]" link), at most a dialog's
    width; a wider plot is scaled down and says where the full-size PNG is."""
    from cv_pipeline.evaluation.plots import MARKDOWN_MAX_WIDTH, png_data_uri_markdown, png_size

    entries = {}
    for name in (name for name in names if name in plots):
        markdown = png_data_uri_markdown(plots[name], name.replace("_", " "))
        if png_size(plots[name])[0] > MARKDOWN_MAX_WIDTH:
            markdown += (f"\n\nScaled down: full size as `evaluation/{split}/{name}.png` in the model's MLflow run "
                         "and in the HTML report (`report_path`).")
        entries[f"plot_{name}"] = dg.MetadataValue.md(markdown)
    return entries


def _readable_rows(rows: list[dict]) -> list[dict]:
    """Rows for a metadata table: `extra` values (per-class Dice, pixel counts) as columns of their
    own, and values undefined for a class (None, NaN: no ground truth) read "n/a"."""
    def cell(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else value

    return [{key: cell(value) for key, value in {**row, **(row.get("extra") or {})}.items() if key != "extra"}
            for row in rows]


def _confusion_markdown(counts: list[list], names: list[str]) -> str:
    """A confusion matrix as a table: a row per true class, a column per predicted class."""
    header = ["truth / predicted", *names]
    return markdown_table([dict(zip(header, [name, *(int(c) for c in row)])) for name, row in zip(names, counts)],
                          header)


@dg.asset(
    deps=[classifier_model],
    group_name="evaluation",
    kinds={"mlflow", "delta"},
    description="Accuracy, per-class precision/recall/F1 and a confusion matrix on the test split; "
                "per-object and per-class rows in Delta, an HTML report.",
)
def classifier_evaluation(context: dg.AssetExecutionContext, lake: LakeResource,
                          mlflow: MLflowResource) -> dg.MaterializeResult:
    from cv_pipeline.evaluation.classification_report import evaluate_classifier
    from cv_pipeline.evaluation.report import MetricsSection, NotesSection, TableSection, html_report, ImagesSection

    trained = latest_metadata(context, "classifier_model")
    dataset = latest_metadata(context, "training_dataset")
    evaluation = evaluate_classifier(trained["model_uri"], dataset["path"], int(trained["dataset_version"]),
                                     tracking_uri=mlflow.tracking_uri)
    metrics = evaluation.metrics
    headline = {key: float(metrics[key]) for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                                                     "f1_micro", "f1_weighted")}
    per_image = [{"batch_id": o["batch_id"], "image_id": o["image_id"], "annotation_id": o["annotation_id"],
                  "label": truth, "prediction": predicted, "correct": truth == predicted, "confidence": o["score"]}
                 for o, truth, predicted in zip(evaluation.objects, evaluation.ground_truth, evaluation.predictions)]
    per_class = [{"class_id": index, "class_name": row["name"], "num_gt": int(row["support"]),
                  "precision": float(row["precision"]), "recall": float(row["recall"]), "f1": float(row["f1"])}
                 for index, row in enumerate(metrics["per_class"])]
    html = html_report(f"classifier_evaluation: {trained['model_uri']}", [
        MetricsSection("Metrics", {**headline, "objects": metrics["num_samples"], "images": evaluation.num_images}),
        TableSection("Per class", [{k: row[k] for k in ("class_name", "num_gt", "precision", "recall", "f1")}
                                   for row in per_class]),
        ImagesSection("Confusion matrix", [(evaluation.confusion_png, "rows: truth, columns: prediction")]),
        NotesSection("Notes", [f"Scored through the MLflow pyfunc model (what is served) on the test split of "
                               f"training_dataset version {trained['dataset_version']}."]),
    ])
    published = publish_evaluation(
        context, lake, mlflow, task="classification", mlflow_run_id=trained["mlflow_run_id"],
        model_name=f"classifier_model:{trained.get('arch', 'classifier')}",
        dataset_version=int(trained["dataset_version"]), split="test",
        metrics=headline, per_image=per_image, per_class=per_class, plots={"confusion_matrix": evaluation.confusion_png},
        html=html)
    per_class_md = markdown_table(metrics["per_class"], ["name", "precision", "recall", "f1", "support"])
    return dg.MaterializeResult(metadata={
        "model_uri": trained["model_uri"],
        "mlflow_run_id": trained["mlflow_run_id"],
        "dataset_version": int(trained["dataset_version"]),
        "primary_metric": "accuracy",
        **headline,
        "macro_f1": float(metrics["f1_macro"]),
        "test_objects": metrics["num_samples"],
        "test_images": evaluation.num_images,
        "per_class": dg.MetadataValue.md(per_class_md),
        **_plot_metadata({"confusion_matrix": evaluation.confusion_png}, ["confusion_matrix"], "test"),
        "confusion_matrix_counts": dg.MetadataValue.md(
            _confusion_markdown(metrics["confusion_matrix"], [row["name"] for row in metrics["per_class"]])),
        **published,
    })


def evaluation_asset(task: str, model, name: str, description: str):
    """The evaluation asset of a detection or segmentation model: predictions on the pinned split,
    the task's metrics (COCO through `DetectionMetrics`, mIoU), error analysis and overlays."""
    model_name = model.key.to_user_string()

    @dg.asset(name=name, deps=[model], group_name="evaluation", kinds={"pytorch", "mlflow", "delta"},
              description=description)
    def _evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, lake: LakeResource,
                    mlflow: MLflowResource) -> dg.MaterializeResult:
        from cv_pipeline.evaluation.predictions import predict_split
        from cv_pipeline.evaluation.task_evaluation import evaluate_predictions
        from cv_pipeline.training.dataset import load_manifest

        trained = latest_metadata(context, model_name)
        if trained.get("task") != task:
            raise dg.Failure(f"{model_name} holds a {trained.get('task')!r} model, expected {task!r}")
        manifest = load_manifest(lake.table_path("training_dataset"), int(trained["dataset_version"]))
        predictions = predict_split(trained["model_path"], manifest, config.split, max_images=config.max_images)
        evaluation = evaluate_predictions(predictions, overlays=config.overlays,
                                          error_min_score=config.error_min_score)
        html = evaluation.html(f"{name}: {trained['arch']} ({trained['model_uri']})", notes=[
            f"{config.split} split of training_dataset version {trained['dataset_version']}, "
            f"{evaluation.n_images} images.",
            "COCO statistics use every detection; the error analysis only those scoring at least "
            f"{config.error_min_score}."])
        published = publish_evaluation(
            context, lake, mlflow, task=task, mlflow_run_id=trained["mlflow_run_id"],
            model_name=f"{model_name}:{trained['arch']}",
            dataset_version=int(trained["dataset_version"]), split=config.split, metrics=evaluation.metrics,
            per_image=evaluation.per_image, per_class=evaluation.per_class, plots=evaluation.plots, html=html)
        per_class = _readable_rows(evaluation.per_class)
        columns = [c for c in ("class_name", "num_gt", "ap", "ap50", "recall", "iou", "dice", "tp", "fp", "missed")
                   if any(row.get(c) not in (None, "n/a") for row in per_class)]
        worst = [key for key in evaluation.plots if key.startswith("worst_")][:2]
        return dg.MaterializeResult(metadata={
            "model_uri": trained["model_uri"],
            "mlflow_run_id": trained["mlflow_run_id"],
            "dataset_version": int(trained["dataset_version"]),
            "primary_metric": evaluation.primary_metric,
            **{k: float(v) for k, v in evaluation.metrics.items()},
            "per_class": dg.MetadataValue.md(markdown_table(per_class, columns)),
            **{k: dg.MetadataValue.json(v) for k, v in evaluation.details.items()},
            **_plot_metadata(evaluation.plots, ["pr_curves", "ap_per_class", "error_breakdown", "iou_per_class",
                                                 "confusion_matrix", *worst], config.split),
            **published,
        })

    return _evaluation


detection_evaluation = evaluation_asset(
    "detection", detection_model, "detection_evaluation",
    "COCO box mAP/mAR (exact to pycocotools), per-class AP and PR curves, TIDE-style error analysis and "
    "overlays of the worst test images.")
instance_segmentation_evaluation = evaluation_asset(
    "instance_segmentation", instance_segmentation_model, "instance_segmentation_evaluation",
    "COCO mask and box mAP/mAR, per-class AP, error analysis on masks, overlays of the worst test images.")
semantic_segmentation_evaluation = evaluation_asset(
    "semantic_segmentation", semantic_segmentation_model, "semantic_segmentation_evaluation",
    "mIoU, per-class IoU and Dice, pixel accuracy, a pixel confusion matrix and overlays of the worst test images.")
VISION_EVALUATION_ASSETS = (detection_evaluation, instance_segmentation_evaluation, semantic_segmentation_evaluation)
