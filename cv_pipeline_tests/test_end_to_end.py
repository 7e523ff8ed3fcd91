"""The whole graph on the bundled samples, as `make run` runs it, then the served model over HTTP."""

import os
import re

import pytest
import requests

from cv_pipeline import settings
from cv_pipeline.data.delta_io import read_table
from cv_pipeline.deployment.pyfunc import encode_image
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry
from cv_pipeline.deployment.serving import LocalModelServer
from cv_pipeline.training.crops import crop_row
from cv_pipeline.training.dataset import load_split


@pytest.mark.slow
def test_cli_run_materializes_the_whole_graph_and_serves(capsys, monkeypatch):
    from cv_pipeline.cli import main

    # 8 epochs keep CI short; the promotion bar is lowered to match, the comparison runs for real.
    monkeypatch.setenv("CV_PIPELINE_PROMOTION_THRESHOLD", "0.4")
    server = LocalModelServer(settings.serving_dir())
    try:
        # the detection and segmentation models train for real but briefly (their learning is
        # measured by benchmarks/learning.py, not here)
        assert main(["run", "--epochs", "8", "--vision-epochs", "1", "--max-samples", "6"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"checks      (\d+)/\1 passed", out), out
        for expected in ("batch batch_0001: ok", "batch batch_0002: ok",
                         "registered model   cv_pipeline_classifier version 1 alias challenger",
                         "model_comparison   promote: ", "check              challenger_beats_champion: passed",
                         "detection_evaluation map_50=", "semantic_segmentation_evaluation miou=",
                         "champion           cv_pipeline_classifier version 1", "serving            http://127.0.0.1:",
                         "sample prediction", "detection_model    MLflow run", "instance_segmentation_model MLflow run",
                         "semantic_segmentation_model MLflow run"):
            assert expected in out, (expected, out)
        # the semantic model started from the detector this run trained (its MLflow model URI)
        detector_run = re.search(r"detection_model    MLflow run (\w+)", out).group(1)
        assert re.search(rf"semantic_segmentation_model MLflow run \w+ .* from runs:/{detector_run}/", out), out

        assert read_table(settings.table_path("coco_annotations")).num_rows == 542
        assert read_table(settings.table_path("coco_quarantine")).num_rows == 0
        registry = ModelRegistry(settings.mlflow_tracking_uri())
        assert registry.version_for_alias("cv_pipeline_classifier", CHAMPION) == "1"
        assert registry.version_for_alias("cv_pipeline_classifier", CHALLENGER) is None

        # the server outlives the run that started it; ask it about a few test objects over HTTP
        info = server.status()
        assert info is not None and info.model_uri == "models:/cv_pipeline_classifier/1"
        assert requests.get(f"{info.url}/ping", timeout=10).status_code == 200
        rows = load_split(settings.table_path("training_dataset"), None, "test")[:8]
        images = [encode_image(crop_row(row)) for row in rows]
        response = requests.post(f"{info.url}/invocations", timeout=60,
                                 json={"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == len(rows)
        assert {p["category_id"] for p in predictions} <= {1, 2, 4, 5, 7, 9}
        correct = sum(p["category_id"] == row["category_id"] for p, row in zip(predictions, rows))
        assert correct >= 3, predictions  # far above chance (1/6) for a model that passed its check
        assert os.path.exists(os.path.join(os.environ["DAGSTER_HOME"], "storage"))

        # the quick-start DeploymentPipeline trains a second version on the same pinned data; promoting
        # it replaces the running server
        from cv_pipeline import DeploymentPipeline

        outcome = DeploymentPipeline(None, None, "cv_pipeline_classifier", "cv_pipeline",
                                     training={"epochs": 3}).run_pipeline(metrics_threshold=0.0)
        assert outcome["version"] == "2" and outcome["promoted"]
        assert registry.version_for_alias("cv_pipeline_classifier", CHAMPION) == "2"
        replaced = server.status()
        assert replaced.model_uri == "models:/cv_pipeline_classifier/2" and replaced.pid != info.pid
        assert outcome["serving_url"] == replaced.url
        assert requests.get(f"{replaced.url}/ping", timeout=10).status_code == 200
        assert 0.0 <= outcome["metrics"]["accuracy"] <= 1.0
    finally:
        server.stop()
