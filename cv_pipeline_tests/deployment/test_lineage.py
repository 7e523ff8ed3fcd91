"""Lineage on real Delta tables (a copy of the ingested sample lake, its own training_dataset version)
and a throwaway SQLite MLflow store: a registered version and an inference_log row trace back to the
split, the COCO table versions, the batches and the code revision; the split rebuilds to its hash."""

import json
import shutil
from datetime import datetime, timezone

import mlflow
import pyarrow as pa
import pytest

from cv_pipeline.data.delta_io import append_rows, replace_batch, table_version
from cv_pipeline.deployment.lineage import format_lineage, lineage_command, rebuild, trace
from cv_pipeline.deployment.registry import CHAMPION, ModelRegistry
from cv_pipeline.training.dataset import build_training_dataset
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store

MODEL = "cv_pipeline_detection"
REVISION = "0123456789abcdef0123456789abcdef01234567"


class SizeModel(mlflow.pyfunc.PythonModel):
    task = "detection"

    def predict_images(self, images):
        return [{"width": im.width, "height": im.height} for im in images]

    def predict(self, context, model_input):
        return [{"rows": len(model_input)}]


def _status(batch_id: str, status: str) -> pa.Table:
    return pa.table({"batch_id": [batch_id], "status": [status], "failed_checks": ["[]"], "status_message": [status]})


@pytest.fixture(scope="module")
def world(ingested_lake, tmp_path_factory):
    """Lake (both batches validated, a manifest built on them, then batch_0002 held back: the latest
    tables no longer give that split), a registered version with the lineage tags, and one
    inference_log row served by it."""
    home = tmp_path_factory.mktemp("lineage_home")
    lake = home / "lake"
    shutil.copytree(ingested_lake.lake_dir, lake)
    for batch_id in ("batch_0001", "batch_0002"):
        replace_batch(_status(batch_id, "validated"), lake / "coco_batches", batch_id)
    manifest = build_training_dataset(lake, seed=5, fractions={"train": 0.6, "val": 0.2, "test": 0.2}, min_box_size=3.0)
    replace_batch(_status("batch_0002", "held_back"), lake / "coco_batches", "batch_0002")

    store = tmp_path_factory.mktemp("lineage_mlflow")
    with temporary_mlflow_store(store, "lineage") as mlflow_store:
        registry = ModelRegistry(mlflow_store["uri"])
        tags = {"task": "detection", "dataset_path": manifest.table_path, "dataset_version": str(manifest.version),
                "dataset_hash": manifest.content_hash, "batches": json.dumps(manifest.batches),
                "code_revision": REVISION, "dagster_run_id": "dagster-run-1",
                **{f"delta_version.{t}": str(v) for t, v in manifest.source_versions.items()}}
        with mlflow.start_run(experiment_id=mlflow_store["experiment_id"], run_name="detection-train") as run:
            mlflow.log_params({"arch": "fasterrcnn_mobilenet", "epochs": 3})
            mlflow.log_metrics({"test_map": 0.41, "best_val_loss": 0.9})
            mlflow.set_tags(tags)
            info = mlflow.pyfunc.log_model(name="model", python_model=SizeModel(), pip_requirements=["mlflow"])
        version = registry.register(info.model_uri, MODEL, tags={**tags, "mlflow_run_id": run.info.run_id,
                                                                   "test_map": "0.41"})
        registry.set_alias(MODEL, CHAMPION, version)
        # version 2: same run, a dataset hash that is not the split's
        registry.register(info.model_uri, MODEL, tags={**tags, "mlflow_run_id": run.info.run_id, "dataset_hash": "f" * 64})

        now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        inputs = [{"row": i, "sha256": f"{i}" * 64, "width": 64, "height": 48, "prediction": json.dumps({"boxes": []})}
                  for i in range(2)]
        append_rows(pa.Table.from_pylist([{
            "databricks_request_id": "req-0001", "client_request_id": "my-client-id", "request_time": now,
            "request_date": now.date(), "endpoint_name": "cv_pipeline_detection", "served_entity_id": "detection-1",
            "model_name": MODEL, "model_version": version, "status_code": 200, "execution_duration_ms": 12.5,
            "request": "{}", "response": "{}", "error": None, "inputs": inputs,
        }]), lake / "inference_log", partition_by=("request_date",))
        yield {"home": home, "lake": lake, "uri": mlflow_store["uri"], "manifest": manifest, "run_id": run.info.run_id}


