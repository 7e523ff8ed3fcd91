"""Evaluation reports of the trained models on the pinned test split: metrics, error analysis and
plots in metadata, per-image and per-class rows in Delta, an HTML report, all logged to MLflow."""


import math
from datetime import datetime, timezone

import dagster as dg

from cv_pipeline.defs.metadata import latest_metadata, markdown_table, task_asset
from cv_pipeline.defs.resources import LakeResource, MLflowResource
from cv_pipeline.defs.training import MODEL_ASSETS

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

    from mlflow import MlflowClient
    from mlflow.entities import Metric

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
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)  # no process-wide MLflow state
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    client.log_batch(mlflow_run_id, metrics=[Metric(f"{split}_{k}", float(v), now, 0)
                                             for k, v in metrics.items() if v is not None])
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in plots.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
        (Path(tmp) / "report.html").write_text(html, encoding="utf-8")
        client.log_artifacts(mlflow_run_id, tmp, f"evaluation/{split}")
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


def evaluation_asset(task: str):
    """The evaluation asset `<task>_evaluation` of one task: its model's pyfunc (what is served) on
    the pinned split, scored by the task's own evaluation: metrics, error analysis and plots in the
    metadata, rows in the evaluation tables, the HTML report in MLflow."""
    from cv_pipeline.models.tasks import get_task

    model_name = f"{task}_model"
    spec = get_task(task)

    @task_asset(task, "evaluation", "model",
                f"The {task} model's pyfunc (what is served) on the pinned test split, scored by the task's "
                f"evaluation (primary metric {spec.test_metric}): metrics, per-class rows, plots, error analysis "
                "where the task has one, an HTML report.", group="evaluation",
                kinds=frozenset({"pytorch", "mlflow", "delta"}))
    def _evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, lake: LakeResource,
                    mlflow: MLflowResource) -> dg.MaterializeResult:
        from cv_pipeline.evaluation.predictions import predict_split
        from cv_pipeline.training.dataset import load_manifest

        trained = latest_metadata(context, model_name)
        if trained.get("task") != task:
            raise dg.Failure(f"{model_name} holds a {trained.get('task')!r} model, expected {task!r}")
        manifest = load_manifest(lake.table_path("training_dataset"), int(trained["dataset_version"]))
        predictions = predict_split(trained["model_uri"], manifest, config.split, max_images=config.max_images,
                                    tracking_uri=mlflow.tracking_uri)
        evaluation = spec.evaluate(predictions, {"overlays": config.overlays,
                                                           "error_min_score": config.error_min_score})
        html = evaluation.html(f"{context.asset_key.to_user_string()}: {trained['arch']} ({trained['model_uri']})",
                               notes=[f"Scored through the MLflow pyfunc model (what is served) on the {config.split} "
                                      f"split of training_dataset version {trained['dataset_version']}, "
                                      f"{evaluation.n_images} samples.",
                                      "Detector error analysis uses detections scoring at least "
                                      f"{config.error_min_score}; COCO statistics use every detection."])
        published = publish_evaluation(
            context, lake, mlflow, task=task, mlflow_run_id=trained["mlflow_run_id"],
            model_name=f"{model_name}:{trained['arch']}",
            dataset_version=int(trained["dataset_version"]), split=config.split, metrics=evaluation.metrics,
            per_image=evaluation.per_image, per_class=evaluation.per_class, plots=evaluation.plots, html=html)
        per_class = _readable_rows(evaluation.per_class)
        columns = [c for c in ("class_name", "num_gt", "num_pred", "precision", "recall", "f1", "ap", "ap50", "iou",
                               "dice", "tp", "fp", "missed")
                   if any(row.get(c) not in (None, "n/a") for row in per_class)]
        worst = [key for key in evaluation.plots if key.startswith("worst_")][:2]
        return dg.MaterializeResult(metadata={
            "task": task,
            "model_uri": trained["model_uri"],
            "mlflow_run_id": trained["mlflow_run_id"],
            "dataset_version": int(trained["dataset_version"]),
            "primary_metric": evaluation.primary_metric,
            **{k: float(v) for k, v in evaluation.metrics.items()},
            "per_class": dg.MetadataValue.md(markdown_table(per_class, columns)),
            **{k: dg.MetadataValue.json(v) for k, v in evaluation.details.items()},
            **_plot_metadata(evaluation.plots, ["confusion_matrix", "pr_curves", "ap_per_class", "error_breakdown",
                                                 "iou_per_class", *worst], config.split),
            **published,
        })

    return _evaluation


EVALUATION_ASSETS = {task: evaluation_asset(task) for task in MODEL_ASSETS}  # task -> <task>_evaluation
