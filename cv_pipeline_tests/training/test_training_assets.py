"""The training assets for real: training_dataset, then a detection model trained by the Pipes job
(Ray Train locally), with what MLflow records: per-epoch metrics, system metrics, the checkpoint,
the model, and the lineage tags (Delta versions, dataset hash, code revision)."""

import shutil

import dagster as dg
import mlflow
import pytest

from cv_pipeline.defs.launchers import LocalJobLauncher
from cv_pipeline.defs.resources import LakeResource, MLflowResource
from cv_pipeline.defs.training import MODEL_ASSETS, training_dataset

detection_model = MODEL_ASSETS["detection"]


@pytest.fixture()
def resources(ingested_lake, shared_ray, tmp_path):  # the Pipes job attaches to the session's Ray
    lake_dir = tmp_path / "lake"
    shutil.copytree(ingested_lake.lake_dir, lake_dir)
    return {"lake": LakeResource(lake_dir=str(lake_dir)),
            "mlflow": MLflowResource(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"),
                                     experiment_name="assets_test"),
            "job_launcher": LocalJobLauncher()}


@pytest.mark.slow  # a minute or more of Ray Train on 2 cores: `make test`, not `make test-fast`
def test_detection_model_asset_trains_through_pipes_and_records_lineage(resources):
    instance = dg.DagsterInstance.ephemeral()
    dataset = dg.materialize([training_dataset], resources=resources, instance=instance)
    assert dataset.success
    config = {"epochs": 2, "image_size": 128, "batch_size": 2, "max_train_samples": 6, "max_val_samples": 4,
              "system_metrics_interval_s": 1.0}
    result = dg.materialize([detection_model, training_dataset], selection=[detection_model], resources=resources,
                            instance=instance, run_config={"ops": {"detection_model": {"config": config}}})
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("detection_model")[0].metadata.items()}
    assert meta["task"] == "detection" and meta["arch"] == "fasterrcnn_resnet18_fpn"
    assert meta["monitor"] == "val_map_50" and 0.0 <= meta["val_map_50"] <= 1.0
    assert [row["epoch"] for row in meta["history"]] == [0, 1]
    assert meta["restarts"] == 0

    mlflow.set_tracking_uri(resources["mlflow"].tracking_uri)
    client = mlflow.MlflowClient()
    run = client.get_run(meta["mlflow_run_id"])
    tags, metrics = run.data.tags, run.data.metrics
    for key in ("delta_version.coco_images", "delta_version.coco_annotations", "delta_version.coco_categories",
                "dataset_hash", "dataset_version", "code_revision", "dagster_run_id"):
        assert tags.get(key), key
    assert tags["delta_version.coco_images"] == "1" and tags["task"] == "detection"
    assert run.data.params["arch"] == "fasterrcnn_resnet18_fpn" and run.data.params["epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "val_map_50")) == 2  # one per epoch
    assert any(key.startswith("system/cpu_utilization") for key in metrics), sorted(metrics)
    assert any(key.startswith("system/system_memory_usage") for key in metrics), sorted(metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "dataset"} <= artifacts
    served = mlflow.pyfunc.load_model(meta["model_uri"]).unwrap_python_model()  # the task's pyfunc, as served
    assert served.task == "detection" and served.info["extra"]["dataset_hash"] == tags["dataset_hash"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/checkpoint.ckpt"]
