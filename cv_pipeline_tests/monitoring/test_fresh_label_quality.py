"""Quality on fresh labels: the verdict's rules, a real classifier (random weights, logged as the
project's pyfunc and registered in a throwaway SQLite MLflow) scored on a sample batch of a copy of
the ingested lake, the points in Delta, and the partitioned asset with its check through Dagster."""

import json
import math
from datetime import datetime, timedelta, timezone

import dagster as dg
import mlflow
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from cv_pipeline.data.delta_io import read_table
from cv_pipeline.deployment.registry import CHAMPION, ModelRegistry
from cv_pipeline.monitoring.quality import (
    QualityPoint,
    append_quality,
    evaluate_on_batch,
    quality_verdict,
    read_quality,
)
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store
from cv_pipeline_tests.samples import gated_lake_copy

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
MODEL = "cv_pipeline_classification"


def _point(value: float, *, at: int = 10, batch: str = "b9", trained_on_batch: bool = False,
           metric: str = "accuracy") -> QualityPoint:
    return QualityPoint(task="classification", batch_id=batch, model_name=MODEL, model_version="3", metric=metric,
                        value=value, n_images=12, evaluated_at=T0 + timedelta(hours=at), metrics={metric: value},
                        trained_on_batch=trained_on_batch)


def _row(value: float, *, at: int, fresh: bool = True, metric: str = "accuracy", batch: str = "b1") -> dict:
    return {"evaluated_at": T0 + timedelta(hours=at), "task": "classification", "batch_id": batch,
            "model_name": MODEL, "model_version": "2", "metric": metric, "value": value, "n_images": 10,
            "fresh": fresh, "metrics_json": "{}"}


# ------------------------------------------------------------------------------------------- verdict


def test_a_point_within_threshold_and_margin_passes():
    history = [_row(0.70, at=1), _row(0.82, at=2)]
    verdict = quality_verdict(history, _point(0.80), threshold=0.6, max_drop=0.1, higher_is_better=True)
    assert verdict.passed and verdict.baseline == 0.82 and verdict.drop == pytest.approx(0.02)
    assert verdict.threshold == 0.6 and verdict.value == 0.80 and "previous fresh point 0.8200" in verdict.message


def test_below_the_threshold_fails():
    verdict = quality_verdict([_row(0.62, at=1)], _point(0.58), threshold=0.6, max_drop=0.1, higher_is_better=True)
    assert not verdict.passed and "below the threshold 0.6000" in verdict.message
    assert verdict.drop == pytest.approx(0.04)


def test_a_drop_beyond_the_margin_from_the_previous_fresh_point_fails():
    # the latest row is not fresh (the version trained on it): the baseline is the fresh one before it
    history = [_row(0.95, at=1), _row(0.99, at=2, fresh=False), _row(0.40, at=3, metric="f1_macro")]
    verdict = quality_verdict(history, _point(0.80), threshold=0.6, max_drop=0.1, higher_is_better=True)
    assert not verdict.passed and verdict.baseline == 0.95 and verdict.drop == pytest.approx(0.15)
    assert "worse than the previous fresh point (0.9500)" in verdict.message
    assert "threshold" not in verdict.message.split(":", 1)[1]  # above the threshold: only the drop fails


def test_lower_is_better_turns_both_rules_around():
    history = [_row(0.30, at=1)]
    assert quality_verdict(history, _point(0.35), threshold=0.5, max_drop=0.1, higher_is_better=False).passed
    above = quality_verdict(history, _point(0.55), threshold=0.5, max_drop=0.5, higher_is_better=False)
    assert not above.passed and "above the threshold" in above.message
    rose = quality_verdict(history, _point(0.45), threshold=0.5, max_drop=0.1, higher_is_better=False)
    assert not rose.passed and rose.drop == pytest.approx(0.15)
    improved = quality_verdict(history, _point(0.10), threshold=0.5, max_drop=0.1, higher_is_better=False)
    assert improved.passed and improved.drop == pytest.approx(-0.20)


def test_a_non_finite_value_fails():
    verdict = quality_verdict([_row(0.9, at=1)], _point(float("nan")), threshold=0.0, max_drop=1.0,
                              higher_is_better=True)
    assert not verdict.passed and math.isnan(verdict.value) and verdict.drop is None
    assert "no finite figure" in verdict.message


def test_the_first_point_has_no_baseline_and_its_own_row_is_skipped():
    point = _point(0.7)
    own = {**_row(0.7, at=10, batch=point.batch_id), "model_version": point.model_version}
    verdict = quality_verdict([own, _row(0.99, at=11)], point, threshold=0.5, max_drop=0.1, higher_is_better=True)
    assert verdict.passed and verdict.baseline is None and verdict.drop is None
    assert "first fresh point" in verdict.message
    with pytest.raises(ValueError, match="max_drop"):
        quality_verdict([], point, threshold=0.5, max_drop=-0.1, higher_is_better=True)


