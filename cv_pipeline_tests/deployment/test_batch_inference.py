"""Batch inference on real Delta tables (a copy of the ingested sample lake) with models registered in
a throwaway SQLite MLflow store: rows are images x models, a rerun replaces, unvalidated batches fail."""

import base64
import io
import json
import shutil

import mlflow
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from cv_pipeline.data.delta_io import read_table, replace_batch
from cv_pipeline.deployment.batch_inference import (
    PREDICTIONS_SCHEMA,
    ScoringModel,
    champion_models,
    run_batch_inference,
    score_batch,
)
from cv_pipeline.deployment.registry import CHAMPION, ModelRegistry
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store
from cv_pipeline_tests.samples import gated_lake_copy


class ImageStatsModel(mlflow.pyfunc.PythonModel):
    """A real pyfunc with the project's image interface: size and mean colour of each image."""

    def __init__(self, task: str):
        self.task = task

    def predict_images(self, images):
        return [{"width": im.width, "height": im.height,
                 "mean_rgb": np.asarray(im.convert("RGB"), np.float64).mean(axis=(0, 1)).round(3)} for im in images]

    def predict(self, context, model_input):
        return self.predict_images([Image.open(io.BytesIO(base64.b64decode(v))) for v in model_input["image"]])


def register_stats_model(registry: ModelRegistry, experiment_id: str, task: str, tags: dict | None = None) -> str:
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=ImageStatsModel(task), pip_requirements=["mlflow"])
    return registry.register(info.model_uri, f"cv_pipeline_{task}", tags={"task": task, **(tags or {})})


@pytest.fixture(scope="module")
def lake(ingested_lake, tmp_path_factory):
    """The sample lake copied, with a quality gate: batch_0001 validated, batch_0002 held back."""
    return gated_lake_copy(ingested_lake.lake_dir, tmp_path_factory.mktemp("batch_inference") / "lake")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    with temporary_mlflow_store(tmp_path_factory.mktemp("mlflow"), "batch-inference") as store:
        registry = ModelRegistry(store["uri"])
        scoring = []
        for task in ("classification", "detection"):
            version = register_stats_model(registry, store["experiment_id"], task)
            registry.set_alias(f"cv_pipeline_{task}", CHAMPION, version)
            scoring.append(ScoringModel(task, f"cv_pipeline_{task}", version,
                                        registry.model_uri(f"cv_pipeline_{task}", version)))
        yield store["uri"], scoring


def test_score_batch_gives_one_row_per_image_and_model(lake, models, monkeypatch):
    import cv_pipeline.training.coco_dataset as coco_dataset

    tracking_uri, scoring = models
    assert champion_models(tracking_uri) == scoring
    images = read_table(lake / "coco_images", filters=[("batch_id", "=", "batch_0001")]).to_pylist()
    decoded = []
    original = coco_dataset.decode_record_image
    monkeypatch.setattr(coco_dataset, "decode_record_image", lambda r: decoded.append(r.image_id) or original(r))

    table = score_batch(lake, "batch_0001", scoring, batch_size=3, tracking_uri=tracking_uri)

    assert table.schema == PREDICTIONS_SCHEMA
    assert table.num_rows == len(images) * 2
    assert sorted(decoded) == sorted(r["image_id"] for r in images)  # each image opened once for both models
    by_image = {r["image_id"]: r for r in images}
    for row in table.to_pylist():
        source = by_image[row["image_id"]]
        prediction = json.loads(row["prediction"])
        assert row["image_uid"] == f"batch_0001/{row['image_id']}" and row["sha256"] == source["sha256"]
        assert (prediction["width"], prediction["height"]) == (source["width"], source["height"])
        assert row["model_name"] == f"cv_pipeline_{row['task']}" and row["model_version"] == "1"
        assert row["predicted_at"].tzinfo is not None
    assert set(table["task"].to_pylist()) == {"classification", "detection"}


def test_rerun_replaces_the_batch_and_task_rows(lake, models, tmp_path):
    tracking_uri, scoring = models
    path = tmp_path / "predictions"
    first = run_batch_inference(lake, "batch_0001", scoring, batch_size=8, tracking_uri=tracking_uri, table_path=path)
    assert first["tasks"]["detection"] == {"model_name": "cv_pipeline_detection", "model_version": "1",
                                           "rows": first["images"]}
    assert first["rows"] == 2 * first["images"] and first["batches"] == ["batch_0001"]
    before = read_table(path)

    again = run_batch_inference(lake, "batch_0001", scoring[:1], tracking_uri=tracking_uri, table_path=path)
    after = read_table(path)
    assert again["delta_version"] == first["delta_version"] + 1
    assert after.num_rows == before.num_rows  # classification replaced, detection untouched
    detection = [r for r in before.to_pylist() if r["task"] == "detection"]
    assert sorted(r["predicted_at"] for r in after.to_pylist() if r["task"] == "detection") == \
        sorted(r["predicted_at"] for r in detection)
    assert min(r["predicted_at"] for r in after.to_pylist() if r["task"] == "classification") > \
        max(r["predicted_at"] for r in before.to_pylist() if r["task"] == "classification")


def test_unvalidated_and_unknown_batches_and_wrong_task_error(lake, models):
    tracking_uri, scoring = models
    with pytest.raises(ValueError, match=r"batch 'batch_0002' is not validated .*annotations_bbox_inside_image"):
        score_batch(lake, "batch_0002", scoring, tracking_uri=tracking_uri)
    with pytest.raises(ValueError, match=r"batch 'batch_9999' is not validated .*no coco_batches row"):
        score_batch(lake, "batch_9999", scoring, tracking_uri=tracking_uri)
    task, name, version, uri = scoring[0]
    with pytest.raises(ValueError, match=r"cv_pipeline_classification version 1 .* is a 'classification' model"):
        score_batch(lake, "batch_0001", [("detection", name, version, uri)], tracking_uri=tracking_uri)
    with pytest.raises(ValueError, match="no models"):
        score_batch(lake, "batch_0001", [], tracking_uri=tracking_uri)


def test_images_stored_as_bytes_score_like_files(lake, models, tmp_path):
    tracking_uri, scoring = models
    from_files = score_batch(lake, "batch_0001", scoring[:1], tracking_uri=tracking_uri)
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    images = read_table(copy / "coco_images", filters=[("batch_id", "=", "batch_0001")])
    stored = images.append_column("image_bytes", pa.array(
        [open(p, "rb").read() for p in images["file_path"].to_pylist()], pa.binary()))
    stored = stored.set_column(stored.schema.get_field_index("file_path"), "file_path",
                               pa.nulls(stored.num_rows, pa.string()))
    replace_batch(stored, copy / "coco_images", "batch_0001")

    from_bytes = score_batch(copy, "batch_0001", scoring[:1], tracking_uri=tracking_uri)
    assert from_bytes["prediction"].to_pylist() == from_files["prediction"].to_pylist()
    assert from_bytes["image_uid"].to_pylist() == from_files["image_uid"].to_pylist()
