"""A model asset starting from another's weights: semantic_segmentation_model depends on
detection_model and takes its latest MLflow model URI as `pretrained_weights`; the training job
downloads such a URI under the Ray storage path before the workers start. (The whole chain runs in
the end-to-end test; that the semantic FPN loads the detector's backbone and FPN is in
test_ray_trainer.)"""

import dagster as dg
import mlflow
import torch

from cv_pipeline.defs.training import MODEL_ASSETS, upstream_weights
from cv_pipeline.deployment.training_runs import resolve_pretrained
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store


detection_model, semantic_segmentation_model = MODEL_ASSETS["detection"], MODEL_ASSETS["semantic_segmentation"]


def test_the_semantic_model_asset_depends_on_the_detector():
    assert detection_model.key in semantic_segmentation_model.dependency_keys
    assert semantic_segmentation_model.key not in detection_model.dependency_keys


def test_upstream_weights_is_the_latest_model_uri_or_none():
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_asset_context(instance=instance)
    assert upstream_weights(context, detection_model.key) is None  # never materialized: random weights

    instance.report_runless_asset_event(dg.AssetMaterialization(detection_model.key, metadata={"epochs": 1}))
    assert upstream_weights(context, detection_model.key) is None  # a materialization without a model

    for run_id in ("first", "second"):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            detection_model.key, metadata={"model_uri": f"runs:/{run_id}/model/model.pt"}))
    assert upstream_weights(context, detection_model.key) == "runs:/second/model/model.pt"


def test_resolve_pretrained_downloads_mlflow_uris_and_keeps_paths(tmp_path):
    state = {"state_dict": {"backbone.weight": torch.arange(6.0).reshape(2, 3)}}
    torch.save(state, tmp_path / "model.pt")
    with temporary_mlflow_store(tmp_path, "pretrained") as store:
        with mlflow.start_run(experiment_id=store["experiment_id"]) as run:
            mlflow.log_artifact(str(tmp_path / "model.pt"), "model")
        uri = f"runs:/{run.info.run_id}/model/model.pt"

        path = resolve_pretrained(uri, str(tmp_path / "ray"))
        assert path.startswith(str(tmp_path / "ray" / "pretrained"))
        loaded = torch.load(path, map_location="cpu", weights_only=False)
        assert torch.equal(loaded["state_dict"]["backbone.weight"], state["state_dict"]["backbone.weight"])
        assert resolve_pretrained(uri, str(tmp_path / "ray")) == path  # the same URI, the same place

    local = str(tmp_path / "model.pt")
    assert resolve_pretrained(local, str(tmp_path / "ray")) == local
    assert resolve_pretrained(None, None) is None