def test_labels_the_version_trained_on_are_recorded_not_judged():
    verdict = quality_verdict([_row(0.9, at=1)], _point(0.1, trained_on_batch=True), threshold=0.5, max_drop=0.1,
                              higher_is_better=True)
    assert verdict.passed and "not fresh labels" in verdict.message


# ------------------------------------------------------------------------------- a real champion


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Score on one intra-op thread: on a few shared cores, torch's threads contending with other
    work made the batch's scoring several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lake(ingested_lake, tmp_path_factory):
    """The sample lake copied, with a quality gate: batch_0001 validated, batch_0002 held back."""
    return gated_lake_copy(ingested_lake.lake_dir, tmp_path_factory.mktemp("champion_quality") / "lake")


@pytest.fixture(scope="module")
def champion(ingested_lake, tmp_path_factory):
    """A random-weight ResNet-18 classifier over the lake's labels, logged as the project's pyfunc,
    registered as version 1 of cv_pipeline_classification (trained on batch_0002, by its tag), champion."""
    from cv_pipeline.models.pyfunc import log_vision_model
    from cv_pipeline.models.tasks import get_task, save_model_artifact

    labels = [{k: label[k] for k in ("index", "category_id", "name")} for label in ingested_lake.manifest.labels]
    torch.manual_seed(0)
    path = save_model_artifact(tmp_path_factory.mktemp("classifier") / "model.pt",
                               get_task("classification").build_model("resnet18", len(labels)),
                               task="classification", arch="resnet18", labels=labels, config={"image_size": 32})
    with temporary_mlflow_store(tmp_path_factory.mktemp("mlflow"), "champion-quality") as store:
        with mlflow.start_run(experiment_id=store["experiment_id"]):
            info = log_vision_model(path, Image.new("RGB", (40, 30), (120, 60, 30)))
        registry = ModelRegistry(store["uri"])
        version = registry.register(info.model_uri, MODEL,
                                    tags={"task": "classification", "batches": json.dumps(["batch_0002"])})
        registry.set_alias(MODEL, CHAMPION, version)
        yield store["uri"], version


def _trainable_objects(lake_dir, batch_id: str) -> pa.Table:
    """The batch's objects a classifier is asked about: not crowd, boxes at least 4 px each way."""
    annotations = read_table(lake_dir / "coco_annotations", filters=[("batch_id", "=", batch_id)])
    keep = pc.and_(pc.equal(annotations["iscrowd"], 0),
                   pc.and_(pc.greater_equal(annotations["bbox_w"], 4.0), pc.greater_equal(annotations["bbox_h"], 4.0)))
    return annotations.filter(keep)


def test_the_champion_is_scored_on_every_object_of_the_batch(lake, champion, tmp_path):
    tracking_uri, version = champion
    objects = _trainable_objects(lake, "batch_0001")

    point = evaluate_on_batch(lake, "batch_0001", "classification", f"models:/{MODEL}@{CHAMPION}",
                              tracking_uri=tracking_uri)

    assert (point.task, point.batch_id, point.model_name, point.model_version) == \
        ("classification", "batch_0001", MODEL, version)
    assert point.metric == "accuracy" and 0.0 <= point.value <= 1.0
    assert point.n_images == len(set(objects["image_id"].to_pylist())) > 0
    assert point.metrics["num_objects"] == objects.num_rows and point.metrics["accuracy"] == point.value
    assert point.fresh and not point.trained_on_batch
    assert point.evaluated_at.tzinfo is not None
    assert not [p.name for p in lake.iterdir() if p.name.startswith("_champion_quality")]  # scratch removed

    table = tmp_path / "champion_quality"
    assert read_quality(table, "classification") == []
    later = QualityPoint(**{**point.__dict__, "evaluated_at": point.evaluated_at + timedelta(minutes=1),
                            "value": 0.5, "trained_on_batch": True})
    assert append_quality(later, table) == 0
    assert append_quality(point, table) == 1
    rows = read_quality(table, "classification")
    assert [(r["value"], r["fresh"], r["n_images"]) for r in rows] == \
        [(point.value, True, point.n_images), (0.5, False, point.n_images)]  # oldest first
    assert json.loads(rows[0]["metrics_json"])["accuracy"] == point.value
    assert rows[0]["evaluated_at"] == point.evaluated_at and read_quality(table, "detection") == []


