"""The code location loads; sensors register batches once and retrain only after clean ingestion."""

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
    assert keys == {"coco_images", "coco_annotations", "coco_categories", "coco_quarantine", "coco_batches",
                    "coco_quality_metrics", "training_dataset", "hpo_study", "batch_predictions", *road}
    assert defs.resolve_job_def("ingest_batch").partitions_def == landing_batches
    assert defs.resolve_job_def("score_batch").partitions_def == landing_batches
    trained = {key.to_user_string() for key in defs.resolve_job_def("train_and_deploy").asset_layer.selected_asset_keys}
    assert road <= trained and "training_dataset" in trained
    assert "hpo_study" not in trained and "batch_predictions" not in trained  # their own jobs
    assert {key.to_user_string() for key in defs.resolve_job_def("tune").asset_layer.selected_asset_keys} == {"hpo_study"}
    assert {s.name for s in defs.sensors} == {"landing_batch_sensor", "retrain_on_new_data",
                                              "score_batch_after_retraining"}
    checks = {(key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"annotations_unique_ids", "annotations_bbox_inside_image"} <= {name for _, name in checks}
    assert {(f"{task}_comparison", "promotion_rule_holds") for task in tasks} <= checks


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


def test_a_successful_retraining_scores_the_batch_that_triggered_it():
    from cv_pipeline.defs.sensors import score_batch_after_retraining

    instance = dg.DagsterInstance.ephemeral()
    for tags, expected in (({"trigger_batch": "batch_0002"}, "batch_0002"), ({}, None)):
        context = dg.build_run_status_sensor_context(
            sensor_name="score_batch_after_retraining", dagster_instance=instance,
            dagster_run=dg.DagsterRun(job_name="train_and_deploy", run_id=f"run-{expected}", tags=tags),
            dagster_event=dg.DagsterEvent("PIPELINE_SUCCESS", "train_and_deploy"))
        outcome = score_batch_after_retraining(context)
        if expected:
            assert outcome.partition_key == expected and expected in outcome.run_key
        else:
            assert isinstance(outcome, dg.SkipReason)
