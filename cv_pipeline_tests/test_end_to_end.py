"""The whole graph on the bundled samples plus a batch that fails a blocking check, as `make run`
runs it (`cv-pipeline run` in a subprocess: the `end_to_end_run` session fixture), then every
task's endpoint over HTTP, and a second version promoted by the quick-start DeploymentPipeline."""

import os
import re

import pytest
import requests

from cv_pipeline.data.delta_io import read_table
from cv_pipeline.models.pyfunc import encode_image
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry
from cv_pipeline.training.crops import crop_row
from cv_pipeline.training.dataset import load_split
from cv_pipeline_tests.samples import E2E_MONITORING_ENV

pytestmark = pytest.mark.slow

MAX_CONSOLE_LINES = 150


def table(run, name: str):
    return read_table(str(run.home / "lake" / name))


TASKS = ("classification", "detection", "instance_segmentation", "semantic_segmentation")


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
    steps = ["training_dataset", *(f"{task}_{stage}" for task in TASKS
                                   for stage in ("model", "evaluation", "registered_model", "comparison", "champion",
                                                 "endpoint"))]
    for step in steps:
        assert re.search(rf"^  \.\.\. {step}$", out, re.M), (step, out)
        assert re.search(rf"^  ok  {step}  \d+\.\ds", out, re.M), (step, out)
    assert re.search(r"^  ok  classification_evaluation  \d+\.\ds  accuracy=0\.\d{3}", out, re.M), out
    assert re.search(r"^  ok  coco_tables \[batch_0001\]  \d+\.\ds", out, re.M), out
    for task in TASKS:
        assert f"{task} (quick)" in out, (task, out)
        # per task: registered version, the comparison's decision, champion, endpoint URL, one answer
        assert re.search(rf"^  {task} +cv_pipeline_{task} v1 \(challenger\): promote; champion v1$", out, re.M), out
        assert re.search(rf"http://127\.0\.0\.1:\d+/serving-endpoints/cv_pipeline_{task}/invocations  v1 100%", out), out
    assert re.search(r"answered category_id=\d+, label=\w+, score=0\.\d{3}", out), out


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


def test_every_task_was_registered_compared_and_promoted(end_to_end_run):
    run = end_to_end_run
    assert run.returncode == 0, run.output
    registry = ModelRegistry(f"sqlite:///{run.home / 'mlflow.db'}")
    for task in TASKS:
        name = f"cv_pipeline_{task}"
        assert registry.version_for_alias(name, CHAMPION) == "1", task
        assert registry.version_for_alias(name, CHALLENGER) is None, task  # cleared by the promotion
        tags = registry.client.get_model_version(name, "1").tags
        assert tags["task"] == task and tags["dataset_hash"] and tags["code_revision"]
        assert {"delta_version.coco_images", "delta_version.coco_batches", "mlflow_run_id", "batches"} <= set(tags)
        assert f"test_{tags['primary_metric']}" in tags
    assert (run.dagster_home / "storage").exists()


def _endpoints(run) -> dict:
    import json
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "cv_pipeline.cli", "endpoints", "--json"], capture_output=True,
                            text=True, env={**os.environ, "CV_PIPELINE_HOME": str(run.home)}, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return {endpoint["name"]: endpoint for endpoint in json.loads(listed.stdout)}