def test_a_version_trained_on_the_batch_is_flagged(lake, champion):
    tracking_uri, version = champion
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_model_version_tag(MODEL, version, "batches", json.dumps(["batch_0001", "batch_0002"]))
    try:
        point = evaluate_on_batch(lake, "batch_0001", "classification", f"models:/{MODEL}/{version}",
                                  tracking_uri=tracking_uri, max_images=3)
    finally:
        client.set_model_version_tag(MODEL, version, "batches", json.dumps(["batch_0002"]))
    assert point.trained_on_batch and not point.fresh and point.n_images == 3


def test_held_back_unknown_batches_and_wrong_task_are_refused(lake, champion):
    tracking_uri, version = champion
    uri = f"models:/{MODEL}/{version}"
    with pytest.raises(ValueError, match=r"batch 'batch_0002' is not validated \(status held_back"):
        evaluate_on_batch(lake, "batch_0002", "classification", uri, tracking_uri=tracking_uri)
    with pytest.raises(ValueError, match=r"batch 'batch_9999' is not validated \(status unknown"):
        evaluate_on_batch(lake, "batch_9999", "classification", uri, tracking_uri=tracking_uri)
    with pytest.raises(ValueError, match="is a 'classification' model, asked to evaluate as task 'detection'"):
        evaluate_on_batch(lake, "batch_0001", "detection", uri, tracking_uri=tracking_uri, max_images=2)
    with pytest.raises(ValueError, match="must name a registered version"):
        evaluate_on_batch(lake, "batch_0001", "classification", "runs:/abc/model", tracking_uri=tracking_uri)
    assert not [p.name for p in lake.iterdir() if p.name.startswith("_champion_quality")]


# --------------------------------------------------------------------------------------- the asset


def _materialize(lake, tracking_uri, instance, *, threshold: float, prefix: str = "cv_pipeline_"):
    from cv_pipeline.defs.quality import FRESH_LABEL_QUALITY_ASSETS
    from cv_pipeline.defs.resources import LakeResource, MLflowResource, PromotionPolicy

    asset = FRESH_LABEL_QUALITY_ASSETS["classification"]
    return dg.materialize(
        [asset], partition_key="batch_0001", instance=instance,
        resources={"lake": LakeResource(lake_dir=str(lake)),
                   "mlflow": MLflowResource(tracking_uri=tracking_uri, model_name_prefix=prefix),
                   "promotion": PromotionPolicy(thresholds={"classification": threshold})},
        run_config={"ops": {asset.op.name: {"config": {"max_images": 8, "max_drop": 0.1}}}})


def _check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_check_key == dg.AssetCheckKey(dg.AssetKey("classification_fresh_label_quality"),
                                                          "quality_on_fresh_labels")
    return evaluation


def test_the_asset_records_a_point_and_checks_it(lake, champion):
    from cv_pipeline.monitoring.quality import CHAMPION_QUALITY

    tracking_uri, version = champion
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("landing_batches", ["batch_0001"])

    nobody = _materialize(lake, tracking_uri, instance, threshold=0.0, prefix="nobody_")
    assert nobody.success and _check(nobody).passed
    assert "no champion yet" in _check(nobody).metadata["message"].value
    assert not (lake / CHAMPION_QUALITY).exists()

    first = _materialize(lake, tracking_uri, instance, threshold=0.0)
    assert first.success
    check = _check(first)
    metadata = {k: v.value for k, v in check.metadata.items()}
    assert check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert metadata["figure"] == "accuracy" and metadata["threshold"] == 0.0 and 0 <= metadata["value"] <= 1
    assert metadata["baseline"] is None and metadata["drop"] is None and "first fresh point" in metadata["message"]
    (materialization,) = first.asset_materializations_for_node("classification_fresh_label_quality")
    shown = {k: v.value for k, v in materialization.metadata.items()}
    assert (shown["metric"], shown["model_version"], shown["fresh"], shown["n_images"]) == \
        ("accuracy", version, True, 8)
    assert shown["value"] == metadata["value"] and shown["table_path"] == str(lake / CHAMPION_QUALITY)
    assert "data:image/png;base64," in shown["plot_quality_over_time"] and "batch_0001" in shown["history"]

    # accuracy can't reach 1.01: the check fails (ERROR), the run does not (the check is not blocking)
    second = _materialize(lake, tracking_uri, instance, threshold=1.01)
    assert second.success and not _check(second).passed
    metadata = {k: v.value for k, v in _check(second).metadata.items()}
    assert "below the threshold 1.0100" in metadata["message"]
    assert metadata["baseline"] == pytest.approx(shown["value"]) and metadata["drop"] == pytest.approx(0.0)
    assert len(read_quality(lake / CHAMPION_QUALITY, "classification")) == 2
