"""A task from a user's own module, named in $CV_PIPELINE_TASK_MODULES, gets the built-in tasks'
road from Dagster without editing the project: trained on Ray through Pipes, evaluated through its
pyfunc, registered, compared, promoted, served behind its own endpoint and used by batch_predictions."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest

from cv_pipeline.defs.launchers import LocalJobLauncher
from cv_pipeline.defs.resources import LakeResource, MLflowResource, PromotionPolicy, ServingResource
from cv_pipeline_tests.toy_tasks import TASK

pytestmark = pytest.mark.slow  # a Ray Train run through Pipes and a model server: a minute or more

STAGES = ("model", "evaluation", "registered_model", "comparison", "champion", "endpoint")


def test_the_code_location_gives_a_configured_task_the_whole_road():
    env = {**os.environ, "CV_PIPELINE_TASK_MODULES": "cv_pipeline_tests.toy_tasks"}
    listed = subprocess.run(
        [sys.executable, "-c", "import json; from cv_pipeline.definitions import defs; "
                               "print(json.dumps([k.to_user_string() for k in defs.resolve_all_asset_keys()]))"],
        env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert {f"{TASK}_{stage}" for stage in STAGES} <= set(json.loads(listed.stdout.strip().splitlines()[-1]))
    broken = subprocess.run([sys.executable, "-c", "import cv_pipeline.definitions"], capture_output=True, text=True,
                            env={**os.environ, "CV_PIPELINE_TASK_MODULES": "no_such_module_here"}, timeout=300)
    assert broken.returncode != 0 and "CV_PIPELINE_TASK_MODULES names 'no_such_module_here'" in broken.stderr


def test_a_users_task_is_trained_evaluated_registered_compared_and_served(ingested_lake, shared_ray, tmp_path,
                                                                          monkeypatch):
    from cv_pipeline.defs.evaluation import evaluation_asset
    from cv_pipeline.defs.registry import champion_asset, comparison_asset, promotion_check, registered_asset
    from cv_pipeline.defs.serving import endpoint_asset
    from cv_pipeline.defs.training import model_asset
    from cv_pipeline.deployment.endpoints import EndpointServer, invoke, list_endpoints
    from cv_pipeline.deployment.registry import CHAMPION, ModelRegistry

    monkeypatch.setenv("CV_PIPELINE_TASK_MODULES", "cv_pipeline_tests.toy_tasks")  # the Pipes job imports it too
    lake = tmp_path / "lake"
    shutil.copytree(ingested_lake.lake_dir, lake, symlinks=True)
    manifest = ingested_lake.manifest
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("training_dataset", metadata={
        "delta_version": manifest.version, "path": str(lake / "training_dataset"),
        "dataset_hash": manifest.content_hash, "batches": dg.MetadataValue.json(manifest.batches)}))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    serving_dir = tmp_path / "serving"
    road = [model_asset(TASK), evaluation_asset(TASK), registered_asset(TASK), comparison_asset(TASK),
            promotion_check(TASK), champion_asset(TASK), endpoint_asset(TASK)]
    uri_before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        result = dg.materialize(
            road, instance=instance,
            run_config={"ops": {f"{TASK}_model": {"config": {"epochs": 1}}}},
            resources={"lake": LakeResource(lake_dir=str(lake)),
                       "mlflow": MLflowResource(tracking_uri=tracking_uri, artifact_root=str(tmp_path / "artifacts")),
                       "promotion": PromotionPolicy(n_resamples=200),
                       "serving": ServingResource(state_dir=str(serving_dir)),
                       "job_launcher": LocalJobLauncher()})
        assert result.success
        assert os.environ.get("MLFLOW_TRACKING_URI") == uri_before  # no MLflow store leaks into the process
        metadata = {node: {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}
                    for node in (f"{TASK}_{stage}" for stage in STAGES)}
        assert metadata[f"{TASK}_evaluation"]["primary_metric"] == "mae"
        assert metadata[f"{TASK}_comparison"]["decision"] == "promote"  # mae under the task's threshold of 100
        assert metadata[f"{TASK}_comparison"]["higher_is_better"] is False
        registry = ModelRegistry(tracking_uri)
        assert registry.version_for_alias(f"cv_pipeline_{TASK}", CHAMPION) == "1"
        assert "count=" in metadata[f"{TASK}_endpoint"]["sample_summary"]
        [endpoint] = list_endpoints(serving_dir)
        assert endpoint["name"] == f"cv_pipeline_{TASK}" and endpoint["task"] == TASK
        assert [(e["model_version"], e["traffic_percentage"]) for e in endpoint["served_entities"]] == [("1", 100)]
        from PIL import Image

        answer = invoke(endpoint["url"], [Image.new("RGB", (40, 30), (10, 200, 10))])
        assert set(answer["predictions"][0]) == {"count"} and answer["model_version"] == "1"

        # batch inference: a landing batch scored with the champion into the predictions table
        from cv_pipeline.data.delta_io import read_table
        from cv_pipeline.defs.batch import batch_predictions
        from cv_pipeline.defs.partitions import landing_batches

        instance.add_dynamic_partitions(landing_batches.name, ["batch_0002"])
        scored = dg.materialize([batch_predictions], instance=instance, partition_key="batch_0002",
                                run_config={"ops": {"batch_predictions": {"config": {"tasks": [TASK]}}}},
                                resources={"lake": LakeResource(lake_dir=str(lake)),
                                           "mlflow": MLflowResource(tracking_uri=tracking_uri)})
        assert scored.success
        rows = read_table(lake / "predictions").to_pylist()
        images = read_table(lake / "coco_images", filters=[("batch_id", "=", "batch_0002")]).num_rows
        assert len(rows) == images and {(r["task"], r["model_version"]) for r in rows} == {(TASK, "1")}
        assert all(r["image_uid"].startswith("batch_0002/") and "count" in r["prediction"] for r in rows)
    finally:
        EndpointServer(serving_dir).stop()