def test_every_endpoint_serves_its_champion_over_http(end_to_end_run):
    """The server outlives the run; `cv-pipeline endpoints --json` lists an endpoint per task; each
    answers a Databricks-shaped request naming the model version, and the classifier is right."""
    from PIL import Image

    run = end_to_end_run
    assert run.returncode == 0, run.output
    endpoints = _endpoints(run)
    assert set(endpoints) == {f"cv_pipeline_{task}" for task in TASKS}
    for name, endpoint in endpoints.items():
        assert endpoint["state"] == "READY" and endpoint["url"].endswith(f"/serving-endpoints/{name}/invocations")
        assert [(e["model_name"], e["model_version"], e["traffic_percentage"]) for e in endpoint["served_entities"]] \
            == [(name, "1", 100)]
    rows = load_split(str(run.home / "lake" / "training_dataset"), None, "test")[:8]
    images = [encode_image(crop_row(row)) for row in rows]
    response = requests.post(endpoints["cv_pipeline_classification"]["url"], timeout=60,
                             json={"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]},
                                   "client_request_id": "e2e-classification"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "cv_pipeline_classification" and body["model_version"] == "1"
    predictions = body["predictions"]
    assert len(predictions) == len(rows)
    assert {p["category_id"] for p in predictions} <= {1, 2, 4, 5, 7, 9}
    correct = sum(p["category_id"] == row["category_id"] for p, row in zip(predictions, rows))
    assert correct >= 3, predictions  # far above chance (1/6) for a model that passed its check
    with Image.open(rows[0]["file_path"]) as opened:
        whole = encode_image(opened.convert("RGB"))
    for task, key in (("detection", "detections"), ("instance_segmentation", "detections"),
                      ("semantic_segmentation", "classes")):
        answer = requests.post(endpoints[f"cv_pipeline_{task}"]["url"], json={"instances": [{"image": whole}]},
                               timeout=60)
        assert answer.status_code == 200, (task, answer.text)
        assert key in answer.json()["predictions"][0] and answer.json()["model_version"] == "1"
    bad = requests.post(endpoints["cv_pipeline_detection"]["url"], json={"instances": [{"image": "%%%"}]}, timeout=60)
    assert bad.status_code == 400 and "row 0" in bad.json()["message"]


def _monitor(run) -> dict:
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cv_pipeline.cli", "monitor", "--json"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CV_PIPELINE_HOME": str(run.home),
                                                       "DAGSTER_HOME": str(run.dagster_home), **E2E_MONITORING_ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    return {entry["endpoint"]: entry for entry in json.loads(done.stdout)}


def test_monitoring_sees_no_drift_on_test_images_then_drift_that_retrains_once(end_to_end_run):
    """`make run` ends with a monitoring pass over the test-split traffic it sent: no drift. Then the
    classifier's endpoint gets the same objects blurred and darkened (ImageNet-C blur and brightness):
    its input drifts, its check fails, and the automation requests exactly one retraining."""
    from datetime import datetime, timedelta, timezone

    import dagster as dg
    from PIL import ImageEnhance, ImageFilter

    from cv_pipeline.definitions import defs
    from cv_pipeline.deployment.endpoints import invoke

    run = end_to_end_run
    assert run.returncode == 0, run.output
    out = run.output
    assert re.search(r"^monitoring \(", out, re.M), out
    for task in TASKS:  # the test split is no drift, whatever the verdict's sample size allows
        line = re.search(rf"^  cv_pipeline_{task} +(\d+) requests, 0 errors, p50/p95/p99 [\d/]+ ms; (.*)$", out, re.M)
        assert line and int(line.group(1)) >= 5, (task, out)
        for test in ("input", "representation", "prediction"):
            assert re.search(rf"\b{test} (ok|n/a)\b", line.group(2)), (task, test, line.group(0))
    assert re.search(r"^  cv_pipeline_classification .*; input ok \(p=", out, re.M), out  # crops enough for a verdict

    rows = load_split(str(run.home / "lake" / "training_dataset"), None, "test")
    corrupted = [ImageEnhance.Brightness(crop_row(row).filter(ImageFilter.GaussianBlur(2))).enhance(0.5)
                 for row in rows[:120]]
    url = _endpoints(run)["cv_pipeline_classification"]["url"]
    for start in range(0, len(corrupted), 8):
        invoke(url, corrupted[start:start + 8])
    monitored = _monitor(run)
    assert set(monitored) == {f"cv_pipeline_{task}" for task in TASKS}
    drifted = monitored["cv_pipeline_classification"]
    assert drifted["requests"] >= 15 and drifted["errors"] == 0
    assert set(drifted["latency_ms"]) == {"p50", "p95", "p99"} and drifted["latency_ms"]["p95"] > 0
    for test, result in drifted["drift"].items():
        assert {"statistic", "p_value", "threshold", "drifted"} <= set(result), test
    assert drifted["drift"]["input_drift"]["drifted"] is True, drifted
    moved = [feature for feature, _ in drifted["drift"]["input_drift"]["top_features"]]
    assert {"sharpness", "brightness"} & set(moved[:3]), moved

    instance = dg.DagsterInstance.from_config(str(run.dagster_home))
    check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("classification_endpoint_monitoring"), "no_input_drift"))
    assert check is not None and check.status.value == "FAILED"
    later = datetime.now(timezone.utc) + timedelta(hours=2)  # past the retraining cool-down
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=later)
    requested = {task: first.get_num_requested(dg.AssetKey(f"{task}_model")) for task in TASKS}
    assert requested == {"classification": 1, "detection": 0, "instance_segmentation": 0,
                         "semantic_segmentation": 0}, requested
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=later,
                                              cursor=first.cursor)
    assert again.get_num_requested(dg.AssetKey("classification_model")) == 0


def test_deployment_pipeline_promotes_a_second_version_and_the_endpoint_follows(end_to_end_run, monkeypatch):
    """The quick-start DeploymentPipeline trains a second classifier on the same pinned data, compares
    it with the champion by the same rule and, promoting it, points the endpoint at it: the running
    server swaps the version in place. (Last: it changes the run's state.)"""
    from cv_pipeline import DeploymentPipeline
    from cv_pipeline.deployment.endpoints import EndpointServer, invoke

    run = end_to_end_run
    assert run.returncode == 0, run.output
    monkeypatch.setenv("CV_PIPELINE_HOME", str(run.home))
    before = EndpointServer(run.home / "serving").status()
    try:
        outcome = DeploymentPipeline(None, None, None, "cv_pipeline", training={"epochs": 3}) \
            .run_pipeline(metrics_threshold=0.0, margin=-1.0)
        registry = ModelRegistry(f"sqlite:///{run.home / 'mlflow.db'}")
        assert outcome["version"] == "2" and outcome["promoted"] and outcome["decision"] == "promote", outcome
        assert outcome["comparison"]["bootstrap"] is not None  # compared with champion v1 on the same images
        assert registry.version_for_alias("cv_pipeline_classification", CHAMPION) == "2"
        assert outcome["serving_url"] == _endpoints(run)["cv_pipeline_classification"]["url"]
        after = EndpointServer(run.home / "serving").status()
        assert after.pid == before.pid  # the same server: the new version was swapped in, not restarted
        row = load_split(str(run.home / "lake" / "training_dataset"), None, "test")[0]
        assert invoke(outcome["serving_url"], [crop_row(row)])["model_version"] == "2"
        assert 0.0 <= outcome["metrics"]["accuracy"] <= 1.0
    finally:
        EndpointServer(run.home / "serving").stop()
