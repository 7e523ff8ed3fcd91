"""The code location loads; sensors register batches once and score the batches a new champion has
not scored yet (retraining itself is declarative automation: test_automation.py)."""

import json
import shutil

import dagster as dg

from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.resources import LandingZoneResource
from cv_pipeline.defs.sensors import landing_batch_sensor
from cv_pipeline_tests.samples import SAMPLES


def test_definitions_load():
    from cv_pipeline.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    tasks = ("classification", "detection", "instance_segmentation", "semantic_segmentation")
    road = {f"{task}_{stage}" for task in tasks
            for stage in ("model", "evaluation", "registered_model", "comparison", "champion", "endpoint")}
    watched = {f"{task}_{stage}" for task in tasks for stage in ("endpoint_monitoring", "fresh_label_quality")}
    assert keys == {"coco_images", "coco_annotations", "coco_categories", "coco_quarantine", "coco_batches",
                    "coco_quality_metrics", "training_dataset", "hpo_study", "batch_predictions", *road, *watched}
    assert defs.resolve_job_def("ingest_batch").partitions_def == landing_batches
    assert defs.resolve_job_def("score_batch").partitions_def == landing_batches
    trained = {key.to_user_string() for key in defs.resolve_job_def("train_and_deploy").asset_layer.selected_asset_keys}
    assert road <= trained and "training_dataset" in trained
    assert "hpo_study" not in trained and "batch_predictions" not in trained  # their own jobs
    assert {key.to_user_string() for key in defs.resolve_job_def("tune").asset_layer.selected_asset_keys} == {"hpo_study"}
    assert "endpoint_monitoring" not in str(trained) and "fresh_label_quality" not in str(trained)
    monitored = {key.to_user_string() for key in defs.resolve_job_def("monitor_endpoints").asset_layer.selected_asset_keys}
    assert monitored == {f"{task}_endpoint_monitoring" for task in tasks}
    assert {s.name for s in defs.sensors} == {"landing_batch_sensor", "score_batch_after_retraining",
                                              "retraining_automation", "alert_on_run_failure", "alert_on_failed_checks"}
    checks = {(key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"annotations_unique_ids", "annotations_bbox_inside_image"} <= {name for _, name in checks}
    assert {(f"{task}_comparison", "promotion_rule_holds") for task in tasks} <= checks
    assert {(f"{task}_endpoint_monitoring", name) for task in tasks for name in (
        "no_input_drift", "no_prediction_drift", "latency_within_slo", "error_rate_within_slo")} <= checks
    assert {(f"{task}_fresh_label_quality", "quality_on_fresh_labels") for task in tasks} <= checks


def test_unknown_environment_is_refused():
    import pytest

    from cv_pipeline.definitions import resources_for

    with pytest.raises(ValueError, match="CV_PIPELINE_ENV='mars' is not available"):
        resources_for("mars")


def test_landing_sensor_adds_new_complete_batches_once(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copytree(SAMPLES / "landing" / "batch_0001", landing / "batch_0001")
    shutil.copytree(SAMPLES / "defective" / "batch_incomplete", landing / "batch_incomplete")
    resource = LandingZoneResource(landing_dir=str(landing))
    instance = dg.DagsterInstance.ephemeral()

    result = landing_batch_sensor(dg.build_sensor_context(instance=instance, cursor=None), landing=resource)
    assert [r.partition_key for r in result.run_requests] == ["batch_0001"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["batch_0001"]
    cursor = result.cursor
    assert json.loads(cursor) == ["batch_0001"]

    # nothing new: skipped, incomplete batch still waiting
    again = landing_batch_sensor(dg.build_sensor_context(instance=instance, cursor=cursor), landing=resource)
    assert not again.run_requests and "No new complete batches" in again.skip_reason.skip_message

    # the copier finishes the incomplete batch: it is picked up, the first is not requested again
    (landing / "batch_incomplete" / "_SUCCESS").touch()
    later = landing_batch_sensor(dg.build_sensor_context(instance=instance, cursor=cursor), landing=resource)
    assert [r.partition_key for r in later.run_requests] == ["batch_incomplete"]
    assert json.loads(later.cursor) == ["batch_0001", "batch_incomplete"]


def test_landing_sensor_skips_batches_ingested_elsewhere(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copytree(SAMPLES / "landing" / "batch_0001", landing / "batch_0001")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["batch_0001"])
    instance.report_runless_asset_event(dg.AssetMaterialization("coco_images", partition="batch_0001"))
    result = landing_batch_sensor(dg.build_sensor_context(instance=instance, cursor=None),
                                  landing=LandingZoneResource(landing_dir=str(landing)))
    assert not result.run_requests


def test_landing_sensor_survives_a_restart(tmp_path):
    """A `dagster dev` restart is a new instance on the same storage: with the stored cursor, or even
    with the cursor lost, nothing is ingested twice and a batch that lands meanwhile is not skipped."""
    landing = tmp_path / "landing"
    landing.mkdir()
    for batch in ("batch_0001", "batch_0002"):
        shutil.copytree(SAMPLES / "landing" / batch, landing / batch)
    resource = LandingZoneResource(landing_dir=str(landing))
    home = tmp_path / "dagster_home"
    home.mkdir()

    before = dg.DagsterInstance.local_temp(tempdir=str(home))
    first = landing_batch_sensor(dg.build_sensor_context(instance=before, cursor=None), landing=resource)
    assert [r.partition_key for r in first.run_requests] == ["batch_0001", "batch_0002"]
    before.add_dynamic_partitions(landing_batches.name, ["batch_0001", "batch_0002"])
    for batch in ("batch_0001", "batch_0002"):  # both ingestion runs finished before the restart
        before.report_runless_asset_event(dg.AssetMaterialization("coco_images", partition=batch))
    cursor = first.cursor
    before.dispose()

    # a batch lands while the server is down
    shutil.copytree(SAMPLES / "landing" / "batch_0001", landing / "batch_0003")
    after = dg.DagsterInstance.local_temp(tempdir=str(home))
    for stored_cursor in (cursor, None):  # the daemon's stored cursor, or a reset sensor
        result = landing_batch_sensor(dg.build_sensor_context(instance=after, cursor=stored_cursor), landing=resource)
        assert [r.partition_key for r in result.run_requests] == ["batch_0003"]
        assert [r.run_key for r in result.run_requests] == ["ingest-batch_0003"]
    after.dispose()


def test_a_run_that_moved_a_champion_scores_the_batches_not_scored_yet():
    from cv_pipeline.defs.sensors import score_batch_after_retraining

    @dg.asset(name="classification_champion")
    def champion():
        return None

    @dg.asset(name="training_dataset")
    def dataset():
        return dg.MaterializeResult(metadata={"batches": dg.MetadataValue.json(["batch_0001", "batch_0002"])})

    @dg.asset(name="other")
    def other():
        return None

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["batch_0001", "batch_0002"])
    instance.report_runless_asset_event(dg.AssetMaterialization("batch_predictions", partition="batch_0001"))
    moved = dg.materialize([dataset, champion], instance=instance)
    unrelated = dg.materialize([other], instance=instance)

    def outcome(result):
        return score_batch_after_retraining(dg.build_run_status_sensor_context(
            sensor_name="score_batch_after_retraining", dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
            dagster_event=dg.DagsterEvent("PIPELINE_SUCCESS", result.dagster_run.job_name)))

    requests = outcome(moved)
    assert [(r.partition_key, r.run_key) for r in requests] == [("batch_0002", f"score-batch_0002-after-{moved.run_id}")]
    assert isinstance(outcome(unrelated), dg.SkipReason)
