"""The whole graph on the bundled samples plus a batch that fails a blocking check, as `make run`
runs it (`cv-pipeline run` in a subprocess: the `end_to_end_run` session fixture), then the
served model over HTTP."""

import os
import re

import pytest
import requests

from cv_pipeline.data.delta_io import read_table
from cv_pipeline.deployment.pyfunc import encode_image
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry
from cv_pipeline.deployment.serving import LocalModelServer
from cv_pipeline.training.crops import crop_row
from cv_pipeline.training.dataset import load_split

pytestmark = pytest.mark.slow

MAX_CONSOLE_LINES = 150


def table(run, name: str):
    return read_table(str(run.home / "lake" / name))


def test_run_succeeds_with_a_readable_console(end_to_end_run):
    run = end_to_end_run
    out = run.output
    assert run.returncode == 0, out
    lines = out.splitlines()
    assert len(lines) <= MAX_CONSOLE_LINES, out
    # what the log file holds stays there: Dagster's DEBUG events, Spark's and Ray's chatter
    for noise in (" - DEBUG - ", "Ray Train Controller", "log4j", "WARN Utils", "Token authentication"):
        assert noise not in out, (noise, out)
    log_file = re.search(r"full log +(\S+)", out).group(1)
    assert log_file.startswith(str(run.home / "logs")) and os.path.getsize(log_file) > 0
    log_text = open(log_file, errors="replace").read()
    assert "STEP_START" in log_text or "Started execution of step" in log_text
    # one line as each step starts and one as it ends, with its duration and key figure
    for step in ("training_dataset", "classifier_model", "detection_model", "instance_segmentation_model",
                 "semantic_segmentation_model", "detection_evaluation", "serving_endpoint"):
        assert re.search(rf"^  \.\.\. {step}$", out, re.M), (step, out)
        assert re.search(rf"^  ok  {step}  \d+\.\ds", out, re.M), (step, out)
    assert re.search(r"^  ok  classifier_evaluation  \d+\.\ds  accuracy=0\.\d{3}", out, re.M), out
    assert re.search(r"^  ok  coco_tables \[batch_0001\]  \d+\.\ds", out, re.M), out
    for task in ("classification (quick)", "detection (quick)", "instance_segmentation (quick)",
                 "semantic_segmentation (quick)"):
        assert task in out, (task, out)
    for expected in ("registered         cv_pipeline_classifier version 1 alias challenger",
                     "model_comparison   promote: ", "champion           cv_pipeline_classifier version 1",
                     "serving            http://127.0.0.1:", "sample prediction"):
        assert expected in out, (expected, out)


def test_a_batch_failing_a_blocking_check_is_held_back(end_to_end_run):
    run = end_to_end_run
    out = run.output
    assert re.search(rf"^  {run.held_back_batch}\s+HELD BACK", out, re.M), out
    assert "annotations_bbox_inside_image" in out
    assert f"held back          {run.held_back_batch}: held back: failed blocking checks annotations_bbox_inside_image" in out
    assert "training on 2 validated batches (batch_0001, batch_0002)" in out
    # its rows are kept for inspection, but none of its images reached the training set
    images = table(run, "coco_images").to_pylist()
    assert {row["batch_id"] for row in images} == {"batch_0001", "batch_0002", run.held_back_batch}
    trained_on = set(table(run, "training_dataset").column("batch_id").to_pylist())
    assert trained_on == {"batch_0001", "batch_0002"}
    assert table(run, "coco_annotations").num_rows > 542


def test_the_models_were_trained_in_order_and_registered(end_to_end_run):
    run = end_to_end_run
    out = run.output
    assert run.returncode == 0, out
    registry = ModelRegistry(f"sqlite:///{run.home / 'mlflow.db'}")
    assert registry.version_for_alias("cv_pipeline_classifier", CHAMPION) == "1"
    assert registry.version_for_alias("cv_pipeline_classifier", CHALLENGER) is None
    assert (run.dagster_home / "storage").exists()


def test_the_served_model_answers_over_http(end_to_end_run):
    run = end_to_end_run
    assert run.returncode == 0, run.output
    server = LocalModelServer(run.home / "serving")
    info = server.status()  # the server outlives the run that started it
    assert info is not None and info.model_uri == "models:/cv_pipeline_classifier/1"
    assert requests.get(f"{info.url}/ping", timeout=10).status_code == 200
    rows = load_split(str(run.home / "lake" / "training_dataset"), None, "test")[:8]
    images = [encode_image(crop_row(row)) for row in rows]
    response = requests.post(f"{info.url}/invocations", timeout=60,
                             json={"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    assert {p["category_id"] for p in predictions} <= {1, 2, 4, 5, 7, 9}
    correct = sum(p["category_id"] == row["category_id"] for p, row in zip(predictions, rows))
    assert correct >= 3, predictions  # far above chance (1/6) for a model that passed its check


def test_deployment_pipeline_promotes_a_second_version_and_replaces_the_server(end_to_end_run, monkeypatch):
    """The quick-start DeploymentPipeline trains a second version on the same pinned data; promoting
    it replaces the running server. (Last: it changes the run's state.)"""
    from cv_pipeline import DeploymentPipeline

    run = end_to_end_run
    assert run.returncode == 0, run.output
    monkeypatch.setenv("CV_PIPELINE_HOME", str(run.home))
    server = LocalModelServer(run.home / "serving")
    before = server.status()
    try:
        outcome = DeploymentPipeline(None, None, "cv_pipeline_classifier", "cv_pipeline",
                                     training={"epochs": 3}).run_pipeline(metrics_threshold=0.0)
        registry = ModelRegistry(f"sqlite:///{run.home / 'mlflow.db'}")
        assert outcome["version"] == "2" and outcome["promoted"]
        assert registry.version_for_alias("cv_pipeline_classifier", CHAMPION) == "2"
        replaced = server.status()
        assert replaced.model_uri == "models:/cv_pipeline_classifier/2" and replaced.pid != before.pid
        assert outcome["serving_url"] == replaced.url
        assert requests.get(f"{replaced.url}/ping", timeout=10).status_code == 200
        assert 0.0 <= outcome["metrics"]["accuracy"] <= 1.0
    finally:
        server.stop()
