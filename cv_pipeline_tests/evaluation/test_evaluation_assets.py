"""The evaluation assets, for real: a logged pyfunc model's predictions on the pinned test split,
scored by the task's own evaluation, metrics and plots in metadata, rows in the evaluation Delta
tables, the HTML report and the MLflow artifacts; and an evaluation of the defective sample batch."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest
import torch

from cv_pipeline.data.delta_io import read_table, replace_batch
from cv_pipeline.data.processor import COCOProcessor
from cv_pipeline.defs.evaluation import EVALUATION_ASSETS, PER_CLASS_TABLE, PER_IMAGE_TABLE
from cv_pipeline.defs.resources import LakeResource, MLflowResource
from cv_pipeline.models.pyfunc import log_vision_model
from cv_pipeline.evaluation.predictions import predict_split
from cv_pipeline.evaluation.task_evaluation import evaluate_predictions
from cv_pipeline.models.tasks import get_task, save_model_artifact
from cv_pipeline.training.dataset import build_training_dataset
from cv_pipeline_tests.samples import INGESTED_TABLES, SAMPLES
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store


def _artifact(path: Path, task: str, arch: str, labels: list[dict]) -> Path:
    torch.manual_seed(0)
    spec = get_task(task)
    model = spec.build_model(arch, len(labels))
    labels = [{k: label[k] for k in ("index", "category_id", "name")} for label in labels]
    return save_model_artifact(path, model, task=task, arch=arch, labels=labels,
                               config={**spec.defaults, **spec.recipe("quick")})


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    with temporary_mlflow_store(tmp_path_factory.mktemp("mlflow"), "evaluation-assets") as store:
        yield store


PRIMARY = {"classification": "accuracy", "detection": "map_50", "semantic_segmentation": "miou"}
PLOT = {"classification": "plot_confusion_matrix", "detection": "plot_pr_curves",
        "semantic_segmentation": "plot_iou_per_class"}


@pytest.mark.parametrize("task, arch", [
    ("classification", "resnet18"), ("detection", "fasterrcnn_resnet18_fpn"), ("semantic_segmentation", "fpn_resnet18"),
])
def test_evaluation_asset_reports_metrics_tables_report_and_mlflow(task, arch, ingested_lake, mlflow_store, tmp_path):
    from cv_pipeline.evaluation.predictions import crop_samples

    manifest = ingested_lake.manifest
    asset = EVALUATION_ASSETS[task]
    model_path = _artifact(tmp_path / "model.pt", task, arch, manifest.labels)
    with mlflow.start_run(experiment_id=mlflow_store["experiment_id"]) as run:
        model_uri = log_vision_model(model_path, crop_samples(manifest, "val", 1).images[0]).model_uri
    model_asset = f"{task}_model"
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(model_asset, metadata={
        "task": task, "arch": arch, "model_path": str(model_path), "model_uri": model_uri,
        "mlflow_run_id": run.info.run_id, "dataset_version": manifest.version}))
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "training_dataset").symlink_to(Path(manifest.table_path))
    for name in INGESTED_TABLES:
        (lake / name).symlink_to(ingested_lake.lake_dir / name)
    result = dg.materialize(
        [asset], instance=instance,
        run_config={"ops": {asset.key.to_user_string(): {"config": {"max_images": 8, "overlays": 2}}}},
        resources={"lake": LakeResource(lake_dir=str(lake)),
                   "mlflow": MLflowResource(tracking_uri=mlflow_store["uri"])})
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node(asset.key.to_user_string())[0]
                .metadata.items()}
    primary = metadata["primary_metric"]
    assert primary == PRIMARY[task] and metadata["task"] == task
    assert 0.0 <= metadata[primary] <= 1.0 and metadata["num_images"] == 8.0
    assert metadata[PLOT[task]].startswith("![")
    if task == "detection":
        assert set(metadata["error_counts"]) >= {"tp", "background", "localization", "missed"}
        assert set(metadata["recall_by_size"]) == {"small", "medium", "large"}

    per_image = read_table(lake / PER_IMAGE_TABLE).to_pandas()
    objects = metadata.get("num_objects", 8.0)  # a classifier's rows are the objects of the 8 images
    assert len(per_image) == objects and set(per_image.task) == {task}
    assert len(set(zip(per_image.batch_id, per_image.image_id))) == 8
    assert (per_image.run_id == run.info.run_id).all() and per_image.dataset_version.eq(str(manifest.version)).all()
    per_class = read_table(lake / PER_CLASS_TABLE).to_pandas()
    expected_classes = len(manifest.labels) + (task == "semantic_segmentation")  # + background
    assert len(per_class) == expected_classes and metadata["per_image_table_version"] == 0

    html = Path(metadata["report_path"]).read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html
    artifacts = {a.path for a in mlflow.MlflowClient(mlflow_store["uri"]).list_artifacts(run.info.run_id,
                                                                                         "evaluation/test")}
    assert "evaluation/test/report.html" in artifacts and len(artifacts) >= 2  # the report and its plots
    logged = mlflow.MlflowClient(mlflow_store["uri"]).get_run(run.info.run_id).data.metrics
    assert logged[f"test_{primary}"] == pytest.approx(metadata[primary])


def test_evaluation_runs_on_the_defective_batch(spark, tmp_path):
    """The defective sample batch (rejected records quarantined, an out-of-image box kept and flagged
    by its checks) is evaluated end to end: COCO and error analysis take what ingestion kept."""
    processor = COCOProcessor(spark)
    batch = processor.ingest_batch(SAMPLES / "defective" / "batch_defective")
    for name in INGESTED_TABLES:
        replace_batch(batch.tables[name], tmp_path / name, "batch_defective")
    manifest = build_training_dataset(tmp_path, fractions={"train": 0.34, "val": 0.33, "test": 0.33})
    model_path = _artifact(tmp_path / "model.pt", "instance_segmentation", "maskrcnn_resnet18_fpn", manifest.labels)
    images, annotations = 0, []
    for split in ("train", "val", "test"):  # every image the batch kept is in one split
        predictions = predict_split(model_path, manifest, split)
        evaluation = evaluate_predictions(predictions, overlays=1)
        assert evaluation.n_images == len(predictions.image_keys) and 0.0 <= evaluation.metrics["segm_map_50"] <= 1.0
        assert sum(row["num_gt"] for row in evaluation.per_image) == sum(
            1 for a in predictions.ground_truth["annotations"] if not a["iscrowd"])
        assert "<html" in evaluation.html(f"defective batch, {split}")
        images += evaluation.n_images
        annotations += [a["source_annotation_id"] for a in predictions.ground_truth["annotations"]]
    assert images == read_table(tmp_path / "coco_images").num_rows < 12  # undecodable and missing images are out
    assert 9000016 in annotations  # the out-of-image box: kept by ingestion, flagged by a check, scored as any other
    assert 9000011 not in annotations  # unknown category: quarantined