def _check_chain(lineage, world):
    manifest = world["manifest"]
    assert lineage.model["name"] == MODEL and lineage.model["version"] == "1" and lineage.model["aliases"] == [CHAMPION]
    assert lineage.run["run_id"] == world["run_id"] and lineage.run["params"]["arch"] == "fasterrcnn_mobilenet"
    assert lineage.run["metrics"]["test_map"] == pytest.approx(0.41)
    assert lineage.dataset["version"] == manifest.version and lineage.dataset["content_hash"] == manifest.content_hash
    assert lineage.dataset["split_counts"] == manifest.split_counts and lineage.dataset["seed"] == 5
    assert lineage.source_versions == manifest.source_versions and "coco_batches" in lineage.source_versions
    assert lineage.batches == ["batch_0001", "batch_0002"]
    assert lineage.code_revision == REVISION and lineage.dagster_run_id == "dagster-run-1"
    assert lineage.warnings == []
    json.dumps(lineage.as_dict())


@pytest.mark.parametrize("ref", [f"{MODEL}:1", f"models:/{MODEL}/1", f"{MODEL}@champion", f"models:/{MODEL}@champion"])
def test_trace_from_a_model_version(world, ref):
    lineage = trace(ref, tracking_uri=world["uri"], lake_dir=world["lake"])
    _check_chain(lineage, world)
    assert lineage.request is None
    text = format_lineage(lineage)
    for expected in (f"{MODEL} version 1", "aliases: champion", "arch=fasterrcnn_mobilenet", "test_map=0.41",
                     f"version {world['manifest'].version}", "batch_0001, batch_0002", REVISION, "coco_images@v"):
        assert expected in text, (expected, text)


@pytest.mark.parametrize("ref", ["req-0001", "my-client-id"])
def test_trace_from_an_inference_log_row(world, ref, capsys):
    lineage = trace(ref, tracking_uri=world["uri"], lake_dir=world["lake"])
    _check_chain(lineage, world)
    request = lineage.request
    assert request["databricks_request_id"] == "req-0001" and request["endpoint_name"] == "cv_pipeline_detection"
    assert request["status_code"] == 200 and request["rows"] == 2 and request["request_time"].startswith("2026-01-02T03:04:05")
    assert "status 200, 12.5 ms, 2 rows" in format_lineage(lineage)

    assert lineage_command(ref, as_json=True, tracking_uri=world["uri"], lake_dir=world["lake"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"]["version"] == "1" and printed["dataset"]["version"] == world["manifest"].version


def test_rebuild_reproduces_the_split_by_time_travel(world, tmp_path, capsys, monkeypatch):
    lineage = trace(f"{MODEL}:1", tracking_uri=world["uri"], lake_dir=world["lake"])
    result = rebuild(lineage, tmp_path / "one")
    assert result["matches"] and result["content_hash"] == world["manifest"].content_hash
    assert result["batches"] == ["batch_0001", "batch_0002"]  # batch_0002 is held back in the latest coco_batches
    assert result["split_counts"] == world["manifest"].split_counts
    assert table_version(world["lake"] / "training_dataset") == world["manifest"].version  # the lake's own untouched

    # defaults from cv_pipeline.settings: CV_PIPELINE_HOME/lake and MLFLOW_TRACKING_URI
    monkeypatch.setenv("CV_PIPELINE_HOME", str(world["home"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    assert lineage_command("req-0001", rebuild_dir=tmp_path / "two") == 0
    assert "matches" in capsys.readouterr().out

    # version 2 recorded another hash: the rebuild says so and the command exits 2
    assert lineage_command(f"{MODEL}:2", rebuild_dir=tmp_path / "three") == 2
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "differs from the manifest's" in out


def test_unknown_refs_error_clearly(world, tmp_path, capsys):
    def fails(ref, match, lake_dir=world["lake"]):
        with pytest.raises(LookupError, match=match):
            trace(ref, tracking_uri=world["uri"], lake_dir=lake_dir)

    fails("req-9999", r"request id 'req-9999' not found in .*inference_log")
    fails(f"{MODEL}:99", rf"model version {MODEL}:99 not found .*\(versions: 1, 2\)")
    fails("cv_pipeline_nothing:1", r"registered model 'cv_pipeline_nothing' not found")
    fails(f"{MODEL}@gone", rf"{MODEL} has no alias 'gone' .*champion=1")
    fails("req-0001", r"no inference_log table", lake_dir=tmp_path)
    assert lineage_command("req-9999", tracking_uri=world["uri"], lake_dir=world["lake"]) == 1
    assert "request id 'req-9999' not found" in capsys.readouterr().err
